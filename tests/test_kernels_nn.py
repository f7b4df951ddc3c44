"""NN kernels (runtime.kernels.nn, .conv, .special) against independent references.

Each kernel is compared with `onnx.reference.ReferenceEvaluator` running a one-node ONNX model
(opset 18 unless the op needs another), under the project's agreement rule
|got - ref| <= rtol*|ref| + atol*max|ref|. erf/erfc are compared with `math.erf`/`math.erfc`.
Where the ONNX reference is known to be wrong, the test says so and uses onnxruntime (or, for
float64 where onnxruntime lacks a kernel, the spec's formula in NumPy) instead:
- AveragePool with ceil_mode, when the last window overhangs the end padding by 2+ positions
  (the reference splits that overhang between both ends, shifting every window);
- MaxPool with unit strides and dilations and nonzero pads (ignored for 1-D/3-D input, counted
  twice by 2-D ceil mode);
- GlobalMaxPool on non-4-D input (it reduces the wrong axes);
- grouped ConvTranspose (the reference writes one output channel per group);
- LRN reads channel windows for c < N only: tests use N == C;
- Erf, and the function bodies of Gelu and HardSwish, are float32-accurate, so float64 is
  checked against `math.erf` and the spec's formulas.
ONNX float attributes are float32, so tests use attribute values exact in float32.
"""

from __future__ import annotations

import inspect
import math
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from runtime.kernels import conv as conv_module
from runtime.kernels import nn, special

onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

TOL = {np.dtype(np.float64): (1e-10, 1e-12), np.dtype(np.float32): (1e-4, 1e-5),
       np.dtype(np.float16): (1e-2, 1e-3)}
FLOATS = [np.float32, np.float64]
HYPOTHESIS = settings(max_examples=30, deadline=None, database=None)


def assert_agree(got, ref, dtype=None) -> None:
    """The project's agreement rule; dtype and shape must match exactly, nan matches nan."""
    got, ref = np.asarray(got), np.asarray(ref)
    dtype = np.dtype(dtype or ref.dtype)
    assert got.dtype == dtype, f"dtype {got.dtype}, expected {dtype}"
    assert got.shape == ref.shape, f"shape {got.shape}, expected {ref.shape}"
    if dtype.kind != "f":
        np.testing.assert_array_equal(got, ref)
        return
    rtol, atol = TOL[dtype]
    g, r = got.astype(np.float64), ref.astype(np.float64)
    finite = np.isfinite(r)
    scale = np.max(np.abs(r[finite]), initial=0.0)
    with np.errstate(invalid="ignore"):
        ok = (np.abs(g - r) <= rtol * np.abs(r) + atol * scale) | (g == r) | (np.isnan(g) & np.isnan(r))
    if not ok.all():
        i = np.unravel_index(np.argmin(ok), ok.shape)
        raise AssertionError(f"{(~ok).sum()} of {ok.size} values disagree; first at {i}: got {g[i]!r}, "
                             f"expected {r[i]!r} (rtol {rtol}, atol {atol} * {scale})")


