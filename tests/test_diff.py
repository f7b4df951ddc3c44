"""`castml diff` / `castml_cli.diff`: planted faults are found at their op and source line.

Each fault is planted in a temporary copy of a correct model (an ONNX integer division that
truncates instead of flooring, a wrong LayerNormalization epsilon, a wrong epsilon stored in a
`.castml` file, a runtime kernel made wrong for float32 only) and the report must name that op,
the line of this file that created it, and the engines that diverge; clean models exit 0.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import exporters
import tracer
from castml_cli import diff
from castml_cli.diff import compare
from models import zoo
from runtime import pytree
from runtime.kernels import KERNELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = {}  # op kind -> the line of `model` that emits it


def model(x, w):
    q = (x.astype(np.int32) - 5) // 3
    LINE["floordiv"] = inspect.currentframe().f_lineno - 1
    y = q.astype(np.float32) * np.float32(0.5) + np.tanh(x)
    out = tracer.ops.layer_norm(y, w)
    LINE["layer_norm"] = inspect.currentframe().f_lineno - 1
    return out


SPEC = tracer.TensorSpec(("batch", 4), np.float32)
W = np.linspace(0.5, 1.5, 4).astype(np.float32)
X = np.arange(12, dtype=np.float32).reshape(3, 4) - 2.5  # negative quotients: floor != trunc


def saved(tmp_path, suffix: str = ".onnx", g=None) -> str:
    path = str(tmp_path / f"m{suffix}")
    exporters.save(g if g is not None else tracer.trace(model, SPEC, W), path)
    return path


def planted(path: str, edit) -> str:
    m = onnx.load(path)
    edit(m)
    out = path.replace(".onnx", "_bad.onnx")
    onnx.save(m, out)
    return out


def truncating_division(m: onnx.ModelProto) -> None:
    """Replace the floor correction after Div by an Identity: integer division then truncates."""
    nodes = list(m.graph.node)
    div = next(n for n in nodes if n.op_type == "Div" and n.output[0] != "output")
    # the floor division's result is the last Sub that reads the Div's output
    final = [n for n in nodes if n.op_type == "Sub" and div.output[0] in n.input][-1]
    final.op_type = "Identity"
    del final.input[:]
    final.input.append(div.output[0])


def wrong_epsilon(m: onnx.ModelProto) -> None:
    ln = next(n for n in m.graph.node if n.op_type == "LayerNormalization")
    for a in ln.attribute:
        if a.name == "epsilon":
            a.f = 1.0


def test_clean_models_agree(tmp_path):
    for suffix in (".onnx", ".castml"):
        report = diff(model, saved(tmp_path, suffix), X, W)
        assert report.ok, report.format()
        assert report.engines == ["reference (float64)", "interpreter", "runtime", "onnxruntime"]
        assert report.compared >= 3 * 6  # every non-constant op output, on three engines


def test_truncating_division_is_named_with_its_line(tmp_path):
    bad = planted(saved(tmp_path), truncating_division)
    report = diff(model, bad, X, W)
    assert not report.ok
    first = report.first
    assert first.kind == "floordiv"
    assert first.loc == f"test_diff.py:{LINE['floordiv']}"
    assert [m.engine for m in first.mismatches] == ["onnxruntime"]
    assert "interpreter" in first.agreeing
    ort = first.mismatches[0]
    q = X.astype(np.int32) - 5
    assert ort.max_abs == 1.0 and ort.bad == int(np.sum((q < 0) & (q % 3 != 0)))  # floor != trunc exactly there
    text = report.format()
    assert f"floordiv` (test_diff.py:{LINE['floordiv']})" in text and "fed by (reference values):" in text


def test_wrong_epsilon_is_named_with_its_line(tmp_path):
    bad = planted(saved(tmp_path), wrong_epsilon)
    report = diff(model, bad, tracer.TensorSpec(("batch", 4), np.float32), W, seed=3)
    first = report.first
    assert first is not None and first.kind == "layer_norm"
    assert first.loc == f"test_diff.py:{LINE['layer_norm']}"
    # onnxruntime runs the file; castml's runtime imports the same wrong epsilon
    assert sorted(m.engine for m in first.mismatches) == ["onnxruntime", "runtime"]
    assert first.agreeing == ["interpreter"]
    assert all(m.max_abs > 1e-3 and m.max_ulp > 100 for m in first.mismatches)


def test_wrong_attribute_in_castml_file(tmp_path):
    g = tracer.trace(model, SPEC, W)
    next(op for op in g.ops if op.kind == "layer_norm").attrs["epsilon"] = 0.5
    report = diff(model, saved(tmp_path, ".castml", g), X, W)
    assert report.first.kind == "layer_norm"
    assert report.first.loc == f"test_diff.py:{LINE['layer_norm']}"
    assert sorted(m.engine for m in report.first.mismatches) == ["onnxruntime", "runtime"]


def test_imported_onnx_runtime_vs_onnxruntime(tmp_path, monkeypatch):
    """A model castml did not write: our runtime vs onnxruntime op by op, a float32-only kernel fault."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Tanh", ["h"], ["t"], name="act"),
             helper.make_node("Add", ["t", "h"], ["y"], name="skip")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              initializer=[numpy_helper.from_array(w, "w")])
    path = str(tmp_path / "imported.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert diff(None, path).ok

    tanh = KERNELS["tanh"]
    monkeypatch.setitem(KERNELS, "tanh", lambda x: tanh(x) + (np.float32(1e-2) if x.dtype == np.float32 else 0))
    report = diff(None, path)
    first = report.first
    assert first.kind == "tanh" and first.onnx_name == "t" and first.loc == "onnx:act"
    assert [m.engine for m in first.mismatches] == ["runtime"] and first.agreeing == ["onnxruntime"]
    assert first.mismatches[0].max_abs == pytest.approx(1e-2, rel=1e-3)


def test_traced_graph_checked_against_python(tmp_path, monkeypatch):
    """A kernel wrong in every dtype fools the float64 interpretation, but not onnxruntime (which
    parts ways at that op) nor the Python function (checked at the outputs)."""
    path = saved(tmp_path, ".castml")
    tanh = KERNELS["tanh"]
    monkeypatch.setitem(KERNELS, "tanh", lambda x: tanh(x) * 1.5)
    report = diff(model, path, X, W)
    assert report.first.kind == "tanh" and [m.engine for m in report.first.mismatches] == ["onnxruntime"]
    last = report.divergences[-1]
    assert last.mismatches[0].engine == "traced graph in float64 vs the Python function"
    assert last.kind == "layer_norm"  # the output's op: the Python function has no intermediates


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_zoo_models_agree(tmp_path, name):
    fn, (x, params) = zoo.MODELS[name].build()
    spec = tracer.TensorSpec(("batch",) + x.shape[1:], x.dtype)
    path = saved(tmp_path, ".onnx", tracer.trace(fn, spec, params))
    report = diff(fn, path, spec, params)
    assert report.ok, report.format()
    assert not report.notes  # every traced value found its ONNX tensor


def test_zoo_model_planted_fault(tmp_path):
    fn, (x, params) = zoo.mlp.build()
    spec = tracer.TensorSpec(("batch",) + x.shape[1:], x.dtype)
    path = saved(tmp_path, ".onnx", tracer.trace(fn, spec, params))

    def relu_to_abs(m):
        next(n for n in m.graph.node if n.op_type == "Relu").op_type = "Abs"

    report = diff(fn, planted(path, relu_to_abs), x, params)
    assert report.first.kind == "relu" and report.first.loc.startswith("layers_core.py:")
    assert report.first.index == 2


def test_compare_reports_ulps_and_relative_error():
    assert compare(np.float32([1, 2]), np.float64([1, 2 + 1e-7]), "e") is None
    m = compare(np.float32([1.0, 2.5]), np.float64([1.0, 2.0]), "e")
    assert (m.bad, m.total, m.max_abs, m.max_rel) == (1, 2, 0.5, 0.25)
    assert m.max_ulp == 0.5 / np.spacing(np.float32(2.0))
    assert compare(np.zeros((2,)), np.zeros((3,)), "e").max_abs == np.inf
    assert compare(np.array([True]), np.array([True]), "e") is None


MODEL_PY = textwrap.dedent("""
    import numpy as np

    def predict(x):
        y = np.tanh(x) * 2.0
        return np.exp(y) + 1.0
""")


def castml(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "castml_cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_exit_codes(tmp_path):
    (tmp_path / "model.py").write_text(MODEL_PY)
    cwd = str(tmp_path)
    r = castml("trace", "model.py:predict", "-o", "m.onnx", "--input", "x=float32[batch,5]", cwd=cwd)
    assert r.returncode == 0, r.stderr
    r = castml("diff", "model.py:predict", "m.onnx", "--input", "x=float32[batch,5]", cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all engines agree" in r.stdout

    m = onnx.load(str(tmp_path / "m.onnx"))
    next(n for n in m.graph.node if n.op_type == "Exp").op_type = "Sigmoid"
    onnx.save(m, str(tmp_path / "bad.onnx"))
    r = castml("diff", "model.py:predict", "bad.onnx", "--input", "x=float32[batch,5]", cwd=cwd)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "FIRST DIVERGENCE at op #" in r.stdout and "`exp` (model.py:6)" in r.stdout

    np.save(tmp_path / "x.npy", np.ones((2, 5), np.float32))
    assert castml("diff", "bad.onnx", "--input", "x=x.npy", cwd=cwd).returncode == 0  # same file, both engines
    assert castml("diff", "model.py:predict", cwd=cwd).returncode == 2
    assert castml("diff", "model.py:predict", "missing.onnx", "--input", "x=float32[2,5]", cwd=cwd).returncode == 1
    assert castml("diff", "bad.onnx", "--input", "nope=x.npy", cwd=cwd).returncode == 1


def cancellation(x):
    return (x + np.float32(1e4)) - np.float32(1e4)


def test_accumulated_rounding_is_not_blamed_on_an_op(tmp_path):
    """Each op is right for its float32 inputs; the float32 model still loses x to cancellation."""
    spec = tracer.TensorSpec(("batch", 4), np.float32)
    path = saved(tmp_path, ".onnx", tracer.trace(cancellation, spec))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32) * np.float32(1e-3)
    report = diff(cancellation, path, x)
    assert not report.ok
    first = report.first
    assert first.accumulated and first.kind == "sub"
    assert sorted(m.engine for m in first.mismatches) == ["interpreter", "onnxruntime", "runtime"]
    assert "rounding from earlier ops grew past tolerance" in report.format()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet_tiny", "transformer_encoder"])
def test_large_zoo_models_agree(tmp_path, name):
    fn, (x, params) = zoo.MODELS[name].build()
    spec = tracer.TensorSpec(("batch",) + x.shape[1:], x.dtype)
    g = tracer.trace(fn, spec, params)
    for suffix in (".onnx", ".castml"):
        report = diff(fn, saved(tmp_path, suffix, g), spec, params)
        assert report.ok, report.format()
    report = diff(None, str(tmp_path / "m.onnx"), inputs=[x, *pytree.flatten(params)[0]])
    assert report.ok, report.format()
