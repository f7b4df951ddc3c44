"""`from_onnx` / `load_onnx`: read an ONNX model (default domain, opsets 6-21) into an `ir.Graph`.

Why handles instead of values: ONNX models compute shapes at run time (`Shape` → `Gather` →
`Concat` → `Reshape`), while IR shape attributes are dims. The importer therefore carries three
kinds of handle per ONNX tensor: an `ir.Value`, a static `np.ndarray` (initializers, Constant,
and everything computed from them, folded with the same kernels `ir.interpret` runs), or a
`SymInts` (a small int64 tensor whose entries are dims, possibly symbolic, such as the result of
`Shape` on a symbolic-batch input). Ops turn into IR ops only when their inputs are tensors.
Op translations live in `onnx_import_ops*.py`, one table entry per ONNX op type.
"""

from __future__ import annotations

import json
import os
from collections import ChainMap

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from ir.graph import Graph, Region, Value
from ir.registry import get_op
from ir.types import TensorType, as_dtype
from runtime import CastmlError, ModelFormatError, limits, pytree
from runtime import dims as D

from .errors import ExportError, UnsupportedOpError
from .onnx_export import META_ARG_NAMES, META_IN_TREE, META_OUT_TREE, META_PREFIX
from .onnx_groups import begin_group, drop_scratch, finish_group

MIN_OPSET, MAX_OPSET = 6, 21
FOLD_LIMIT = 1 << 20  # fold ops on constants up to this many elements


class SymInts:
    """A small int64 tensor (0-d or 1-d) whose entries are dims: ints or symbolic expressions.

    >>> SymInts(("batch", 3)).dims
    ('batch', 3)
    """

    def __init__(self, dims, scalar: bool = False):
        self.dims = tuple(D.parse_dim(d) for d in dims)
        self.scalar = scalar

    @property
    def shape(self) -> tuple:
        return () if self.scalar else (len(self.dims),)

    def __repr__(self) -> str:
        return f"SymInts({self.dims}{', scalar' if self.scalar else ''})"


class Builder:
    """Builds the IR graph while walking the ONNX nodes; folds ops whose inputs are constants."""

    def __init__(self, graph: Region, opset: int, parent: Builder | None = None):
        self.g = graph
        self.opset = opset
        self.parent = parent
        self.node: onnx.NodeProto | None = None
        # a region sees the constants, names and dims of its enclosing regions, not the reverse
        self._materialized: ChainMap[int, tuple[np.ndarray, Value]] = ChainMap(
            {}, *([parent._materialized] if parent is not None else []))
        self.env: ChainMap[str, object] = ChainMap({}, *([parent.env] if parent is not None else []))
        self._symbols = parent._symbols if parent is not None else [0]
        self.scratch = parent.scratch if parent is not None else []  # (onnx_groups.drop_scratch)

    def child(self, region: Region) -> Builder:
        """A builder for `region` (an If branch, a Loop body) nested in this one."""
        return Builder(region, self.opset, self)

    def symbols_in_use(self) -> set[str]:
        """The symbols in the shapes of the graph's inputs and of every value built so far."""
        used: set[str] = set()
        b = self
        while b is not None:  # this region and the enclosing ones (regions being built have no op yet)
            for v in [*b.g.inputs, *(v for op in b.g.walk() for v in op.outputs)]:
                used.update(d for d in v.shape if isinstance(d, str))
            b = b.parent
        return used

    def fresh_symbol(self) -> str:
        """A new symbolic dim name (`_c1`, `_c2`, ...) for sizes that vary across branches or iterations."""
        taken = self.symbols_in_use()
        while True:
            self._symbols[0] += 1
            sym = f"_c{self._symbols[0]}"
            if sym not in taken:
                return sym

    def op(self, kind: str, inputs: list, **attrs) -> object:
        """Apply IR op `kind`; returns a handle (array when folded, else a Value) or a tuple of them."""
        static_attrs = not any(isinstance(d, str) for k in ("shape", "n") for d in attrs.get(k, ()))
        if (all(isinstance(h, np.ndarray) for h in inputs) and sum(h.size for h in inputs) <= FOLD_LIMIT
                and static_attrs):
            with np.errstate(all="ignore"):
                out = get_op(kind).kernel(*inputs, **attrs)
            if isinstance(out, tuple):
                return tuple(np.asarray(o) for o in out)
            return np.asarray(out)
        loc = f"onnx:{self.node.name or self.node.op_type}" if self.node is not None else None
        op = self.g.add_op(kind, [self.value(h) for h in inputs], attrs, loc=loc)
        return op.outputs[0] if len(op.outputs) == 1 else tuple(op.outputs)

    def value(self, h) -> Value:
        """An IR value for a handle (constants and SymInts become ops, cached per array)."""
        if isinstance(h, Value):
            return h
        if isinstance(h, SymInts):
            return self.value(self.sym_tensor(h))
        if isinstance(h, np.ndarray):
            cached = self._materialized.get(id(h))
            if cached is None:  # the array is stored with its value, so its id() stays unique
                cached = self._materialized[id(h)] = (h, self.g.add_op("constant", [], {"value": h}).output)
            return cached[1]
        raise ExportError(f"internal error: bad handle {h!r}")

    def sym_tensor(self, s: SymInts):
        """A tensor (array or Value) holding the dims of `s`."""
        if all(isinstance(d, int) for d in s.dims):
            return np.asarray(s.dims[0] if s.scalar else s.dims, np.int64)
        pieces = []
        for d in s.dims:
            pieces.append(self.reshape(self.dim_value(d), (1,)))
        out = pieces[0] if len(pieces) == 1 else self.op("concat", pieces, axis=0)
        return self.reshape(out, ()) if s.scalar else out

    def dim_value(self, d):
        """A 0-d int64 tensor holding dim `d`, computed from `shape_dim` of the input that defines it."""
        d = D.parse_dim(d)
        if isinstance(d, int):
            return np.asarray(d, np.int64)
        for v in self.g.inputs:
            for axis, x in enumerate(v.shape):
                if x == d:
                    return self.op("shape_dim", [v], axis=axis)
        for op in self.g.ops:
            for v in op.outputs:
                for axis, x in enumerate(v.shape):
                    if x == d:
                        return self.op("shape_dim", [v], axis=axis)
        if self.parent is not None:  # a dim of an enclosing region's value, computed there
            return self.parent.dim_value(d)
        raise UnsupportedOpError(f"cannot compute the dim {d!r} as a tensor (node {self.where()})")

    def reshape(self, h, shape):
        return self.op("reshape", [h], shape=tuple(shape))

    def where(self) -> str:
        n = self.node
        return f"{n.op_type} {n.name!r}" if n is not None else "?"


