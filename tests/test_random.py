"""Random ops with an explicit seed: the counter-based generator against an independent pure-Python
reference, eager == `ir.interpret` == runtime == onnxruntime (bits and uniforms bit for bit,
normals within the tolerance rule), at opset 18 and before (no BitwiseXor), new draws for new
seeds inside one traced graph, and sane statistics."""

from __future__ import annotations

import numpy as np
import pytest

import exporters
import ir
import tracer
from exporters.castml_format import to_bytes
from runtime import load
from runtime.errors import RuntimeInputError
from runtime.kernels import random as R
from tests.helpers import assert_agree
from tracer import ops

SEEDS = (0, 1, -5, 2**40 + 3, 2**63 - 1)


def _mix_ref(x: int) -> int:
    """lowbias32 in Python integers (independent of the NumPy kernel)."""
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def _bits_ref(seed: int, stream: int, n: int) -> list[int]:
    m = 0xFFFFFFFF
    s = seed & 0xFFFFFFFFFFFFFFFF
    c = _mix_ref((stream * 0x9E3779B9) & m)
    key = _mix_ref((s & m) ^ _mix_ref((s >> 32) ^ c))
    return [_mix_ref((_mix_ref(i ^ key) + key) & m) for i in range(n)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("stream", [0, 3])
def test_bits_match_a_pure_python_reference(seed, stream):
    got = ops.random_bits((2, 5), np.int64(seed), stream=stream)
    assert got.dtype == np.uint32
    assert got.ravel().tolist() == _bits_ref(seed, stream, 10)


def test_known_values_are_stable():
    # pinned: a change of the generator changes every saved model's behaviour
    assert ops.random_bits((4,), 0).tolist() == _bits_ref(0, 0, 4)
    assert int(R.mix32(np.array(1, np.uint32))) == 1753845952


def test_uniform_is_exact_from_bits_and_in_range():
    bits = ops.random_bits((1000,), 7)
    u32 = ops.random_uniform((1000,), 7)
    u64 = ops.random_uniform((1000,), 7, dtype=np.float64)
    u16 = ops.random_uniform((1000,), 7, dtype=np.float16)
    np.testing.assert_array_equal(u32, (bits >> 8).astype(np.float64) / 2**24)
    np.testing.assert_array_equal(u64, bits.astype(np.float64) / 2**32)
    np.testing.assert_array_equal(u16, (bits >> 21).astype(np.float64) / 2**11)
    for u in (u32, u64, u16):
        assert ((u >= 0) & (u < 1)).all()
    scaled = ops.random_uniform((1000,), 7, low=-2.0, high=3.0)
    assert scaled.dtype == np.float32 and scaled.min() >= -2 and scaled.max() < 3


def test_statistics():
    u = ops.random_uniform((200_000,), 11, dtype=np.float64)
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    counts = np.bincount((u * 16).astype(int), minlength=16)
    chi2 = float(((counts - 12500.0) ** 2 / 12500.0).sum())
    assert chi2 < 50  # 15 degrees of freedom; p < 1e-5 beyond 45
    z = ops.random_normal((200_000,), 11, dtype=np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.mean(np.abs(z) < 1.96) - 0.95) < 0.005
    # neighbouring seeds and streams are uncorrelated
    a, b, c = (ops.random_uniform((50_000,), s, dtype=np.float64, stream=t) for s, t in ((5, 0), (6, 0), (5, 1)))
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02 and abs(np.corrcoef(a, c)[0, 1]) < 0.02


def _step(x, seed):
    return (ops.dropout(x, 0.3, seed), ops.random_bits(x.shape, seed, stream=2),
            ops.random_normal(x.shape, seed, stream=1), ops.random_uniform((3,), seed, dtype=np.float64),
            ops.random_normal((4,), seed, dtype=np.float64, mean=1.0, std=2.0))


@pytest.fixture(scope="module")
def traced():
    return tracer.trace(_step, tracer.TensorSpec(("batch", 5), np.float32), tracer.TensorSpec((), np.int64))


def test_traced_graph_takes_the_seed_as_input(traced):
    kinds = [op.kind for op in traced.ops]
    assert {"random_uniform", "random_bits", "random_normal"} <= set(kinds)
    assert "random_uniform[dtype=f32, shape=(batch, 5), stream=0](%seed)" in str(traced)
    assert ir.parse(traced.to_text()) == traced


@pytest.mark.parametrize("opset", [18, 13])
def test_eager_interpret_runtime_onnxruntime_agree(traced, opset):
    ort = pytest.importorskip("onnxruntime")
    model = exporters.to_onnx(traced, opset=opset)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    castml = load(to_bytes(traced), backend="numpy")
    native = load(to_bytes(traced), backend="native")
    rng = np.random.default_rng(0)
    for batch, seed in zip((1, 7, 3, 2, 5), SEEDS):
        x = rng.standard_normal((batch, 5)).astype(np.float32)
        s = np.array(seed, np.int64)
        ref = _step(x, s)
        engines = {"interpret": ir.interpret(traced, x, s), "runtime": castml.run(x, s), "native": native.run(x, s),
                   "onnxruntime": tuple(sess.run(None, dict(zip(names, (x, s)))))}
        for name, got in engines.items():
            for k, (a, b) in enumerate(zip(got, ref)):
                if k in (2, 4) and name in ("onnxruntime", "native"):  # their log/cos/sqrt: the tolerance rule
                    assert_agree(a, b)
                else:  # bits, uniform floats and the dropout built on them: bit for bit
                    assert a.dtype == b.dtype and np.array_equal(a, b), (name, k)


def test_new_seed_new_mask_same_seed_same_mask(traced):
    x = np.ones((64, 5), np.float32)
    masks = [ir.interpret(traced, x, np.array(s, np.int64))[0] != 0 for s in (0, 1, 0)]
    assert np.array_equal(masks[0], masks[2]) and not np.array_equal(masks[0], masks[1])
    keep = np.mean(masks[0])
    assert 0.6 < keep < 0.8
    out = ir.interpret(traced, x, np.array(0, np.int64))[0]
    assert_agree(out[masks[0]], np.full(int(masks[0].sum()), 1 / 0.7, np.float32))


def test_dropout_gradient_is_the_mask():
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    g = tracer.trace(lambda x, s: ops.dropout(x, 0.5, s).sum(), x, tracer.TensorSpec((), np.int64))
    dg = ir.grad(g, wrt=0)
    seed = np.array(9, np.int64)
    mask = ops.dropout(np.ones_like(x), 0.5, seed)
    assert_agree(ir.interpret(dg, x, seed), mask)


def test_dropout_eval_and_rate_zero_are_identity_and_bad_args_are_refused():
    x = np.arange(4.0)
    assert ops.dropout(x, 0.5, 0, train=False) is x and ops.dropout(x, 0.0, 0) is x
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        ops.dropout(x, 1.0, 0)
    with pytest.raises(ValueError, match="x must be floating"):
        ops.dropout(np.arange(4), 0.5, 0)
    with pytest.raises(ValueError, match="seed must be a 0-d integer"):
        ops.random_uniform((2,), 1.5)
    with pytest.raises(RuntimeInputError, match="0-d integer seed"):
        R.random_bits(np.zeros(2, np.int64), shape=(2,), stream=0)


def test_type_rule_refuses_a_float_seed_and_an_int_dtype():
    with pytest.raises(tracer.TraceError, match="seed must be a 0-d integer"):
        tracer.trace(lambda s: ops.random_uniform((2,), s), np.float32(1))
    with pytest.raises(tracer.TraceError, match="dtype must be float16, float32 or float64"):
        tracer.trace(lambda s: ops.random_uniform((2,), s, dtype=np.int32), np.int64(1))


def test_seed_of_other_integer_dtypes_wraps_like_int64():
    for dt in (np.int32, np.uint32, np.uint64, np.int8):
        s = np.array(-3, np.int64).astype(dt)
        assert np.array_equal(ops.random_bits((5,), s), ops.random_bits((5,), np.array(s).astype(np.int64)))
