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
