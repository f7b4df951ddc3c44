"""IR ⇄ `.castml`: write graphs as the runtime's FlatBuffers format, and read them back.

Writing is deterministic (values numbered in definition order, attributes and metadata sorted,
identical constants stored once, no timestamps), so the same graphs give the same bytes. The
table region comes first, padded to 64 bytes, then every constant's bytes, each 64-byte aligned
(`runtime/format/README.md`). Reading goes through `runtime.loader`, the same validating decoder
the runtime uses, and rebuilds `ir.Graph`s whose constants are read-only views of the file.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import flatbuffers
import numpy as np

from ir.graph import Graph, Op, Region, Value, input_names
from ir.types import TensorType
from runtime import format as F
from runtime import loader, pytree
from runtime.format.castml_fb import Attr, Dim, Entry, KeyValue, Model, Tensor
from runtime.format.castml_fb import Graph as FbGraph
from runtime.format.castml_fb import Op as FbOp
from runtime.format.castml_fb import Region as FbRegion
from runtime.format.castml_fb import Value as FbValue

from .atomic import write_atomic
from .errors import ExportError

Graphs = Graph | dict[str, Graph]


def _entries(graphs: Graphs) -> dict[str, Graph]:
    if isinstance(graphs, Graph):
        return {"main": graphs}
    if not isinstance(graphs, dict) or not graphs:
        raise ExportError(f"expected an ir.Graph or a non-empty dict of entry name -> ir.Graph, got {graphs!r:.80}")
    for name, g in graphs.items():
        if not isinstance(name, str) or not name:
            raise ExportError(f"entry names must be non-empty strings, got {name!r}")
        if not isinstance(g, Graph):
            raise ExportError(f"entry {name!r}: expected an ir.Graph, got {type(g).__name__}")
    return dict(sorted(graphs.items()))


class _Constants:
    """Tensor attributes, stored once per distinct (dtype, shape, bytes)."""

    def __init__(self):
        self.index: dict[tuple, int] = {}
        self.arrays: list[np.ndarray] = []

    def add(self, a: np.ndarray) -> int:
        a = np.asarray(a)
        if not a.flags.c_contiguous:
            a = a.copy(order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if np.dtype(a.dtype.newbyteorder("=")) not in F.DTYPE_CODES:
            raise ExportError(f"constant of dtype {a.dtype} cannot be stored in .castml")
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self.index:
            self.index[key] = len(self.arrays)
            self.arrays.append(a)
        return self.index[key]

    def layout(self) -> tuple[list[int], int]:
        """Offsets of each buffer in the data region (64-byte aligned) and the region's length."""
        offsets, end = [], 0
        for a in self.arrays:
            start = F.align(end)
            offsets.append(start)
            end = start + a.nbytes
        return offsets, end


class _GraphNumbering:
    """Values numbered in definition order and regions in discovery order (region 0 = body)."""

    def __init__(self, g: Graph):
        self.ids: dict[int, int] = {}
        self.values: list[Value] = []
        self.regions: list[Region] = [g]
        for v in g.inputs:
            self.define(v)
        i = 0
        while i < len(self.regions):  # breadth first: a nested region's index exceeds its parent's
            r = self.regions[i]
            if i:
                for v in r.inputs:
                    self.define(v)
            for op in r.ops:
                self.regions.extend(op.regions)
                for v in op.outputs:
                    self.define(v)
            i += 1
        self.region_index = {id(r): k for k, r in enumerate(self.regions)}

    def define(self, v: Value) -> None:
        if id(v) in self.ids:
            raise ExportError(f"value {v!r} is defined twice")
        self.ids[id(v)] = len(self.values)
        self.values.append(v)

    def __call__(self, v: Value) -> int:
        try:
            return self.ids[id(v)]
        except KeyError:
            raise ExportError(f"value {v!r} is used but never defined in the graph") from None