def shape_of(h) -> tuple:
    """The (possibly symbolic) shape of a handle."""
    return h.shape if isinstance(h, (Value, SymInts)) else tuple(np.shape(h))


def dtype_of(h) -> np.dtype:
    """The dtype of a handle."""
    if isinstance(h, SymInts):
        return np.dtype(np.int64)
    return h.dtype


def static(h) -> np.ndarray | None:
    """The value of a handle when known at import time."""
    if isinstance(h, np.ndarray):
        return h
    if isinstance(h, SymInts) and all(isinstance(d, int) for d in h.dims):
        return np.asarray(h.dims[0] if h.scalar else h.dims, np.int64)
    return None


def _dtype(elem_type: int, where: str) -> np.dtype:
    try:
        return as_dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        raise UnsupportedOpError(f"{where}: ONNX element type {elem_type} "
                                 f"({onnx.TensorProto.DataType.Name(elem_type) if elem_type else '?'}) "
                                 f"is not supported") from None


def _input_type(vi: onnx.ValueInfoProto, fresh: list[int]) -> TensorType:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
        raise UnsupportedOpError(f"graph input {vi.name!r}: expected a tensor with known rank")
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
            continue
        sym = d.dim_param
        try:
            sym = D.parse_dim(sym) if sym else None
        except D.DimError:
            sym = None
        if sym is None or isinstance(sym, int):
            fresh[0] += 1
            sym = f"_d{fresh[0]}"
        dims.append(sym)
    return TensorType(_dtype(t.elem_type, f"graph input {vi.name!r}"), tuple(dims))


def _arg_name(name: str, i: int) -> str:
    return name if name.isidentifier() else f"arg{i}"


