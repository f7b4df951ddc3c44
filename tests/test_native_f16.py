"""float16 in the native runtime against the NumPy runtime (runtime/native/src/f16.{h,cpp}).

Casts are compared bit for bit (they are exact); everything else with assert_agree, whose float16
tolerance covers the one difference left: NumPy rounds each op's float16 result while fused ops
(gemm, fused_conv) round once, and float16 sums here accumulate in double. cumsum keeps NumPy's
per-step float16 rounding, so it is compared bit for bit too.
"""

from __future__ import annotations

import numpy as np
import pytest

import runtime
import tracer
from exporters.castml_format import to_bytes
from runtime import native_backend as nb
from tests.helpers import assert_agree, build_native, run_in_threads
from tests.test_castml_format import _hand_model
from tests.test_native import ACTIVATIONS, BINARY, CONVS, MATMULS, POOLS, REDUCTIONS, _both, _check, _f, _rng
from tracer import ops as T
from tracer.core import context_of, emit
from tracer.ops import _apply

F16 = np.float16


@pytest.fixture(scope="module", autouse=True)
def native_lib():
    return build_native()


def _h(shape, seed=0, lo=-2.0, hi=2.0):
    return _f(shape, F16, seed, lo, hi)


def _same_bits(got, ref):
    """Exact equality of two float16/32/64 arrays: bits where not NaN, NaN where NaN."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    nan = np.isnan(ref) if ref.dtype.kind == "f" else np.zeros(ref.shape, bool)
    if ref.dtype.kind == "f":
        assert np.array_equal(np.isnan(got), nan)
    view = {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(ref.dtype.itemsize)
    g = got[~nan].view(view) if ref.dtype.kind == "f" else got[~nan]
    r = ref[~nan].view(view) if ref.dtype.kind == "f" else ref[~nan]
    bad = np.flatnonzero(g != r)
    assert bad.size == 0, f"{bad.size} differ, first: got {got[~nan][bad[0]]!r}, ref {ref[~nan][bad[0]]!r}"


def _check_bits(fn, *args):
    native, ref = _both(tracer.trace(fn, *args))
    _same_bits(native.run(*args), ref.run(*args))


# ---- casts: every float16, rounding ties, subnormals, overflow, NaN ---------------------------------

ALL_HALVES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(F16)


def _float32_probes() -> np.ndarray:
    h = ALL_HALVES[np.isfinite(ALL_HALVES)].astype(np.float32)
    h = np.unique(h)
    mid = ((h[:-1].astype(np.float64) + h[1:]) / 2).astype(np.float32)  # exact ties (float32 has the room)
    rng = _rng(7)
    random_bits = rng.integers(0, 1 << 32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = np.array([65504, 65519.996, 65520, 65536, 1e30, np.inf, -np.inf, np.nan, 2.0 ** -24, 2.0 ** -25,
                      2.0 ** -25 * 1.0000001, 2.0 ** -26, 2.0 ** -14, 1e-45, -0.0, 0.0], np.float32)
    return np.concatenate([h, mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf)),
                           random_bits, edges])


def test_float16_to_other_dtypes_is_exact():
    for dtype in (np.float32, np.float64):
        _check_bits(lambda x, d=dtype: x.astype(d), ALL_HALVES)
    finite = ALL_HALVES[np.isfinite(ALL_HALVES)]
    for dtype in (np.int64, np.int32, np.int8, np.uint8, np.bool_):
        small = finite[np.abs(finite.astype(np.float32)) < 100] if dtype in (np.int8, np.uint8) else finite
        if dtype == np.uint8:
            small = small[small >= 0]
        _check_bits(lambda x, d=dtype: x.astype(d), small)


def test_float32_to_float16_rounds_to_nearest_even():
    probes = _float32_probes()
    _check_bits(lambda x: x.astype(F16), probes)
    _check_bits(lambda x: x.astype(F16), probes[:37])  # shorter than a vector: the tail path alone
    _check_bits(lambda x: x.astype(F16), np.zeros((0, 3), np.float32))


def test_float64_to_float16_rounds_once():
    with np.errstate(invalid="ignore"):  # signaling NaNs among the random bit patterns
        probes = _float32_probes().astype(np.float64)
    h = np.unique(ALL_HALVES[np.isfinite(ALL_HALVES)].astype(np.float64))
    mid = (h[:-1] + h[1:]) / 2
    # just off a tie by less than float32 resolves: rounding through float32 would land on the tie
    near = np.concatenate([mid * (1 + 2.0 ** -40), mid * (1 - 2.0 ** -40), mid])
    assert (near.astype(np.float32).astype(F16) != near.astype(F16)).sum() > 1000  # the probes tell them apart
    _check_bits(lambda x: x.astype(F16), np.concatenate([probes, near, [1e300, -1e-300, 5e-324]]))


def test_integer_and_bool_to_float16():
    ints = np.concatenate([np.arange(-3000, 3000), [65504, 65519, 65520, 70000, -70000, 2 ** 40]]).astype(np.int64)
    _check_bits(lambda x: x.astype(F16), ints)
    _check_bits(lambda x: x.astype(F16), ints.astype(np.int32))
    _check_bits(lambda x: x.astype(F16), np.arange(256).astype(np.uint8))
    _check_bits(lambda x: x.astype(F16), np.array([True, False, True]))


# ---- elementwise ---------------------------------------------------------------------------------

X = _h((3, 4))
POS = _h((3, 4), lo=0.1, hi=3.0)
UNIT = _h((3, 4), lo=-0.9, hi=0.9)
SPECIAL = X.copy()
SPECIAL[0, :3] = (np.nan, np.inf, -np.inf)

UNARY = {
    "exp": (np.exp, X), "exp2": (np.exp2, X), "expm1": (np.expm1, X), "log": (np.log, POS), "log2": (np.log2, POS),
    "log10": (np.log10, POS), "log1p": (np.log1p, POS), "sqrt": (np.sqrt, POS), "cbrt": (np.cbrt, X),
    "sin": (np.sin, X), "cos": (np.cos, X), "tan": (np.tan, UNIT), "asin": (np.arcsin, UNIT),
    "acos": (np.arccos, UNIT), "atan": (np.arctan, X), "sinh": (np.sinh, X), "cosh": (np.cosh, X),
    "tanh": (np.tanh, X), "asinh": (np.arcsinh, X), "acosh": (np.arccosh, POS + F16(1)), "atanh": (np.arctanh, UNIT),
    "floor": (np.floor, X * F16(3)), "ceil": (np.ceil, X * F16(3)), "trunc": (np.trunc, X * F16(3)),
    "round": (np.rint, X * F16(3)), "neg": (np.negative, SPECIAL), "abs": (np.abs, SPECIAL), "sign": (np.sign, SPECIAL),
    "reciprocal": (np.reciprocal, POS), "logical_not": (np.logical_not, SPECIAL), "isnan": (np.isnan, SPECIAL),
    "isinf": (np.isinf, SPECIAL), "isfinite": (np.isfinite, SPECIAL), "relu_special": (lambda x: T.relu(x), SPECIAL),
    "exp_of_int8": (np.exp, np.arange(-6, 6, dtype=np.int8).reshape(3, 4)),  # NumPy: int8 -> float16
    "exp_overflow": (np.exp, X * F16(8)),  # float16 overflows to inf where float32 does not
    "scalar": (np.sqrt, POS[0, 0].reshape(())),
    "empty": (np.exp, np.zeros((0, 4), F16)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name):
    fn, x = UNARY[name]
    _check(fn, x)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation(name):
    kind = name.split("_tanh")[0]
    _check(lambda x: _apply(kind, [x], ACTIVATIONS[name]), _h((5, 7), lo=-4, hi=4))


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_broadcasting(name):
    a, b = _h((2, 3, 4), 1, 0.5, 3), _h((3, 1), 2, 0.5, 3)
    _check(BINARY[name], a, b)
    _check(lambda x: BINARY[name](x, F16(1.5)), a)
    _check(lambda x: BINARY[name](2.5, x), a)  # a Python scalar stays float16 (NEP 50)
    _check(BINARY[name], _h((0, 3)), _h((3,)))


MIXED = {  # NumPy 2's promotion: float16 with int8/uint8 stays float16, with int32/float32 it does not
    "f16_f32": (np.add, _h((3, 4)), _f((4,), seed=1)),
    "f16_int8": (np.multiply, _h((3, 4)), np.arange(-2, 2, dtype=np.int8)),
    "uint8_f16": (np.subtract, np.arange(4, dtype=np.uint8), _h((3, 4))),
    "f16_int32": (np.add, _h((3, 4)), np.arange(4, dtype=np.int32)),
    "f16_f64": (np.divide, _h((3, 4)), _f((3, 1), np.float64, 2)),
    "less_int64": (np.less, _h((3, 4)), np.zeros(4, np.int64)),
    "equal_f32": (np.equal, _h((3, 4)), _h((3, 4)).astype(np.float32)),
    "logical_and": (np.logical_and, SPECIAL, _h((4,), 3) > 0),
    "logical_or": (np.logical_or, SPECIAL, np.zeros(4, F16)),
    "logical_xor": (np.logical_xor, SPECIAL, np.ones(4, F16)),
}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_mixed_dtypes(name):
    fn, a, b = MIXED[name]
    _check(fn, a, b)


def test_where():
    _check(lambda c, a, b: np.where(c, a, b), X > 0, X, _h((4,), 5))
    _check(lambda a: np.where(a > 0, a, F16(0)), SPECIAL)
    _check(lambda c, a, b: np.where(c, a, b), _h((3, 1), 6), X, _h((4,), 5))  # a float16 condition


# ---- shape ops, creation -------------------------------------------------------------------------

SHAPES = {
    "reshape": (lambda x: x.reshape(4, 3), X),
    "transpose": (lambda x: x.transpose(2, 0, 1), _h((2, 3, 4))),
    "broadcast_to": (lambda x: np.broadcast_to(x, (2, 3, 4)), _h((3, 1))),
    "slice": (lambda x: x[1:3, ::-2], _h((4, 5))),
    "slice_negative": (lambda x: x[::-1, 1:-1], _h((4, 5))),
    "concat": (lambda x, y: np.concatenate([x, y, x], axis=-1), X, _h((3, 2))),
    "split": (lambda x: tuple(np.split(x, [1, 3], axis=1)), X),
    "gather": (lambda x: np.take(x, np.array([2, 0, -1]), axis=1), X),
    "tile": (lambda x: np.tile(x, (2, 1)), X),
    "repeat": (lambda x: np.repeat(x, 2, axis=0), X),
    "pad": (lambda x: np.pad(x, ((1, 0), (2, 1))), X),
    "pad_value": (lambda x: np.pad(x, ((1, 1), (0, 2)), constant_values=0.1), X),  # 0.1 rounded once
    "constant": (lambda x: x @ np.arange(8.0, dtype=F16).reshape(4, 2), X),
    "stop_gradient": (lambda x: emit("stop_gradient", [x], {}), X),
    "empty": (lambda x: np.concatenate([x.T, x.T], axis=0)[::-1], _h((0, 3))),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_ops(name):
    fn, *args = SHAPES[name]
    _check(fn, *args)


def test_creation_ops_with_symbolic_dims():
    def fn(x):
        ctx = context_of([x])
        a = emit("arange", [], {"n": ("m",), "dtype": np.dtype(F16)}, ctx=ctx)
        full = emit("full", [], {"shape": ("n", 2), "value": np.array(0.1, F16)}, ctx=ctx)
        full32 = emit("full", [], {"shape": (2,), "value": np.array(1 / 3, np.float32)}, ctx=ctx)
        return x + a, full, full32.astype(F16), emit("shape_dim", [x], {"axis": 1})

    native, ref = _both(tracer.trace(fn, tracer.TensorSpec(("n", "m"), F16)))
    for shape in ((2, 3), (5, 1), (0, 4), (1, 3000)):  # arange beyond 2048: float16 rounds the integers
        x = _h(shape)
        assert_agree(native.run(x), ref.run(x))


# ---- reductions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions(name):
    x = (_f((3, 4, 5), np.float64) * 4).astype(F16)
    _check(REDUCTIONS[name], x)
    if name not in ("max", "min", "argmax", "argmin"):  # the empty reduction identities (0, 1)
        _check(REDUCTIONS[name], np.zeros((3, 0, 5), F16))


def test_reductions_with_nan_and_keepdims():
    x = _h((4, 6), 3)
    x[1, 2] = np.nan
    for fn in (lambda x: x.max(axis=1, keepdims=True), lambda x: np.argmin(x, axis=0), lambda x: x.sum(axis=0),
               lambda x: x.mean(axis=(0, 1)), lambda x: np.prod(x, axis=-1, keepdims=True)):
        _check(fn, x)


def test_cumsum_rounds_every_step_as_numpy():
    # a long running sum: float16 rounding after each addition drifts far from the exact sum,
    # and the native kernel follows it bit for bit on every axis
    x = _h((3, 700, 2), 4, 0.0, 1.0)
    for axis in (0, 1, -1):
        _check_bits(lambda x, a=axis: np.cumsum(x, axis=a), x)
    exact = np.cumsum(x.astype(np.float64), axis=1)
    assert np.abs(np.cumsum(x, axis=1).astype(np.float64) - exact).max() > 0.5  # the drift is real


# ---- matmul, gemm, conv, pooling, normalization --------------------------------------------------

@pytest.mark.parametrize("name", sorted(MATMULS))
def test_matmul(name):
    sa, sb = MATMULS[name]
    _check(np.matmul, _h(sa, 1), _h(sb, 2))


def test_matmul_mixed_and_empty():
    _check(np.matmul, _h((5, 7), 1), _f((7, 3), seed=2))  # float16 @ float32 -> float32
    _check(np.matmul, _h((0, 7), 1), _h((7, 3), 2))
    _check(np.matmul, _h((4, 0), 1), _h((0, 3), 2))  # k = 0: zeros


def test_constant_weights_are_converted_once_and_shared():
    w, b = _h((16, 8), 1), _h((8,), 2)
    native, ref = _both(tracer.trace(lambda x: T.relu(x @ w + b), _h((4, 16))))
    for seed in (3, 4, 3):
        x = _h((4, 16), seed)
        assert_agree(native.run(x), ref.run(x))

    def worker(seed):
        x = _h((4, 16), seed)
        for _ in range(20):
            assert_agree(native.run(x), ref.run(x))

    errors = run_in_threads(worker, 4)
    assert not errors, errors[0]


@pytest.mark.parametrize("activation", ["none", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh"])
def test_fused_gemm_and_conv(activation):
    x, w, b = _h((6, 8)), _h((8, 5), 1), _h((5,), 2)
    _check(lambda x, w, b: _apply("gemm", [x, w, b], {"activation": activation}), x, w, b)
    _check(lambda x, w, b: _apply("gemm", [x, w, b], {"activation": activation}), x, w, _h((6, 1), 3))
    img, k, kb = _h((2, 3, 7, 7)), _h((4, 3, 3, 3), 3), _h((4,), 4)
    attrs = {"strides": (1, 2), "pads": (1, 0, 1, 1), "dilations": (1, 1), "group": 1, "activation": activation}
    _check(lambda x, w, b: _apply("fused_conv", [x, w, b], attrs), img, k, kb)


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv(name):
    sx, sw, kw = CONVS[name]
    _check(lambda x, w, b: T.conv(x, w, b, **kw), _h(sx), _h(sw, 1), _h(sw[:1], 2))


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pooling(name):
    x = _h((2, 3, 7, 8))
    with_nan = x.copy()
    with_nan[0, 1, 2, 3] = np.nan
    _check(POOLS[name], x, run_args=[(x,), (with_nan,)])


def test_normalizations_and_softmax():
    x = _h((2, 3, 4, 5))
    _check(lambda x: T.softmax(x, axis=1), x)
    _check(lambda x: T.softmax(x), x * F16(8))
    _check(lambda x: T.log_softmax(x), x * F16(8))
    _check(lambda x, w, b: T.layer_norm(x, w, b), x, _h((4, 5), 1), _h((4, 5), 2))
    _check(lambda x, w: T.layer_norm(x, w), x, _h((5,), 1))
    _check(lambda x, m, v, w, b: T.batch_norm(x, m, v, w, b), x, _h((3,), 1), _h((3,), 2, lo=0.5, hi=2),
           _h((3,), 3), _h((3,), 4))
    _check(lambda x, w, b: _apply("instance_norm", [x, w, b], {"epsilon": 1e-5}), x, _h((3,), 1), _h((3,), 2))


# ---- a model, and what stays refused ---------------------------------------------------------------

def _to_f16(tree):
    if isinstance(tree, dict):
        return {k: _to_f16(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_f16(v) for v in tree)
    return np.asarray(tree).astype(F16)


def test_zoo_mlp_in_float16():
    import importlib

    fn, (_, params) = importlib.import_module("models.zoo.mlp").build(0)
    params = _to_f16(params)
    g = tracer.trace(fn, tracer.TensorSpec(("batch", 784), F16), params)
    assert any(v.dtype == np.float16 for op in g.ops for v in op.outputs)
    native, ref = _both(g)
    for batch in (1, 7):
        x = _h((batch, 784), batch)
        y = native.run(x, params)
        assert y.dtype == F16
        assert_agree(y, ref.run(x, params))


def test_optimized_float16_graphs():
    """ir.optimize's fused ops in float16: gemm, fused_conv and fused_elementwise regions."""
    import ir

    w, b = _h((8, 5), 1), _h((5,), 2)
    k = _h((4, 3, 3, 3), 3)
    for fn, x in ((lambda x: np.tanh(x @ w + b) * F16(2) - np.exp(-x[:, :5]), _h((6, 8))),
                  (lambda x: np.maximum(T.conv2d(x, k, padding=1), 0) + F16(1), _h((2, 3, 6, 6)))):
        g = ir.optimize(tracer.trace(fn, x))
        native, ref = _both(g)
        assert_agree(native.run(x), ref.run(x))