def _model(op: str, inputs: list, attrs: dict, opset: int):
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    while names and names[-1] == "":
        names.pop()
    infos = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for n, a in zip(names, inputs) if n]
    out_type = helper.np_dtype_to_tensor_dtype(next(a for a in inputs if a is not None).dtype)
    node = helper.make_node(op, names, ["out"], **attrs)
    graph = helper.make_graph([node], op, infos, [helper.make_tensor_value_info("out", out_type, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, {n: a for n, a in zip(names, inputs) if n}


def onnx_ref(op: str, inputs: list, opset: int = 18, **attrs) -> np.ndarray:
    """The output of a one-node model `op(*inputs, **attrs)` under onnx.reference."""
    model, feeds = _model(op, inputs, attrs, opset)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReferenceEvaluator(model).run(None, feeds)[0]


def onnx_runtime(op: str, inputs: list, opset: int = 18, **attrs) -> np.ndarray:
    """The same under onnxruntime (CPU), for the cases where onnx.reference is wrong."""
    ort = pytest.importorskip("onnxruntime")
    model, feeds = _model(op, inputs, attrs, opset)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def no_warnings(fn, *args, **kwargs):
    """Call a kernel, turning any NumPy warning (overflow, invalid) into a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def rng_for(*key) -> np.random.Generator:
    """A generator seeded by the test's parameters (stable across runs, unlike hash())."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# --- erf ---------------------------------------------------------------------------------------

NORMAL_MIN = np.finfo(np.float64).tiny


def _erf_points() -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.concatenate([
        np.linspace(-10.0, 10.0, 100_001),
        rng.uniform(-6.0, 6.0, 20_000),
        np.geomspace(1e-320, 30.0, 5_000) * rng.choice([-1.0, 1.0], 5_000),
        [0.0, -0.0, 1.0, 4.0, 6.0, 27.0, 1e10, 1e300, -1e300, 5e-324, -5e-324, np.finfo(np.float64).max],
    ])


def _check_against_math(got: np.ndarray, x: np.ndarray, fn) -> None:
    ref = np.array([fn(float(t)) for t in x])
    normal = np.abs(ref) >= NORMAL_MIN
    rel = np.abs(got[normal] - ref[normal]) / np.abs(ref[normal])
    assert rel.max() <= 1e-14, f"max relative error {rel.max():.3g} at x = {x[normal][rel.argmax()]!r}"
    # subnormal results: within two subnormal steps (4.9e-324 each) of math's
    assert np.all(np.abs(got[~normal] - ref[~normal]) <= 1e-323)


def test_erf_float64_matches_math_erf():
    x = _erf_points()
    _check_against_math(no_warnings(special.erf, x), x, math.erf)


def test_erfc_float64_matches_math_erfc():
    x = np.concatenate([_erf_points(), np.linspace(-3.0, 27.5, 30_001)])
    _check_against_math(no_warnings(special.erfc, x), x, math.erfc)


def _ulps(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(got.view(np.int32).astype(np.int64) - ref.view(np.int32).astype(np.int64))


def test_erf_float32_within_one_ulp_of_math_erf():
    rng = np.random.default_rng(3)
    x = np.concatenate([np.linspace(-5, 5, 100_001), rng.normal(0, 2, 10_000), np.geomspace(1e-45, 5, 2_000),
                        -np.geomspace(1e-45, 5, 2_000), [0.0, 9.0, -9.0, 3.4e38]]).astype(np.float32)
    got = no_warnings(special.erf, x)
    assert got.dtype == np.float32
    # math.erf rounded to float32: the correctly rounded value, but for a double rounding in a billion
    assert _ulps(got, np.array([math.erf(float(t)) for t in x]).astype(np.float32)).max() <= 1


def test_erf_float32_sweep_against_float64_kernel():
    # every 257th float32 in [0, 4.5] (4.3M values), both signs, against the float64 path
    x = np.arange(0, np.float32(4.5).view(np.int32), 257, dtype=np.int32).view(np.float32)
    for v in (x, -x):
        assert _ulps(special.erf(v), special.erf(v.astype(np.float64)).astype(np.float32)).max() <= 1


def test_erf_special_values():
    x = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0])
    got = no_warnings(special.erf, x)
    np.testing.assert_array_equal(got[:2], [1.0, -1.0])
    assert np.isnan(got[2]) and got[3] == 0 and np.signbit(got[3]) and not np.signbit(got[4])
    c = no_warnings(special.erfc, x)
    np.testing.assert_array_equal(c[[0, 1, 3, 4]], [0.0, 2.0, 1.0, 1.0])
    assert np.isnan(c[2])
    assert special.erf(np.float16(0.5)).dtype == np.float16
    assert special.erf(np.array(2.0)).shape == ()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_erf_matches_onnx_erf(dtype):
    x = rng_for("erf").normal(0, 2, (3, 50)).astype(dtype)
    assert_agree(special.erf(x), onnx_ref("Erf", [x]))


def _mpmath_interpolant(mp, f, a, b, degree):
    """Chebyshev interpolant of f on [a, b]: coefficients of powers of s = (t - centre)/half_width."""
    n = degree + 1
    nodes = [mp.cos(mp.pi * (k + mp.mpf(1) / 2) / n) for k in range(n)]
    vals = [f((a + b) / 2 + (b - a) / 2 * s) for s in nodes]
    return mp.lu_solve(mp.matrix([[s ** j for j in range(n)] for s in nodes]), mp.matrix(vals))


def test_erf_tables_reproduce_from_mpmath():
    """The coefficient tables are what their comment says: Chebyshev interpolants fitted with mpmath."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40

    def interpolant(f, a, b, degree):
        return _mpmath_interpolant(mp, f, a, b, degree)

    def in_t(c):  # from powers of s = 2t - 1 to powers of t
        n = len(c)
        return [sum(c[k] * math.comb(k, j) * 2 ** j * (-1) ** (k - j) for k in range(j, n)) for j in range(n)]

    small = in_t(interpolant(lambda t: mp.erf(mp.sqrt(t)) / mp.sqrt(t), 0, 1, 12))
    third = mp.mpf(1) / 3
    mid = interpolant(lambda t: mp.exp((1 / t - 2) ** 2) * mp.erfc(1 / t - 2), third / 2, third, 15)
    far = interpolant(lambda u: mp.exp(1 / u) * mp.erfc(1 / mp.sqrt(u)) / mp.sqrt(u), 0, mp.mpf(1) / 16, 12)
    for table, fitted in ((special._ERF_SMALL, small), (special._ERFC_MID, mid), (special._ERFC_FAR, far)):
        fitted = [float(c) for c in fitted]
        np.testing.assert_allclose(table, fitted, rtol=1e-9, atol=1e-12 * abs(fitted[0]))
    # float32 tables: the same functions at lower degree (small: erf(x)/x - 1), rounded to float32
    small32 = in_t(interpolant(lambda t: mp.erf(mp.sqrt(t)) / mp.sqrt(t) - 1, 0, 1, 6))
    mid32 = interpolant(lambda t: mp.exp((1 / t - 2) ** 2) * mp.erfc(1 / t - 2), third / 2, third, 6)
    for table, fitted in ((special._ERF32_SMALL, small32), (special._ERFC32_MID, mid32)):
        np.testing.assert_array_equal(table, [float(np.float32(float(c))) for c in fitted])


# --- normal_cdf --------------------------------------------------------------------------------

def test_normal_cdf_table_reproduces_from_mpmath():
    """_PHI32 is the Chebyshev interpolant of erfcx(a)/(2s), s = 1/(a + 2), a in [0, 14.5/sqrt 2], in
    powers of s."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    lo, hi = 1 / (mp.mpf(14.5) / mp.sqrt(2) + 2), mp.mpf(1) / 2
    c = _mpmath_interpolant(mp, lambda s: mp.erfc(1 / s - 2) * mp.exp((1 / s - 2) ** 2) / (2 * s), lo, hi, 8)
    centre, half = (lo + hi) / 2, (hi - lo) / 2  # powers of (s - centre)/half -> powers of s
    in_s = [sum(c[k] * math.comb(k, j) * (-centre) ** (k - j) / half ** k for k in range(j, len(c)))
            for j in range(len(c))]
    np.testing.assert_allclose(special._PHI32, [float(v) for v in in_s], rtol=1e-9)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x * math.sqrt(0.5))


def test_normal_cdf_float64_matches_math_erfc():
    x = np.concatenate([np.linspace(-38.0, 10.0, 48_001), rng_for("phi").normal(0.0, 4.0, 20_000),
                        np.geomspace(1e-300, 1.0, 2_000) * rng_for("phi sign").choice([-1.0, 1.0], 2_000)])
    _check_against_math(no_warnings(special.normal_cdf, x), x, _phi)


def test_normal_cdf_float32_error_bounds():
    # every 257th float32 in [0, 15] (4.3M values), both signs, against the float64 kernel
    x = np.arange(0, np.float32(15.0).view(np.int32), 257, dtype=np.int32).view(np.float32)
    for v in (x, -x):
        got = no_warnings(special.normal_cdf, v)
        assert got.dtype == np.float32
        ref = special.normal_cdf(v.astype(np.float64))
        err = np.abs(got - ref)
        assert err.max() <= 2.5e-7, v[err.argmax()]
        rel = err / ref
        assert rel[v >= -3.0].max() <= 7e-7 and rel[v >= -13.0].max() <= 6e-6


def test_normal_cdf_special_values():
    for dtype in (np.float64, np.float32, np.float16):
        x = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0, 6e4, -6e4], dtype)
        got = no_warnings(special.normal_cdf, x)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, np.array([1.0, 0.0, np.nan, 0.5, 0.5, 1.0, 0.0], dtype))
    assert special.normal_cdf(np.array(3, np.int64)).dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_is_x_times_normal_cdf_bit_for_bit(dtype):
    # gradient graphs compute gelu as x * normal_cdf(x) and share Phi (ir/autodiff/shared_forward.py)
    x = np.concatenate([rng_for("gelu bits").normal(0.0, 3.0, 100_000), [0.0, -0.0, 1e-30, -40.0]]).astype(dtype)
    np.testing.assert_array_equal(special.gelu(x), x * special.normal_cdf(x))


