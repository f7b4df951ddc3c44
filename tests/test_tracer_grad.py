"""tracer.grad / value_and_grad / stop_gradient / custom_vjp: eager-style gradients (the seed
example), Python control flow on concrete values, nesting, pytrees, and the NN ops of
`tracer.ops` against finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import tracer
from ir.autodiff import AutodiffError
from tests.helpers import assert_agree
from tracer import ops as F

FD_STEP = 1e-3


def fd_grad(f, x: np.ndarray) -> np.ndarray:
    """Fourth-order central differences of the scalar NumPy function `f` at `x`."""
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        vals = []
        for k in (-2, -1, 1, 2):
            xk = x.copy()
            xk[idx] += k * FD_STEP
            vals.append(float(f(xk)))
        out[idx] = (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * FD_STEP)
    return out


def assert_fd_close(got, ref) -> None:
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape
    tol = 1e-6 * np.abs(ref) + 1e-7 * max(1.0, float(np.abs(ref).max(initial=0.0)))
    assert (np.abs(got - ref) <= tol).all(), f"AD {got.ravel()[:6]} vs FD {ref.ravel()[:6]}"


def test_seed_example_eager():
    assert tracer.grad(lambda x: x ** 2)(2.0) == 4.0
    assert tracer.grad(lambda x: x ** 2)(3.0) == 6.0


def test_value_and_grad_with_argnums_and_pytrees():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))

    def loss(x, w):
        return np.sum(np.tanh(x @ w))

    value, (dx, dw) = tracer.value_and_grad(loss, argnums=(0, 1))(x, w)
    dz = 1 - np.tanh(x @ w) ** 2
    assert_agree(value, np.asarray(loss(x, w)))
    assert_agree(dx, dz @ w.T)
    assert_agree(dw, x.T @ dz)
    params = {"w": w, "b": np.zeros(2)}
    g = tracer.grad(lambda p, x: np.sum((x @ p["w"] + p["b"]) ** 2))(params, x)
    assert set(g) == {"w", "b"}
    assert_agree(g["b"], 2 * (x @ w).sum(0))


def test_python_control_flow_follows_concrete_values():
    def f(x):
        if x.sum() > 0:  # needs the concrete value
            return np.sum(x ** 3)
        return np.sum(np.sin(x))

    x = np.array([1.0, 2.0])
    assert_agree(tracer.grad(f)(x), 3 * x ** 2)
    assert_agree(tracer.grad(f)(-x), np.cos(-x))

    def loop(x):
        y = x
        while float(y) < 100.0:
            y = y * x
        return y

    assert tracer.grad(loop)(3.0) == 5 * 3.0 ** 4  # y = x**5 at x = 3


def test_nested_grad_gives_higher_derivatives():
    d2 = tracer.grad(lambda x: tracer.grad(lambda y: y ** 3)(x))
    assert d2(2.0) == 12.0
    d3 = tracer.grad(lambda x: tracer.grad(lambda y: tracer.grad(lambda z: np.sin(z))(y))(x))
    assert_agree(d3(0.7), np.asarray(-np.cos(0.7)))
    # the brief's form: the gradient of the sum of a gradient
    f = lambda x: np.sum(np.exp(x) * x)  # noqa: E731
    x = np.array([0.1, -0.4, 0.3])
    assert_agree(tracer.grad(lambda x: tracer.grad(f)(x).sum())(x), np.exp(x) * (x + 2))


def test_closure_over_an_outer_tracer():
    def outer(a):
        return tracer.grad(lambda y: a * y ** 2)(3.0)  # d/dy = 6a, then d/da = 6

    assert tracer.grad(outer)(2.0) == 6.0


def test_grad_inside_tracer_trace_is_inlined():
    import ir

    g = tracer.trace(lambda x: tracer.grad(lambda y: np.sum(y ** 2))(x), tracer.TensorSpec((3,), np.float64))
    assert_agree(ir.interpret(g, np.array([1.0, 2.0, 3.0])), np.array([2.0, 4.0, 6.0]))


def test_stop_gradient():
    assert tracer.grad(lambda x: x * tracer.stop_gradient(x))(3.0) == 3.0
    assert tracer.grad(lambda x: tracer.stop_gradient(x * x) + x)(5.0) == 1.0
    assert_agree(tracer.stop_gradient(np.ones(2)), np.ones(2))


def test_custom_vjp():
    @tracer.custom_vjp
    def scale_gradient(x, k):
        return x

    scale_gradient.defvjp(lambda x, k: (x, k), lambda k, ct: (ct * k, None))
    f = lambda x: np.sum(scale_gradient(x, np.float64(0.25)) * np.array([0.5, 3.0, -4.0]))  # noqa: E731
    assert_agree(tracer.grad(f)(np.zeros(3)), np.array([0.125, 0.75, -1.0]))
    assert_agree(scale_gradient(np.array([5.0]), 2.0), np.array([5.0]))  # eager call: the function itself

    @tracer.custom_vjp
    def log1pexp(x):
        return np.log1p(np.exp(x))

    log1pexp.defvjp(lambda x: (log1pexp(x), x), lambda x, ct: (ct * (1 - 1 / (1 + np.exp(x))),))
    assert_agree(tracer.value_and_grad(log1pexp)(0.0), (np.asarray(np.log(2.0)), np.asarray(0.5)))


def test_errors():
    with pytest.raises(AutodiffError, match="floating"):
        tracer.grad(lambda n: n * 2.0)(np.int64(3))
    with pytest.raises(AutodiffError, match="scalar"):
        tracer.grad(lambda x: x * 2.0)(np.ones(3))
    with pytest.raises(tracer.TraceError, match="one float scalar"):
        tracer.grad(lambda x: (x, x))(1.0)


NN_CASES = {
    "conv2d_input": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), 0),
    "conv2d_weight": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), 1),
    "conv2d_bias": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), 2),
    "max_pool2d": (lambda x, w, b: F.max_pool2d(x, 2, stride=1), 0),
    "avg_pool2d": (lambda x, w, b: F.avg_pool2d(x, 3, stride=2, padding=1), 0),
    "softmax": (lambda x, w, b: F.softmax(x, axis=1), 0),
    "log_softmax": (lambda x, w, b: F.log_softmax(x, axis=-1), 0),
    "layer_norm_x": (lambda x, w, b: F.layer_norm(x, np.ones((5, 5)) + 0.5 * x[0, 0]), 0),
    "layer_norm_weight": (lambda x, w, b: F.layer_norm(x, w.reshape(-1)[:5], b[0] * np.ones(5)), 1),
    "layer_norm_bias": (lambda x, w, b: F.layer_norm(x, np.ones(5), b[:1] * np.ones(5)), 2),
    "gelu": (lambda x, w, b: F.gelu(x), 0),
    "gelu_tanh": (lambda x, w, b: F.gelu(x, approximate="tanh"), 0),
    "sigmoid": (lambda x, w, b: F.sigmoid(x), 0),
    "einsum_diagonal": (lambda x, w, b: np.einsum("ijj,kij->ki", x[0, :3, :3, :3], w[:, 0]), 0),
    "einsum_trace": (lambda x, w, b: np.einsum("ii->", x[0, 0]) * x[1, 2], 0),
    "einsum_diagonal_weight": (lambda x, w, b: np.einsum("ijj,kij->ki", x[0, :, :3, :3], w[:, :, 1]), 1),
}


@pytest.mark.parametrize("name", sorted(NN_CASES))
def test_tracer_nn_ops_match_finite_differences(name):
    fn, argnum = NN_CASES[name]
    rng = np.random.default_rng(3)
    args = [rng.permutation(np.linspace(-2, 2, 2 * 3 * 5 * 5)).reshape(2, 3, 5, 5),  # distinct: no pool ties
            rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)]
    weights = rng.standard_normal(np.shape(fn(*args)))

    def loss(*a):
        return np.sum(fn(*a) * weights)

    got = tracer.grad(loss, argnums=argnum)(*args)
    ref = fd_grad(lambda v: loss(*[v if i == argnum else a for i, a in enumerate(args)]), args[argnum])
    assert_fd_close(got, ref)
