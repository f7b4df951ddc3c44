"""The parity matrix: every zoo model, traced once with a symbolic batch, agrees at batch 1, 7 and
64 between eager NumPy, `ir.interpret`, onnxruntime (via `exporters.to_onnx`) and our runtime
(`runtime.load` of the `.castml` bytes), under DESIGN.md's tolerance rule (float32).

The transformer encoder at batch 64 takes most of the time, so that one case is marked slow; the
transformer runs at batch 1 and 7 in the fast tier."""

from __future__ import annotations

import numpy as np
import pytest

import ir
import tracer
from models import zoo
from tests.helpers import assert_agree

BATCHES = (1, 7, 64)
CASES = [(name, BATCHES) for name in sorted(zoo.MODELS) if name != "transformer_encoder"] + [
    ("transformer_encoder", (1, 7)),
    pytest.param(("transformer_encoder", (64,)), marks=pytest.mark.slow, id="transformer_encoder-64"),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0] if isinstance(c, tuple) else None)
def traced(request):
    """(name, fn, params, graph traced with a symbolic batch, inputs and eager results per batch)."""
    name, batches = request.param
    fn, (x, params) = zoo.MODELS[name].build(seed=0)
    g = tracer.trace(fn, tracer.TensorSpec(("batch",) + x.shape[1:], x.dtype), params)
    rng = np.random.default_rng(123)
    inputs = {b: rng.standard_normal((b,) + x.shape[1:]).astype(x.dtype) for b in batches}
    refs = {b: fn(inputs[b], params) for b in batches}
    return name, fn, params, g, inputs, refs


def test_build_contract(traced):
    name, fn, params, g, inputs, refs = traced
    _, (x, _) = zoo.MODELS[name].build(seed=0)
    assert x.dtype == np.float32 and g.inputs[0].type.shape[0] == "batch"
    for b, out in refs.items():
        assert out.shape[0] == b and out.dtype == np.float32 and np.isfinite(out).all()
    # seeded: the same seed gives the same parameters, another seed different ones
    _, (_, p0) = zoo.MODELS[name].build(seed=0)
    _, (_, p1) = zoo.MODELS[name].build(seed=1)
    assert_agree(p0, params)
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(p0), _leaves(p1)))


def _leaves(tree):
    from runtime import pytree

    return pytree.flatten(tree)[0]


def test_interpret_matches_eager(traced):
    _, _, params, g, inputs, refs = traced
    for b in inputs:
        assert_agree(ir.interpret(g, inputs[b], params), refs[b])


def test_castml_runtime_matches_eager(traced):
    runtime = pytest.importorskip("runtime")
    castml_format = pytest.importorskip("exporters.castml_format")
    sess = runtime.load(castml_format.to_bytes(g := traced[3]))
    _, _, params, _, inputs, refs = traced
    assert g.arg_names[0] == "x"
    for b in inputs:
        assert_agree(sess.run(inputs[b], params), refs[b])


def test_onnxruntime_matches_eager(traced):
    ort = pytest.importorskip("onnxruntime")
    exporters = pytest.importorskip("exporters")
    if not hasattr(exporters, "to_onnx"):
        pytest.skip("exporters.to_onnx is not available")
    _, _, params, g, inputs, refs = traced
    from runtime import pytree

    model = exporters.to_onnx(g)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for b in inputs:
        leaves = pytree.flatten((inputs[b], params))[0]
        assert len(leaves) == len(names)
        (out,) = sess.run(None, dict(zip(names, leaves)))
        assert_agree(out, refs[b])


# --- gru: one export with a symbolic batch AND a symbolic sequence length ------------------------------------------

@pytest.fixture(scope="module")
def gru_traced():
    fn, (x, params) = zoo.gru.build(seed=0)
    g = tracer.trace(fn, tracer.TensorSpec(("batch", "seq", x.shape[2]), x.dtype), params)
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((b, s, x.shape[2])).astype(np.float32) for b, s in ((1, 1), (1, 9), (7, 6), (7, 23))]
    return fn, params, g, inputs


def test_gru_is_one_scripted_loop_over_a_symbolic_length(gru_traced):
    _, _, g, _ = gru_traced
    assert [op.kind for op in g.ops].count("loop") == 1
    assert g.inputs[0].type.shape[:2] == ("batch", "seq")
    assert ir.parse(g.to_text()) == g