def from_onnx(model: onnx.ModelProto, base_dir: str | None = None) -> Graph:
    """Translate an ONNX model into an IR graph (signature from castml metadata when present).

    >>> import numpy as np, tracer
    >>> from exporters import to_onnx
    >>> g = tracer.trace(lambda x: np.tanh(x) * 2.0, np.zeros(3, np.float32))
    >>> print(from_onnx(to_onnx(g)))  # doctest: +ELLIPSIS
    graph(%x: f32[3]) {
    ...
    """
    from .onnx_import_ops import IMPORTERS

    opset = _default_opset(model)
    graph = model.graph
    unsupported: dict[str, list[str]] = {}
    nodes = list(_all_nodes(graph))
    for i, n in enumerate(nodes):
        if n.domain not in ("", "ai.onnx") or n.op_type not in IMPORTERS:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            unsupported.setdefault(key, []).append(n.name or f"node #{i}")
    if opset > MAX_OPSET:  # newer opsets: only ops whose definition is unchanged since opset 21
        for i, n in enumerate(nodes):
            if n.op_type in IMPORTERS and n.domain in ("", "ai.onnx") and _changed_after(n.op_type, opset):
                unsupported.setdefault(f"{n.op_type} (changed after opset {MAX_OPSET})", []).append(
                    n.name or f"node #{i}")
    if unsupported:
        listed = "; ".join(f"{k} (nodes: {', '.join(v[:5])}{', ...' if len(v) > 5 else ''})"
                           for k, v in sorted(unsupported.items()))
        raise UnsupportedOpError(f"cannot import ONNX ops (opset {opset}): {listed}")
    meta = {p.key: p.value for p in model.metadata_props}
    inits = {t.name: t for t in graph.initializer}
    fresh = [0]
    real_inputs = [vi for vi in graph.input if vi.name not in inits]
    g = Graph([Value(_input_type(vi, fresh), vi.name) for vi in real_inputs])
    b = Builder(g, opset)
    env = b.env
    for t in graph.initializer:  # initializers become constant ops, in file order
        arr = _tensor_array(t, base_dir)
        env[t.name] = arr
        v = g.add_op("constant", [], {"value": arr}).output
        v.name = t.name
        b._materialized[id(arr)] = (arr, v)
    for v in g.inputs:
        env[v.name] = v
    import_nodes(b, graph.node)
    g.outputs = [b.value(env[o.name]) for o in graph.output]
    drop_scratch(g, b.scratch)
    _signature(g, meta, real_inputs, graph.output)
    return g


def import_nodes(b: Builder, nodes) -> None:
    """Translate ONNX `nodes` in order into `b`'s region, binding their outputs in `b.env`.

    Used for the main graph and, by the If/Loop importers, for subgraphs (`import_region`).
    """
    from .onnx_import_ops import IMPORTERS

    env = b.env
    group = None
    for i, n in enumerate(nodes):
        group = begin_group(b, nodes, i) or group
        b.node = n
        ins = [env[x] if x else None for x in n.input]
        for x in n.input:
            if x and x not in env:
                raise UnsupportedOpError(f"node {b.where()}: input {x!r} is not defined before use")
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        try:
            outs = IMPORTERS[n.op_type](b, ins, attrs, len(n.output))
        except ExportError:  # (an UnsupportedOpError, or an error inside a subgraph: already located)
            raise
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise ExportError(f"cannot import node {b.where()} (opset {b.opset}): {e}") from None
        for name, h in zip(n.output, outs):
            if name and h is not None:
                if isinstance(h, Value) and h.producer is not None and h.name is None:
                    h.name = name
                env[name] = h
        if group is not None and group.last == i:
            finish_group(b, group)
            group = None
    b.node = None


def import_region(b: Builder, graph: onnx.GraphProto, inputs: list[Value]) -> Region:
    """An IR region for ONNX subgraph `graph` (an If branch, a Loop body) whose inputs are `inputs`.

    The subgraph sees every name of the enclosing scopes through `b.env`; what it defines stays
    inside. Outputs that are constants or outer values are yielded as they are.

    Example, the Loop importer (onnx_import_ops_control.py)::

        body = import_region(b, attrs["body"], [iteration, cond, *carried])
    """
    region = Region(list(inputs))
    child = b.child(region)
    if len(graph.input) != len(inputs):
        raise UnsupportedOpError(f"node {b.where()}: subgraph {graph.name!r} takes {len(graph.input)} inputs, "
                                 f"expected {len(inputs)}")
    for vi, v in zip(graph.input, inputs):
        v.name = vi.name
        child.env[vi.name] = v
    for t in graph.initializer:
        child.env[t.name] = _tensor_array(t, None)
    import_nodes(child, graph.node)
    for o in graph.output:
        if o.name not in child.env:
            raise UnsupportedOpError(f"node {b.where()}: subgraph {graph.name!r} output {o.name!r} is never defined")
    region.outputs = [child.value(child.env[o.name]) for o in graph.output]
    return region


