"""Deployment to JavaScript: models exported with the `onnxruntime-web` target run in onnxruntime-web
(WebAssembly, one thread) under node and in headless Chromium, and agree with castml's runtime.

Why these tests fail instead of skipping when node, `web/node_modules` or Chromium are missing:
CI installs them (`scripts/install_web.sh`), and a skipped browser test would hide a broken page.
The node tests go through `web/run_model.mjs`, the browser tests through `castml web` (the real
command), a server on 127.0.0.1 started here, and `web/browser_test.mjs` (playwright-core driving
Debian's /usr/bin/chromium), which types inputs into the page and reads the outputs back from it.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest

import exporters
import runtime
import tracer
from exporters import castml_format
from exporters.capabilities import load_target
from exporters.target_web import load_table
from ir.graph import input_names
from models import zoo
from runtime import pytree
from tests.helpers import assert_agree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB = os.path.join(ROOT, "web")
CHROMIUM = "/usr/bin/chromium"
INSTALL = "run scripts/install_web.sh (npm ci in web/, apt-get install chromium)"
# (model, batch sizes): two per model; the transformer (seq 128, width 256) stays small
NODE_CASES = [("mlp", (1, 5)), ("lenet", (1, 4)), ("resnet_tiny", (1, 3)), ("transformer_encoder", (1, 2)),
              ("gru", (1, 4))]
SYMBOLIC = {"gru": ("batch", "seq")}  # the GRU also with a symbolic sequence length: one ONNX Loop
SEQ = 9


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH; {INSTALL}")
    for pkg in ("onnxruntime-web", "playwright-core"):
        if not os.path.isfile(os.path.join(WEB, "node_modules", pkg, "package.json")):
            pytest.fail(f"web/node_modules/{pkg} is missing; {INSTALL}")
    return node


def _node(script: str, *args: str, timeout: float = 120) -> dict:
    """Run `node web/<script> args...` and parse the JSON it prints; fail with its stderr."""
    proc = subprocess.run([_require_node(), os.path.join(WEB, script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        pytest.fail(f"node web/{script} failed (exit {proc.returncode}):\n{proc.stderr}\n{proc.stdout[:2000]}")
    return json.loads(proc.stdout)


def _array(out: dict) -> np.ndarray:
    """An output printed by run_model.mjs / browser_test.mjs as a NumPy array."""
    dt = np.dtype(out["dtype"])
    # NaN/Infinity and exact int64 travel as strings
    data = [(float(v) if dt.kind == "f" else int(v)) if isinstance(v, str) else v for v in out["data"]]
    return np.array(data, dtype=dt).reshape(out["shape"])


def _pinned_version() -> str:
    with open(os.path.join(WEB, "package.json")) as f:
        return json.load(f)["dependencies"]["onnxruntime-web"]


# --- the capability table and the format ceiling ------------------------------------------------

def test_capability_table_matches_pinned_onnxruntime_web():
    pinned = _pinned_version()
    assert pinned[0].isdigit(), f"web/package.json must pin onnxruntime-web exactly, got {pinned!r}"
    with open(os.path.join(WEB, "package-lock.json")) as f:
        locked = json.load(f)["packages"]["node_modules/onnxruntime-web"]["version"]
    assert locked == pinned, f"package-lock.json has onnxruntime-web {locked}, package.json pins {pinned}"
    table = load_table()
    assert table.version == pinned, (
        f"the newest committed table is for onnxruntime-web {table.version} but web/package.json pins {pinned}: "
        f"re-probe with `node web/probe_capabilities.mjs` and commit exporters/capabilities/{table.name}.json")
    assert os.path.isfile(os.path.join(ROOT, "exporters", "capabilities", f"onnxruntime-web-{pinned}.json"))
    _require_node()
    with open(os.path.join(WEB, "node_modules", "onnxruntime-web", "package.json")) as f:
        installed = json.load(f)["version"]
    assert installed == pinned, f"web/node_modules has onnxruntime-web {installed}, pinned {pinned}; {INSTALL}"


def test_web_table_is_measured_not_copied():
    web, cpu = load_target("onnxruntime-web"), load_target("onnxruntime-cpu")
    assert web.max_ir_version == 13  # measured: onnxruntime-web 1.30.0 refuses IR version 14
    assert web.supports("Conv", np.float32, 18) and not web.supports("Conv", np.float64, 18)
    # the web build lacks int8 Where, which the CPU build has: export widens it to int32
    assert cpu.supports("Where", np.int8, 18) and not web.supports("Where", np.int8, 18)
    g = tracer.trace(lambda c, a, b: np.where(c, a, b), np.zeros(3, bool), np.zeros(3, np.int8), np.zeros(3, np.int8))
    cpu_nodes = [n.op_type for n in exporters.to_onnx(g, target="onnxruntime-cpu").graph.node]
    web_nodes = [n.op_type for n in exporters.to_onnx(g, target="onnxruntime-web").graph.node]
    assert cpu_nodes == ["Where"] and web_nodes.count("Cast") == 3 and "Where" in web_nodes


def test_web_target_pins_ir_version_and_opsets():
    import onnx

    g = tracer.trace(lambda x: np.tanh(x) * 2.0, np.zeros(3, np.float32))
    for opset in (13, 18, 21):
        assert exporters.to_onnx(g, opset=opset, target="onnxruntime-web").ir_version <= 13
    empty = onnx.helper.make_graph([], "g", [], [])
    m = onnx.helper.make_model(empty, opset_imports=[onnx.helper.make_opsetid("", 18)])
    assert m.ir_version == onnx.IR_VERSION > 13
    load_table().pin(m)
    assert m.ir_version == 13
    m.opset_import[0].version = 12
    with pytest.raises(exporters.ExportError, match="opset 12 was not probed"):
        load_table().pin(m)


def test_committed_table_is_what_the_pinned_onnxruntime_web_does(tmp_path):
    out = str(tmp_path / "probed.json")
    proc = subprocess.run([_require_node(), os.path.join(WEB, "probe_capabilities.mjs"), "--out", out,
                           "--python", sys.executable], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        probed = json.load(f)
    with open(os.path.join(ROOT, "exporters", "capabilities", f"{load_table().name}.json")) as f:
        committed = json.load(f)
    assert probed["onnxruntime-web"] == committed["onnxruntime-web"] == _pinned_version()
    assert probed["max_ir_version"] == committed["max_ir_version"]
    diff = sorted((k, d) for k in set(probed["ops"]) | set(committed["ops"])
                  for d in set(probed["ops"].get(k, {})) | set(committed["ops"].get(k, {}))
                  if probed["ops"].get(k, {}).get(d) != committed["ops"].get(k, {}).get(d))
    assert not diff, f"re-probing onnxruntime-web disagrees with the committed table on (op, dtype): {diff[:20]}"


def test_web_target_error_names_the_op(tmp_path):
    import tracer.ops as nn

    # uint16 shifts: the CPU build has a BitShift kernel, the web build has none and no rewrite exists
    g = tracer.trace(lambda a, b: a << b, np.zeros(3, np.uint16), np.zeros(3, np.uint16))
    assert [n.op_type for n in exporters.to_onnx(g, target="onnxruntime-cpu").graph.node] == ["BitShift"]
    named = r"no kernel for ONNX BitShift on uint16 .* `left_shift` \(.*test_web"  # op, dtype and source line
    with pytest.raises(exporters.ExportError, match=named):
        exporters.save(g, str(tmp_path / "shift.onnx"), target="onnxruntime-web")
    assert not os.path.exists(tmp_path / "shift.onnx")
    # the same through `castml web`: one error line naming the op, and no folder
    exporters.save(g, str(tmp_path / "shift.castml"))
    proc = subprocess.run([sys.executable, "-m", "castml_cli", "web", str(tmp_path / "shift.castml"), "-o",
                           str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 1 and "ExportError" in proc.stderr and "BitShift on uint16" in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "site")

    # float64: no Conv kernel in onnxruntime-web, and symbolic spatial dims rule out the im2col rewrite
    x, w = tracer.TensorSpec((1, 1, "h", "w"), np.float64), np.zeros((2, 1, 3, 3))
    g = tracer.trace(lambda x, w: nn.conv2d(x, w), x, w)
    with pytest.raises(exporters.ExportError, match=r"onnxruntime-web-1\.30\.0 has no kernel for ONNX Conv on float64"):
        exporters.save(g, str(tmp_path / "conv64.onnx"), target="onnxruntime-web")


# --- node: every zoo model, two batch sizes -----------------------------------------------------

@pytest.fixture(scope="module", params=NODE_CASES, ids=[c[0] for c in NODE_CASES])
def exported(request, tmp_path_factory):
    name, batches = request.param
    fn, (x, params) = zoo.MODELS[name].build(seed=0)
    dims = SYMBOLIC.get(name, ("batch",))
    g = tracer.trace(fn, tracer.TensorSpec(dims + x.shape[len(dims):], x.dtype), params)
    folder = tmp_path_factory.mktemp(name)
    path = str(folder / "m.onnx")
    exporters.save(g, path, target="onnxruntime-web")
    return name, batches, g, params, path, folder


def test_zoo_model_runs_in_onnxruntime_web_node(exported):
    name, batches, g, params, path, folder = exported
    sess = runtime.load(castml_format.to_bytes(g))
    names = input_names(g)
    if name in SYMBOLIC:
        import onnx

        assert "Loop" in {n.op_type for n in onnx.load(path).graph.node}
    rng = np.random.default_rng(7)
    for b in batches:
        shape = [{"batch": b, "seq": SEQ}.get(d, d) for d in g.inputs[0].type.shape]
        x = rng.standard_normal(shape).astype(np.float32)
        args = []
        for n, leaf in zip(names, pytree.flatten((x, params))[0]):
            f = str(folder / f"{n}.npy")
            np.save(f, np.ascontiguousarray(leaf))
            args += ["--input", f"{n}={f}"]
        got = _node("run_model.mjs", path, *args)
        assert list(got["outputs"]) == list(g.output_names)
        assert got["ort"] == _pinned_version()
        ref = sess.run(x, params)
        assert_agree(_array(got["outputs"]["output"]), ref)
        assert got["outputs"]["output"]["shape"][0] == b


# --- random ops: the uint32 counter-based hash in the web build --------------------------------------------------

SEEDS = (0, 1, -5, 2**40 + 3, 2**63 - 1)  # negative and > 2**32 seeds exercise the uint64 -> uint32 casts


def _run_in_node(g, args: tuple, folder, onnx_path: str) -> dict[str, np.ndarray]:
    """Outputs of `node web/run_model.mjs onnx_path` on the flattened `args`, by output name."""
    argv = []
    for i, (n, leaf) in enumerate(zip(input_names(g), pytree.flatten(args)[0])):
        f = str(folder / f"in{i}.npy")
        np.save(f, np.ascontiguousarray(leaf))
        argv += ["--input", f"{n}={f}"]
    got = _node("run_model.mjs", onnx_path, *argv)
    assert list(got["outputs"]) == list(g.output_names)
    return {n: _array(o) for n, o in got["outputs"].items()}


def _random_step(x, seed):
    from tracer import ops

    return (ops.dropout(x, 0.3, seed), ops.random_bits(x.shape, seed, stream=2),
            ops.random_uniform((3,), seed, dtype=np.float64, stream=3),
            ops.random_uniform((5,), seed, dtype=np.float16, stream=4),
            ops.random_normal(x.shape, seed, stream=1),
            ops.random_normal((4,), seed, dtype=np.float64, mean=1.0, std=2.0, stream=5))


def test_uint32_table_entries_the_random_lowering_needs():
    # measured by the probe (re-checked against the installed package by the test above)
    web = load_table()
    for key in ("BitwiseXor", "BitShift", "Mul", "Add", "Cast", "Cast.to", "Reshape", "Identity"):
        assert web.supports(key, np.uint32, 18), key
    assert web.supports("BitShift", np.uint64, 18) and web.supports("Range", np.int64, 13)
    assert not web.supports("BitwiseXor", np.uint32, 17)  # opset 17 has no BitwiseXor: xor is spelled in bits


def test_random_ops_run_in_onnxruntime_web_bit_for_bit(tmp_path):
    """The web build's uint32 Mul/Add wrap, its shifts and its uint64 -> uint32 casts are the runtime's:
    bits, uniform floats and the dropout mask agree exactly, Box-Muller normals (Log/Cos/Sqrt)
    within the tolerance rule."""
    import onnx

    g = tracer.trace(_random_step, tracer.TensorSpec(("batch", 5), np.float32), tracer.TensorSpec((), np.int64))
    path = str(tmp_path / "random.onnx")
    exporters.save(g, path, target="onnxruntime-web")  # opset 18
    assert {"BitwiseXor", "BitShift", "Mul", "Add", "Cast"} <= {n.op_type for n in onnx.load(path).graph.node}
    sess = runtime.load(castml_format.to_bytes(g))
    rng = np.random.default_rng(0)
    for batch, seed in zip((1, 7, 3, 2, 5), SEEDS):
        x = rng.standard_normal((batch, 5)).astype(np.float32)
        s = np.array(seed, np.int64)
        got = list(_run_in_node(g, (x, s), tmp_path, path).values())
        ref = sess.run(x, s)
        for k, (a, b) in enumerate(zip(got, ref)):
            if k >= 4:  # random_normal
                assert_agree(a, b)
            else:
                assert a.dtype == b.dtype and np.array_equal(a, b), (seed, k, a, b)
    assert (got[0] == 0).any() and (got[0] != 0).any()  # the last mask keeps some and drops some


def test_random_ops_before_opset_18_fail_at_export_naming_the_op(tmp_path):
    # before opset 18 the xors are spelled bit by bit: thousands of nodes the web build loads for minutes
    g = tracer.trace(_random_step, tracer.TensorSpec(("batch", 5), np.float32), tracer.TensorSpec((), np.int64))
    named = r"onnxruntime-web-1\.30\.0 cannot run `random_uniform` \(.*test_web.*\) at opset 17: .* opset >= 18"
    with pytest.raises(exporters.ExportError, match=named):
        exporters.save(g, str(tmp_path / "r.onnx"), opset=17, target="onnxruntime-web")
    assert not os.path.exists(tmp_path / "r.onnx")
    assert len(exporters.to_onnx(g, opset=13, target="onnxruntime-cpu").graph.node) > 10_000  # the CPU target keeps it


def test_training_step_with_dropout_runs_in_onnxruntime_web(tmp_path):
    from models import layers as nn
    from models import losses
    from models.optim import SGD
    from models.training import build_train_step, step_seed, trainable

    model = nn.Sequential([nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)])
    params = model.init(0)
    opt = SGD(0.1, momentum=0.9)
    tp = trainable(params)
    state = opt.init(tp)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 6)).astype(np.float32), np.array([0, 2, 1, 1, 0])
    g = build_train_step(model, losses.cross_entropy, opt, params, state, x, y)
    path = str(tmp_path / "train_step.onnx")
    exporters.save(g, path, target="onnxruntime-web")
    sess = runtime.load(castml_format.to_bytes(g))
    losses_by_seed = []
    for step in (0, 1):
        args = (tp, {}, state, x, y, step_seed(3, step))
        got = _run_in_node(g, args, tmp_path, path)
        ref = sess.run(*args)
        # loss, new params and momenta: a different dropout mask would change them far beyond the rule
        assert_agree(tuple(got.values()), tuple(pytree.flatten(ref)[0]))
        losses_by_seed.append(float(got["output.0"]))
    assert losses_by_seed[0] != losses_by_seed[1]  # a new seed draws a new mask


# --- the parity matrix's onnxruntime-web column ---------------------------------------------------------------------

def test_parity_table_has_an_onnxruntime_web_column_that_runs():
    from bench import parity_table

    _require_node()
    header, rows, ok = parity_table.measure(["mlp"], (3,))
    assert ok and header[-1] == "onnxruntime-web", header
    assert rows[0][-1].startswith("ok "), rows
    assert parity_table.web_version() == _pinned_version()


# --- browser: the `castml web` page in headless Chromium -----------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
                      ".json": "application/json", ".html": "text/html", ".css": "text/css",
                      "": "application/octet-stream"}

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def serve():
    """serve(folder) -> http://127.0.0.1:PORT/ (a threaded static server, stopped after the test)."""
    servers = []

    def start(folder: str) -> str:
        handler = functools.partial(_Quiet, directory=folder)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _require_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing; {INSTALL}")