# --- activations -------------------------------------------------------------------------------

# (kernel, ONNX op, attributes for both, opset). ONNX stores float attributes as float32, so the
# values here are exact in float32; test_activation_defaults_are_onnx_defaults covers the defaults.
ACTIVATIONS = [
    (special.relu, "Relu", {}, 18),
    (special.sigmoid, "Sigmoid", {}, 18),
    (special.softplus, "Softplus", {}, 18),
    (special.softsign, "Softsign", {}, 18),
    (special.elu, "Elu", {}, 18),
    (special.elu, "Elu", {"alpha": 0.5}, 18),
    (special.celu, "Celu", {"alpha": 2.0}, 18),
    (special.selu, "Selu", {"alpha": 1.5, "gamma": 2.0}, 18),
    (special.leaky_relu, "LeakyRelu", {"alpha": 0.125}, 18),
    (special.leaky_relu, "LeakyRelu", {"alpha": 1.5}, 18),
    (special.leaky_relu, "LeakyRelu", {"alpha": -0.5}, 18),
    (special.thresholded_relu, "ThresholdedRelu", {}, 18),
    (special.thresholded_relu, "ThresholdedRelu", {"alpha": -0.5}, 18),
    (special.hard_sigmoid, "HardSigmoid", {"alpha": 0.25, "beta": 0.375}, 18),
    (special.hard_swish, "HardSwish", {}, 18),
    (special.gelu, "Gelu", {"approximate": "tanh"}, 20),
]
ACTIVATION_IDS = [f"{op}{attrs or ''}" for _, op, attrs, _ in ACTIVATIONS]


def _activation_input(dtype, n=70_000) -> np.ndarray:
    # more than one 32K-element block; values spread over [-30, 30], exact zeros and tiny values
    x = rng_for("act", n).normal(0, 4, n)
    x[:7] = [-30.0, -1e-8, 0.0, -0.0, 1e-8, 30.0, 3.0]
    return x.reshape(7, -1).astype(dtype)


