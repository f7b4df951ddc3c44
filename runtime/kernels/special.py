"""Activation functions and the error function, as NumPy kernels with ONNX semantics.

NumPy has no `erf`, and the textbook formulas for the activations overflow (`1/(1+exp(-x))`
warns for x < -709) or lose all relative accuracy in the tails (`1 + erf(x)` for GELU). So:

- `erf`/`erfc` are piecewise polynomial approximations fitted for castml (below): in float64
  within ~1e-15 relative; float32 `erf` has its own lower-degree tables run in float32
  arithmetic, 3x faster and within 1 ulp of the correctly rounded result.
- `normal_cdf` (and exact GELU, x times it) uses erfc in float64, and in float32 one fitted
  formula for all x, accurate relative to the result also where 1 + erf(x) cancels.
- Activations are written branch-free: `np.where` and boolean masks on data with mixed signs are
  several times slower than arithmetic (branch mispredictions), and `np.maximum(x, 0)` against a
  scalar runs a slow loop (PERF_NOTES.md), so `relu` compares against a cached block of zeros.
- float16 is computed in float32 and rounded once at the end; integer inputs are computed in
  float64 and cast back. The result always has the input dtype. Inputs are never modified.
- Work is done on flat 1-D data: elementwise loops over 2-D+ views pay per row.
"""

from __future__ import annotations

import math

import numpy as np

# --- erf / erfc --------------------------------------------------------------------------------
# The tables were fitted for castml with mpmath at 60 digits: Chebyshev interpolation of each
# function at degree+1 Chebyshev nodes of the interval, converted to powers of the interval
# variable and rounded to float64. tests/test_kernels_nn.py checks every table against mpmath
# (when installed) and the results against `math.erf`/`math.erfc` on 1e5+ points.

# erf(x) / x as a polynomial in t = x*x, for |x| < 1 (degree 12).
_ERF_SMALL = (
    1.1283791670955126, -0.3761263890318375, 0.11283791670954879, -0.026866170645076792,
    0.0052239776248180145, -0.000854832698083379, 0.0001205533111164271, -1.4925595266831182e-05,
    1.6461000484121368e-06, -1.6350312701054695e-07, 1.4659775274047436e-08, -1.1372848856791674e-09,
    5.957176147748911e-11,
)
# exp(x*x) * erfc(x) for 1 <= x < 4, as a polynomial (degree 15) in s = 12/(x + 2) - 3 in [-1, 1]:
# in the variable 1/(x + 2) one polynomial covers the range that needs six in powers of x.
_ERFC_MID = (
    0.25539567631050575, 0.14239528247131947, 0.02685091047138511, 0.0029251326302123506,
    4.6085091412548236e-05, -2.879613884511253e-05, -1.1620620811206353e-06, 4.490064176032691e-07,
    6.638594417571672e-09, -8.858477702184788e-09, 4.660771511350794e-10, 1.5571252504705471e-10,
    -2.6202225442047474e-11, -8.981526998406953e-13, 7.425738111007737e-13, -6.816873015555312e-14,
)
# x * exp(x*x) * erfc(x) for x >= 4, as a polynomial in s = 32/x**2 - 1 in [-1, 1].
_ERFC_FAR = (
    0.5557581685752836, -0.008073805168515238, 0.0003335970130798221, -2.1861074903197153e-05,
    1.9147125699967903e-06, -2.0641918996937377e-07, 2.6102655506466723e-08, -3.7525006811941756e-09,
    5.997909547717608e-10, -1.0392183818824352e-10, 1.958804427777353e-11, -4.7243775186469616e-12,
    1.0329783159266158e-12,
)
# float32 inputs use float32 arithmetic, branch-free (both formulas everywhere, then a bitwise
# select: np.where costs ~4 ns per element on mixed data, the whole float32 erf ~3 ns), with
# lower-degree tables of the same functions, rounded to float32; within 1 ulp of the correctly
# rounded result (checked on every 37th float32 in [0, 4.5]):
# erf(x) = x + x * p(x*x) for |x| < 1, p(t) = erf(sqrt t)/sqrt t - 1 (degree 6 in t);
_ERF32_SMALL = (
    0.12837916612625122, -0.3761262595653534, 0.11283594369888306, -0.02685421146452427,
    0.005189087241888046, -0.000801686430349946, 7.875874871388078e-05,
)
# erf(x) = 1 - exp(-x*x) * r(x) for 1 <= x <= 4 (and 1 in float32 beyond), r as _ERFC_MID (degree 6).
_ERFC32_MID = (
    0.25539568066596985, 0.14239533245563507, 0.026850910857319832, 0.002924752188846469,
    4.6078665036475286e-05, -2.8029382519889623e-05, -1.149486251961207e-06,
)
_SIGN32 = np.int32(-(2**31))
_ONE32_BITS = np.int32(0x3F800000)  # the bits of float32 1.0
# Zeroing the low 27 of the 52 mantissa bits leaves 26 significant bits, so hi*hi is exact.
_SPLIT_MASK = np.uint64(0xFFFFFFFFF8000000)


