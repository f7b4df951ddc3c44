"""`castml run --backend auto|numpy|native|onnxruntime`, run as a user types it.

Every backend runs the same small model, saved as `.castml` and as `.onnx`; the outputs written
to `.npz` are compared with NumPy under the one agreement rule, and the printed backend is the
one that ran. The native runtime is built once by a module fixture (as in test_native.py); its
absence is simulated with `CASTML_NATIVE_LIB` pointing at a missing file, which
`runtime.native_backend` honours, so the real build is never touched.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest

from tests.helpers import assert_agree, build_native
from tests.test_cli import castml

MODEL_PY = textwrap.dedent("""
    import numpy as np

    def f(x, w):
        return np.tanh(x @ w).sum(axis=1), np.maximum(x, 0.0) * 2.0

    def positives(x):
        return x[x > 0] * 2.0
""")

BACKENDS = ("auto", "numpy", "native", "onnxruntime")


@pytest.fixture(scope="module", autouse=True)
def native_lib():
    return build_native()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A folder with m.castml, m.onnx (the same f(x: f32[batch,4], w: f32[4,3])), b.castml, x.npy, w.npy."""
    tmp = tmp_path_factory.mktemp("backends")
    (tmp / "model.py").write_text(MODEL_PY)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    np.save(tmp / "w.npy", w)
    castml("trace", "model.py:f", "-o", "m.castml", "--input", "x=f32[batch,4]", "--input", "w=f32[4,3]",
           cwd=str(tmp))
    castml("convert", "m.castml", "m.onnx", cwd=str(tmp))
    castml("trace", "model.py:positives", "-o", "b.castml", "--input", "x=f32[3]", cwd=str(tmp))
    return tmp, x, w


def _ran(stdout: str) -> str:
    m = re.search(r"^ran \S+ with backend (\S+) in ", stdout, re.M)
    assert m, stdout
    return m.group(1)


@pytest.mark.parametrize("model", ["m.castml", "m.onnx"])
def test_every_backend_runs_both_formats_and_agrees_with_numpy(models, model, capsys, monkeypatch):
    # in-process (`castml_cli.main.main`, the console script's entry) to keep the 2x4 matrix fast;
    # the subprocess tests below and in test_cli.py run `castml run` exactly as typed
    from castml_cli.main import main

    tmp, x, w = models
    monkeypatch.chdir(tmp)
    for backend in BACKENDS:
        out = f"out-{model}-{backend}.npz"
        assert main(["run", model, "--input", "x=x.npy", "--input", "w=w.npy", "--backend", backend, "-o", out]) == 0
        # auto: onnxruntime for .onnx; for .castml the native runtime, which is built and has every op of f
        expected = {"auto": "onnxruntime" if model.endswith(".onnx") else "native"}.get(backend, backend)
        assert _ran(capsys.readouterr().out) == expected
        with np.load(tmp / out) as z:
            assert len(z.files) == 2
            first, second = (z[k] for k in z.files)
        assert_agree(first, np.tanh(x @ w).sum(axis=1))
        assert_agree(second, np.maximum(x, 0.0) * 2.0)


def test_native_missing_is_one_line_naming_the_build_command_and_auto_falls_back(models, tmp_path):
    tmp, x, w = models
    env = {"CASTML_NATIVE_LIB": str(tmp_path / "missing" / "libcastml.so")}
    for model in ("m.castml", "m.onnx"):
        proc = castml("run", model, "--input", "x=x.npy", "--input", "w=w.npy", "--backend", "native",
                      "-o", "never.npz", cwd=str(tmp), ok=False, env=env)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("castml: error: --backend native cannot run"), lines
        assert "python -m runtime.native.build" in lines[0] and "is missing" in lines[0]
        assert proc.stdout == "" and not (tmp / "never.npz").exists()
    proc = castml("run", "m.castml", "--input", "x=x.npy", "--input", "w=w.npy", "-o", "fallback.npz",
                  cwd=str(tmp), env=env)
    assert _ran(proc.stdout) == "numpy"
    with np.load(tmp / "fallback.npz") as z:
        assert_agree(z[z.files[0]], np.tanh(x @ w).sum(axis=1))


def test_auto_runs_on_numpy_what_the_native_runtime_lacks(models):
    tmp, _, _ = models
    x = np.float32([0.5, -1.0, 2.0])
    proc = castml("run", "b.castml", "--input", "x=[0.5, -1.0, 2.0]", "-o", "b.npz", cwd=str(tmp))
    assert _ran(proc.stdout) == "numpy"  # a mask whose count depends on the data: no native form
    with np.load(tmp / "b.npz") as z:
        assert_agree(z["output"], x[x > 0] * 2.0)
    proc = castml("run", "b.castml", "--input", "x=[0.5, -1.0, 2.0]", "--backend", "native", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "boolean_mask" in proc.stderr and "--backend auto or numpy" in proc.stderr


def test_choose_engine_maps_backends_to_engines():
    from castml_cli.cmd_run import choose_engine
    from castml_cli.common import CliError

    assert [choose_engine("m.castml", b) for b in BACKENDS] == ["auto", "numpy", "native", "onnxruntime"]
    assert [choose_engine("m.onnx", b) for b in BACKENDS] == ["onnxruntime", "numpy", "native", "onnxruntime"]
    with pytest.raises(CliError, match="expected one of auto, numpy, native, onnxruntime"):
        choose_engine("m.castml", "tflite")


def test_help_names_every_backend(tmp_path):
    text = castml("run", "--help", cwd=str(tmp_path)).stdout
    assert "{auto,numpy,native,onnxruntime}" in text and "python -m runtime.native.build" in text
