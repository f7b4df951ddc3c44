"""The `castml` command line, run as a user runs it: `python -m castml_cli.main ...` in a subprocess.

Every command's output files are read back and checked numerically against NumPy references
with the one agreement rule (tests.helpers.assert_agree); error paths check exit codes and the
one-line message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import assert_agree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL_PY = textwrap.dedent("""
    import numpy as np

    W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10

    def predict(x, params):
        h = np.maximum(x @ params["fc1"]["w"] + params["fc1"]["b"], 0.0)
        return h.sum(axis=1)

    def loss(x, w):
        return ((x @ w) ** 2).sum()

    def project(x):
        return x @ W

    def two(x, y):
        return x * y, x - y

    import tracer

    @tracer.script
    def branchy(x):
        if x.sum() > 0:
            y = np.exp(x)
        else:
            y = -x
        return y * 2.0

    CALLS = [0]

    def drifting(x):  # reads mutable state, so the traced model and later calls disagree
        CALLS[0] += 1
        return x * float(CALLS[0])
""")


def castml(*args: str, cwd: str, ok: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m castml_cli.main ARGS` in `cwd` with the repository importable (and `env` added)."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "castml_cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, f"castml {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc


@pytest.fixture
def work(tmp_path):
    """A folder with model.py and some arrays: x (5,4), w (4,3), b (3,), p.npz {fc1.w, fc1.b}."""
    (tmp_path / "model.py").write_text(MODEL_PY)
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((5, 4)).astype(np.float32), "w": rng.standard_normal((4, 3)).astype(np.float32),
              "b": rng.standard_normal(3).astype(np.float32)}
    for k, v in arrays.items():
        np.save(tmp_path / f"{k}.npy", v)
    np.savez(tmp_path / "p.npz", **{"fc1.w": arrays["w"], "fc1.b": arrays["b"]})
    return tmp_path, arrays


def predict_ref(x, w, b):
    return np.maximum(x @ w + b, 0.0).sum(axis=1)


def test_demo_prints_the_seed_example_and_writes_agreeing_models(tmp_path):
    proc = castml("demo", "--out-dir", str(tmp_path / "out"), cwd=str(tmp_path))
    out = proc.stdout
    assert "value:                        4.0" in out
    assert "eager gradient (tracer.grad): 4.0" in out
    assert "static gradient (ir.grad -> square_grad.castml -> runtime): 4.0" in out
    assert "%x: f32[batch,784]" in out  # the MLP's IR text
    assert "batch 1:" in out and "batch 7:" in out and "demo: all results agree" in out

    import onnxruntime as ort

    import runtime
    from castml_cli.cmd_demo import make_mlp

    x = np.random.default_rng(5).standard_normal((3, 784)).astype(np.float32)
    ref = make_mlp(0)(x)
    assert_agree(runtime.load(str(tmp_path / "out" / "mlp.castml")).run(x), ref)
    assert float(np.asarray(runtime.load(str(tmp_path / "out" / "square_grad.castml")).run(3.0))) == 6.0
    sess = ort.InferenceSession(str(tmp_path / "out" / "mlp.onnx"), providers=["CPUExecutionProvider"])
    assert_agree(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref)


def test_trace_pytree_paths_check_and_run(work):
    tmp, a = work
    proc = castml("trace", "model.py:predict", "-o", "m.castml", "--input", "x=f32[batch,4]",
                  "--input", "params.fc1.w=w.npy", "--input", "params.fc1.b=b.npy", "--check", cwd=str(tmp))
    assert "check: max abs error" in proc.stdout and ": ok" in proc.stdout
    assert "x: f32[batch,4], params.fc1.w: f32[4,3], params.fc1.b: f32[3]" in proc.stdout
    proc = castml("run", "m.castml", "--input", "x=x.npy", "--input", "params=p.npz", "-o", "out.npz", cwd=str(tmp))
    assert re.search(r"with backend (numpy|native) in", proc.stdout) and "f32[5]" in proc.stdout  # auto: ours
    with np.load(tmp / "out.npz") as z:
        assert z.files == ["output"]
        assert_agree(z["output"], predict_ref(a["x"], a["w"], a["b"]))
    # a different batch size, inputs given by path one by one, on onnxruntime via in-memory conversion
    np.save(tmp / "x2.npy", a["x"][:2])
    proc = castml("run", "m.castml", "--input", "x=x2.npy", "--input", "params.fc1.w=w.npy",
                  "--input", "params.fc1.b=b.npy", "-o", "out2.npz", "--backend", "onnxruntime", cwd=str(tmp))
    assert "backend onnxruntime" in proc.stdout
    with np.load(tmp / "out2.npz") as z:
        assert_agree(z["output"], predict_ref(a["x"][:2], a["w"], a["b"]))


def test_trace_module_syntax_to_onnx_and_run_with_onnxruntime(work):
    tmp, a = work
    proc = castml("trace", "model:predict", "-o", "m.onnx", "--input", "x=float32[n,4]", "--input", "params=p.npz",
                  "--check", "--optimize", cwd=str(tmp))
    assert ": ok" in proc.stdout
    import onnx

    m = onnx.load(str(tmp / "m.onnx"))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "n"
    proc = castml("run", "m.onnx", "--input", "x=x.npy", "--input", "params=p.npz", "-o", "o.npz", cwd=str(tmp))
    assert "backend onnxruntime" in proc.stdout
    with np.load(tmp / "o.npz") as z:
        assert_agree(z[z.files[0]], predict_ref(a["x"], a["w"], a["b"]))


def test_trace_dtypes_literals_and_multiple_outputs(work):
    tmp, _ = work
    castml("trace", "model.py:two", "-o", "t.castml", "--input", "x=f64[k]", "--input", "y=float64[k]", cwd=str(tmp))
    info = json.loads(castml("inspect", "t.castml", "--json", cwd=str(tmp)).stdout)
    main = info["entries"]["main"]
    assert [(t["name"], t["dtype"], t["shape"]) for t in main["inputs"]] == [("x", "float64", ["k"]),
                                                                             ("y", "float64", ["k"])]
    assert [t["name"] for t in main["outputs"]] == ["output.0", "output.1"]
    proc = castml("run", "t.castml", "--input", "x=[1.5, 2.0]", "--input", "y=[4.0, -1.0]", "-o", "t.npz", cwd=str(tmp))
    with np.load(tmp / "t.npz") as z:
        assert z.files == ["output.0", "output.1"]
        assert_agree(z["output.0"], np.array([6.0, -2.0]))
        assert_agree(z["output.1"], np.array([-2.5, 3.0]))
    assert "output.1: f64[2]" in proc.stdout


def test_check_reports_a_mismatch_with_exit_code_1(work):
    tmp, _ = work
    proc = castml("trace", "model.py:drifting", "-o", "d.castml", "--input", "x=f32[3]", "--check", cwd=str(tmp),
                  ok=False)
    assert proc.returncode == 1 and "MISMATCH beyond tolerance" in proc.stdout


def test_run_selects_an_entry_of_a_multi_entry_file(work):
    tmp, a = work
    import exporters
    import tracer

    spec = tracer.TensorSpec(("n", 4), np.float32)
    exporters.save({"double": tracer.trace(lambda x: x * 2.0, spec), "neg": tracer.trace(lambda x: -x, spec)},
                   str(tmp / "multi.castml"))
    for entry, ref in (("double", a["x"] * 2), ("neg", -a["x"])):
        castml("run", "multi.castml", "--entry", entry, "--input", "x.npy", "-o", "e.npz", cwd=str(tmp))
        with np.load(tmp / "e.npz") as z:
            assert_agree(z["output"], ref)
    proc = castml("run", "multi.castml", "--input", "x.npy", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and "--entry" in proc.stderr and "double, neg" in proc.stderr
    proc = castml("convert", "multi.castml", "neg.onnx", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and "--entry" in proc.stderr
    castml("convert", "multi.castml", "neg.onnx", "--entry", "neg", cwd=str(tmp))
    castml("run", "neg.onnx", "--input", "x.npy", "-o", "n.npz", cwd=str(tmp))
    with np.load(tmp / "n.npz") as z:
        assert_agree(z[z.files[0]], -a["x"])
    info = json.loads(castml("inspect", "multi.castml", "--json", cwd=str(tmp)).stdout)
    assert sorted(info["entries"]) == ["double", "neg"]


def test_inspect_counts_parameters_ops_and_prints_ir(work):
    tmp, _ = work
    castml("trace", "model.py:project", "-o", "p.castml", "--input", "x=f32[batch,4]", cwd=str(tmp))
    info = json.loads(castml("inspect", "p.castml", "--json", "--ir", cwd=str(tmp)).stdout)
    main = info["entries"]["main"]
    assert main["ops"] == {"constant": 1, "matmul": 1}
    assert (main["parameters"], main["parameter_bytes"]) == (12, 48)
    assert main["outputs"][0]["type"] == "f32[batch,3]"
    assert "matmul(%x" in main["ir"]
    assert info["bytes"] == os.path.getsize(tmp / "p.castml")
    text = castml("inspect", "p.castml", cwd=str(tmp)).stdout
    assert "x: f32[batch,4]" in text and "parameters: 12 in 1 constants, 48 bytes" in text
    castml("convert", "p.castml", "p.onnx", cwd=str(tmp))
    info = json.loads(castml("inspect", "p.onnx", "--json", cwd=str(tmp)).stdout)
    assert info["onnx"]["opsets"]["ai.onnx"] == 18
    assert info["entries"]["main"]["parameters"] == 12


def test_grad_with_value_matches_the_analytic_gradient(work):
    tmp, a = work
    castml("trace", "model.py:loss", "-o", "l.castml", "--input", "x=f32[batch,4]", "--input", "w=w.npy", cwd=str(tmp))
    castml("grad", "l.castml", "-o", "dl.castml", "--wrt", "w", "--with-value", cwd=str(tmp))
    castml("run", "dl.castml", "--input", "x=x.npy", "--input", "w=w.npy", "-o", "g.npz", cwd=str(tmp))
    x, w = a["x"], a["w"]
    with np.load(tmp / "g.npz") as z:
        assert z.files == ["output.0", "output.1"]
        assert_agree(z["output.0"], ((x @ w) ** 2).sum())
        assert_agree(z["output.1"], 2 * x.T @ (x @ w))
    castml("grad", "l.castml", "-o", "dx.onnx", "--wrt", "0", cwd=str(tmp))
    castml("run", "dx.onnx", "--input", "x.npy", "--input", "w.npy", "-o", "gx.npz", cwd=str(tmp))
    with np.load(tmp / "gx.npz") as z:
        assert_agree(z[z.files[0]], 2 * (x @ w) @ w.T)


def test_convert_round_trip(work):
    tmp, a = work
    castml("trace", "model.py:predict", "-o", "m.onnx", "--input", "x=f32[batch,4]", "--input", "params=p.npz",
           cwd=str(tmp))
    castml("convert", "m.onnx", "m.castml", cwd=str(tmp))
    castml("convert", "m.castml", "-o", "back.onnx", cwd=str(tmp))
    ref = predict_ref(a["x"], a["w"], a["b"])
    for model, backend in (("m.castml", "numpy"), ("back.onnx", "onnxruntime"), ("back.onnx", "numpy")):
        castml("run", model, "--input", "x=x.npy", "--input", "params=p.npz", "-o", "c.npz", "--backend", backend,
               cwd=str(tmp))
        with np.load(tmp / "c.npz") as z:
            assert_agree(z[z.files[0]], ref)


def test_convert_optimize_keeps_results(work):
    tmp, a = work
    castml("trace", "model.py:predict", "-o", "m.castml", "--input", "x=f32[batch,4]", "--input", "params=p.npz",
           cwd=str(tmp))
    ref = predict_ref(a["x"], a["w"], a["b"])
    for out, backend in (("opt.castml", "numpy"), ("opt.onnx", "onnxruntime")):
        proc = castml("convert", "m.castml", out, "--optimize", cwd=str(tmp))
        assert "optimized" in proc.stdout
        castml("run", out, "--input", "x=x.npy", "--input", "params=p.npz", "-o", "c.npz", "--backend", backend,
               cwd=str(tmp))
        with np.load(tmp / "c.npz") as z:
            assert_agree(z[z.files[0]], ref)


def test_bench_checks_agreement_and_reports_percentiles(work):
    tmp, _ = work
    castml("trace", "model.py:predict", "-o", "m.castml", "--input", "x=f32[batch,4]", "--input", "params=p.npz",
           cwd=str(tmp))
    res = json.loads(castml("bench", "m.castml", "--dim", "batch=16", "--runs", "20", "--json", cwd=str(tmp)).stdout)
    assert res["inputs"] == ["x: f32[16,4]", "params.fc1.w: f32[4,3]", "params.fc1.b: f32[3]"]
    assert res["agree"] is True and res["max_abs_difference"] < 1e-5
    for key in ("castml_numpy_ms", "onnxruntime_ms"):
        r = res[key]
        assert 0 < r["min"] <= r["p50"] <= r["p90"] <= r["p99"]
    proc = castml("bench", "m.castml", "--dim", "batch", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and "expected SYMBOL=N" in proc.stderr


def test_viz_writes_a_self_contained_page_with_regions(work):
    import html.parser

    tmp, _ = work
    castml("trace", "model.py:branchy", "-o", "b.castml", "--input", "x=f32[3]", "--check", cwd=str(tmp))
    proc = castml("viz", "b.castml", "-o", "b.html", cwd=str(tmp))
    assert "wrote b.html" in proc.stdout
    page = (tmp / "b.html").read_text()

    class Collect(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.nodes, self.depth, self.srcs = [], 0, []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.depth += tag == "details"
            self.srcs += [v for k, v in attrs if k in ("src", "href")]
            if tag == "g" and "node" in a.get("class", ""):
                self.nodes.append((a["data-search"], self.depth))

        def handle_endtag(self, tag):
            self.depth -= tag == "details"

    c = Collect()
    c.feed(page)
    assert c.srcs == []  # nothing fetched from the network
    top = [text for text, depth in c.nodes if depth == 0]
    nested = [text for text, depth in c.nodes if depth == 1]
    assert [t.split("[")[0].split(" ")[0] for t in top] == ["%x", "reduce_sum", "constant", "greater", "if",
                                                            "constant", "mul", "return"]
    assert any(t.startswith("exp ") for t in nested) and any(t.startswith("neg ") for t in nested)
    assert sum(t == "%x" for t in nested) == 2  # the captured input, drawn in each region
    assert 'id="search"' in page and "f32[3]</text>" in page


def _http(url: str, body: bytes | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_answers_tf_serving_requests_and_survives_bad_ones(work):
    import concurrent.futures

    tmp, a = work
    castml("trace", "model.py:predict", "-o", "m.castml", "--input", "x=f32[batch,4]", "--input", "params=p.npz",
           cwd=str(tmp))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, "-m", "castml_cli.main", "serve", "m.castml", "--port", "0",
                               "--max-body-mb", "0.01"], cwd=str(tmp), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        first = server.stdout.readline().split()
        assert first[:3] == ["serving", "m", "at"], first
        url = first[3]
        assert _http(url)[1]["model_version_status"][0]["state"] == "AVAILABLE"
        sig = _http(url + "/metadata")[1]["metadata"]["signature_def"]
        assert sig["inputs"]["x"] == {"dtype": "float32", "shape": [-1, 4], "symbolic_shape": ["batch", "4"]}
        x, w, b = a["x"], a["w"], a["b"]
        params = {"fc1": {"w": w.tolist(), "b": b.tolist()}}
        ref = predict_ref(x, w, b)
        status, res = _http(url + ":predict", json.dumps({"inputs": {"x": x.tolist(), "params": params}}).encode())
        assert status == 200
        assert_agree(np.asarray(res["outputs"], np.float32), ref)
        rows = [{"x": row.tolist(), "params": params} for row in x]
        status, res = _http(url + ":predict", json.dumps({"instances": rows}).encode())
        assert status == 200
        assert_agree(np.asarray(res["predictions"], np.float32), ref)
        bad = [(b"not json", 400, "not valid JSON"),
               (json.dumps({"inputs": {"x": [[1.0, 2.0]], "params": params}}).encode(), 400, "expected f32[batch,4]"),
               (json.dumps({"inputs": {"x": x.tolist()}}).encode(), 400, "missing input 'params.fc1.w'"),
               (json.dumps({"rows": []}).encode(), 400, '"instances" or "inputs"'),
               (json.dumps({"inputs": {"x": [[0.0] * 4] * 500, "params": params}}).encode(), 413, "exceeds")]
        for body, code, text in bad:
            status, res = _http(url + ":predict", body)
            assert status == code and text in res["error"], (status, res)
        assert _http(url.replace("/m", "/other") + ":predict", b"{}")[0] == 404
        body = json.dumps({"inputs": {"x": x.tolist(), "params": params}}).encode()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _http(url + ":predict", body), range(16)))
        for status, res in results:
            assert status == 200
            assert_agree(np.asarray(res["outputs"], np.float32), ref)
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()


def test_errors_are_one_line_with_exit_codes(work):
    tmp, _ = work
    proc = castml("inspect", "missing.castml", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "castml: error: model file 'missing.castml' not found"
    proc = castml("inspect", cwd=str(tmp), ok=False)
    assert proc.returncode == 2 and "required: model" in proc.stderr
    proc = castml("trace", "model.py:predict", "-o", "m.castml", "--input", "x=float33[4]", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and "unknown dtype 'float33'" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = castml("trace", "model.py:predict", "-o", "m.castml", "--input", "x=f32[4]", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and "missing --input for parameter 'params'" in proc.stderr
    assert not (tmp / "m.castml").exists()
    (tmp / "branchy.py").write_text("def f(x):\n    return x if x.sum() > 0 else -x\n")
    proc = castml("trace", "branchy.py:f", "-o", "m.castml", "--input", "x=f32[3]", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and proc.stderr.startswith("castml: error: TraceError: branchy.py:2:")
    assert len(proc.stderr.splitlines()) == 1
    proc = castml("trace", "model.py:nothere", "-o", "m.castml", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and "no attribute 'nothere'" in proc.stderr
    castml("trace", "model.py:loss", "-o", "l.castml", "--input", "x=f32[batch,4]", "--input", "w=w.npy", cwd=str(tmp))
    proc = castml("run", "l.castml", "--input", "x=x.npy", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and "missing input 'w'" in proc.stderr
    proc = castml("run", "l.castml", "--input", "x=w.npy", "--input", "w=w.npy", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    proc = castml("--debug", "run", "l.castml", "--input", "x=w.npy", "--input", "w=w.npy", cwd=str(tmp), ok=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_help_lists_commands_with_examples(tmp_path, capsys):
    proc = castml("--help", cwd=str(tmp_path))
    for cmd in ("demo", "trace", "run", "inspect", "convert", "grad", "viz", "serve", "bench"):
        assert cmd in proc.stdout
    from castml_cli.main import main

    for cmd in ("demo", "trace", "run", "inspect", "convert", "grad", "viz", "serve", "bench"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert f"castml {cmd}" in capsys.readouterr().out.split("examples:")[1]


def test_input_spec_parsing():
    from castml_cli.common import CliError, nest, parse_type_spec

    assert parse_type_spec("float32[batch, 784]") == (np.dtype(np.float32), ("batch", 784))
    assert parse_type_spec("i64[]") == (np.dtype(np.int64), ())
    assert parse_type_spec("b1[3]") == (np.dtype(np.bool_), (3,))
    assert parse_type_spec("x.npy") is None
    with pytest.raises(CliError, match="bad dimension"):
        parse_type_spec("f32[3-]")
    assert nest({"p.a.w": 1, "p.a.b": 2, "xs.0": 3, "xs.1": 4}) == {"p": {"a": {"w": 1, "b": 2}}, "xs": [3, 4]}
    with pytest.raises(CliError, match="conflicts"):
        nest({"p.a": 1, "p.a.b": 2})
    with pytest.raises(CliError, match="conflicts"):
        nest({"p.a.b": 1, "p.a": 2})
