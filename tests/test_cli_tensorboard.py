"""`castml viz m.castml -o g.html --tensorboard LOGDIR`: the graph as a TensorBoard event file.

The event file is read back by hand (TFRecord framing with its masked CRC32C, then tensorboardX's
`Event` and `GraphDef` protobufs) and its nodes and edges are checked against the IR text that
`castml inspect --ir` prints: op `%N = KIND(...)` must be node `KIND_N`, fed by the nodes of its
operands, with the value's shape and dtype in `_output_shapes` / `_output_types`.
"""

from __future__ import annotations

import os
import re
import struct
import textwrap
from collections import Counter

import numpy as np
import pytest

from tests.test_cli import ROOT, castml

tb_proto = pytest.importorskip("tensorboardX.proto.event_pb2", reason="tensorboardX is in the train extra")

MODEL_PY = textwrap.dedent("""
    import numpy as np
    import tracer

    def predict(x, params):
        h = np.maximum(x @ params["fc1"]["w"] + params["fc1"]["b"], 0.0)
        return h.sum(axis=1), h.astype(np.int64)

    @tracer.script
    def branchy(x):
        if x.sum() > 0:
            y = np.exp(x)
        else:
            y = -x
        return y * 2.0
""")

OP_LINE = re.compile(r"^\s*%(\w+): (\S+) = (\w+)(?:\[.*\])?\((.*?)\)(?: regions \{)?(?:  # .*)?$")
IO_OPS = {"input", "output", "region_input", "yield"}


def read_records(path: str) -> list[bytes]:
    """The payloads of a TFRecord file, checking both masked CRC32Cs of every record."""
    from tensorboardX.crc32c import crc32c

    def masked(data: bytes) -> int:
        x = crc32c(data) & 0xFFFFFFFF
        return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    with open(path, "rb") as f:
        raw = f.read()
    out, at = [], 0
    while at < len(raw):
        header = raw[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", raw[at + 8:at + 12])
        assert crc == masked(header), f"bad length CRC at byte {at}"
        data = raw[at + 12:at + 12 + length]
        (crc,) = struct.unpack("<I", raw[at + 12 + length:at + 16 + length])
        assert len(data) == length and crc == masked(data), f"bad data CRC at byte {at}"
        out.append(data)
        at += 16 + length
    return out


def read_graph(logdir: str):
    """(the GraphDef, the event file's name) of the single event file in `logdir`."""
    from tensorboardX.proto import event_pb2, graph_pb2

    files = [f for f in os.listdir(logdir) if "tfevents" in f]
    assert len(files) == 1 and not files[0].startswith("."), files
    events = [event_pb2.Event.FromString(r) for r in read_records(os.path.join(logdir, files[0]))]
    assert events[0].file_version == "brain.Event:2"
    graphs = [e.graph_def for e in events if e.HasField("graph_def")]
    assert len(graphs) == 1
    return graph_pb2.GraphDef.FromString(graphs[0]), files[0]


def ir_ops(ir_text: str) -> list[tuple[str, str, str, list[str]]]:
    """(number, type text, kind, operand names) of every op line of the IR text."""
    ops = []
    for line in ir_text.splitlines():
        m = OP_LINE.match(line)
        if m:
            operands = [a.strip().lstrip("%") for a in m.group(4).split(",") if a.strip()]
            ops.append((m.group(1), m.group(2), m.group(3), operands))
    return ops


def check_against_ir(gd, ir_text: str, input_names: dict[str, str]) -> dict:
    """Every IR op is a node named after its number, fed by its operands' nodes; returns nodes by name."""
    nodes = {n.name: n for n in gd.node}
    assert len(nodes) == len(gd.node), "node names are unique"
    by_number = {}
    for number, _, kind, _ in ir_ops(ir_text):
        (name,) = [k for k in nodes if k.split("/")[-1] == f"{kind}_{number}" or k.endswith(f"{kind}_{number}/{kind}")]
        by_number[number] = name
    for number, type_text, kind, operands in ir_ops(ir_text):
        node = nodes[by_number[number]]
        assert node.op == kind
        fed_by = [input_names.get(a, by_number.get(a)) for a in operands]
        assert list(node.input)[:len(operands)] == fed_by, (node.name, list(node.input), operands)
        assert node.attr["type"].s.decode() == type_text
    for node in gd.node:  # every edge ends at an existing node
        for src in node.input:
            assert src.split(":")[0] in nodes, (node.name, src)
    return nodes


@pytest.fixture
def work(tmp_path):
    (tmp_path / "model.py").write_text(MODEL_PY)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "p.npz", **{"fc1.w": rng.standard_normal((4, 3)).astype(np.float32),
                                    "fc1.b": rng.standard_normal(3).astype(np.float32)})
    return tmp_path


