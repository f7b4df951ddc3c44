"""`castml check` / `exporters.check`: every (op, dtype, opset) a target cannot run, with line and fix.

Zoo models must be clean for every target; planted models (a float64 Conv for onnxruntime-cpu,
ops missing or in a newer form at an old opset, an op castml cannot import) must be listed with
the op, dtype, opset, the line that created them and a fix. Where onnxruntime itself can say so,
the test asks it too: a model the report calls incompatible fails to load or run there.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import exporters
import tracer
from exporters.check import check_file, check_graph, check_onnx, parse_target
from models import zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ["onnxruntime-cpu", "castml", "onnx-opset-13", "onnx-opset-17"]


def ort_runs(model: onnx.ModelProto, feeds: dict) -> bool:
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
        return True
    except Exception:  # noqa: BLE001 - onnxruntime's errors are untyped
        return False


@pytest.fixture(scope="module")
def zoo_graphs():
    out = {}
    for name, mod in zoo.MODELS.items():
        fn, (x, params) = mod.build()
        out[name] = tracer.trace(fn, tracer.TensorSpec(("batch",) + x.shape[1:], x.dtype), params)
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_zoo_models_run_on_every_target(zoo_graphs, target):
    for name, g in zoo_graphs.items():
        report = check_graph(g, target, name)
        assert report.ok, report.format()
        assert report.checked > 5


def test_zoo_model_files(tmp_path, zoo_graphs):
    for suffix in (".onnx", ".castml"):
        path = str(tmp_path / f"lenet{suffix}")
        exporters.save(zoo_graphs["lenet"], path)
        for target in ("onnxruntime-cpu", "castml"):
            report = check_file(path, target)
            assert report.ok, report.format()


def conv64(x, w):
    return tracer.ops.conv2d(x, w)


CONV_LINE = inspect.getsourcelines(conv64)[1] + 1


def test_float64_conv_is_listed_with_line_and_fix():
    g = tracer.trace(conv64, tracer.TensorSpec((1, 1, 5, 5), np.float64), np.ones((1, 1, 3, 3)))
    report = check_graph(g, "onnxruntime-cpu", "conv64")
    assert [(i.op, i.dtype, i.opset) for i in report.issues] == [("Conv", "float64", 18)]
    issue = report.issues[0]
    assert issue.where == f"test_check.py:{CONV_LINE}"
    assert "decomposes Conv" in issue.fix  # (exporting for onnxruntime-cpu rewrites float64 Conv as im2col + MatMul)
    # onnxruntime agrees: the plain export does not load
    x = np.ones((1, 1, 5, 5))
    assert not ort_runs(exporters.to_onnx(g, target=None), {"x": x})
    assert check_graph(g, "castml").ok  # our runtime runs it


def one_node(op_type: str, dtype: int, opset: int, n_in: int = 1, extra=(), **attrs) -> onnx.ModelProto:
    names = [f"i{k}" for k in range(n_in)]
    inits = [numpy_helper.from_array(a, f"c{k}") for k, a in enumerate(extra)]
    node = helper.make_node(op_type, names + [t.name for t in inits], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, dtype, [2, 3]) for n in names],
                              [helper.make_tensor_value_info("y", dtype, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_planted_onnx_models_against_onnxruntime():
    feeds = {"i0": np.ones((2, 3)), "i1": np.ones((2, 3))}
    ok = one_node("Add", TensorProto.DOUBLE, 18, 2)
    assert check_onnx(ok, "onnxruntime-cpu").ok and ort_runs(ok, feeds)
    bad = one_node("Erf", TensorProto.DOUBLE, 18)
    report = check_onnx(bad, "onnxruntime-cpu")
    assert [(i.op, i.dtype, i.opset) for i in report.issues] == [("Erf", "float64", 18)]
    assert "node 0 (Erf -> y)" in report.issues[0].where
    assert not ort_runs(bad, {"i0": feeds["i0"]})
    # variant keys: Mod with fmod=1 is probed on its own
    fmod = one_node("Mod", TensorProto.INT8, 18, 2, fmod=1)
    assert check_onnx(fmod, "onnxruntime-cpu").ok == ort_runs(fmod, {k: v.astype(np.int8) for k, v in feeds.items()})


def test_old_opset_missing_ops_and_forms():
    gelu = one_node("Gelu", TensorProto.FLOAT, 20)
    report = check_onnx(gelu, "onnx-opset-18")
    assert [(i.op, i.opset) for i in report.issues] == [("Gelu", 18)]
    assert "added in opset 20" in report.issues[0].fix and "opset=18" in report.issues[0].fix
    assert check_onnx(gelu, "onnx-opset-20").ok
    mean = one_node("ReduceMean", TensorProto.FLOAT, 18, extra=[np.array([1], np.int64)])
    issue, = check_onnx(mean, "onnx-opset-13").issues
    assert issue.op == "ReduceMean" and "input size 2" in issue.fix
    int8_add = one_node("Add", TensorProto.INT8, 14, 2)
    issue, = check_onnx(int8_add, "onnx-opset-13").issues
    assert "does not take int8" in issue.fix
    assert check_onnx(one_node("Add", TensorProto.FLOAT, 18, 2), "onnx-opset-13").ok  # same form


def layer_norm_model(x):
    return tracer.ops.layer_norm(x, np.ones(4, np.float32))


def test_castml_export_at_old_opset_lowers(tmp_path):
    g = tracer.trace(layer_norm_model, tracer.TensorSpec((2, 4), np.float32))
    path = str(tmp_path / "ln.onnx")
    exporters.save(g, path)  # opset 18: LayerNormalization
    issue, = check_file(path, "onnx-opset-13").issues
    assert issue.op == "LayerNormalization" and "added in opset 17" in issue.fix
    assert check_graph(g, "onnx-opset-13").ok  # the exporter lowers it at opset 13, as the fix says
    castml_path = str(tmp_path / "ln.castml")
    exporters.save(g, castml_path)
    assert check_file(castml_path, "onnx-opset-13").ok


def test_castml_target_lists_ops_castml_cannot_import(tmp_path):
    nms = one_node("NonMaxSuppression", TensorProto.FLOAT, 17, 2)
    path = str(tmp_path / "nms.onnx")
    onnx.save(nms, path)
    issue, = check_file(path, "castml").issues
    assert (issue.op, issue.dtype, issue.opset) == ("NonMaxSuppression", "float32", 17)
    assert check_file(path, "onnxruntime-cpu").ok


def test_parse_target():
    assert parse_target("onnx-opset-9") == ("onnx-opset", 9)
    with pytest.raises(exporters.ExportError, match="unknown target"):
        parse_target("tensorrt")


MODEL_PY = textwrap.dedent("""
    import numpy as np
    import tracer

    def predict(x):
        return tracer.ops.conv2d(x, np.ones((2, 1, 3, 3)))
""")


def castml(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "castml_cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_check_and_trace_target(tmp_path):
    (tmp_path / "model.py").write_text(MODEL_PY)
    cwd = str(tmp_path)
    r = castml("trace", "model.py:predict", "-o", "m.castml", "--input", "x=float64[batch,1,6,6]",
               "--target", "onnxruntime-cpu", cwd=cwd)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "Conv on float64 at opset 18 (model.py:6)" in r.stdout
    r = castml("check", "m.castml", "--target", "onnxruntime-cpu", cwd=cwd)
    assert r.returncode == 3 and "Conv on float64" in r.stdout
    r = castml("check", "m.castml", "--target", "castml", cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert castml("check", "m.castml", "--target", "tensorrt", cwd=cwd).returncode == 2
    assert castml("check", "missing.onnx", cwd=cwd).returncode == 1