# ONNX defines these two by function bodies whose constants (1/6; sqrt(2/pi), 0.044715) are
# float32 attributes, so in float64 the reference is only float32-accurate: there the spec's
# formula, evaluated in float64, is the reference.
SPEC_FORMULAS = {
    "HardSwish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "Gelu": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kernel, op, attrs, opset", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_activation_matches_onnx(kernel, op, attrs, opset, dtype):
    x = _activation_input(dtype)
    if dtype == np.float64 and op in SPEC_FORMULAS:
        ref = SPEC_FORMULAS[op](x)
    else:
        ref = onnx_ref(op, [x], opset, **attrs)
    assert_agree(no_warnings(kernel, x, **attrs), ref)


@pytest.mark.parametrize("kernel, op, attrs, opset", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_activation_float16_computed_in_float32(kernel, op, attrs, opset):
    x = _activation_input(np.float16, 700)
    ref = onnx_ref(op, [x.astype(np.float32)], opset, **attrs).astype(np.float16)
    assert_agree(kernel(x, **attrs), ref)


@pytest.mark.parametrize("kernel, op", [(k, op) for k, op, _, _ in ACTIVATIONS] + [(special.gelu, "Gelu")])
def test_activation_defaults_are_onnx_defaults(kernel, op):
    schema = onnx.defs.get_schema(op, 20)
    for name, param in inspect.signature(kernel).parameters.items():
        if param.kind != param.KEYWORD_ONLY:
            continue
        default = schema.attributes[name].default_value
        onnx_default = default.s.decode() if default.type == onnx.AttributeProto.STRING else default.f
        ours = param.default if isinstance(param.default, str) else float(np.float32(param.default))
        assert ours == onnx_default, f"{op}.{name}: {param.default} vs ONNX {onnx_default}"


@pytest.mark.parametrize("kernel", [special.sigmoid, special.softplus, special.elu, special.celu,
                                    special.selu, special.gelu, special.softsign, special.hard_swish,
                                    special.relu])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_activation_extremes_do_not_overflow(kernel, dtype):
    big = np.finfo(dtype).max / 4
    x = np.array([-big, -1000.0, -100.0, 100.0, 1000.0, big], dtype)
    y = no_warnings(kernel, x)
    assert y.dtype == dtype and np.isfinite(y).all()
    assert np.all(np.abs(y) <= 1.1 * np.abs(x.astype(np.float64)) + 1.0)


def test_sigmoid_softplus_keep_relative_accuracy_in_the_tails():
    x = np.array([-700.0, -50.0, -20.0])
    np.testing.assert_allclose(special.sigmoid(x), np.exp(x) / (1 + np.exp(x)), rtol=1e-14)
    np.testing.assert_allclose(special.softplus(x), np.log1p(np.exp(x)), rtol=1e-14)
    assert special.softplus(np.array([1000.0]))[0] == 1000.0


@pytest.mark.parametrize("dtype", FLOATS)
def test_gelu_exact_matches_math_erf(dtype):
    x = _activation_input(dtype, 7_000)
    ref = np.array([0.5 * t * (1 + math.erf(t / math.sqrt(2))) for t in x.astype(np.float64).ravel()])
    assert_agree(no_warnings(special.gelu, x), ref.reshape(x.shape).astype(dtype))
    if dtype == np.float32:  # and the ONNX function body, whose erf is float32
        assert_agree(special.gelu(x), onnx_ref("Gelu", [x], 20))


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        special.gelu(np.ones(2), approximate="fast")


def test_relu_keeps_integers_and_nan():
    assert_agree(special.relu(np.array([-3, 0, 4], np.int32)), np.array([0, 0, 4], np.int32))
    assert np.isnan(special.relu(np.array([np.nan]))[0])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1), (5,), (2, 3, 4, 5)])
def test_prelu_matches_onnx(slope_shape, dtype):
    rng = rng_for("prelu", slope_shape)
    x = rng.normal(size=(2, 3, 4, 5)).astype(dtype)
    slope = rng.normal(size=slope_shape).astype(dtype)
    assert_agree(special.prelu(x, slope), onnx_ref("PRelu", [x, slope], 16))


def test_prelu_slope_must_broadcast_to_x():
    with pytest.raises(ValueError, match="broadcast"):
        special.prelu(np.ones(3), np.ones((2, 3)))


# --- convolution -------------------------------------------------------------------------------

def _window_args(nd, kernel, strides, pads, dilations) -> dict:
    return {"kernel_shape": list(kernel), "strides": list(strides), "pads": list(pads),
            "dilations": list(dilations)}


@st.composite
def conv_cases(draw):
    nd = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    group = draw(st.integers(2, 4)) if depthwise else draw(st.sampled_from([1, 1, 2, 3]))
    cg = 1 if depthwise else draw(st.integers(1, 3))
    mg = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * nd))
    biggest = (9, 7, 5)[nd - 1]
    spatial = tuple(draw(st.integers(max(1, (k - 1) * d + 1 - pads[i] - pads[nd + i]), biggest))
                    for i, (k, d) in enumerate(zip(kernel, dilations)))
    n = draw(st.integers(1, 2))
    dtype = draw(st.sampled_from(FLOATS))
    bias = draw(st.booleans())
    return nd, group, cg, mg, kernel, strides, dilations, pads, spatial, n, dtype, bias


@HYPOTHESIS
@given(conv_cases())
def test_conv_matches_onnx(case):
    nd, group, cg, mg, kernel, strides, dilations, pads, spatial, n, dtype, bias = case
    rng = rng_for("conv", case)
    x = rng.normal(size=(n, cg * group) + spatial).astype(dtype)
    w = rng.normal(size=(mg * group, cg) + kernel).astype(dtype)
    b = rng.normal(size=mg * group).astype(dtype) if bias else None
    got = nn.conv(x, w, b, strides=strides, pads=pads, dilations=dilations, group=group)
    ref = onnx_ref("Conv", [x, w, b], group=group, **_window_args(nd, kernel, strides, pads, dilations))
    assert_agree(got, ref)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("group", [1, 2])