def test_gru_parity_at_any_batch_and_length(gru_traced):
    ort = pytest.importorskip("onnxruntime")
    import exporters
    import runtime
    from exporters.castml_format import to_bytes
    from runtime import pytree

    fn, params, g, inputs = gru_traced
    sess = runtime.load(to_bytes(g))
    model = exporters.to_onnx(g)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[:2]] == ["batch", "seq"]
    ort_sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in ort_sess.get_inputs()]
    for x in inputs:
        ref = fn(x, params)
        assert ref.shape == (x.shape[0], zoo.gru.CLASSES)
        assert_agree(ir.interpret(g, x, params), ref)
        assert_agree(sess.run(x, params), ref)
        (out,) = ort_sess.run(None, dict(zip(names, pytree.flatten((x, params))[0])))
        assert_agree(out, ref)


def test_gru_matches_an_unrolled_numpy_reference():
    from models.layers import GRU

    m = GRU(3, 4, return_sequences=True)
    p = m.init(1, np.float64)["cell"]
    x = np.random.default_rng(2).standard_normal((2, 5, 3))

    def sig(v):
        return 1 / (1 + np.exp(-v))

    h, hs = np.zeros((2, 4)), []
    for t in range(5):  # PyTorch's nn.GRU equations, gates r, z, n
        wi, wh = x[:, t] @ p["weight_ih"] + p["bias_ih"], h @ p["weight_hh"] + p["bias_hh"]
        r, z = sig(wi[:, :4] + wh[:, :4]), sig(wi[:, 4:8] + wh[:, 4:8])
        n = np.tanh(wi[:, 8:] + r * wh[:, 8:])
        h = (1 - z) * n + z * h
        hs.append(h)
    assert_agree(m(x), np.stack(hs, axis=1))
    g = tracer.trace(lambda x: m.apply(m.params, x), tracer.TensorSpec((2, "seq", 3), np.float64))
    assert_agree(ir.interpret(g, x), np.stack(hs, axis=1))
    assert_agree(ir.interpret(g, x[:, :0]), np.zeros((2, 0, 4)))


# --- the table in docs/models.md ---------------------------------------------------------------------------------

def test_docs_parity_table_lists_every_model_and_no_failure():
    import pathlib

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "models.md").read_text()
    table = doc.split("<!-- parity:begin -->")[1].split("<!-- parity:end -->")[0]
    header = [c.strip() for c in table.split("\n| model |")[1].split("\n")[0].strip("|").split("|")]
    assert header[:5] == ["input", "ir.interpret", "castml runtime", "castml native", "onnxruntime"], header
    assert header[5:] == ["onnxruntime-web"], header
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert {r.split("`")[1] for r in rows} == set(zoo.MODELS)
    assert "FAIL" not in table and "onnxruntime-web 1." in table  # the note names the measured version
    for r in rows:
        cells = dict(zip(header, (c.strip() for c in r.strip("|").split("|")[1:])))
        assert len(cells) == len(header) and cells["input"].startswith("batch "), r
        assert all(c.startswith(("ok ", "n/a")) for k, c in cells.items() if k != "input"), r
        # onnxruntime and onnxruntime-web run every zoo model
        assert cells["onnxruntime"].startswith("ok ") and cells["onnxruntime-web"].startswith("ok "), r


def test_parity_table_script_measures_and_flags(tmp_path):
    pytest.importorskip("onnxruntime")
    from bench import parity_table

    header, rows, ok = parity_table.measure(["mlp"], (1,))
    assert ok and header[:2] == ["model", "input"] and "onnxruntime" in header and len(rows) == 1
    assert parity_table.agreement(np.float32([1, 2]), np.float32([1, 2.1])) == pytest.approx((0.1 / 2.1, False),
                                                                                             rel=1e-6)
    doc = tmp_path / "m.md"
    doc.write_text(f"x\n{parity_table.BEGIN}\nold\n{parity_table.END}\ny\n")
    parity_table.write_between_markers(str(doc), parity_table.to_markdown(header, rows))
    text = doc.read_text()
    assert "old" not in text and "| `mlp` | batch 1 |" in text and text.endswith("y\n")


def test_parity_table_fails_the_cell_of_an_engine_that_raises(monkeypatch):
    from bench import parity_table

    def broken(x, params):
        raise RuntimeError("node web/run_model.mjs exited with 1: no kernel | here\nsecond line")

    monkeypatch.setattr(parity_table, "_engines", lambda g: {"good": lambda x, p: zoo.mlp.build(seed=0)[0](x, p),
                                                             "broken": broken, "absent": "not built"})
    header, rows, ok = parity_table.measure(["mlp"], (2,))
    assert not ok and header == ["model", "input", "good", "broken", "absent"]
    assert rows == [["`mlp`", "batch 2", "ok 0.0e+00",
                     "FAIL (RuntimeError: node web/run_model.mjs exited with 1: no kernel / here)", "n/a (not built)"]]
