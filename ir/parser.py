"""Parse the IR text form back into a `Graph` (`parse(to_text(g)) == g`).

A small scanner over the string (no separate token list) so that types and dim expressions can
be read as raw balanced text and handed to `runtime.dims`.
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np

from runtime import dims as D
from runtime import pytree

from .errors import ParseError, TypeRuleError
from .graph import Graph, Op, Region, Value
from .types import DTYPES_BY_NAME, TensorType

_WS = re.compile(r"[ \t\r\n]*")
_VAL = re.compile(r'%(?:([A-Za-z0-9_.]+)|("(?:[^"\\]|\\.)*"))')
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"-?\d+\Z")
_FLOAT = re.compile(r"-?(?:\d+\.\d*(?:e[-+]?\d+)?|\d+e[-+]?\d+|inf)\Z|nan\Z")
_HASH = re.compile(r"#([0-9a-f]+)")
_LOC = re.compile(r"[ \t]*#[ \t]([^\n]*)")


class _Scanner:
    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def error(self, msg: str) -> ParseError:
        line = self.s.count("\n", 0, self.i) + 1
        col = self.i - (self.s.rfind("\n", 0, self.i) + 1) + 1
        snippet = self.s[self.i:self.i + 30].split("\n")[0]
        return ParseError(f"line {line}, column {col}: {msg} (at {snippet!r})")

    def ws(self) -> None:
        self.i = _WS.match(self.s, self.i).end()

    def peek(self, lit: str) -> bool:
        self.ws()
        return self.s.startswith(lit, self.i)

    def accept(self, lit: str) -> bool:
        if self.peek(lit):
            self.i += len(lit)
            return True
        return False

    def expect(self, lit: str) -> None:
        if not self.accept(lit):
            raise self.error(f"expected {lit!r}")

    def match(self, rx: re.Pattern, what: str) -> re.Match:
        self.ws()
        m = rx.match(self.s, self.i)
        if not m:
            raise self.error(f"expected {what}")
        self.i = m.end()
        return m

    def raw_until(self, stops: str) -> str:
        """Text up to a top-level stop character (brackets and strings balanced)."""
        self.ws()
        depth, start, s = 0, self.i, self.s
        while self.i < len(s):
            ch = s[self.i]
            if ch == '"':
                m = re.compile(r'"(?:[^"\\]|\\.)*"').match(s, self.i)
                if not m:
                    raise self.error("unterminated string")
                self.i = m.end()
                continue
            if ch in "([<":
                depth += 1
            elif ch in ")]>" and depth > 0:
                depth -= 1
            elif depth == 0 and ch in stops:
                return s[start:self.i].strip()
            self.i += 1
        raise self.error(f"expected one of {stops!r}")


def parse(text: str) -> Graph:
    """Parse IR text (from `Graph.to_text()` or `str(graph)` when nothing was elided).

    >>> import tracer
    >>> g = tracer.trace(lambda x: x * 2.0, 1.0)
    >>> parse(g.to_text()) == g
    True
    """
    return _Parser(text).graph()


class _Parser:
    def __init__(self, text: str):
        self.sc = _Scanner(text)
        self.scopes: list[dict[str, Value]] = [{}]
        self.pending: list[tuple] = []  # (op, attr name, hash, dtype, shape) awaiting constant data

    def lookup(self, name: str) -> Value:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise self.sc.error(f"value %{name} is used before it is defined")

    def define(self, name: str, v: Value) -> None:
        if any(name in s for s in self.scopes):
            raise self.sc.error(f"value %{name} is defined twice")
        self.scopes[-1][name] = v

    def val_name(self) -> str:
        m = self.sc.match(_VAL, "a value name like %3")
        return m.group(1) if m.group(1) is not None else json.loads(m.group(2))

    def type_(self) -> TensorType:
        sc = self.sc
        dt = sc.match(_NAME, "a dtype like f32").group(0)
        if dt not in DTYPES_BY_NAME:
            raise sc.error(f"unknown dtype {dt!r}")
        sc.expect("[")
        shape = []
        if not sc.accept("]"):
            while True:
                raw = sc.raw_until(",]")
                try:
                    shape.append(D.parse_dim(int(raw) if _INT.match(raw) else raw))
                except (ValueError, TypeError) as e:
                    raise sc.error(f"bad dim {raw!r}: {e}") from None
                if sc.accept("]"):
                    break
                sc.expect(",")
        try:
            return TensorType(DTYPES_BY_NAME[dt], tuple(shape))
        except (ValueError, TypeError) as e:
            raise sc.error(str(e)) from None

    def params(self) -> list[Value]:
        sc = self.sc
        sc.expect("(")
        vals: list[Value] = []
        while not sc.accept(")"):
            if vals:
                sc.expect(",")
            name = self.val_name()
            sc.expect(":")
            v = Value(self.type_(), name)
            self.define(name, v)
            vals.append(v)
        return vals

    def graph(self) -> Graph:
        sc = self.sc
        sc.expect("graph")
        inputs = self.params()
        sc.expect("{")
        ops, outputs = self.body("return")
        sig: dict = {}
        if sc.accept("signature"):
            raw = sc.raw_until("\n")
            try:
                sig = json.loads(raw)
            except ValueError:
                raise sc.error("malformed signature JSON") from None
        consts: dict[str, np.ndarray] = {}
        if sc.accept("constants"):
            sc.expect("{")
            while not sc.accept("}"):
                h = sc.match(_HASH, "a constant hash").group(1)
                sc.expect(":")
                consts[h] = sc.raw_until("\n")
        for op, key, h, dtype, shape in self.pending:
            if h not in consts:
                raise ParseError(f"constant #{h} is referenced but its data is not in the text "
                                 "(str(graph) elides large constants; use graph.to_text())")
            data = base64.b64decode(json.loads(consts[h]))
            op.attrs[key] = np.frombuffer(data, dtype).reshape(shape).copy()
        sc.ws()
        if sc.i != len(sc.s):
            raise sc.error("unexpected text after the graph")
        try:
            in_tree = _tuplify(sig["in_tree"]) if "in_tree" in sig else None
            out_tree = _tuplify(sig["out_tree"]) if "out_tree" in sig else pytree.LEAF
        except (TypeError, ValueError) as e:
            raise ParseError(f"malformed signature: {e}") from None
        g = Graph(inputs, ops, outputs, in_tree=in_tree, out_tree=out_tree,
                  arg_names=sig.get("args", [v.name for v in inputs]), metadata=sig.get("metadata"))
        self._retype_constants()
        return g

    def _retype_constants(self) -> None:
        """Ops whose tensor attributes arrived by reference were created with placeholder data;
        rerun their type rules now that the data is in place."""
        from .registry import get_op

        for op in {id(op): op for op, *_ in self.pending}.values():
            for v, t in zip(op.outputs, get_op(op.kind).infer_types(op)):
                if v.type != t:
                    raise ParseError(f"{op.kind}: declared type {v.type} differs from {t}")

    def body(self, terminator: str) -> tuple[list[Op], list[Value]]:
        sc = self.sc
        ops: list[Op] = []
        while not sc.accept(terminator):
            ops.append(self.op())
        outputs: list[Value] = []
        sc.ws()
        while not sc.peek("}"):
            if outputs:
                sc.expect(",")
            outputs.append(self.lookup(self.val_name()))
        sc.expect("}")
        return ops, outputs

    def op(self) -> Op:
        sc = self.sc
        outs: list[tuple[str, TensorType]] = []
        while True:
            name = self.val_name()
            sc.expect(":")
            outs.append((name, self.type_()))
            if sc.accept("="):
                break
            sc.expect(",")
        kind = sc.match(_NAME, "an op name").group(0)
        attrs: dict = {}
        refs: list[tuple[str, str, np.dtype, tuple]] = []
        if sc.accept("["):
            while True:
                key = sc.match(_NAME, "an attribute name").group(0)
                sc.expect("=")
                attrs[key] = self.attr_value(sc.raw_until(",]"), key, refs)
                if sc.accept("]"):
                    break
                sc.expect(",")
        sc.expect("(")
        inputs: list[Value] = []
        while not sc.accept(")"):
            if inputs:
                sc.expect(",")
            inputs.append(self.lookup(self.val_name()))
        regions: list[Region] = []
        if sc.accept("regions"):
            sc.expect("{")
            while not sc.accept("}"):
                self.scopes.append({})
                params = self.params()
                sc.expect("{")
                r_ops, r_outs = self.body("yield")
                self.scopes.pop()
                regions.append(Region(params, r_ops, r_outs))
        m = _LOC.match(sc.s, sc.i)
        loc = None
        if m:
            loc = m.group(1).strip()
            sc.i = m.end()
        types = [t for _, t in outs]
        try:
            op = Op(kind, inputs, attrs, regions, loc, output_types=types if refs else None)
        except TypeRuleError as e:
            raise sc.error(str(e)) from None
        if not refs:
            for v, (_, t) in zip(op.outputs, outs):
                if v.type != t:
                    raise sc.error(f"{kind}: declared type {t} differs from the inferred {v.type}")
        for key, h, dtype, shape in refs:
            self.pending.append((op, key, h, dtype, shape))
        for v, (name, _) in zip(op.outputs, outs):
            self.define(name, v)
        return op

    def attr_value(self, raw: str, key: str, refs: list):
        if raw.startswith("tensor<"):
            return self.tensor(raw, key, refs)
        if raw.startswith("(") and (raw == "()" or _has_top_level_comma(raw[1:-1])):
            inner = _Scanner(raw[1:-1] + ")")
            items = []
            while not inner.accept(")"):
                items.append(self.attr_value(inner.raw_until(",)"), key, refs))
                inner.accept(",")
            return tuple(items)
        return _scalar_attr(raw, self.sc)

    def tensor(self, raw: str, key: str, refs: list) -> np.ndarray:
        m = re.match(r"tensor<([a-z0-9]+)\[([^\]]*)\]\s*(?::\s*\[(.*)\]|#([0-9a-f]+))>\Z", raw, re.S)
        if not m or m.group(1) not in DTYPES_BY_NAME:
            raise self.sc.error(f"malformed tensor literal {raw[:40]!r}")
        dtype = DTYPES_BY_NAME[m.group(1)]
        shape = tuple(int(d) for d in m.group(2).split(",") if d.strip())
        if m.group(4) is not None:
            refs.append((key, m.group(4), dtype, shape))
            return np.zeros(shape, dtype)
        items = [t.strip() for t in m.group(3).split(",") if t.strip()]
        if dtype.kind == "b":
            vals = [t == "true" for t in items]
        elif dtype.kind == "f":
            vals = [float(t) for t in items]
        else:
            vals = [int(t) for t in items]
        arr = np.array(vals, dtype=dtype)
        if arr.size != int(np.prod(shape)):
            raise self.sc.error(f"tensor literal has {arr.size} values for shape {shape}")
        return arr.reshape(shape)


def _scalar_attr(raw: str, sc: _Scanner):
    if raw in ("true", "false"):
        return raw == "true"
    if _INT.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        return float(raw)
    if raw.startswith('"'):
        return json.loads(raw)
    if raw in DTYPES_BY_NAME:
        return DTYPES_BY_NAME[raw]
    try:
        return D.parse_dim(raw)
    except ValueError:
        raise sc.error(f"cannot read attribute value {raw!r}") from None


def _has_top_level_comma(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch in "(["
        depth -= ch in ")]"
        if ch == "," and depth == 0:
            return True
    return False


def _tuplify(obj):
    if isinstance(obj, list):
        return tuple(_tuplify(x) for x in obj)
    return obj
