"""The text form of the IR: one op a line, deterministic, ASCII, readable like a jaxpr.

    graph(%x: f32[batch,784], %w: f32[784,512]) {
      %0: f32[batch,512] = matmul(%x, %w)  # model.py:12
      return %0
    }

Values are numbered when printing (never by id()), so the same graph always prints the same.
`str(g)` elides constants with more than 16 elements as `tensor<f32[512,784] #3fa2c1>`;
`to_text(g)` appends their bytes (base64) in a `constants` section so that parsing is lossless.
"""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np

from runtime.format_names import short_dtype

from .graph import Graph, Op, Region, Value

INLINE_LIMIT = 16
_IDENT_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


def content_hash(a: np.ndarray) -> str:
    """Hex digest of a constant's dtype, shape and bytes (the key of the constants section).

    >>> content_hash(np.zeros(3, np.float32))[:6]
    'ddf67a'
    """
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.asarray(a, order="C").tobytes())
    return h.hexdigest()[:16]


def format_scalar(v, dtype: np.dtype) -> str:
    """Shortest text that parses back to exactly this value of `dtype`."""
    if dtype.kind == "b":
        return "true" if v else "false"
    if dtype.kind in "iu":
        return str(int(v))
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return str(np.asarray(v, dtype)[()].item() if dtype == np.float64 else dtype.type(v))


def _inline_ok(a: np.ndarray) -> bool:
    if a.size > INLINE_LIMIT:
        return False
    if a.dtype.kind == "f":
        # NaN payloads do not survive text; fall back to bytes for them
        nan = np.isnan(a)
        if nan.any() and np.asarray(np.nan, a.dtype).tobytes() * int(nan.sum()) != a[nan].tobytes():
            return False
    return True


def format_tensor(a: np.ndarray, elide: bool) -> str:
    """`tensor<f32[2]: [1.0, 2.0]>` inline, or `tensor<f32[512,784] #3fa2c1>` by reference."""
    head = f"{short_dtype(a.dtype)}[{','.join(str(d) for d in a.shape)}]"
    if _inline_ok(a):
        vals = ", ".join(format_scalar(v, a.dtype) for v in a.reshape(-1))
        return f"tensor<{head}: [{vals}]>"
    h = content_hash(a)
    return f"tensor<{head} #{h[:6] if elide else h}>"


def format_attr(v, elide: bool = True) -> str:
    """Text of one attribute value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_scalar(v, np.dtype(np.float64))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, np.dtype):
        return short_dtype(v)
    if isinstance(v, tuple):
        # strings inside tuples are symbolic dims and print bare: shape=(batch*4, 20)
        inner = ", ".join(x if isinstance(x, str) else format_attr(x, elide) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, np.ndarray):
        return format_tensor(v, elide)
    raise TypeError(f"cannot print attribute {v!r}")


def _dim_text(d) -> str:
    return str(d)


def format_type(t) -> str:
    """`f32[batch,784]`."""
    return f"{short_dtype(t.dtype)}[{','.join(_dim_text(d) for d in t.shape)}]"


class _Namer:
    def __init__(self):
        self.names: dict[int, str] = {}
        self.count = 0
        self.taken: set[str] = set()

    def bind_input(self, v: Value) -> None:
        name = v.name or "arg"
        base, i = name, 1
        while name in self.taken or name.isdigit():
            name = f"{base}_{i}"
            i += 1
        self.taken.add(name)
        self.names[id(v)] = name

    def bind(self, v: Value) -> None:
        while str(self.count) in self.taken:
            self.count += 1
        self.names[id(v)] = str(self.count)
        self.taken.add(str(self.count))
        self.count += 1

    def __call__(self, v: Value) -> str:
        name = self.names.get(id(v))
        if name is None:
            return "%<undefined>"
        return "%" + (name if set(name) <= _IDENT_OK else json.dumps(name))


def format_op(op: Op, namer: _Namer | None = None, elide: bool = True, indent: str = "") -> str:
    """One op as text (regions on the following lines)."""
    namer = namer or _Namer()
    for v in op.outputs:
        if id(v) not in namer.names:
            namer.bind(v)
    outs = ", ".join(f"{namer(v)}: {format_type(v.type)}" for v in op.outputs)
    attrs = ""
    if op.attrs:
        attrs = "[" + ", ".join(f"{k}={format_attr(op.attrs[k], elide)}" for k in sorted(op.attrs)) + "]"
    line = f"{indent}{outs} = {op.kind}{attrs}({', '.join(namer(v) for v in op.inputs)})"
    if op.regions:
        parts = [line + " regions {"]
        for r in op.regions:
            parts.append(_format_region(r, namer, elide, indent + "  "))
        parts.append(indent + "}")
        line = "\n".join(parts)
    if op.loc:
        line += f"  # {op.loc}"
    return line


def _format_region(r: Region, namer: _Namer, elide: bool, indent: str) -> str:
    for v in r.inputs:
        namer.bind(v)
    params = ", ".join(f"{namer(v)}: {format_type(v.type)}" for v in r.inputs)
    lines = [f"{indent}({params}) {{"]
    lines += [format_op(op, namer, elide, indent + "  ") for op in r.ops]
    lines.append(f"{indent}  yield {', '.join(namer(v) for v in r.outputs)}".rstrip())
    lines.append(indent + "}")
    return "\n".join(lines)


def _collect_constants(region: Region, out: dict[str, np.ndarray]) -> None:
    for op in region.walk():
        for v in op.attrs.values():
            if isinstance(v, np.ndarray) and not _inline_ok(v):
                out.setdefault(content_hash(v), v)


def to_text(g: Graph, elide: bool = False) -> str:
    """The graph as text; lossless unless `elide` (see the module docstring).

    >>> import tracer
    >>> print(to_text(tracer.trace(lambda x: -x, 1.0)), end="")
    graph(%x: f64[]) {
      %0: f64[] = neg(%x)
      return %0
    }
    """
    namer = _Namer()
    for v in g.inputs:
        namer.bind_input(v)
    params = ", ".join(f"{namer(v)}: {format_type(v.type)}" for v in g.inputs)
    lines = [f"graph({params}) {{"]
    lines += [format_op(op, namer, elide, "  ") for op in g.ops]
    lines.append(f"  return {', '.join(namer(v) for v in g.outputs)}".rstrip())
    lines.append("}")
    sig = _signature(g, namer)
    if sig:
        lines.append("signature " + json.dumps(sig, separators=(",", ":"), sort_keys=True))
    if not elide:
        consts: dict[str, np.ndarray] = {}
        _collect_constants(g, consts)
        if consts:
            lines.append("constants {")
            for h in sorted(consts):
                data = base64.b64encode(np.asarray(consts[h], order="C").tobytes()).decode()
                lines.append(f"  #{h}: \"{data}\"")
            lines.append("}")
    return "\n".join(lines) + "\n"


def _signature(g: Graph, namer: _Namer) -> dict:
    """What the text must carry beyond ops: non-default pytrees, argument names, metadata."""
    from runtime import pytree

    sig = {}
    default_in = ("tuple", (pytree.LEAF,) * len(g.inputs))
    if g.in_tree != default_in:
        sig["in_tree"] = g.in_tree
    if g.arg_names != [namer.names[id(v)] for v in g.inputs] or "in_tree" in sig:
        sig["args"] = g.arg_names
    if g.out_tree != pytree.LEAF:
        sig["out_tree"] = g.out_tree
    if g.metadata:
        sig["metadata"] = g.metadata
    return sig