def test_conv_1x1_is_a_matmul_on_a_view(group, dtype):
    rng = rng_for("1x1", group)
    x = rng.normal(size=(2, 4, 5, 6)).astype(dtype)
    w = rng.normal(size=(6, 4 // group, 1, 1)).astype(dtype)
    b = rng.normal(size=6).astype(dtype)
    cols = conv_module._im2col(conv_module._conv_plan(x, np.zeros((6, 4 // group, 1, 1), dtype), None, None, None,
                                                      group), x)
    assert np.shares_memory(cols, x)
    assert_agree(nn.conv(x, w, b, group=group), onnx_ref("Conv", [x, w, b], group=group))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, w_shape, args", [
    ((1, 1, 28, 28), (6, 1, 5, 5), {}),  # LeNet's first conv
    ((2, 6, 12, 12), (16, 3, 5, 5), {"group": 2, "pads": (1, 0, 2, 1)}),
    ((1, 2, 6, 7, 5), (3, 2, 2, 2, 2), {"dilations": (2, 1, 1), "pads": (0, 1, 0, 0, 0, 0)}),
])
def test_conv_over_whole_rows_matches_onnx(shape, w_shape, args, dtype):
    rng = rng_for("rows", shape, dtype)
    x = rng.normal(size=shape).astype(dtype)
    w = rng.normal(size=w_shape).astype(dtype)
    b = rng.normal(size=w_shape[0]).astype(dtype)
    plan = conv_module._conv_plan(x, w, args.get("strides"), args.get("pads"), args.get("dilations"),
                                  args.get("group", 1))
    assert plan.mode == "rows"
    ref = onnx_ref("Conv", [x, w, b], **{k: list(v) if isinstance(v, tuple) else v for k, v in args.items()})
    assert_agree(nn.conv(x, w, b, **args), ref)
    assert_agree(nn.conv(x, w, **args), onnx_ref("Conv", [x, w], **{k: list(v) if isinstance(v, tuple) else v
                                                                     for k, v in args.items()}))
    dst = np.full(ref.shape, np.nan, dtype)
    assert conv_module.conv_into(dst, x, w, b, **args) is dst
    assert_agree(dst, ref)


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_conv_matches_onnx(mult):
    rng = rng_for("dw", mult)
    x = rng.normal(size=(2, 8, 9, 7))
    w = rng.normal(size=(8 * mult, 1, 3, 3))
    args = {"strides": (2, 1), "pads": (1, 0, 1, 2), "dilations": (1, 2)}
    assert_agree(nn.conv(x, w, group=8, **args),
                 onnx_ref("Conv", [x, w], group=8, **{k: list(v) for k, v in args.items()}))


def test_conv_float16_computes_in_float32():
    rng = rng_for("conv16")
    x = rng.normal(size=(1, 6, 8, 8)).astype(np.float16)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float16)
    ref = onnx_ref("Conv", [x.astype(np.float32), w.astype(np.float32)], group=2, pads=[1, 1, 1, 1])
    assert_agree(nn.conv(x, w, group=2, pads=(1, 1, 1, 1)), ref.astype(np.float16))


def test_conv_rejects_bad_shapes():
    with pytest.raises(ValueError, match="group"):
        nn.conv(np.ones((1, 4, 5, 5)), np.ones((2, 3, 1, 1)))
    with pytest.raises(ValueError, match="larger"):
        nn.conv(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="strides"):
        nn.conv(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), strides=(1,))


@st.composite
def conv_transpose_cases(draw):
    nd = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 1, 2]))
    cg, mg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    output_padding = tuple(draw(st.integers(0, s - 1)) for s in strides)  # onnxruntime: < stride
    spatial = tuple(draw(st.integers(1, (6, 5, 3)[nd - 1])) for _ in range(nd))
    full = [s * (i - 1) + (k - 1) * d + 1 + p
            for s, i, k, d, p in zip(strides, spatial, kernel, dilations, output_padding)]
    pads = [draw(st.integers(0, 2)) for _ in range(2 * nd)]
    assume(all(f - pads[i] - pads[nd + i] >= 1 for i, f in enumerate(full)))
    dtype = draw(st.sampled_from(FLOATS))
    return nd, group, cg, mg, kernel, strides, dilations, tuple(pads), output_padding, spatial, dtype, draw(
        st.booleans())


@HYPOTHESIS
@given(conv_transpose_cases())
def test_conv_transpose_matches_onnx(case):
    nd, group, cg, mg, kernel, strides, dilations, pads, output_padding, spatial, dtype, bias = case
    rng = rng_for("convT", case)
    x = rng.normal(size=(2, cg * group) + spatial).astype(dtype)
    w = rng.normal(size=(cg * group, mg) + kernel).astype(dtype)
    b = rng.normal(size=mg * group).astype(dtype) if bias else None
    got = nn.conv_transpose(x, w, b, strides=strides, pads=pads, dilations=dilations, group=group,
                            output_padding=output_padding)
    attrs = dict(_window_args(nd, kernel, strides, pads, dilations), group=group,
                 output_padding=list(output_padding))
    if group == 1:
        assert_agree(got, onnx_ref("ConvTranspose", [x, w, b], **attrs))
    else:  # onnx.reference mixes up the channels of grouped ConvTranspose; onnxruntime runs float32
        args = [None if a is None else a.astype(np.float32) for a in (x, w, b)]
        got = nn.conv_transpose(*args, strides=strides, pads=pads, dilations=dilations, group=group,
                                output_padding=output_padding)
        assert_agree(got, onnx_runtime("ConvTranspose", args, **attrs))


def test_conv_transpose_is_the_adjoint_of_conv():
    rng = rng_for("adjoint")
    x = rng.normal(size=(2, 4, 7, 6))
    w = rng.normal(size=(6, 2, 3, 2))
    args = {"strides": (2, 3), "pads": (1, 0, 2, 1), "dilations": (1, 2), "group": 2}
    y = nn.conv(x, w, **args)
    g = rng.normal(size=y.shape)
    # <conv(x), g> == <x, conv_transpose(g)> when conv_transpose maps back onto x's shape
    out_pad = tuple(x.shape[2 + i] - ((y.shape[2 + i] - 1) * args["strides"][i] + (w.shape[2 + i] - 1)
                                      * args["dilations"][i] + 1 - args["pads"][i] - args["pads"][2 + i])
                    for i in range(2))
    xt = nn.conv_transpose(g, w, output_padding=out_pad, **args)
    assert xt.shape == x.shape
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, xt), rtol=1e-12)


# --- pooling -----------------------------------------------------------------------------------