def _partition(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices where `mask` is true and where it is false. Boolean indexing runs a branchy
    loop, ~10x slower than `flatnonzero` + `take` on masks of mixed values."""
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def _horner(coefs, s: np.ndarray) -> np.ndarray:
    p = s * coefs[-1]
    for c in coefs[-2:0:-1]:
        p += c
        p *= s
    p += coefs[0]
    return p


def _exp_neg_square(a: np.ndarray, exact: bool) -> np.ndarray:
    """exp(-a*a); `exact`: to ~1 ulp, where rounding a*a would cost a*a*2**-53 relative (7e-14
    at a = 26). erf does not need it: there the error is scaled by erfc(a) <= 0.16."""
    if not exact:
        return np.exp(-(a * a))
    a = np.minimum(a, 40.0)  # exp(-1600) is 0 anyway; keeps the split finite for inf
    hi = (a.view(np.uint64) & _SPLIT_MASK).view(np.float64)
    return np.exp(-(hi * hi)) * np.exp((hi - a) * (a + hi))


def _erf_small(x: np.ndarray) -> np.ndarray:
    return x * _horner(_ERF_SMALL, x * x)


def _erfc_tail(a: np.ndarray, exact: bool) -> np.ndarray:
    """erfc(a) for float64 a >= 1 (nan and inf too)."""
    out = np.empty_like(a)
    mid, far = _partition(a < 4.0)
    am = a.take(mid)
    s = 12.0 / (am + 2.0)
    s -= 3.0
    out[mid] = _horner(_ERFC_MID, s) * _exp_neg_square(am, exact)
    af = a.take(far)
    with np.errstate(over="ignore"):  # af*af overflows to inf for af > 1e154: s = -1, exp -> 0
        s = 32.0 / (af * af)
        s -= 1.0
        out[far] = _horner(_ERFC_FAR, s) * _exp_neg_square(af, exact) / af
    return out


# --- elementwise driver ------------------------------------------------------------------------

_BLOCK = 1 << 15
_zeros_cache: dict = {}


def _raise_malloc_thresholds() -> None:
    """Allocate and free 16 MiB, untouched (~40 us), once per process.

    glibc then serves allocations up to 16 MiB from its heap and stops trimming the heap below
    32 MiB, as it does in any process that has freed an array that large. Until then the 128 KiB
    temporaries of the blocked kernels here are mapped and faulted in anew on every call: float32
    GELU of 128x1024 took 1130 us instead of 318, and a transformer loaded by a fresh process ran
    20.4 ms instead of 15 (measured). Other allocators are unaffected by it.
    """
    scratch = np.empty(1 << 21)
    del scratch


_raise_malloc_thresholds()


def _apply(fn, x, work=None) -> np.ndarray:
    """fn applied to x's data, flat, in blocks of 32K elements, each converted to the work dtype
    (default: float16 -> float32, integers -> float64, else the input's) and the result back.

    Blocks keep the temporaries of multi-step formulas in cache and let malloc recycle them;
    whole-array temporaries page-fault fresh megabytes on every op (erf: 3x slower at 1M).
    """
    x = np.asarray(x)
    dt = x.dtype
    if work is None:
        work = np.float32 if dt == np.float16 else (dt if dt.kind == "f" else np.float64)
    flat = x.reshape(-1)
    if flat.size <= _BLOCK:
        return fn(flat.astype(work, copy=False)).reshape(x.shape).astype(dt, copy=False)
    out = np.empty(flat.shape, dt)
    for i in range(0, flat.size, _BLOCK):
        out[i:i + _BLOCK] = fn(flat[i:i + _BLOCK].astype(work, copy=False))
    return out.reshape(x.shape)


def _apply_into(fn, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`_apply(fn, x)` for float32/float64 x, written block by block into the C-contiguous `out`
    of x's shape and dtype (which may be x itself): no full-size result is allocated and copied."""
    flat, dst = x.reshape(-1), out.reshape(-1)
    for i in range(0, flat.size, _BLOCK):
        dst[i:i + _BLOCK] = fn(flat[i:i + _BLOCK])
    return out


def zeros_block(dtype: np.dtype) -> np.ndarray:
    """A cached read-only array of `_BLOCK` zeros of `dtype`: `np.maximum(v, 0)` with a scalar
    runs a loop 2-3x slower than against zeros of v's shape (PERF_NOTES.md), so slice this.

    >>> zeros_block(np.dtype(np.float32))[:3]
    array([0., 0., 0.], dtype=float32)
    """
    zeros = _zeros_cache.get(dtype)
    if zeros is None:
        zeros = _zeros_cache[dtype] = np.zeros(_BLOCK, dtype)
        zeros.flags.writeable = False
    return zeros


def _positive_part(v: np.ndarray) -> np.ndarray:
    """max(v, 0) for a block, against cached zeros."""
    return np.maximum(v, zeros_block(v.dtype)[: v.size])


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, 2/sqrt(pi) * integral of exp(-t*t) from 0 to x (ONNX Erf).

    float64 (and integers): within 1e-15 relative of the true value for normal results;
    float32/float16: float32 arithmetic, within 1 ulp of the correctly rounded float32.
    erf(+-inf) = +-1, erf(nan) = nan, erf(-0.0) = -0.0.

    >>> erf(np.array([0.0, 0.5, -2.0, np.inf]))
    array([ 0.        ,  0.52049988, -0.99532227,  1.        ])
    """
    if np.asarray(x).dtype in (np.float32, np.float16):
        return _apply(_erf32, x, np.float32)
    return _apply(_erf64, x, np.float64)


def _erf64(v: np.ndarray) -> np.ndarray:
    out = np.empty_like(v)
    small, big = _partition(np.abs(v) < 1.0)  # nan goes to the tail, which propagates it
    out[small] = _erf_small(v.take(small))
    vb = v.take(big)
    out[big] = np.copysign(1.0 - _erfc_tail(np.abs(vb), exact=False), vb)
    return out


def _erf32(v: np.ndarray) -> np.ndarray:
    a = np.abs(v)
    xs = np.clip(v, -1.0, 1.0)
    small = _horner(_ERF32_SMALL, xs * xs)
    small *= xs
    small += xs
    at = np.clip(a, 1.0, 4.0)  # nan stays nan; inf -> 4, where erf rounds to 1
    s = 12.0 / (at + 2.0)
    s -= 3.0
    tail = np.multiply(at, at, out=at)
    np.negative(tail, out=tail)
    np.exp(tail, out=tail)
    tail *= _horner(_ERFC32_MID, s)
    np.subtract(1.0, tail, out=tail)
    # small where |v| < 1, else the tail with v's sign: pick is all ones where the bits of |v|
    # are below those of 1.0 (nan's are above), from the sign of their difference
    pick = a.view(np.int32)
    pick -= _ONE32_BITS
    pick >>= 31
    tail_bits = tail.view(np.int32)
    tail_bits |= v.view(np.int32) & _SIGN32
    return _select32(small, tail, pick)


def _select32(a: np.ndarray, b: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """float32 `a` where the int32 `pick` is all ones, `b` where it is 0, written into `a` on the
    bits as b ^ ((a ^ b) & pick): no branch, no temporary (np.where costs ~4 ns an element on
    mixed data)."""
    a_bits, b_bits = a.view(np.int32), b.view(np.int32)
    a_bits ^= b_bits
    a_bits &= pick
    a_bits ^= b_bits
    return a


def erfc(x: np.ndarray) -> np.ndarray:
    """The complementary error function 1 - erf(x), accurate also where it is tiny.

    Computed in float64 for every dtype: within ~1e-15 relative of the true value wherever the
    result is a normal number (it underflows past x ~ 26.5); erfc(-inf) = 2, erfc(inf) = 0.

    >>> erfc(np.array([0.0, 1.0, 10.0, -np.inf]))
    array([1.00000000e+00, 1.57299207e-01, 2.08848758e-45, 2.00000000e+00])
    """
    return _apply(lambda v: _erfc64(v, exact=True), x, np.float64)


def _erfc64(v: np.ndarray, exact: bool) -> np.ndarray:
    out = np.empty_like(v)
    small, big = _partition(np.abs(v) < 1.0)
    out[small] = 1.0 - _erf_small(v.take(small))
    vb = v.take(big)
    # tail for vb > 0, 2 - tail for vb < 0, without a branch
    out[big] = np.copysign(_erfc_tail(np.abs(vb), exact), vb) + (1.0 - np.copysign(1.0, vb))
    return out


# --- activations -------------------------------------------------------------------------------

def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) (ONNX Relu); integer dtypes stay integer, nan stays nan.

    >>> relu(np.array([-1.5, 0.0, 2.0], np.float32))
    array([0., 0., 2.], dtype=float32)
    """
    x = np.asarray(x)
    return _apply(_positive_part, x, x.dtype)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(v))  # in (0, 1]: no overflow
    # numerator 1 for x >= 0, e for x < 0; max(e, x >= 0) picks it without a branch (nan: nan)
    y = np.maximum(e, v >= 0, dtype=v.dtype)
    e += 1.0
    y /= e
    return y


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), without overflow and with full relative accuracy for x << 0.

    >>> sigmoid(np.array([-1000.0, 0.0, 2.0, 1000.0]))
    array([0.        , 0.5       , 0.88079708, 1.        ])
    """
    return _apply(_sigmoid, x)


def _softplus(v: np.ndarray) -> np.ndarray:
    y = np.log1p(np.exp(-np.abs(v)))
    y += _positive_part(v)
    return y


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) (ONNX Softplus), computed as max(x, 0) + log1p(exp(-|x|)).

    >>> softplus(np.array([-30.0, 0.0, 1000.0]))
    array([9.35762297e-14, 6.93147181e-01, 1.00000000e+03])
    """
    return _apply(_softplus, x)