class _Writer:
    def __init__(self):
        self.b = flatbuffers.Builder(4096)
        self.b.ForceDefaults(True)  # fixed table sizes, so the two-pass layout is stable
        self.constants = _Constants()

    # -- small helpers -------------------------------------------------------------------------
    def strings(self, items: list[str]) -> int:
        offs = [self.b.CreateString(s) for s in items]
        return self.table_vector(offs)

    def table_vector(self, offs: list[int]) -> int:
        self.b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            self.b.PrependUOffsetTRelative(o)
        return self.b.EndVector()

    def numbers(self, items, kind: str) -> int:
        try:
            arr = np.asarray(list(items), {"u32": np.uint32, "i64": np.int64, "f64": np.float64}[kind])
        except OverflowError:
            raise ExportError(f"a value of {list(items)!r:.120} does not fit the file's {kind} field") from None
        return self.b.CreateNumpyVector(arr)

    def dims(self, shape: tuple) -> int:
        offs = []
        for d in shape:
            if isinstance(d, int) and not -(2**63) <= d < 2**63:  # (an imported shape can overflow)
                raise ExportError(f"dim {d} of shape {shape} does not fit in 64 bits")
            expr = self.b.CreateString(d) if isinstance(d, str) else None
            Dim.Start(self.b)
            Dim.AddSize(self.b, d if isinstance(d, int) else 0)
            if expr is not None:
                Dim.AddExpr(self.b, expr)
            offs.append(Dim.End(self.b))
        return self.table_vector(offs)

    # -- graph pieces --------------------------------------------------------------------------
    def attr(self, name: str, v: Any, where: str) -> int:
        b = self.b
        name_off = b.CreateString(name)
        fields: dict[str, Any] = {}
        if isinstance(v, (bool, np.bool_)):
            kind, fields["i"] = F.AttrKind.BOOL, int(v)
        elif isinstance(v, (int, np.integer)):
            kind, fields["i"] = F.AttrKind.INT, int(v)
        elif isinstance(v, (float, np.floating)):
            kind, fields["f"] = F.AttrKind.FLOAT, float(v)
        elif isinstance(v, str):
            kind, fields["s"] = F.AttrKind.STR, b.CreateString(v)
        elif isinstance(v, np.dtype):
            kind, fields["dtype"] = F.AttrKind.DTYPE, _dtype_code(v, where)
        elif isinstance(v, np.ndarray):
            kind, fields["tensor"] = F.AttrKind.TENSOR, self.constants.add(v)
        elif isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            kind, fields["ints"] = F.AttrKind.INTS, self.numbers(v, "i64")
        elif isinstance(v, tuple) and all(isinstance(x, float) for x in v):
            kind, fields["floats"] = F.AttrKind.FLOATS, self.numbers(v, "f64")
        elif isinstance(v, tuple) and all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in v):
            kind, fields["dims"] = F.AttrKind.DIMS, self.dims(v)
        else:
            raise ExportError(f"{where}: attribute {name!r} = {v!r:.60} has no .castml encoding")
        Attr.Start(b)
        Attr.AddName(b, name_off)
        Attr.AddKind(b, kind)
        adders = {"i": Attr.AddI, "f": Attr.AddF, "s": Attr.AddS, "dtype": Attr.AddDtype, "ints": Attr.AddInts,
                  "floats": Attr.AddFloats, "dims": Attr.AddDims, "tensor": Attr.AddTensor}
        for key, val in fields.items():
            adders[key](b, val)
        return Attr.End(b)

    def op(self, op: Op, num: _GraphNumbering) -> int:
        b = self.b
        where = f"op {op.kind}" + (f" ({op.loc})" if op.loc else "")
        kind = b.CreateString(op.kind)
        ins = self.numbers([num(v) for v in op.inputs], "u32")
        outs = self.numbers([num(v) for v in op.outputs], "u32")
        attrs = self.table_vector([self.attr(k, op.attrs[k], where) for k in sorted(op.attrs)])
        regions = self.numbers([num.region_index[id(r)] for r in op.regions], "u32")
        loc = b.CreateString(op.loc) if op.loc else None
        FbOp.Start(b)
        FbOp.AddKind(b, kind)
        FbOp.AddInputs(b, ins)
        FbOp.AddOutputs(b, outs)
        FbOp.AddAttrs(b, attrs)
        FbOp.AddRegions(b, regions)
        if loc is not None:
            FbOp.AddLoc(b, loc)
        return FbOp.End(b)

    def region(self, r: Region, num: _GraphNumbering) -> int:
        ins = self.numbers([num(v) for v in r.inputs], "u32")
        ops = self.table_vector([self.op(op, num) for op in r.ops])
        outs = self.numbers([num(v) for v in r.outputs], "u32")
        FbRegion.Start(self.b)
        FbRegion.AddInputs(self.b, ins)
        FbRegion.AddOps(self.b, ops)
        FbRegion.AddOutputs(self.b, outs)
        return FbRegion.End(self.b)

    def value(self, v: Value) -> int:
        name = self.b.CreateString(v.name) if v.name else None
        shape = self.dims(v.type.shape)
        FbValue.Start(self.b)
        if name is not None:
            FbValue.AddName(self.b, name)
        FbValue.AddDtype(self.b, _dtype_code(v.type.dtype, repr(v)))
        FbValue.AddShape(self.b, shape)
        return FbValue.End(self.b)

    def graph(self, g: Graph) -> int:
        b = self.b
        num = _GraphNumbering(g)
        values = self.table_vector([self.value(v) for v in num.values])
        regions = self.table_vector([self.region(r, num) for r in num.regions])
        in_tree = b.CreateString(pytree.treedef_to_json(g.in_tree))
        out_tree = b.CreateString(pytree.treedef_to_json(g.out_tree))
        arg_names = self.strings(list(g.arg_names))
        in_names = self.strings(input_names(g))
        out_names = self.strings(g.output_names)
        meta = []
        for key in sorted(g.metadata):
            k, v = b.CreateString(str(key)), b.CreateString(str(g.metadata[key]))
            KeyValue.Start(b)
            KeyValue.AddKey(b, k)
            KeyValue.AddValue(b, v)
            meta.append(KeyValue.End(b))
        metadata = self.table_vector(meta)
        FbGraph.Start(b)
        FbGraph.AddValues(b, values)
        FbGraph.AddRegions(b, regions)
        FbGraph.AddInTree(b, in_tree)
        FbGraph.AddOutTree(b, out_tree)
        FbGraph.AddArgNames(b, arg_names)
        FbGraph.AddInputNames(b, in_names)
        FbGraph.AddOutputNames(b, out_names)
        FbGraph.AddMetadata(b, metadata)
        return FbGraph.End(b)