def _windows_hit_input(size, k, s, d, pb, o) -> bool:
    return all(any(0 <= j * s - pb + t * d < size for t in range(k)) for j in range(o))


@st.composite
def pool_cases(draw, dilated):
    nd = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilations = tuple(draw(st.integers(1, 2)) if dilated else 1 for _ in range(nd))
    pads = tuple(draw(st.integers(0, k - 1)) for k in kernel * 2)
    spatial = tuple(draw(st.integers(max(1, (k - 1) * d + 1 - pads[i] - pads[nd + i]), (9, 7, 5)[nd - 1]))
                    for i, (k, d) in enumerate(zip(kernel, dilations)))
    ceil_mode = draw(st.booleans())
    outs = [conv_module._out_len(L, k, s, pads[i], pads[nd + i], d, ceil_mode)
            for i, (L, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations))]
    assume(all(_windows_hit_input(L, k, s, d, pads[i], o)
               for i, (L, k, s, d, o) in enumerate(zip(spatial, kernel, strides, dilations, outs))))
    return nd, kernel, strides, dilations, pads, spatial, ceil_mode, draw(st.sampled_from(FLOATS))


@HYPOTHESIS
@given(pool_cases(dilated=True))
def test_max_pool_matches_onnx(case):
    nd, kernel, strides, dilations, pads, spatial, ceil_mode, dtype = case
    x = rng_for("maxpool", case).normal(size=(2, 3) + spatial).astype(dtype)
    got = nn.max_pool(x, kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                      ceil_mode=ceil_mode)
    attrs = _window_args(nd, kernel, strides, pads, dilations)
    # with unit strides and dilations, onnx.reference ignores the pads of 1-D/3-D MaxPool and
    # counts them twice for 2-D in ceil mode
    wrong = any(pads) and set(strides + dilations) == {1}
    run = onnx_runtime if wrong else onnx_ref
    assert_agree(got, run("MaxPool", [x], ceil_mode=int(ceil_mode), **attrs))


def _reference_avg_pool_is_wrong(kernel, strides, pads, spatial, ceil_mode) -> bool:
    nd = len(kernel)
    for i in range(nd):
        o = conv_module._out_len(spatial[i], kernel[i], strides[i], pads[i], pads[nd + i], 1, ceil_mode)
        if (o - 1) * strides[i] + kernel[i] - spatial[i] - pads[i] - pads[nd + i] >= 2:
            return True
    return False


@HYPOTHESIS
@given(pool_cases(dilated=False), st.booleans())
def test_avg_pool_matches_onnx(case, count_include_pad):
    nd, kernel, strides, _, pads, spatial, ceil_mode, dtype = case
    x = rng_for("avgpool", case).normal(size=(2, 3) + spatial).astype(dtype)
    got = nn.avg_pool(x, kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode,
                      count_include_pad=count_include_pad)
    attrs = dict(kernel_shape=list(kernel), strides=list(strides), pads=list(pads), ceil_mode=int(ceil_mode),
                 count_include_pad=int(count_include_pad))
    if _reference_avg_pool_is_wrong(kernel, strides, pads, spatial, ceil_mode):
        ref = onnx_runtime("AveragePool", [x.astype(np.float32)], 19, **attrs)
        assert_agree(got.astype(np.float32), ref)
    else:
        assert_agree(got, onnx_ref("AveragePool", [x], 19, **attrs))


def test_avg_pool_ceil_mode_counts_pad_but_not_overhang():
    x = np.arange(1.0, 6.0).reshape(1, 1, 5)
    # windows [pad,1,2] [2,3,4] [4,5,overhang]: the overhang past the end is never counted
    got = nn.avg_pool(x, kernel_shape=(3,), strides=(2,), pads=(1, 0), ceil_mode=True, count_include_pad=True)
    np.testing.assert_allclose(got.ravel(), [1.0, 3.0, 4.5])
    got = nn.avg_pool(x, kernel_shape=(3,), strides=(2,), pads=(1, 0), ceil_mode=True)
    np.testing.assert_allclose(got.ravel(), [1.5, 3.0, 4.5])


def test_ceil_mode_drops_windows_that_start_in_the_end_padding():
    # ceil((4 + 2 + 2 - 3) / 2) + 1 = 4 windows, but the 4th would start at 6, inside the end padding
    x = np.arange(1.0, 5.0).reshape(1, 1, 4)
    got = nn.max_pool(x, kernel_shape=(3,), strides=(2,), pads=(2, 2), ceil_mode=True)
    np.testing.assert_array_equal(got.ravel(), [1.0, 3.0, 4.0])
    ref = onnx_ref("MaxPool", [x], kernel_shape=[3], strides=[2], pads=[2, 2], ceil_mode=1)
    assert_agree(got, ref)


def test_max_pool_integers():
    x = np.array([[[3, -7, 2, 9, -1]]], np.int8)
    got = nn.max_pool(x, kernel_shape=(2,), pads=(1, 1))
    assert_agree(got, np.array([[[3, 3, 2, 9, 9, -1]]], np.int8))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5), (1, 2, 3, 4, 5)])
def test_global_pools_match_onnx(shape, dtype):
    x = rng_for("global", shape).normal(size=shape).astype(dtype)
    assert_agree(nn.global_avg_pool(x), onnx_ref("GlobalAveragePool", [x]))
    # onnx.reference's GlobalMaxPool reduces axes (nd, nd+1), right for 4-D input only
    spatial = tuple(range(2, x.ndim))
    ref = onnx_ref("GlobalMaxPool", [x]) if x.ndim == 4 else x.max(axis=spatial, keepdims=True)
    assert_agree(nn.global_max_pool(x), ref)