def _softsign(v: np.ndarray) -> np.ndarray:
    d = np.abs(v)
    d += 1.0
    return np.divide(v, d, out=d)


def softsign(x: np.ndarray) -> np.ndarray:
    """x / (1 + |x|) (ONNX Softsign).

    >>> softsign(np.array([-3.0, 0.0, 1.0]))
    array([-0.75,  0.  ,  0.5 ])
    """
    return _apply(_softsign, x)


def _exp_linear(v: np.ndarray, alpha: float, scale: float, gamma: float = 1.0) -> np.ndarray:
    """gamma * (max(v, 0) + alpha * expm1(min(v, 0) * scale)): the ELU family, branch-free
    and without overflow (exp only sees v <= 0)."""
    y = np.minimum(v, 0.0)
    if scale != 1.0:
        y *= scale
    np.expm1(y, out=y)
    y *= alpha
    y += _positive_part(v)
    if gamma != 1.0:
        y *= gamma
    return y


def elu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """x for x >= 0, alpha * (exp(x) - 1) for x < 0 (ONNX Elu).

    >>> elu(np.array([-1.0, 0.0, 2.0]))
    array([-0.63212056,  0.        ,  2.        ])
    """
    return _apply(lambda v: _exp_linear(v, alpha, 1.0), x)