def _castml(*argv: str) -> None:
    from castml_cli.main import main

    assert main(list(argv)) == 0


def _png_gray(path: str, pixels: np.ndarray) -> None:
    """Write a 8-bit grayscale PNG (no color profile, so the browser reads the bytes as they are)."""
    h, w = pixels.shape
    raw = b"".join(b"\0" + pixels[r].astype(np.uint8).tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_browser_runs_mlp_with_pytree_params(tmp_path, serve):
    _require_chromium()
    _require_node()
    fn, (x, params) = zoo.mlp.build(seed=0)
    g = tracer.trace(fn, tracer.TensorSpec(("batch", 784), np.float32), params)
    exporters.save(g, str(tmp_path / "mlp.castml"))
    names = input_names(g)
    leaves = pytree.flatten(params)[0]
    np.savez(tmp_path / "params.npz", **{n[len("params."):]: a for n, a in zip(names[1:], leaves)})
    site = str(tmp_path / "site")
    _castml("web", str(tmp_path / "mlp.castml"), "-o", site, "--input", f"params={tmp_path / 'params.npz'}")
    assert sorted(os.listdir(os.path.join(site, "ort"))) == sorted(
        ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"])
    with open(os.path.join(site, "model.json")) as f:
        assert [i["name"] for i in json.load(f)["inputs"]] == names  # pytree names as in Python
    xb = np.random.default_rng(3).standard_normal((3, 784)).astype(np.float32)
    (tmp_path / "x.json").write_text(json.dumps(xb.tolist()))
    shot = str(tmp_path / "mlp.png")
    got = _node("browser_test.mjs", "--url", serve(site), "--dim", "batch=3", "--typed", f"x={tmp_path / 'x.json'}",
                "--screenshot", shot, timeout=180)
    assert got["status"] == "done" and "ms mean" in got["timing"]
    assert_agree(_array(got["outputs"]["output"]), runtime.load(castml_format.to_bytes(g)).run(xb, params))
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(shot) > 10_000


def test_browser_runs_lenet_cnn_typed_and_from_an_image(tmp_path, serve):
    _require_chromium()
    _require_node()
    fn, (x, params) = zoo.lenet.build(seed=0)
    g = tracer.trace(lambda x: fn(x, params), tracer.TensorSpec(("batch", 1, 28, 28), np.float32))
    exporters.save(g, str(tmp_path / "lenet.onnx"))
    site = str(tmp_path / "site")
    _castml("web", str(tmp_path / "lenet.onnx"), "-o", site, "--title", "LeNet")
    url = serve(site)
    sess = runtime.load(castml_format.to_bytes(g))
    xb = np.random.default_rng(5).standard_normal((2, 1, 28, 28)).astype(np.float32)
    (tmp_path / "x.json").write_text(json.dumps(xb.tolist()))
    got = _node("browser_test.mjs", "--url", url, "--dim", "batch=2", "--typed", f"x={tmp_path / 'x.json'}",
                "--screenshot", str(tmp_path / "lenet.png"), timeout=180)
    assert_agree(_array(got["outputs"]["output"]), sess.run(xb))
    # an image file: a 28x28 grayscale PNG is read as pixel/255 without resampling
    pixels = (np.add.outer(np.arange(28), np.arange(28)) * 4 % 256).astype(np.uint8)
    _png_gray(str(tmp_path / "digit.png"), pixels)
    got = _node("browser_test.mjs", "--url", url, "--image", f"x={tmp_path / 'digit.png'}", timeout=180)
    ximg = (pixels.astype(np.float32) / 255)[None, None]
    assert_agree(_array(got["outputs"]["output"]), sess.run(ximg))
