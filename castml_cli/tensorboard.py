"""`castml viz --tensorboard LOGDIR`: a model's graph as a TensorBoard `GraphDef` event file.

TensorBoard's graph view reads a TensorFlow `GraphDef` from an event file, so the IR is mapped
onto one, node for node:

- each op becomes a node named `KIND_N` (`matmul_3`), N being the number of its first output in
  the IR text (`%3` in `castml inspect --ir`); its `op` is the IR op kind; a node's inputs are the
  nodes producing its operands (`NAME:K` for output K > 0), so the edges are the IR's uses;
- graph inputs are `input` nodes named by their pytree path (`params.fc1.w`); results are
  `output` nodes named like `Graph.output_names` (`output`, `output.0`);
- every node carries `_output_shapes` (symbolic dims as size -1 with the symbol as the dim's
  name), `_output_types` (TensorFlow dtypes), `type` (our text, `f32[batch,784]`), `loc` (the
  source line) and the op's attributes (arrays summarized by type);
- the regions of an `If`/`Loop` op become name scopes: the op is the node `KIND_N/KIND`, region I
  lives under `KIND_N/region_I/` with `region_input_J` nodes for its arguments and `yield_J`
  nodes for its results, which feed the op. TensorBoard draws the scope collapsed, as one box.

The file is written with tensorboardX's protobufs and TFRecord writer (the `train` extra), to a
temporary name first and renamed, so TensorBoard never reads half a file.
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Any

import numpy as np

from .common import CliError, type_text

INSTALL_HINT = "pip install 'castml[train]' (or pip install tensorboardX)"
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")
_TF_TYPES = {
    np.dtype(np.float32): "DT_FLOAT", np.dtype(np.float64): "DT_DOUBLE", np.dtype(np.float16): "DT_HALF",
    np.dtype(np.int8): "DT_INT8", np.dtype(np.int16): "DT_INT16", np.dtype(np.int32): "DT_INT32",
    np.dtype(np.int64): "DT_INT64", np.dtype(np.uint8): "DT_UINT8", np.dtype(np.uint16): "DT_UINT16",
    np.dtype(np.bool_): "DT_BOOL",
}  # TensorBoard's DataType has no uint32/uint64: those are DT_INVALID, with `type` saying which


def _protos() -> Any:
    try:
        from tensorboardX.proto import (
            attr_value_pb2,
            event_pb2,
            graph_pb2,
            node_def_pb2,
            tensor_shape_pb2,
            types_pb2,
            versions_pb2,
        )
    except ImportError:
        raise CliError(f"--tensorboard needs tensorboardX, which is not installed; {INSTALL_HINT}") from None
    return attr_value_pb2, event_pb2, graph_pb2, node_def_pb2, tensor_shape_pb2, types_pb2, versions_pb2


def node_name(text: str) -> str:
    """A valid TensorFlow node-name part: other characters become `_`, and it starts with a letter,
    digit or dot.

    >>> node_name("params.fc1.w"), node_name("x:0"), node_name("_tmp")
    ('params.fc1.w', 'x_0', '._tmp')
    """
    name = _BAD_CHARS.sub("_", text) or "_"
    return name if re.match(r"[A-Za-z0-9.]", name) else "." + name


class _Builder:
    """Walks the graph once, numbering values as the IR printer does, and emits NodeDefs."""

    def __init__(self):
        (self.attr_pb, _, self.graph_pb, self.node_pb, self.shape_pb, self.types_pb, self.versions_pb) = _protos()
        self.nodes: list[Any] = []
        self.ref: dict[int, str] = {}  # id(Value) -> "node" or "node:k"
        self.taken: set[str] = set()
        self.count = 0

    def unique(self, name: str) -> str:
        base, k = name, 1
        while name in self.taken:
            name = f"{base}_{k}"
            k += 1
        self.taken.add(name)
        return name

    def number(self) -> int:
        self.count += 1
        return self.count - 1

    def shape(self, t: Any) -> Any:
        dims = [self.shape_pb.TensorShapeProto.Dim(size=d) if isinstance(d, int)
                else self.shape_pb.TensorShapeProto.Dim(size=-1, name=str(d)) for d in t.shape]
        return self.shape_pb.TensorShapeProto(dim=dims)

    def attr(self, value: Any) -> Any:
        """One op attribute as an AttrValue: numbers, bools, strings, int/float lists; else text."""
        A = self.attr_pb.AttrValue
        if isinstance(value, (bool, np.bool_)):
            return A(b=bool(value))
        if isinstance(value, (int, np.integer)):
            return A(i=int(value))
        if isinstance(value, (float, np.floating)):
            return A(f=float(value))
        if isinstance(value, str):
            return A(s=value.encode())
        if isinstance(value, np.ndarray):
            return A(s=f"tensor<{type_text(value.dtype, value.shape)}>".encode())
        if isinstance(value, (tuple, list)) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                    for v in value):
            return A(list=A.ListValue(i=[int(v) for v in value]))
        return A(s=repr(value).encode())

    def add(self, name: str, op: str, inputs: list[str], types: list[Any], extra: dict[str, Any]) -> None:
        A = self.attr_pb.AttrValue
        attrs = {key: self.attr(v) for key, v in extra.items()}
        attrs["_output_shapes"] = A(list=A.ListValue(shape=[self.shape(t) for t in types]))
        attrs["_output_types"] = A(list=A.ListValue(
            type=[self.types_pb.DataType.Value(_TF_TYPES.get(np.dtype(t.dtype), "DT_INVALID")) for t in types]))
        attrs["type"] = A(s=", ".join(type_text(t.dtype, t.shape) for t in types).encode())
        self.nodes.append(self.node_pb.NodeDef(name=name, op=op, input=inputs, attr=attrs))

    def uses(self, values: Any) -> list[str]:
        return [self.ref[id(v)] for v in values]

    def region(self, region: Any, scope: str) -> None:
        for op in region.ops:
            self.op(op, scope)

    def op(self, op: Any, scope: str) -> None:
        numbers = [self.number() for _ in op.outputs]
        base = node_name(f"{op.kind}_{numbers[0]}" if numbers else op.kind)
        extra: dict[str, Any] = dict(op.attrs)
        if op.loc:
            extra["loc"] = op.loc
        inputs = self.uses(op.inputs)
        if op.regions:
            group = self.unique(scope + base)
            yields: list[str] = []
            for i, r in enumerate(op.regions):
                inner = f"{group}/region_{i}/"
                for j, v in enumerate(r.inputs):
                    self.number()
                    arg = self.unique(f"{inner}region_input_{j}")
                    self.add(arg, "region_input", [], [v.type], {})
                    self.ref[id(v)] = arg
                self.region(r, inner)
                for j, v in enumerate(r.outputs):
                    out = self.unique(f"{inner}yield_{j}")
                    self.add(out, "yield", self.uses([v]), [v.type], {})
                    yields.append(out)
            name = self.unique(f"{group}/{node_name(op.kind)}")
            inputs += yields
        else:
            name = self.unique(scope + base)
        self.add(name, op.kind, inputs, [v.type for v in op.outputs], extra)
        for k, v in enumerate(op.outputs):
            self.ref[id(v)] = name if k == 0 else f"{name}:{k}"

    def graph(self, g: Any) -> Any:
        from ir.graph import input_names

        for path, v in zip(input_names(g), g.inputs):
            name = self.unique(node_name(path))
            self.add(name, "input", [], [v.type], {})
            self.ref[id(v)] = name
        self.region(g, "")
        for out_name, v in zip(g.output_names, g.outputs):
            self.add(self.unique(node_name(out_name)), "output", self.uses([v]), [v.type], {})
        return self.graph_pb.GraphDef(node=self.nodes, versions=self.versions_pb.VersionDef(producer=22))


def graph_def(g: Any) -> Any:
    """The TensorBoard `GraphDef` of an `ir.Graph` (see the module docstring for the mapping).

    >>> import tracer
    >>> gd = graph_def(tracer.trace(lambda x: np.exp(x) * 2.0, np.ones(3, np.float32)))
    >>> [(n.name, n.op, list(n.input)) for n in gd.node]  # doctest: +NORMALIZE_WHITESPACE
    [('x', 'input', []), ('exp_0', 'exp', ['x']), ('constant_1', 'constant', []),
     ('mul_2', 'mul', ['exp_0', 'constant_1']), ('output', 'output', ['mul_2'])]
    """
    return _Builder().graph(g)


def write_graph(g: Any, logdir: str, run_name: str) -> str:
    """Write `g`'s GraphDef to a new event file in `logdir` (created); returns the file's path.

    >>> import tracer, tempfile
    >>> path = write_graph(tracer.trace(lambda x: -x, 1.0), tempfile.mkdtemp(), "neg")
    >>> os.path.basename(path).startswith("events.out.tfevents.")
    True
    """
    gd = graph_def(g)
    _, event_pb2, *_ = _protos()
    from tensorboardX.record_writer import RecordWriter

    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise CliError(f"--tensorboard {logdir!r}: expected a folder, found a file")
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    name = f"events.out.tfevents.{int(now)}.{node_name(socket.gethostname())}.{node_name(run_name)}"
    path = os.path.join(logdir, name)
    tmp = os.path.join(logdir, f".{name}.tmp")
    writer = RecordWriter(tmp)
    try:
        writer.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        writer.write(event_pb2.Event(wall_time=now, graph_def=gd.SerializeToString()).SerializeToString())
        writer.flush()
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            writer.close()
            os.unlink(tmp)
    return path
