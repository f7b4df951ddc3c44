"""Validate and decode a `.castml` buffer into plain Python definitions, then into executor specs.

Nothing is trusted: the FlatBuffer structure is verified first (`format.verifier`), then every
field is checked before use — dtype codes, ranks, dims, shape products, buffer offsets and
lengths, value indices (in range, defined once, defined before use, visible in the region),
op kinds, region references and nesting, pytree structures. Every failure is a
`ModelFormatError` naming the field; tensor data stays a read-only view of the file (an mmap).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import dims as D
from . import format as F
from . import limits as L
from . import pytree
from .errors import ModelFormatError
from .executor import ProgramSpec, StepSpec, TypeSpec
from .format.castml_fb.Model import Model
from .format.verifier import verify_buffer
from .format_names import short_dtype

MAX_DIM_EXPR = 256  # characters in one symbolic dim expression


@dataclass
class ValueDef:
    """One value: name ("" when unnamed), dtype and shape (ints and canonical dim strings)."""

    name: str
    dtype: np.dtype
    shape: tuple


@dataclass
class OpDef:
    """One op: kind, value indices, decoded attributes, region indices, source location."""

    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    attrs: dict[str, Any]
    regions: tuple[int, ...]
    loc: str | None


@dataclass
class RegionDef:
    """A list of ops with input and output value indices."""

    inputs: tuple[int, ...]
    ops: list[OpDef]
    outputs: tuple[int, ...]


@dataclass
class GraphDef:
    """One entry point: values, regions (0 is the body) and the Python signature."""

    values: list[ValueDef]
    regions: list[RegionDef]
    in_tree: pytree.TreeDef
    out_tree: pytree.TreeDef
    arg_names: list[str]
    input_names: list[str]
    output_names: list[str]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelDef:
    """A decoded file: its entries by name, and what keeps the file's memory alive."""

    format_version: int
    producer: str
    entries: dict[str, GraphDef]
    data_hash: str
    buffer: Any  # the mmap/memoryview the constants view