def celu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) (ONNX Celu).

    >>> celu(np.array([-1.0, 2.0]), alpha=2.0)
    array([-0.78693868,  2.        ])
    """
    return _apply(lambda v: _exp_linear(v, alpha, 1.0 / alpha), x)


def selu(x: np.ndarray, *, alpha: float = 1.6732632423543772,
         gamma: float = 1.0507009873554805) -> np.ndarray:
    """gamma * x for x > 0, gamma * alpha * (exp(x) - 1) for x <= 0 (ONNX Selu).

    >>> selu(np.array([-1.0, 1.0]))
    array([-1.11133074,  1.05070099])
    """
    return _apply(lambda v: _exp_linear(v, alpha, 1.0, gamma), x)


def leaky_relu(x: np.ndarray, *, alpha: float = 0.01) -> np.ndarray:
    """x for x >= 0, alpha * x for x < 0 (ONNX LeakyRelu).

    >>> leaky_relu(np.array([-2.0, 3.0]), alpha=0.1)
    array([-0.2,  3. ])
    """
    # for alpha <= 1 the result is max(x, alpha*x), for alpha > 1 min(x, alpha*x): no branch
    pick = np.maximum if alpha <= 1.0 else np.minimum
    return _apply(lambda v: pick(v, v * alpha), x)


def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """x for x >= 0, slope * x for x < 0 (ONNX PRelu); slope broadcasts to x's shape.

    >>> prelu(np.array([[-1.0, 2.0], [-3.0, -4.0]]), np.array([0.5, 0.25]))
    array([[-0.5,  2. ],
           [-1.5, -1. ]])
    """
    x, slope = np.asarray(x), np.asarray(slope)
    if np.broadcast_shapes(x.shape, slope.shape) != x.shape:
        raise ValueError(f"prelu: slope of shape {slope.shape} does not broadcast to x of shape {x.shape}")
    work = np.float32 if x.dtype == np.float16 else x.dtype
    xw = x.astype(work, copy=False)
    y = np.minimum(xw, 0)
    y *= slope.astype(work, copy=False)
    y += np.maximum(xw, 0)
    return y.astype(x.dtype, copy=False)


def thresholded_relu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """x for x > alpha, else 0 (ONNX ThresholdedRelu).

    >>> thresholded_relu(np.array([0.5, 1.0, 1.5]))
    array([0. , 0. , 1.5])
    """
    return _apply(lambda v: np.where(v > alpha, v, 0), x)


def _hard_sigmoid(v: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    y = v * alpha
    y += beta
    return np.clip(y, 0.0, 1.0, out=y)


def hard_sigmoid(x: np.ndarray, *, alpha: float = 0.2, beta: float = 0.5) -> np.ndarray:
    """max(0, min(1, alpha * x + beta)) (ONNX HardSigmoid).

    >>> hard_sigmoid(np.array([-5.0, 0.0, 1.0, 5.0]))
    array([0. , 0.5, 0.7, 1. ])
    """
    return _apply(lambda v: _hard_sigmoid(v, alpha, beta), x)


def hard_swish(x: np.ndarray) -> np.ndarray:
    """x * max(0, min(1, x / 6 + 0.5)) (ONNX HardSwish).

    >>> hard_swish(np.array([-4.0, 1.0, 4.0]))
    array([-0.        ,  0.66666667,  4.        ])
    """
    return _apply(lambda v: _hard_sigmoid(v, 1.0 / 6.0, 0.5) * v, x)


_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

# --- the standard normal CDF, and exact GELU = x * Phi(x) --------------------------------------
# float32 uses one branch-free formula for every x, on h = Phi(-|x|) = erfc(a)/2, a = |x|/sqrt 2:
#     h = exp(-x*x/2) * s * F(s),  s = 1/(a + 2) in (0, 1/2],  F(s) = erfcx(a) / (2 s),
# F as a polynomial in s (degree 8): the Chebyshev interpolant of F for a in [0, 14.5/sqrt 2]
# (mpmath, 40 digits; beyond |x| = 14.5, where |x| is clipped, h rounds to 0 in float32), in
# powers of s, rounded to float32 on use. Phi is h where x < 0 and 1 - h otherwise, picked on the
# sign bit: no cancellation for x << 0, where 1 + erf(x/sqrt 2) loses all relative accuracy, and
# ~30 float32 passes over a block against ~45 for erf's two pieces. Error (every 13th float32):
# at most 2.4e-7 absolute; relative, 6.6e-7 for x >= -3, growing with the rounding of x*x in the
# exponent to 5.3e-6 at x = -13.2, where Phi becomes subnormal.
_PHI32 = (
    0.28208203715443403, 0.5649146831333105, 0.9699008308877674, 1.64217000708372, -0.5263556635751638,
    9.194268461088273, -31.702683577827727, 36.930495395774486, -15.327898799796108,
)
_PHI32_XMAX = np.float32(14.5)


def _normal_cdf32(v: np.ndarray) -> np.ndarray:
    ax = np.abs(v)
    np.clip(ax, 0.0, _PHI32_XMAX, out=ax)  # nan stays nan; keeps x*x finite (no None: a slow loop)
    s = ax * _SQRT_HALF
    s += 2.0
    np.divide(1.0, s, out=s)
    h = _horner(_PHI32, s)
    h *= s
    e = np.multiply(ax, ax, out=ax)
    e *= -0.5
    np.exp(e, out=e)
    h *= e
    # h where v's sign bit is set, else 1 - h
    return _select32(h, np.subtract(1.0, h), v.view(np.int32) >> 31)


def _normal_cdf64(v: np.ndarray) -> np.ndarray:
    y = _erfc64(v * -_SQRT_HALF, exact=True)
    y *= 0.5
    return y


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """The standard normal distribution function, Phi(x) = erfc(-x/sqrt 2) / 2 (scipy's `ndtr`).

    float64 (and integers): within 1e-14 relative of the true value for normal results;
    float32/float16: float32 arithmetic, at most 2.5e-7 absolute error, and relative to the
    value 7e-7 for x >= -3 and 6e-6 for x >= -13 (see `_PHI32`): also in the lower tail, where
    `(1 + erf(x/sqrt 2)) / 2` cancels. Phi(-inf) = 0, Phi(inf) = 1, Phi(nan) = nan.
    Exact GELU is `x * normal_cdf(x)`, bit for bit.

    >>> normal_cdf(np.array([-1.0, 0.0, 1.0, -10.0]))
    array([1.58655254e-01, 5.00000000e-01, 8.41344746e-01, 7.61985302e-24])
    """
    if np.asarray(x).dtype in (np.float32, np.float16):
        return _apply(_normal_cdf32, x, np.float32)
    return _apply(_normal_cdf64, x, np.float64)



def _gelu_erf(v: np.ndarray) -> np.ndarray:
    y = _normal_cdf64(v)
    y *= v
    return y


def _gelu_tanh(v: np.ndarray) -> np.ndarray:
    inner = v * v
    inner *= 0.044715
    inner += 1.0
    inner *= v
    inner *= _SQRT_2_OVER_PI
    y = np.tanh(inner, out=inner)
    y += 1.0
    y *= v
    y *= 0.5
    return y


def _gelu_erf32(v: np.ndarray) -> np.ndarray:
    y = _normal_cdf32(v)
    y *= v
    return y


# (dtype, approximate) -> the per-block function of `gelu_into`
_GELU_BLOCKS = {(np.dtype(np.float32), "none"): _gelu_erf32, (np.dtype(np.float32), "tanh"): _gelu_tanh,
                (np.dtype(np.float64), "none"): _gelu_erf, (np.dtype(np.float64), "tanh"): _gelu_tanh}


def gelu_into(out: np.ndarray, x: np.ndarray, *, approximate: str = "none") -> np.ndarray:
    """`gelu(x, approximate=approximate)` written into `out` (which may be x itself: the
    activation of a GEMM in place); the same formulas on the same blocks, so the same bits.

    >>> y = np.array([-1.0, 0.0, 1.0]); gelu_into(y, y)
    array([-0.15865525,  0.        ,  0.84134475])
    """
    x = np.asarray(x)
    fn = _GELU_BLOCKS.get((x.dtype, approximate))
    if fn is None or out.dtype != x.dtype or out.shape != x.shape or not out.flags.c_contiguous:
        out[...] = gelu(x, approximate=approximate)
        return out
    return _apply_into(fn, x, out)


def gelu(x: np.ndarray, *, approximate: str = "none") -> np.ndarray:
    """Gaussian error linear unit (ONNX Gelu, opset 20).

    approximate="none": x * Phi(x) = x/2 * (1 + erf(x/sqrt(2))), computed as
    `x * normal_cdf(x)` (bit for bit), which stays accurate (relative) for x << 0, where
    1 + erf cancels.
    "tanh": the tanh approximation x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).

    >>> gelu(np.array([-1.0, 0.0, 1.0]))
    array([-0.15865525,  0.        ,  0.84134475])
    >>> gelu(np.array([1.0]), approximate="tanh")
    array([0.84119199])
    """
    if approximate == "none":
        if np.asarray(x).dtype in (np.float32, np.float16):
            return _apply(_gelu_erf32, x, np.float32)
        return _apply(_gelu_erf, x, np.float64)
    if approximate == "tanh":
        return _apply(_gelu_tanh, x)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
