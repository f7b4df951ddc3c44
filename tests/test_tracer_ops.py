"""tracer.ops: each op gives the same result eagerly (plain arrays) and traced (IR + interpreter),
and the eager results match independent NumPy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ir
import tracer
import tracer.ops as ops
from tests.helpers import assert_agree

rng = np.random.default_rng(0)
X4 = rng.normal(size=(2, 3, 6, 6))


def traced_equals_eager(fn, *args):
    eager = fn(*args)
    g = tracer.trace(fn, *args)
    ir.verify(g)
    assert ir.parse(g.to_text()) == g
    assert_agree(ir.interpret(g, *args), eager)
    return eager


def _naive_conv2d(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out + b[None, :, None, None]


@pytest.mark.parametrize("stride, pad", [(1, 0), (2, 1), (1, 2)])
def test_conv2d(stride, pad):
    w, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    y = traced_equals_eager(lambda x, w, b: ops.conv2d(x, w, b, stride=stride, padding=pad), X4, w, b)
    assert_agree(y, _naive_conv2d(X4, w, b, stride, pad))


def test_conv2d_float32_symbolic_batch():
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    g = tracer.trace(lambda x: ops.conv2d(x, w, padding=1), tracer.TensorSpec(("n", 3, 6, 6), np.float32))
    assert str(g.outputs[0].type) == "f32[n,4,6,6]"
    for n in (1, 5):
        x = rng.normal(size=(n, 3, 6, 6)).astype(np.float32)
        assert_agree(ir.interpret(g, x), ops.conv2d(x, w, padding=1))


def test_pools():
    y = traced_equals_eager(lambda x: ops.max_pool2d(x, 2), X4)
    assert_agree(y, X4.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5)))
    y = traced_equals_eager(lambda x: ops.avg_pool2d(x, 3, stride=3), X4)
    assert_agree(y, X4.reshape(2, 3, 2, 3, 2, 3).mean(axis=(3, 5)))
    y = traced_equals_eager(ops.global_avg_pool2d, X4)
    assert_agree(y, X4.mean(axis=(2, 3), keepdims=True))


def test_softmax_family():
    x = rng.normal(size=(4, 5)) * 10
    e = np.exp(x - x.max(axis=1, keepdims=True))
    ref = e / e.sum(axis=1, keepdims=True)
    assert_agree(traced_equals_eager(ops.softmax, x), ref)
    assert_agree(traced_equals_eager(ops.log_softmax, x), np.log(ref))


def test_normalizations():
    x = rng.normal(size=(4, 6))
    w, b = rng.normal(size=6), rng.normal(size=6)
    ref = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5) * w + b
    assert_agree(traced_equals_eager(ops.layer_norm, x, w, b), ref)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    ref = (X4 - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    assert_agree(traced_equals_eager(lambda x, m, v: ops.batch_norm(x, m, v), X4, mean, var), ref)


def test_activations():
    x = np.linspace(-6, 6, 101)
    erf = np.array([math.erf(v) for v in x])
    assert_agree(traced_equals_eager(ops.erf, x), erf)
    gelu = 0.5 * x * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    assert_agree(traced_equals_eager(ops.gelu, x), gelu)
    assert_agree(traced_equals_eager(ops.sigmoid, x), 1 / (1 + np.exp(-x)))
    assert_agree(traced_equals_eager(ops.relu, x), np.maximum(x, 0))


def test_one_hot():
    idx = np.array([0, 2, 1])
    assert_agree(traced_equals_eager(lambda i: ops.one_hot(i, 3), idx), np.eye(3, dtype=np.float32)[idx])
