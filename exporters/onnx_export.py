"""`to_onnx`: lower an `ir.Graph` to an ONNX `ModelProto`, one registry lowering per op kind.

Why an emitter object: lowerings (in `onnx_lowering_*.py`, stored on each op's registry entry
as `ir.get_op(kind).onnx`) only say which ONNX nodes an IR op becomes. The `Emitter` owns what
must be global and deterministic: names from counters in op order (never `id()`), constants
deduplicated into initializers, symbolic dims computed from `Shape` of the tensor that defines
each symbol, and the capability check of the target, which rewrites a node the target cannot run
(`onnx_lowering_fallbacks`) or raises `ExportError` naming the op, dtype and source line.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ir.graph import Graph, Op, Region, Value, input_names
from runtime import dims as D
from runtime import pytree

from .capabilities import load_target
from .errors import ExportError, UnsupportedOpError

MIN_OPSET, MAX_OPSET = 13, 21
META_IN_TREE, META_OUT_TREE, META_ARG_NAMES = "castml.in_tree", "castml.out_tree", "castml.arg_names"
META_PREFIX = "castml.meta."


def onnx_dtype(dt) -> int:
    """The ONNX element type of a NumPy dtype.

    >>> onnx_dtype(np.float32)
    1
    """
    return helper.np_dtype_to_tensor_dtype(np.dtype(dt))


class Emitter:
    """Collects nodes and initializers while lowering one graph.

    Every ONNX tensor name the emitter hands out has a known dtype (`self.dtypes`), so the
    capability check can look up (op, dtype) pairs without running shape inference.
    """

    def __init__(self, opset: int, target: str | None):
        self.opset = opset
        self.caps = load_target(target) if target is not None else None
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.dtypes: dict[str, np.dtype] = {}
        self._consts: dict[tuple, str] = {}
        self._counter = 0
        self._dim_cache: dict = {}
        self.symbol_sources: dict[str, tuple[str, int]] = {}
        self.op: Op | None = None  # the IR op being lowered (for error messages)
        self._in_fallback = 0
        self.reserved: set[str] = set()  # names taken from the graph (inputs, outputs, named values)
        # id(Value) -> ONNX name, for every region: a region's graph refers to enclosing values by
        # name, as ONNX subgraphs may. Lives only during one `to_onnx` call (ids are not stable).
        self.names: dict[int, str] = {}
        self.named: dict[int, str] = {}  # values that keep their own name (from an imported model)
        self._graphs = 0
        self.static: dict[int, bool] = {}  # id(Value) -> computed from constants only (onnx_groups)

    # --- names and constants -------------------------------------------------------------------
    def fresh(self, hint: str = "t") -> str:
        """A new tensor name (`hint_N`, numbered in emission order, never a reserved name)."""
        while True:
            self._counter += 1
            name = f"{hint}_{self._counter}"
            if name not in self.reserved:
                return name

    def const(self, value, dtype=None) -> str:
        """An initializer holding `value` (deduplicated by dtype, shape and bytes)."""
        a = np.asarray(value, dtype=dtype)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("="))
        key = (a.dtype.str, a.shape, a.tobytes())
        name = self._consts.get(key)
        if name is None:
            n = len(self._consts)
            while f"const_{n}" in self.reserved:
                n += 1
            name = self._consts[key] = f"const_{n}"
            self.initializers.append(numpy_helper.from_array(np.array(a, order="C", copy=True), name))
            self.dtypes[name] = a.dtype
        return name

    def ints(self, values) -> str:
        """A 1-D int64 initializer (axes, pads, shapes)."""
        return self.const(np.asarray(list(values), np.int64).reshape(-1))

    # --- nodes ---------------------------------------------------------------------------------
    def node(self, op_type: str, inputs: list[str], out: str | list[str] | None = None, *, n_out: int = 1,
             dtype=None, key: str | None = None, key_input: int = 0, **attrs) -> str | list[str]:
        """Emit one node and return its output name(s).

        `dtype` is the outputs' dtype (default: the dtype of input `key_input`); `key` the
        capability-table key (default `op_type`). When the target lacks (key, dtype of input
        `key_input`), the node is rewritten by a registered fallback or an `ExportError` is raised.
        """
        outs = [out] if isinstance(out, str) else list(out) if out is not None else [
            self.fresh(op_type.lower()) for _ in range(n_out)]
        in_dt = self.dtypes.get(inputs[key_input]) if inputs and key_input < len(inputs) and inputs[key_input] else None
        out_dt = np.dtype(dtype) if dtype is not None else in_dt
        if self.caps is not None and in_dt is not None and not self.caps.supports(key or op_type, in_dt, self.opset):
            from .onnx_lowering_fallbacks import rewrite

            self._in_fallback += 1
            try:
                if self._in_fallback > 8:
                    raise self.unsupported(key or op_type, in_dt)
                got = rewrite(self, op_type, key or op_type, inputs, outs, in_dt, out_dt, key_input, attrs)
            finally:
                self._in_fallback -= 1
            return got[0] if len(got) == 1 else got
        clean = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **clean))
        for o in outs:
            self.dtypes[o] = out_dt
        return outs[0] if len(outs) == 1 else outs

    def unsupported(self, key: str, dtype) -> ExportError:
        """The error for an (op, dtype) pair the target cannot run and nothing can replace."""
        where = ""
        if self.op is not None:
            where = f" while lowering `{self.op.kind}`" + (f" ({self.op.loc})" if self.op.loc else "")
        target = self.caps.name if self.caps else "the target"
        return ExportError(f"{target} has no kernel for ONNX {key} on {np.dtype(dtype).name} at opset {self.opset}"
                           f"{where}, and no lossless rewrite exists; export with target=None for other "
                           f"ONNX consumers or change the dtype")

    def cast(self, name: str, dtype, out: str | None = None) -> str:
        """`name` converted to `dtype` (no node when it already has that dtype and no `out` is asked)."""
        dtype = np.dtype(dtype)
        if self.dtypes.get(name) == dtype:
            return name if out is None else self.node("Identity", [name], out)
        return self.node("Cast", [name], out, dtype=dtype, to=onnx_dtype(dtype))

    def scalar(self, value, like: str) -> str:
        """A 0-d constant with the dtype of tensor `like`."""
        return self.const(np.asarray(value, self.dtypes[like]))

    # --- symbolic dims -------------------------------------------------------------------------
    def dim(self, d) -> str:
        """A 1-element int64 tensor holding dim `d` (int, symbol or expression) at run time."""
        d = D.parse_dim(d)
        if isinstance(d, int):
            return self.ints([d])
        if d in self._dim_cache:
            return self._dim_cache[d]
        if D.is_symbol(d):
            if d not in self.symbol_sources:
                raise ExportError(f"symbolic dim {d!r} has no defining tensor (no graph input or op output has "
                                  f"it as a plain dim){self._where()}")
            src, axis = self.symbol_sources[d]
            shape = self.node("Shape", [src], dtype=np.int64)
            out = self.node("Slice", [shape, self.ints([axis]), self.ints([axis + 1])], dtype=np.int64)
        else:
            out = self._dim_expr(d)
        self._dim_cache[d] = out
        return out

    def _dim_expr(self, d: str) -> str:
        total = None
        for mono, coef in D._parse(d):  # the canonical polynomial: ((atoms...), coefficient)
            term = self.ints([coef]) if not mono or coef != 1 else None
            for atom in mono:
                t = self._dim_atom(atom)
                term = t if term is None else self.node("Mul", [term, t])
            total = term if total is None else self.node("Add", [total, term])
        return total if total is not None else self.ints([0])

    def _dim_atom(self, atom: str) -> str:
        if atom[0] != "(":
            return self.dim(atom)
        inner, depth = atom[1:-1], 0
        for i, ch in enumerate(inner):
            depth += (ch == "(") - (ch == ")")
            if depth == 0 and ch in "/%":
                n = 2 if inner.startswith("//", i) else 1
                num, den = self.dim(inner[:i]), self.dim(inner[i + n:])
                # dims are non-negative, where truncating Div and Python's // agree
                return self.node("Div", [num, den]) if n == 2 else self.node("Mod", [num, den])
        raise ExportError(f"malformed dim atom {atom!r}")

    def shape(self, dims) -> str:
        """A 1-D int64 tensor holding a (possibly symbolic) shape."""
        dims = [D.parse_dim(d) for d in dims]
        if all(isinstance(d, int) for d in dims):
            return self.ints(dims)
        parts, run = [], []
        for d in dims:
            if isinstance(d, int):
                run.append(d)
                continue
            if run:
                parts.append(self.ints(run))
                run = []
            parts.append(self.dim(d))
        if run:
            parts.append(self.ints(run))
        return parts[0] if len(parts) == 1 else self.node("Concat", parts, axis=0)

    def note_symbols(self, name: str, shape) -> None:
        """Record `name` as the defining tensor of any bare symbol in `shape` not seen before."""
        for axis, d in enumerate(shape):
            if isinstance(d, str) and D.is_symbol(d) and d not in self.symbol_sources:
                self.symbol_sources[d] = (name, axis)

    # --- ops and regions -----------------------------------------------------------------------
    def lower_ops(self, ops) -> None:
        """Lower `ops` in order, appending to the current node list (`self.nodes`)."""
        from ir.registry import get_op

        from .onnx_groups import tag_group

        for op in ops:
            self.op = op
            ins = [self.names[id(v)] for v in op.inputs]
            outs = []
            for v in op.outputs:
                if id(v) in self.named:  # uses up its number too, so later names match the first export
                    self._counter += 1
                    self.names[id(v)] = self.named[id(v)]
                elif id(v) not in self.names:  # (a constant aliases its initializer and takes no number)
                    self.names[id(v)] = self.fresh("v") if op.kind != "constant" else None
                outs.append(self.names[id(v)])
            first = len(self.nodes)
            aliases = get_op(op.kind).onnx(self, op, ins, outs)
            if aliases is not None:  # the lowering names existing tensors (a constant's initializer)
                outs = list(aliases)
                for v, n in zip(op.outputs, outs):
                    self.names[id(v)] = n
            tag_group(self.nodes[first:], op, ins, outs, self.static)
            for v, n in zip(op.outputs, outs):
                self.dtypes.setdefault(n, v.dtype)
                self.note_symbols(n, v.shape)
        self.op = None

    def subgraph(self, region: Region, hint: str) -> onnx.GraphProto:
        """Lower `region` into an ONNX subgraph (an If branch, a Loop body) named `hint_N`.

        Its nodes refer to values of enclosing regions by their ONNX names, and to initializers
        of the main graph. Nodes, computed dims and symbol sources are scoped: what the region
        defines is forgotten afterwards. Every region output gets an `Identity` (a subgraph output
        may be a region input, an outer value, or appear twice); inputs and outputs are named
        after the subgraph (`body_1_in2`, `then_2_out0`), not the counter, so that export →
        import → export gives the same bytes.

        Example, the `if` lowering (onnx_lowering_control.py)::

            cx.node("If", ins, outs, then_branch=cx.subgraph(op.regions[0], "then"),
                    else_branch=cx.subgraph(op.regions[1], "else"))
        """
        self._graphs += 1
        name = f"{hint}_{self._graphs}"
        saved = (self.nodes, self._dim_cache, self.symbol_sources, self.op)
        self.nodes, self.symbol_sources = [], dict(self.symbol_sources)
        redefined = {d for v in region.inputs for d in v.shape if isinstance(d, str) and D.is_symbol(d)}
        # a dim computed outside stays valid inside unless the region redefines one of its symbols
        self._dim_cache = {} if redefined else dict(self._dim_cache)
        try:
            in_infos = []
            for k, v in enumerate(region.inputs):
                n = self.names.get(id(v)) or self.named.get(id(v)) or self._graph_name(f"{name}_in{k}")
                self.names[id(v)] = n
                self.dtypes[n] = v.dtype
                for axis, d in enumerate(v.shape):
                    if isinstance(d, str) and D.is_symbol(d):
                        self.symbol_sources[d] = (n, axis)
                in_infos.append(_value_info(n, v))
            self.lower_ops(region.ops)
            out_infos = []
            for k, v in enumerate(region.outputs):
                out = self.node("Identity", [self.names[id(v)]], self._graph_name(f"{name}_out{k}"), dtype=v.dtype)
                out_infos.append(_value_info(out, v))
            return helper.make_graph(self.nodes, name, in_infos, out_infos)
        finally:
            self.nodes, self._dim_cache, self.symbol_sources, self.op = saved

    def _graph_name(self, name: str) -> str:
        # (an imported model's subgraph Identity outputs vanish, so they must not use up counter
        # values that later names depend on)
        if name in self.reserved or name in self.dtypes:
            return self.fresh(name)
        self.reserved.add(name)
        return name

    def _where(self) -> str:
        if self.op is None:
            return ""
        return f" (in `{self.op.kind}`" + (f" at {self.op.loc}" if self.op.loc else "") + ")"


def _value_info(name: str, v: Value) -> onnx.ValueInfoProto:
    shape = [d if isinstance(d, int) else str(d) for d in v.shape]
    return helper.make_tensor_value_info(name, onnx_dtype(v.dtype), shape)


def _names_read(nodes) -> dict[str, int]:
    """How many times each tensor name is read by `nodes` and the nodes of their subgraphs."""
    reads: dict[str, int] = {}
    for n in nodes:
        for name in n.input:
            reads[name] = reads.get(name, 0) + 1
        for a in n.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                for name, k in _names_read(sub.node).items():
                    reads[name] = reads.get(name, 0) + k
    return reads


def _cast_before_transpose(nodes: list, keep: set[str]) -> set[str]:
    """Rewrite Transpose -> Cast -> MatMul as Cast -> Transpose -> MatMul (the same values);
    returns the tensor names that no longer exist.

    onnxruntime 1.32 segfaults creating a session (ORT_ENABLE_ALL, CPU) for the first form: its
    MatmulTransposeFusion swaps that Cast and Transpose itself, to fuse the Transpose into the
    MatMul, and crashes doing so. Where the Transpose feeds only the Cast, the two swap places
    and the transposed tensor is gone; where it has other readers (other nodes, a subgraph, or
    it is a graph output in `keep`), it stays for them and the Cast's path gets a Cast ->
    Transpose of its own. Either way the Cast's output keeps its name, so graph outputs and
    `to_onnx`'s value_names stay right.
    """
    producer = {out: n for n in nodes for out in n.output}
    reads = _names_read(nodes)
    matmul_inputs = {name for n in nodes if n.op_type == "MatMul" for name in n.input}
    taken = {name for n in nodes for name in [*n.input, *n.output]}
    removed: set[str] = set()
    for cast in [n for n in nodes if n.op_type == "Cast" and n.output[0] in matmul_inputs]:
        t = producer.get(cast.input[0])
        if t is None or t.op_type != "Transpose":
            continue
        mid = cast.output[0] + "_untransposed"
        while mid in taken:
            mid += "_"
        taken.add(mid)
        shared = reads.get(t.output[0]) != 1 or t.output[0] in keep
        suffix = "_cast_first" if shared else ""  # (node names, where given, stay unique)
        first = helper.make_node("Cast", [t.input[0]], [mid], name=cast.name and cast.name + suffix)
        first.attribute.extend(cast.attribute)
        second = helper.make_node("Transpose", [mid], [cast.output[0]], name=t.name and t.name + suffix)
        second.attribute.extend(t.attribute)
        k = nodes.index(cast)
        if shared:  # (the Cast sits after the Transpose, so after the producer of its input too)
            nodes[k:k + 1] = [first, second]
            continue
        removed.add(t.output[0])
        # the Cast takes the Transpose's place (its input exists there), the Transpose the Cast's
        nodes[nodes.index(t)], nodes[k] = first, second
    return removed


def to_onnx(g: Graph, opset: int = 18, target: str | None = "onnxruntime-cpu",
            value_names: dict | None = None) -> onnx.ModelProto:
    """Lower `g` to an ONNX model that passes `onnx.checker.check_model(full_check=True)`.

    `value_names`, when given, is filled with {Value: ONNX tensor name} for the graph's inputs and
    every op output, regions included (names are deterministic, so `castml diff` maps values
    across engines and `castml check` finds source lines).

    >>> import tracer
    >>> m = to_onnx(tracer.trace(lambda x: x * 2.0, np.zeros(3, np.float32)))
    >>> [n.op_type for n in m.graph.node], m.graph.input[0].name, m.graph.output[0].name
    (['Mul'], 'x', 'output')
    """
    from ir.registry import get_op

    from . import onnx_lowering  # noqa: F401  (attaches the lowerings to the registry)

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported for export; expected {MIN_OPSET}..{MAX_OPSET}")
    cx = Emitter(opset, target)
    names = cx.names
    in_names = input_names(g)
    if len(in_names) != len(g.inputs):
        raise ExportError(f"graph has {len(g.inputs)} inputs but its signature names {len(in_names)}")
    for v, n in zip(g.inputs, in_names):
        names[id(v)] = n
        cx.dtypes[n] = v.dtype
        cx.note_symbols(n, v.shape)
    out_names = g.output_names
    # values that carry a name (an imported model's tensor names) keep it, so that
    # export -> import -> export reproduces the same names and bytes
    cx.reserved.update(in_names, out_names)
    for op in g.walk():
        # (region inputs only by identifier-like names: the text parser numbers them "4", "5", ...)
        for v in [*op.outputs, *(x for r in op.regions for x in r.inputs if x.name and x.name.isidentifier())]:
            if v.name and op.kind != "constant" and v.name not in cx.reserved and not v.name.startswith("const_"):
                cx.named[id(v)] = v.name
                cx.reserved.add(v.name)
    # a graph output produced by an op is written under its final name directly
    claimed: set[int] = set()
    for v, n in zip(g.outputs, out_names):
        if v.producer is not None and id(v) not in claimed and v.producer.kind != "constant":
            names[id(v)] = n
            claimed.add(id(v))
    missing: dict[str, list[str]] = {}
    for op in g.walk():
        if get_op(op.kind).onnx is None:
            missing.setdefault(op.kind, []).append(op.loc or "?")
    if missing:
        listed = "; ".join(f"{k} (at {', '.join(v[:3])})" for k, v in sorted(missing.items()))
        raise UnsupportedOpError(f"no ONNX lowering for: {listed}")
    cx.lower_ops(g.ops)
    removed = _cast_before_transpose(cx.nodes, set(out_names))
    if value_names is not None:
        value_names.update({v: names[id(v)] for v in [*g.inputs, *(o for op in g.walk() for o in op.outputs)]
                            if id(v) in names and names[id(v)] not in removed})
    outputs = []
    emitted: set[str] = set()
    for v, n in zip(g.outputs, out_names):
        src = names[id(v)]
        if src != n or n in emitted:
            cx.node("Identity", [src], n)
        emitted.add(n)
        outputs.append(_value_info(n, v))
    graph = helper.make_graph(cx.nodes, "castml", [_value_info(n, v) for v, n in zip(g.inputs, in_names)],
                              outputs, initializer=cx.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="castml",
                              ir_version=helper.find_min_ir_version_for(opsets))
    meta = {META_IN_TREE: pytree.treedef_to_json(g.in_tree), META_OUT_TREE: pytree.treedef_to_json(g.out_tree),
            META_ARG_NAMES: json.dumps(list(g.arg_names))}
    meta.update({META_PREFIX + k: v for k, v in g.metadata.items()})
    helper.set_model_props(model, dict(sorted(meta.items())))
    if hasattr(cx.caps, "pin"):  # a target with a format ceiling (onnxruntime-web: IR version, opsets)
        cx.caps.pin(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"internal error: the exported model fails the ONNX checker: {e}") from None
    return model


EXTERNAL_MIN_BYTES = 1024


def write_external(model: onnx.ModelProto, path: str, write_atomic) -> None:
    """Move initializers of >= 1 KiB into one data file next to `path`, named by its content hash.

    The data file is written (and fsynced) by `write_atomic` before the caller replaces the
    `.onnx`, so a crash leaves either the old model or the new one with complete data. Locations
    are relative (the bare file name), as `load` requires.
    """
    import hashlib

    chunks, offset = [], 0
    for t in model.graph.initializer:
        raw = t.raw_data if t.HasField("raw_data") else numpy_helper.from_array(numpy_helper.to_array(t)).raw_data
        if len(raw) < EXTERNAL_MIN_BYTES:
            continue
        pad = (-offset) % 64  # 64-byte aligned, so readers may map the data
        chunks.append(b"\0" * pad)
        offset += pad
        chunks.append((t, offset, raw))
        offset += len(raw)
    if not chunks:
        return
    blob = b"".join(c if isinstance(c, bytes) else c[2] for c in chunks)
    stem = os.path.splitext(os.path.basename(path))[0]
    data_name = f"{stem}.{hashlib.sha256(blob).hexdigest()[:16]}.data"
    write_atomic(os.path.join(os.path.dirname(os.path.abspath(path)), data_name), blob)
    for c in chunks:
        if isinstance(c, bytes):
            continue
        t, off, raw = c
        t.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            t.ClearField(field)
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in (("location", data_name), ("offset", str(off)), ("length", str(len(raw)))):
            t.external_data.add(key=k, value=v)