# --- softmax and normalization -----------------------------------------------------------------

EPS = 2.0 ** -10  # ONNX float attributes are float32: pick values that are exact there

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_matches_onnx(axis, dtype):
    x = (rng_for("softmax", axis).normal(size=(3, 4, 5)) * 30).astype(dtype)
    x[0, 0, 0] = 1000.0
    assert_agree(no_warnings(nn.softmax, x, axis=axis), onnx_ref("Softmax", [x], axis=axis))
    assert_agree(no_warnings(nn.log_softmax, x, axis=axis), onnx_ref("LogSoftmax", [x], axis=axis))


@pytest.mark.parametrize("dtype", FLOATS)
def test_row_kernels_across_blocks(dtype):
    # more rows than fit one 32K-element block, and rows longer than a block
    rng = rng_for("rows")
    for shape in ((300, 257), (2, 40_000)):
        x = (rng.normal(size=shape) * 4).astype(dtype)
        scale, bias = (rng.normal(size=shape[1]).astype(dtype) for _ in range(2))
        assert_agree(nn.softmax(x), onnx_ref("Softmax", [x]))
        assert_agree(nn.log_softmax(x), onnx_ref("LogSoftmax", [x]))
        assert_agree(nn.layer_norm(x, scale, bias, epsilon=EPS),
                     onnx_ref("LayerNormalization", [x, scale, bias], epsilon=EPS))
        x3 = x.reshape(shape[0] // 2, 2, shape[1])
        assert_agree(nn.instance_norm(x3, scale[:2], bias[:2], epsilon=EPS),
                     onnx_ref("InstanceNormalization", [x3, scale[:2], bias[:2]], epsilon=EPS))


def test_softmax_of_empty_and_scalar_and_bad_axis():
    assert nn.softmax(np.zeros((2, 0))).shape == (2, 0)
    assert nn.softmax(np.array(3.0)) == 1.0 and nn.log_softmax(np.array(3.0)) == 0.0
    with pytest.raises(ValueError, match="axis"):
        nn.softmax(np.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="axis"):
        nn.layer_norm(np.ones((2, 3)), np.ones(3), axis=-3)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis, with_bias", [(-1, True), (1, True), (-2, False), (0, True)])
def test_layer_norm_matches_onnx(axis, with_bias, dtype):
    rng = rng_for("ln", axis)
    x = (rng.normal(size=(2, 3, 4)) * 5 + 3).astype(dtype)
    shape = x.shape[axis % 3:]
    scale = rng.normal(size=shape).astype(dtype)
    bias = rng.normal(size=shape).astype(dtype) if with_bias else None
    got = nn.layer_norm(x, scale, bias, axis=axis, epsilon=EPS)
    assert_agree(got, onnx_ref("LayerNormalization", [x, scale, bias], axis=axis, epsilon=EPS))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 5)])
def test_batch_norm_matches_onnx(shape, dtype):
    rng = rng_for("bn", shape)
    x = rng.normal(size=shape).astype(dtype)
    scale, bias, mean = (rng.normal(size=3).astype(dtype) for _ in range(3))
    var = rng.uniform(0.5, 2, 3).astype(dtype)
    got = nn.batch_norm(x, scale, bias, mean, var, epsilon=EPS)
    assert_agree(got, onnx_ref("BatchNormalization", [x, scale, bias, mean, var], epsilon=EPS))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 2, 2)])
def test_instance_norm_matches_onnx(shape, dtype):
    rng = rng_for("in", shape)
    x = (rng.normal(size=shape) * 3 + 1).astype(dtype)
    scale, bias = (rng.normal(size=shape[1]).astype(dtype) for _ in range(2))
    assert_agree(nn.instance_norm(x, scale, bias, epsilon=EPS),
                 onnx_ref("InstanceNormalization", [x, scale, bias], epsilon=EPS))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_lrn_matches_onnx(size, dtype):
    # onnx.reference's LRN loops over the batch axis where it means channels: N == C keeps it right
    x = rng_for("lrn", size).normal(size=(6, 6, 3, 4)).astype(dtype)
    # exact in float32, and so is alpha/size (the reference computes it in float32)
    attrs = {"size": size, "alpha": 0.234375, "beta": 0.625, "bias": 1.5}
    assert_agree(nn.lrn(x, **attrs), onnx_ref("LRN", [x], **attrs))


# --- layout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, value, opset", [("constant", 2.5, 18), ("reflect", 0.0, 18),
                                                ("edge", 0.0, 18), ("wrap", 0.0, 19)])
@pytest.mark.parametrize("pads", [(0, 1, 2, 1, 0, 2), (2, 0, 0, 0, 0, 1), (0, 0, 0, 0, 0, 0)])
def test_pad_matches_onnx(pads, mode, value, opset):
    x = rng_for("pad").normal(size=(3, 4, 5))
    pads_t = np.array(pads, np.int64)
    inputs = [x, pads_t, np.array(value)] if mode == "constant" else [x, pads_t]
    ref = onnx_ref("Pad", inputs, opset, mode=mode)
    got = nn.pad(x, pads=pads, mode=mode, value=value)
    assert_agree(got, ref)
    assert not np.shares_memory(got, x)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_negative_crops_first(mode):
    x = np.arange(30.0).reshape(5, 6)
    got = nn.pad(x, pads=(-1, 2, -2, -1), mode=mode, value=-1.0)
    cropped = x[1:3, :5]
    extra = {"constant_values": -1.0} if mode == "constant" else {}
    expected = np.pad(cropped, [(0, 0), (2, 0)], mode=mode, **extra)
    np.testing.assert_array_equal(got, expected)