def open_source(source: Any) -> memoryview:
    """A read-only byte view of a path (memory-mapped), bytes, bytearray or memoryview.

    >>> open_source(b"abc").readonly
    True
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ModelFormatError(f"{os.fspath(source)}: the file is empty")
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        if not view.c_contiguous:
            raise ModelFormatError("the model buffer must be contiguous")
        return view.cast("B").toreadonly()
    raise TypeError(f"expected a path, bytes or memoryview, got {type(source).__name__}")


class _Decoder:
    """Decodes one verified buffer; `where` names the field being read, for error messages."""

    def __init__(self, buf: memoryview, known_ops: frozenset[str] | None):
        self.buf = buf
        self.known_ops = known_ops
        self.where = "Model"
        self.tensors: list[np.ndarray] = []
        self.op_count = 0

    def fail(self, what: str) -> None:
        raise ModelFormatError(f"{self.where}: {what}")

    def text(self, raw: bytes | None, required: bool = False) -> str:
        if raw is None:
            if required:
                self.fail("missing")
            return ""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"not valid UTF-8 ({e.reason} at byte {e.start})")

    def dtype(self, code: int) -> np.dtype:
        try:
            return F.DTYPES_BY_CODE[code]
        except KeyError:
            self.fail(f"unknown dtype code {code}; known: {sorted(F.DTYPES_BY_CODE)}")

    def dim(self, d, signed: bool = False) -> int | str:
        expr = d.Expr()
        if expr is None:
            size = d.Size()
            if size < 0 and not signed:  # (dims attributes hold slice bounds: -1 is a valid stop)
                self.fail(f"dim {size} is negative")
            return size
        text = self.text(expr)
        if not text or len(text) > MAX_DIM_EXPR:
            self.fail(f"dim expression must have 1..{MAX_DIM_EXPR} characters, got {len(text)}")
        try:
            canon = D.parse_dim(text)
        except (D.DimError, RecursionError) as e:
            self.fail(f"bad dim expression {text!r:.80}: {e}")
        if canon != text:
            self.fail(f"dim expression {text!r} is not canonical (expected {canon!r})")
        return canon

    def shape(self, n: int, get) -> tuple:
        if n > L.current().max_rank:
            self.fail(f"rank {n} exceeds the maximum {L.current().max_rank} ({L.how_to_raise('max_rank')})")
        base = self.where
        out = []
        for j in range(n):
            self.where = f"{base}[{j}]"
            out.append(self.dim(get(j)))
        self.where = base
        return tuple(out)

    # -- model level ---------------------------------------------------------------------------
    def model(self, verify_hash: bool) -> ModelDef:
        buf = self.buf
        size = len(buf)
        if size > L.current().max_file_bytes:
            raise ModelFormatError(f"the model is {size} bytes, more than max_file_bytes = "
                                   f"{L.current().max_file_bytes} ({L.how_to_raise('max_file_bytes')})")
        if size < 8 or bytes(buf[4:8]) != F.FILE_IDENTIFIER:
            got = bytes(buf[4:8]) if size >= 8 else bytes(buf[:8])
            raise ModelFormatError(f"file identifier (offset 4): expected {F.FILE_IDENTIFIER!r}, got {got!r}"
                                   " - not a .castml file")
        verify_buffer(buf, size)
        m = Model.GetRootAs(buf, 0)
        version = m.FormatVersion()
        if version not in F.READABLE_VERSIONS:
            raise ModelFormatError(f"Model.format_version: this loader reads versions "
                                   f"{sorted(F.READABLE_VERSIONS)}, the file has {version}")
        data_offset, data_length = m.DataOffset(), m.DataLength()
        if data_offset % F.ALIGNMENT or not 8 <= data_offset <= size:
            raise ModelFormatError(f"Model.data_offset: {data_offset} must be a multiple of {F.ALIGNMENT} "
                                   f"within the file ({size} bytes)")
        if data_offset + data_length != size:
            raise ModelFormatError(f"Model.data_length: data region {data_offset}+{data_length} does not end "
                                   f"at the end of the file ({size} bytes; truncated or padded?)")
        self.where = "Model.data_hash"
        data_hash = self.text(m.DataHash())
        if verify_hash:
            got = "sha256:" + hashlib.sha256(buf[data_offset:size]).hexdigest()
            if got != data_hash:
                raise ModelFormatError(f"Model.data_hash: the tensor data does not match the stored hash "
                                       f"(stored {data_hash!r:.80}, computed {got!r}); the file is corrupt")
        self.where = "Model.producer"
        producer = self.text(m.Producer())
        spans = []
        for t in range(m.TensorsLength()):
            self.where = f"Model.tensors[{t}]"
            self.tensors.append(self.tensor(m.Tensors(t), data_offset, data_length))
            if self.tensors[-1].nbytes:
                spans.append((m.Tensors(t).Offset(), m.Tensors(t).Length(), t))
        spans.sort()
        for (o1, n1, t1), (o2, _, t2) in zip(spans, spans[1:]):
            if o2 < o1 + n1:  # the writer stores each distinct constant once, in its own buffer
                raise ModelFormatError(f"Model.tensors[{t2}]: buffer at {o2} overlaps Model.tensors[{t1}] "
                                       f"({o1}+{n1})")
        entries: dict[str, GraphDef] = {}
        for e in range(m.EntriesLength()):
            self.where = f"Model.entries[{e}].name"
            ent = m.Entries(e)
            name = self.text(ent.Name(), required=True)
            if not name or name in entries:
                self.fail(f"entry name {name!r} is empty or repeated")
            if ent.Graph() is None:
                raise ModelFormatError(f"Model.entries[{e}].graph: missing")
            entries[name] = self.graph(ent.Graph(), f"Model.entries[{e}].graph")
        if not entries:
            raise ModelFormatError("Model.entries: the model has no entry points")
        return ModelDef(version, producer, entries, data_hash, buf)

    def tensor(self, t, data_offset: int, data_length: int) -> np.ndarray:
        dtype = self.dtype(t.Dtype())
        n = t.ShapeLength()
        if n > L.current().max_rank:
            self.fail(f"rank {n} exceeds the maximum {L.current().max_rank} ({L.how_to_raise('max_rank')})")
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if n else ()
        count = 1
        for d in shape:
            if d < 0:
                self.fail(f"shape {shape} has a negative dim")
            count *= d
            if count > F.INT64_MAX:
                self.fail(f"shape {shape} has more than 2**63-1 elements")
        offset, length = t.Offset(), t.Length()
        if count * dtype.itemsize != length:
            self.fail(f"length {length} != {count} elements x {dtype.itemsize} bytes for shape {shape}")
        if offset % F.ALIGNMENT:
            self.fail(f"offset {offset} is not a multiple of {F.ALIGNMENT}")
        if offset + length > data_length:
            self.fail(f"buffer {offset}+{length} runs past the data region ({data_length} bytes)")
        if sys.byteorder == "little":
            return np.frombuffer(self.buf, dtype, count, data_offset + offset).reshape(shape)
        stored = F.FILE_DTYPES_BY_CODE[t.Dtype()]  # big-endian hosts swap bytes into a copy
        return np.frombuffer(self.buf, stored, count, data_offset + offset).astype(dtype).reshape(shape)

    # -- graphs ----------------------------------------------------------------------------------
    def graph(self, g, where: str) -> GraphDef:
        values = []
        for i in range(g.ValuesLength()):
            self.where = f"{where}.values[{i}]"
            v = g.Values(i)
            name = self.text(v.Name())
            dtype = self.dtype(v.Dtype())
            self.where = f"{where}.values[{i}].shape"
            values.append(ValueDef(name, dtype, self.shape(v.ShapeLength(), v.Shape)))
        gd = GraphDef(values, [], pytree.LEAF, pytree.LEAF, [], [], [])
        n_regions = g.RegionsLength()
        if n_regions == 0:
            raise ModelFormatError(f"{where}.regions: missing (region 0 is the graph body)")
        gd.regions = [self.region(g.Regions(k), f"{where}.regions[{k}]", len(values)) for k in range(n_regions)]
        _Scopes(self, gd, where).check()
        self.where = f"{where}.in_tree"
        gd.in_tree = self.tree(g.InTree(), len(gd.regions[0].inputs), "inputs")
        self.where = f"{where}.out_tree"
        gd.out_tree = self.tree(g.OutTree(), len(gd.regions[0].outputs), "outputs")
        gd.arg_names = self.names(g.ArgNamesLength(), g.ArgNames, f"{where}.arg_names")
        gd.input_names = self.names(g.InputNamesLength(), g.InputNames, f"{where}.input_names")
        gd.output_names = self.names(g.OutputNamesLength(), g.OutputNames, f"{where}.output_names")
        n_args = len(gd.in_tree[1]) if gd.in_tree[0] == "tuple" else -1
        if n_args != len(gd.arg_names):
            raise ModelFormatError(f"{where}.arg_names: {len(gd.arg_names)} names for an argument tuple of "
                                   f"{n_args} (in_tree {gd.in_tree})")
        for label, names, n in (("input_names", gd.input_names, len(gd.regions[0].inputs)),
                                ("output_names", gd.output_names, len(gd.regions[0].outputs))):
            if len(names) != n:
                raise ModelFormatError(f"{where}.{label}: {len(names)} names for {n} values")
        for k in range(g.MetadataLength()):
            self.where = f"{where}.metadata[{k}]"
            kv = g.Metadata(k)
            gd.metadata[self.text(kv.Key(), required=True)] = self.text(kv.Value())
        return gd

    def names(self, n: int, get, where: str) -> list[str]:
        out = []
        for j in range(n):
            self.where = f"{where}[{j}]"
            out.append(self.text(get(j), required=True))
        return out

    def tree(self, raw: bytes | None, leaves: int, what: str) -> pytree.TreeDef:
        text = self.text(raw, required=True)
        try:
            tree = pytree.treedef_from_json(text)
        except (ValueError, RecursionError, TypeError) as e:
            self.fail(f"malformed pytree structure: {e}")
        if pytree.num_leaves(tree) != leaves:
            self.fail(f"structure has {pytree.num_leaves(tree)} leaves but the graph has {leaves} {what}")
        return tree

    def indices(self, n: int, get_np, num_values: int, what: str) -> tuple[int, ...]:
        if n == 0:
            return ()
        idx = get_np()
        if int(idx.max()) >= num_values:
            bad = int(idx[idx >= num_values][0])
            self.fail(f"{what} index {bad} is out of range ({num_values} values)")
        return tuple(int(i) for i in idx)

    def region(self, r, where: str, num_values: int) -> RegionDef:
        self.where = f"{where}.inputs"
        ins = self.indices(r.InputsLength(), r.InputsAsNumpy, num_values, "value")
        ops = []
        n_ops = r.OpsLength()
        self.op_count += n_ops
        if self.op_count > L.current().max_ops:
            raise ModelFormatError(f"{where}.ops: more than {L.current().max_ops} ops in the model "
                                   f"({L.how_to_raise('max_ops')})")
        for j in range(n_ops):
            ops.append(self.op(r.Ops(j), f"{where}.ops[{j}]", num_values))
        self.where = f"{where}.outputs"
        outs = self.indices(r.OutputsLength(), r.OutputsAsNumpy, num_values, "value")
        return RegionDef(ins, ops, outs)

    def op(self, o, where: str, num_values: int) -> OpDef:
        self.where = f"{where}.kind"
        kind = self.text(o.Kind(), required=True)
        if self.known_ops is not None and kind not in self.known_ops:
            self.fail(f"unknown op kind {kind!r:.80} (no kernel in this runtime)")
        self.where = f"{where}.inputs"
        ins = self.indices(o.InputsLength(), o.InputsAsNumpy, num_values, "value")
        self.where = f"{where}.outputs"
        outs = self.indices(o.OutputsLength(), o.OutputsAsNumpy, num_values, "value")
        self.where = f"{where}.regions"
        regions = self.indices(o.RegionsLength(), o.RegionsAsNumpy, 2**32, "region")
        attrs: dict[str, Any] = {}
        for a in range(o.AttrsLength()):
            self.where = f"{where}.attrs[{a}]"
            name, value = self.attr(o.Attrs(a))
            if name in attrs:
                self.fail(f"attribute {name!r} is repeated")
            attrs[name] = value
        self.where = f"{where}.loc"
        loc = self.text(o.Loc()) or None
        return OpDef(kind, ins, outs, attrs, regions, loc)

    def attr(self, a) -> tuple[str, Any]:
        name = self.text(a.Name(), required=True)
        if not name:
            self.fail("attribute name is empty")
        kind = F.ATTR_KIND_NAMES.get(a.Kind())
        self.where += f" ({name})"
        if kind is None:
            self.fail(f"unknown attribute kind code {a.Kind()}")
        if kind == "int":
            return name, int(a.I())
        if kind == "float":
            return name, float(a.F())
        if kind == "bool":
            if a.I() not in (0, 1):
                self.fail(f"bool attribute holds {a.I()}")
            return name, bool(a.I())
        if kind == "str":
            return name, self.text(a.S())
        if kind == "dtype":
            return name, self.dtype(a.Dtype())
        if kind == "ints":
            return name, tuple(int(x) for x in a.IntsAsNumpy()) if a.IntsLength() else ()
        if kind == "floats":
            return name, tuple(float(x) for x in a.FloatsAsNumpy()) if a.FloatsLength() else ()
        if kind == "dims":
            return name, tuple(self.dim(a.Dims(j), signed=True) for j in range(a.DimsLength()))
        index = a.Tensor()
        if index >= len(self.tensors):
            self.fail(f"tensor index {index} is out of range ({len(self.tensors)} tensors)")
        return name, self.tensors[index]


class _Scopes:
    """Checks SSA and scoping: each value defined once, used only where visible and after its
    definition; each region other than the body used by exactly one op of an earlier region,
    nested at most `limits.max_region_depth` deep."""

    def __init__(self, dec: _Decoder, gd: GraphDef, where: str):
        self.dec, self.gd, self.where = dec, gd, where
        self.defined = bytearray(len(gd.values))
        self.visible = bytearray(len(gd.values))
        self.region_used = bytearray(len(gd.regions))

    def fail(self, where: str, what: str) -> None:
        raise ModelFormatError(f"{self.where}.{where}: {what}")

    def define(self, v: int, where: str) -> None:
        if self.defined[v]:
            self.fail(where, f"value {v} is defined twice")
        self.defined[v] = self.visible[v] = 1

    def use(self, v: int, where: str) -> None:
        if not self.visible[v]:
            why = "is used outside its region" if self.defined[v] else "is used before it is defined"
            self.fail(where, f"value {v} {why}")

    def check(self) -> None:
        self.region_used[0] = 1
        self.walk(0, 0)
        unused = [k for k, used in enumerate(self.region_used) if not used]
        if unused:
            self.fail(f"regions[{unused[0]}]", "region is not referenced by any op")

    def walk(self, k: int, depth: int) -> None:
        if depth > L.current().max_region_depth:
            self.fail(f"regions[{k}]", f"regions nest deeper than {L.current().max_region_depth} "
                                       f"({L.how_to_raise('max_region_depth')})")
        r = self.gd.regions[k]
        where = f"regions[{k}]"
        local: list[int] = []
        for v in r.inputs:
            self.define(v, f"{where}.inputs")
            local.append(v)
        for j, op in enumerate(r.ops):
            ow = f"{where}.ops[{j}]"
            for v in op.inputs:
                self.use(v, f"{ow}.inputs")
            for sub in op.regions:
                if sub <= k or sub >= len(self.gd.regions):
                    self.fail(f"{ow}.regions", f"region {sub} must exist and come after region {k}")
                if self.region_used[sub]:
                    self.fail(f"{ow}.regions", f"region {sub} is used by two ops")
                self.region_used[sub] = 1
                self.walk(sub, depth + 1)
            for v in op.outputs:
                self.define(v, f"{ow}.outputs")
                local.append(v)
        for v in r.outputs:
            self.use(v, f"{where}.outputs")
        if k:  # values of a nested region are not visible after it
            for v in local:
                self.visible[v] = 0


def decode(source: Any, verify: bool = False, known_ops: frozenset[str] | None = None) -> ModelDef:
    """Validate and decode a `.castml` path, bytes or memoryview; raises `ModelFormatError`.

    `verify=True` also checks the tensor data against the stored hash. `known_ops` (kernel
    names) rejects ops this runtime cannot run.

    >>> decode(b"not a model")
    Traceback (most recent call last):
    ...
    runtime.errors.ModelFormatError: file identifier (offset 4): expected b'CSML', got b'a mo' - not a .castml file
    """
    buf = open_source(source)
    dec = _Decoder(buf, known_ops)
    try:
        return dec.model(verify)
    except ModelFormatError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, OverflowError, RecursionError, MemoryError,
            json.JSONDecodeError) as e:  # the verifier should make these impossible; never leak them
        raise ModelFormatError(f"{dec.where}: malformed ({type(e).__name__}: {e})") from None


def load_model(source: Any, verify: bool = False) -> ModelDef:
    """`decode` restricted to ops the runtime has kernels for (what `Session` and exporters use)."""
    from .kernels import KERNELS, REGION_KERNELS

    return decode(source, verify, frozenset(KERNELS) | frozenset(REGION_KERNELS))


def _label(gd: GraphDef, od: OpDef) -> str:
    def name(i: int) -> str:
        return "%" + (gd.values[i].name or str(i))

    outs = ", ".join(f"{name(i)}: {_type_text(gd.values[i])}" for i in od.outputs)
    text = f"{outs} = {od.kind}({', '.join(name(i) for i in od.inputs)})"
    return text + (f"  # {od.loc}" if od.loc else "")


def _type_text(v: ValueDef) -> str:
    return f"{short_dtype(v.dtype)}[{','.join(str(d) for d in v.shape)}]"


def program_spec(gd: GraphDef) -> ProgramSpec:
    """The executor spec of a decoded graph (regions become nested specs).

    >>> import tracer
    >>> from exporters.castml_format import to_bytes
    >>> spec = program_spec(load_model(to_bytes(tracer.trace(lambda x: x * x, 2.0))).entries["main"])
    >>> [s.kind for s in spec.steps]
    ['mul']
    """
    def types(ids) -> list[TypeSpec]:
        return [TypeSpec(gd.values[i].dtype, gd.values[i].shape) for i in ids]

    def region(k: int, names=()) -> ProgramSpec:
        r = gd.regions[k]
        steps = [StepSpec(od.kind, od.inputs, od.outputs, od.attrs, types(od.outputs), _label(gd, od),
                          [region(j) for j in od.regions]) for od in r.ops]
        return ProgramSpec(r.inputs, types(r.inputs), steps, r.outputs, names)

    return region(0, gd.input_names)