def _dtype_code(dtype: np.dtype, where: str) -> int:
    try:
        return F.DTYPE_CODES[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise ExportError(f"{where}: dtype {dtype} cannot be stored in .castml") from None


def _build(graphs: dict[str, Graph], data_offset: int) -> tuple[bytes, _Constants]:
    w = _Writer()
    entries = []
    for name, g in graphs.items():
        graph = w.graph(g)
        name_off = w.b.CreateString(name)
        Entry.Start(w.b)
        Entry.AddName(w.b, name_off)
        Entry.AddGraph(w.b, graph)
        entries.append(Entry.End(w.b))
    entries_vec = w.table_vector(entries)
    offsets, data_length = w.constants.layout()
    tensors = []
    for a, off in zip(w.constants.arrays, offsets):
        shape = w.numbers(a.shape, "i64")
        Tensor.Start(w.b)
        Tensor.AddDtype(w.b, _dtype_code(a.dtype, "constant"))
        Tensor.AddShape(w.b, shape)
        Tensor.AddOffset(w.b, off)
        Tensor.AddLength(w.b, a.nbytes)
        tensors.append(Tensor.End(w.b))
    tensors_vec = w.table_vector(tensors)
    digest = hashlib.sha256()
    for a, off, nxt in zip(w.constants.arrays, offsets, offsets[1:] + [data_length]):
        digest.update(memoryview(a.reshape(-1)).cast("B"))  # reshape: 0-size shapes cannot be cast
        digest.update(bytes(nxt - off - a.nbytes))
    producer = w.b.CreateString(F.PRODUCER)
    data_hash = w.b.CreateString("sha256:" + digest.hexdigest())
    Model.Start(w.b)
    Model.AddFormatVersion(w.b, F.FORMAT_VERSION)
    Model.AddProducer(w.b, producer)
    Model.AddEntries(w.b, entries_vec)
    Model.AddTensors(w.b, tensors_vec)
    Model.AddDataOffset(w.b, data_offset)
    Model.AddDataLength(w.b, data_length)
    Model.AddDataHash(w.b, data_hash)
    w.b.Finish(Model.End(w.b), file_identifier=F.FILE_IDENTIFIER)
    return bytes(w.b.Output()), w.constants


def to_bytes(graphs: Graphs) -> bytes:
    """The `.castml` bytes of one graph (entry "main") or of named entries.

    >>> import tracer
    >>> to_bytes(tracer.trace(lambda x: x * x, 2.0))[4:8]
    b'CSML'
    """
    chunks = list(_chunks(_entries(graphs)))
    return b"".join(chunks)


def _chunks(graphs: dict[str, Graph]):
    """The file as a sequence of byte chunks (no copy of large constants)."""
    table, _ = _build(graphs, 0)
    data_offset = F.align(len(table))
    table, constants = _build(graphs, data_offset)  # same size: every scalar field is written
    if F.align(len(table)) != data_offset:
        raise ExportError("internal error: the table region changed size between layout passes")
    yield table
    yield bytes(data_offset - len(table))
    offsets, _ = constants.layout()
    pos = 0
    for a, off in zip(constants.arrays, offsets):
        yield bytes(off - pos)
        yield memoryview(a.reshape(-1)).cast("B")
        pos = off + a.nbytes


def save_castml(graphs: Graphs, path: str | os.PathLike) -> None:
    """Write `graphs` to `path` atomically (`exporters.atomic`: temp file beside it, fsync, rename).

    >>> import tracer, runtime, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "square.castml")
    >>> save_castml(tracer.trace(lambda x: x * x, 2.0), path)
    >>> float(runtime.load(path).run(3.0))
    9.0
    """
    chunks = list(_chunks(_entries(graphs)))  # built (and checked) before any file is touched; no data copy
    write_atomic(path, chunks)


def load_castml_all(source: Any) -> dict[str, Graph]:
    """Every entry of a `.castml` file (path, bytes or memoryview) as `ir.Graph`s.

    >>> import tracer
    >>> sorted(load_castml_all(to_bytes({"a": tracer.trace(lambda x: -x, 1.0), "b": tracer.trace(abs, 1.0)})))
    ['a', 'b']
    """
    model = loader.load_model(source)
    return {name: _to_graph(gdef, f"entry {name!r}") for name, gdef in model.entries.items()}


def load_castml(source: Any, entry: str | None = None) -> Graph:
    """The graph of entry `entry` (default "main") of a `.castml` file, path or bytes.

    >>> import tracer
    >>> print(load_castml(to_bytes(tracer.trace(lambda x: x * x, 2.0))), end="")
    graph(%x: f64[]) {
      %0: f64[] = mul(%x, %x)
      return %0
    }
    """
    model = loader.load_model(source)
    name = entry or "main"
    if name not in model.entries:
        raise loader.ModelFormatError(f"no entry {name!r} in the model; it has {', '.join(sorted(model.entries))}")
    return _to_graph(model.entries[name], f"entry {name!r}")


def _to_graph(gdef: loader.GraphDef, where: str) -> Graph:
    from ir.errors import VerifyError
    from ir.verify import verify

    values: list[Value | None] = [None] * len(gdef.values)

    def val(i: int) -> Value:
        return values[i]

    def region(k: int) -> tuple[list[Value], list[Op], list[Value]]:
        rdef = gdef.regions[k]
        ins = []
        for i in rdef.inputs:
            vd = gdef.values[i]
            values[i] = Value(TensorType(vd.dtype, vd.shape), vd.name or None)
            ins.append(values[i])
        ops = []
        for od in rdef.ops:
            subs = [Region(*region(j)) for j in od.regions]
            types = [TensorType(gdef.values[i].dtype, gdef.values[i].shape) for i in od.outputs]
            op = Op(od.kind, [val(i) for i in od.inputs], od.attrs, subs, od.loc, output_types=types)
            for i, v in zip(od.outputs, op.outputs):
                v.name = gdef.values[i].name or None
                values[i] = v
            ops.append(op)
        return ins, ops, [val(i) for i in rdef.outputs]

    ins, ops, outs = region(0)
    g = Graph(ins, ops, outs, in_tree=gdef.in_tree, out_tree=gdef.out_tree, arg_names=gdef.arg_names,
              metadata=gdef.metadata)
    try:
        verify(g)
    except VerifyError as e:
        raise loader.ModelFormatError(f"{where}: the stored graph does not verify: {e}") from None
    return g