def test_pad_keeps_integer_dtype():
    got = nn.pad(np.array([1, 2], np.int16), pads=(1, 0), value=7.9)
    assert_agree(got, np.array([7, 1, 2], np.int16))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_matches_onnx(mode):
    x = rng_for("d2s").normal(size=(2, 8, 3, 4))
    ref = onnx_ref("DepthToSpace", [x], blocksize=2, mode=mode)
    assert_agree(nn.depth_to_space(x, blocksize=2, mode=mode), ref)


def test_space_to_depth_matches_onnx_and_inverts_dcr():
    x = rng_for("s2d").normal(size=(2, 3, 6, 9)).astype(np.float32)
    y = nn.space_to_depth(x, blocksize=3)
    assert_agree(y, onnx_ref("SpaceToDepth", [x], blocksize=3))
    np.testing.assert_array_equal(nn.depth_to_space(y, blocksize=3), x)


@pytest.mark.parametrize("axis", [-1, 0, 1, -3])
def test_one_hot_matches_onnx(axis):
    idx = np.array([[0, 3, -1], [5, -4, 2]], np.int64)  # 5 and -4 are out of range for depth 4
    values = np.array([-2.0, 3.0], np.float32)
    ref = onnx_ref("OneHot", [idx, np.array(4, np.int64), values], 11, axis=axis)
    assert_agree(nn.one_hot(idx, depth=4, axis=axis, dtype=np.float32, values=(-2.0, 3.0)), ref)
    assert_agree(nn.one_hot(idx, depth=4, axis=axis), (ref == 3.0).astype(np.float32))


# --- contracts shared by every kernel ----------------------------------------------------------

def _calls():
    rng = np.random.default_rng(0)
    x4 = rng.normal(size=(2, 4, 6, 5))
    w = rng.normal(size=(4, 2, 3, 3))
    return [
        (nn.conv, (x4, w, np.ones(4)), {"group": 2, "pads": (1, 1, 1, 1)}),
        (nn.conv, (x4, rng.normal(size=(4, 1, 3, 3))), {"group": 4}),
        (nn.conv, (x4, rng.normal(size=(3, 4, 1, 1))), {}),
        (nn.conv_transpose, (x4, w, np.ones(4)), {"group": 2, "strides": (2, 2), "pads": (1, 0, 0, 1)}),
        (nn.max_pool, (x4,), {"kernel_shape": (2, 2)}),
        (nn.avg_pool, (x4,), {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1)}),
        (nn.global_avg_pool, (x4,), {}), (nn.global_max_pool, (x4,), {}),
        (nn.softmax, (x4,), {}), (nn.log_softmax, (x4,), {"axis": 1}),
        (nn.layer_norm, (x4, np.ones(5), np.zeros(5)), {}),
        (nn.batch_norm, (x4, np.ones(4), np.zeros(4), np.zeros(4), np.ones(4)), {}),
        (nn.instance_norm, (x4, np.ones(4), np.zeros(4)), {}), (nn.lrn, (x4,), {"size": 3}),
        (nn.pad, (x4,), {"pads": (0,) * 8}), (nn.pad, (x4,), {"pads": (0, 0, 1, 1) * 2, "mode": "reflect"}),
        (nn.depth_to_space, (x4,), {"blocksize": 2}), (nn.depth_to_space, (x4,), {"blocksize": 1}),
        (nn.space_to_depth, (x4[:, :, :4, :4],), {"blocksize": 2}),
        (nn.space_to_depth, (x4,), {"blocksize": 1}),
        (special.prelu, (x4, np.full((4, 1, 1), 0.1)), {}),
    ] + [(fn, (x4,), {}) for fn in (special.erf, special.erfc, special.gelu, special.sigmoid,
                                     special.softplus, special.softsign, special.elu, special.celu,
                                     special.selu, special.leaky_relu, special.thresholded_relu,
                                     special.hard_sigmoid, special.hard_swish, special.relu)]


@pytest.mark.parametrize("fn, args, kwargs", _calls(), ids=lambda a: getattr(a, "__name__", ""))
def test_kernels_never_write_to_their_inputs_and_keep_the_dtype(fn, args, kwargs):
    frozen = []
    for a in args:
        a = a.copy()
        a.flags.writeable = False
        frozen.append(a)
    y = fn(*frozen, **kwargs)
    assert y.dtype == args[0].dtype
    assert not any(np.shares_memory(y, f) for f in frozen)


_MAPPED_BY_1MIB = """
import ctypes, sys
import numpy as np
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
try:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
except AttributeError:
    sys.exit(3)  # not glibc >= 2.33
mallinfo2.restype = MallInfo2
if sys.argv[1] == "runtime":
    import runtime.kernels
before = mallinfo2().hblks
a = np.empty(1 << 20, np.uint8)
print(mallinfo2().hblks - before)
"""


@pytest.mark.parametrize("imported, mapped", [("numpy", "1"), ("runtime", "0")])
def test_the_runtime_keeps_block_temporaries_off_mmap(imported, mapped):
    """After `import runtime.kernels`, glibc serves a 1 MiB array from its heap, as in a process
    that has freed a large array; in a fresh process (the control) it maps it. Otherwise every
    128 KiB temporary of the blocked kernels is mapped and faulted anew (special.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc thresholds")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", _MAPPED_BY_1MIB, imported], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(root)}, cwd=root)
    if r.returncode == 3:
        pytest.skip("no mallinfo2 (glibc < 2.33 or another libc)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == mapped