def _all_nodes(graph: onnx.GraphProto):
    """Every node of `graph` and of its subgraphs (If branches, Loop bodies), outer first."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _all_nodes(sub)


def _signature(g: Graph, meta: dict, inputs, outputs) -> None:
    try:
        g.in_tree = pytree.treedef_from_json(meta[META_IN_TREE])
        g.out_tree = pytree.treedef_from_json(meta[META_OUT_TREE])
        g.arg_names = list(json.loads(meta[META_ARG_NAMES]))
        ok = (pytree.num_leaves(g.in_tree) == len(g.inputs) and pytree.num_leaves(g.out_tree) == len(g.outputs))
    except (KeyError, ValueError, TypeError):
        ok = False
    if not ok:
        g.in_tree = ("tuple", (pytree.LEAF,) * len(g.inputs))
        g.arg_names = [_arg_name(vi.name, i) for i, vi in enumerate(inputs)]
        g.out_tree = pytree.LEAF if len(g.outputs) == 1 else ("tuple", (pytree.LEAF,) * len(g.outputs))
    g.metadata = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}


def _changed_after(op_type: str, opset: int) -> bool:
    try:
        return onnx.defs.get_schema(op_type, opset).since_version > MAX_OPSET
    except onnx.defs.SchemaError:
        return True


def _default_opset(model: onnx.ModelProto) -> int:
    opset = None
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            opset = o.version
    if opset is None:
        raise UnsupportedOpError("the model imports no opset of the default ONNX domain")
    if not MIN_OPSET <= opset <= MAX_OPSET + 10:
        raise UnsupportedOpError(f"ONNX opset {opset} is not supported; expected {MIN_OPSET}..{MAX_OPSET}")
    return opset


def _tensor_array(t: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return _external_array(t, base_dir)
    arr = numpy_helper.to_array(t)
    as_dtype(arr.dtype)
    return arr.copy(order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)


def _external_array(t: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    if base_dir is None:
        raise ExportError(f"tensor {t.name!r} uses external data {loc!r}; load the model from a file")
    if not loc or os.path.isabs(loc) or ".." in loc.replace("\\", "/").split("/"):
        raise ExportError(f"tensor {t.name!r}: external data location {loc!r} must be a relative path inside "
                          f"the model's directory")
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, loc))
    if os.path.commonpath([root, path]) != root:
        raise ExportError(f"tensor {t.name!r}: external data {loc!r} resolves to {path}, outside {root}")
    offset, length = int(info.get("offset", 0)), info.get("length")
    dt = _dtype(t.data_type, f"tensor {t.name!r}")
    count = int(np.prod(t.dims, dtype=np.int64))
    nbytes = count * dt.itemsize
    if length is not None and int(length) != nbytes:
        raise ExportError(f"tensor {t.name!r}: external length {length} != {nbytes} bytes for shape {list(t.dims)}")
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ExportError(f"tensor {t.name!r}: {loc!r} holds {len(data)} bytes at offset {offset}, need {nbytes}")
    return np.frombuffer(data, dt.newbyteorder("<")).astype(dt).reshape(tuple(t.dims))


def load_onnx(path: str) -> Graph:
    """Read an `.onnx` file (external data only from inside its directory) into an IR graph.

    >>> import numpy as np, tracer, tempfile, os, exporters
    >>> p = os.path.join(tempfile.mkdtemp(), "m.onnx")
    >>> exporters.save(tracer.trace(lambda x: x * x, np.zeros(2)), p); load_onnx(p).arg_names
    ['x']
    """
    size, lim = os.path.getsize(path), limits.current().max_file_bytes
    if size > lim:  # refused before reading it into memory
        raise ModelFormatError(f"{path}: the model is {size} bytes, more than max_file_bytes = {lim} "
                               f"({limits.how_to_raise('max_file_bytes')})")
    with open(path, "rb") as f:
        data = f.read()
    try:
        model = onnx.load_model_from_string(data)
    except DecodeError as e:
        raise ModelFormatError(f"{path}: not a valid ONNX protobuf ({e})") from None
    try:
        return from_onnx(model, base_dir=os.path.dirname(os.path.abspath(path)))
    except CastmlError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError, RecursionError) as e:
        # hostile files (names never defined, fields of the wrong type) must not leak other errors
        raise ModelFormatError(f"{path}: malformed ONNX model ({type(e).__name__}: {e})") from None