def test_float16_ops_without_a_float16_kernel_are_refused():
    # random draws define float16 values on float16 bits: not computed in float32, so refused
    g = tracer.trace(lambda s: T.random_uniform((5,), s, dtype=F16), np.int64(3))
    with pytest.raises(nb.NativeUnsupportedError, match="random_uniform"):
        runtime.load(to_bytes(g), backend="native")
    sess = runtime.load(to_bytes(g), backend="auto")
    assert sess.backend == "numpy" and sess.run(np.int64(3)).dtype == F16
    # a copy op whose output dtype differs from its input's would overrun its output
    bad = _hand_model(values=(("x", 11, (2,)), ("", 10, (2,))), ops=(("reshape", (0,), (1,), ()),))
    with pytest.raises(nb.NativeUnsupportedError, match="reshape.*dtype"):
        runtime.load(bad, backend="native")
    # cumsum's float16 kernel is float16 -> float16 only
    bad = _hand_model(values=(("x", 10, (2,)), ("", 11, (2,))), ops=(("cumsum", (0,), (1,), ()),))
    with pytest.raises(nb.NativeUnsupportedError, match="cumsum"):
        runtime.load(bad, backend="native")
    # the refusals of the float32 kernels apply to float16 as well (3-D pooling)
    g = tracer.trace(lambda x: T.max_pool(x, 2), tracer.TensorSpec((1, 1, 4, 4, 4), F16))
    with pytest.raises(nb.NativeUnsupportedError, match="max_pool"):
        runtime.load(to_bytes(g), backend="native")