def test_tensorboard_graph_of_a_model_with_regions_matches_the_ir(work):
    castml("trace", "model.py:branchy", "-o", "b.castml", "--input", "x=f32[3]", cwd=str(work))
    proc = castml("viz", "b.castml", "-o", "b.html", "--tensorboard", "runs", cwd=str(work))
    assert "wrote b.html" in proc.stdout and "tensorboard --logdir runs" in proc.stdout
    assert (work / "b.html").exists()
    gd, name = read_graph(str(work / "runs"))
    assert name in proc.stdout
    import json

    ir_text = json.loads(castml("inspect", "b.castml", "--json", "--ir", cwd=str(work)).stdout)["entries"]["main"]["ir"]
    nodes = check_against_ir(gd, ir_text, {"x": "x"})
    import exporters

    g = exporters.load(str(work / "b.castml"))
    assert Counter(n.op for n in gd.node if n.op not in IO_OPS) == Counter(op.kind for op in g.walk())
    assert len(ir_ops(ir_text)) == sum(1 for _ in g.walk()) == 8  # every op line was checked
    # the if's regions are name scopes under the op; their results feed it, after the condition
    assert list(nodes["if_3/if"].input) == ["greater_2", "if_3/region_0/yield_0", "if_3/region_1/yield_0"]
    assert list(nodes["if_3/region_0/yield_0"].input) == ["if_3/region_0/exp_4"]
    assert list(nodes["if_3/region_1/yield_0"].input) == ["if_3/region_1/neg_5"]
    assert list(nodes["output"].input) == ["mul_7"] and nodes["output"].op == "output"
    assert nodes["x"].op == "input" and list(nodes["x"].input) == []
    shape = nodes["if_3/region_0/exp_4"].attr["_output_shapes"].list.shape[0]
    assert [d.size for d in shape.dim] == [3]
    from tensorboardX.proto import types_pb2

    assert list(nodes["mul_7"].attr["_output_types"].list.type) == [types_pb2.DT_FLOAT]
    assert nodes["reduce_sum_0"].attr["keepdims"].b is False
    assert list(nodes["reduce_sum_0"].attr["axes"].list.i) == [0]
    assert nodes["if_3/region_0/exp_4"].attr["loc"].s.decode().startswith("model.py:")


def test_tensorboard_graph_keeps_symbolic_shapes_pytree_inputs_and_several_outputs(work):
    castml("trace", "model.py:predict", "-o", "p.castml", "--input", "x=f32[batch,4]", "--input", "params=p.npz",
           cwd=str(work))
    castml("viz", "p.castml", "-o", "p.html", "--tensorboard", "logs", cwd=str(work))
    gd, _ = read_graph(str(work / "logs"))
    import exporters

    g = exporters.load(str(work / "p.castml"))
    leaves = ["x", "params.fc1.w", "params.fc1.b"]
    nodes = check_against_ir(gd, g.to_text(), {v.name: leaf for v, leaf in zip(g.inputs, leaves)})
    assert [n.name for n in gd.node if n.op == "input"] == leaves
    assert len(ir_ops(g.to_text())) == sum(1 for _ in g.walk())
    assert Counter(n.op for n in gd.node if n.op not in IO_OPS) == Counter(op.kind for op in g.walk())
    outs = [n for n in gd.node if n.op == "output"]
    assert [n.name for n in outs] == ["output.0", "output.1"]
    from tensorboardX.proto import types_pb2

    assert list(outs[1].attr["_output_types"].list.type) == [types_pb2.DT_INT64]
    (matmul,) = [n for n in nodes.values() if n.op == "matmul"]
    dims = matmul.attr["_output_shapes"].list.shape[0].dim
    assert [(d.size, d.name) for d in dims] == [(-1, "batch"), (3, "")]
    assert matmul.attr["type"].s == b"f32[batch,3]"
    assert list(matmul.input) == ["x", "params.fc1.w"]


def test_tensorboard_missing_says_how_to_install_it(work):
    castml("trace", "model.py:branchy", "-o", "b.castml", "--input", "x=f32[3]", cwd=str(work))
    fake = work / "no_tensorboardx"
    (fake / "tensorboardX").mkdir(parents=True)
    (fake / "tensorboardX" / "__init__.py").write_text("raise ImportError('No module named tensorboardX')\n")
    proc = castml("viz", "b.castml", "-o", "b.html", "--tensorboard", "runs", cwd=str(work), ok=False,
                  env={"PYTHONPATH": f"{fake}{os.pathsep}{ROOT}"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "tensorboardX" in lines[0] and "pip install 'castml[train]'" in lines[0], lines
    assert not (work / "b.html").exists() and not (work / "runs").exists()
