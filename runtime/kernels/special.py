"""Activation functions and the error function, as NumPy kernels with ONNX semantics.

NumPy has no `erf`, and the textbook formulas for the activations overflow (`1/(1+exp(-x))`
warns for x < -709) or lose all relative accuracy in the tails (`1 + erf(x)` for GELU). So:

- `erf`/`erfc` are piecewise polynomial approximations fitted for castml (below), evaluated in
  float64 for every input dtype: |error| <= ~1e-15 relative in float64, so float32 results are
  the float64 value rounded once (within 1 ulp of the correctly rounded result).
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
# exp(x*x) * erfc(x) on the six intervals [1 + k/2, 1.5 + k/2], k = 0..5, as polynomials in
# s = 4*(x - centre_k) in [-1, 1]; row k holds interval k, column j the coefficient of s**j.
_ERFC_MID = np.array([
    [0.3678229164523611, -0.05220546899115238, 0.006674723218537419, -0.0007846605374382521,
     8.598189160507216e-05, -8.868776967725166e-06, 8.674584711778801e-07, -8.09194284279868e-08,
     7.232217406690809e-09, -6.215429959552571e-10, 5.154261278261677e-11, -4.214961825526736e-12,
     3.2747182507155396e-13],
    [0.2849722347374364, -0.03274408637862129, 0.0034852268804429535, -0.0003478124256469985,
     3.2829371903648855e-05, -2.950170555585948e-06, 2.537120414482415e-07, -2.096762028769442e-08,
     1.670918660864194e-09, -1.2875251113676387e-10, 9.61847389834657e-12, -7.092030933689514e-13,
     5.0048417345007894e-14],
    [0.23108725873039188, -0.022121625702187286, 0.0019995392131691415, -0.00017190719931942612,
     1.4136700602964347e-05, -1.1169223469151147e-06, 8.509165574807611e-08, -6.269598619463966e-09,
     4.478950947622092e-10, -3.108856441414792e-11, 2.10082401649295e-12, -1.402683891597517e-13,
     9.019823445765036e-15],
    [0.1936620962790687, -0.01580940939015871, 0.001234912061707679, -9.272402964060302e-05,
     6.717116739411538e-06, -4.708936375997823e-07, 3.202680676576849e-08, -2.117835321201201e-09,
     1.3641597025404525e-10, -8.572609778060283e-12, 5.263802979021472e-13, -3.1971258939165315e-14,
     1.8800738604690586e-15],
    [0.16633534842682188, -0.011799850580292594, 0.0008085806801886348, -5.367923907668294e-05,
     3.4609553809933582e-06, -2.1717047807742037e-07, 1.3286232619299866e-08, -7.937403081265358e-10,
     4.636889929605563e-11, -2.651912467909991e-12, 1.4865485154109668e-13, -8.251888719805715e-15,
     4.454562117727668e-16],
    [0.14558972127503855, -0.009114064383180883, 0.0005549222204578311, -3.292629484639286e-05,
     1.907118680060835e-06, -1.0798786613289054e-07, 5.985430999920972e-09, -3.251143200862901e-10,
     1.732369459208254e-11, -9.063500898261399e-13, 4.659999514606456e-14, -2.3750846277556673e-15,
     1.1815817873651303e-16],
])
# x * exp(x*x) * erfc(x) for x >= 4, as a polynomial in s = 32/x**2 - 1 in [-1, 1].
_ERFC_FAR = (
    0.5557581685752836, -0.008073805168515238, 0.0003335970130798221, -2.1861074903197153e-05,
    1.9147125699967903e-06, -2.0641918996937377e-07, 2.6102655506466723e-08, -3.7525006811941756e-09,
    5.997909547717608e-10, -1.0392183818824352e-10, 1.958804427777353e-11, -4.7243775186469616e-12,
    1.0329783159266158e-12,
)
_MID_COLUMNS = tuple(np.ascontiguousarray(_ERFC_MID[:, j]) for j in range(_ERFC_MID.shape[1]))
# Zeroing the low 27 of the 52 mantissa bits leaves 26 significant bits, so hi*hi is exact.
_SPLIT_MASK = np.uint64(0xFFFFFFFFF8000000)


def _horner(coefs, s: np.ndarray) -> np.ndarray:
    p = s * coefs[-1]
    for c in coefs[-2:0:-1]:
        p += c
        p *= s
    p += coefs[0]
    return p


def _exp_neg_square(a: np.ndarray) -> np.ndarray:
    """exp(-a*a) to ~1 ulp: a*a rounded would cost a*a*2**-53 relative (7e-14 at a=26)."""
    a = np.minimum(a, 40.0)  # exp(-1600) is 0 anyway; keeps the split finite for inf
    hi = (a.view(np.uint64) & _SPLIT_MASK).view(np.float64)
    return np.exp(-(hi * hi)) * np.exp((hi - a) * (a + hi))


def _erf_small(x: np.ndarray) -> np.ndarray:
    return x * _horner(_ERF_SMALL, x * x)


def _erfc_tail(a: np.ndarray) -> np.ndarray:
    """erfc(a) for float64 a >= 1 (nan and inf too)."""
    out = np.empty_like(a)
    mid = a < 4.0
    am = a[mid]
    k = ((am - 1.0) * 2.0).astype(np.intp)  # interval index, 0..5
    s = 4.0 * am - (5.0 + 2.0 * k)  # 4 * (am - centre_k), centre_k = 1.25 + k/2
    p = _MID_COLUMNS[-1].take(k)
    for col in _MID_COLUMNS[-2::-1]:
        p *= s
        p += col.take(k)
    out[mid] = p * _exp_neg_square(am)
    far = ~mid
    af = a[far]
    with np.errstate(over="ignore"):  # af*af overflows to inf for af > 1e154: s = -1, fine
        s = 32.0 / (af * af) - 1.0
    out[far] = _horner(_ERFC_FAR, s) * _exp_neg_square(af) / af
    return out


def _float64(x) -> tuple[np.ndarray, np.dtype]:
    x = np.asarray(x)
    return x.astype(np.float64, copy=False).reshape(-1), x.dtype


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, 2/sqrt(pi) * integral of exp(-t*t) from 0 to x (ONNX Erf).

    float64: within 1e-15 relative of the true value for normal results; float32/float16: the
    float64 result rounded once. erf(+-inf) = +-1, erf(nan) = nan, erf(-0.0) = -0.0.

    >>> erf(np.array([0.0, 0.5, -2.0, np.inf]))
    array([ 0.        ,  0.52049988, -0.99532227,  1.        ])
    """
    v, dt = _float64(x)
    out = np.empty_like(v)
    small = np.abs(v) < 1.0  # nan goes to the tail, which propagates it
    vs = v[small]
    out[small] = _erf_small(vs)
    big = ~small
    vb = v[big]
    out[big] = np.copysign(1.0 - _erfc_tail(np.abs(vb)), vb)
    return out.reshape(np.shape(x)).astype(dt, copy=False)


def erfc(x: np.ndarray) -> np.ndarray:
    """The complementary error function 1 - erf(x), accurate also where it is tiny.

    float64: within ~1e-15 relative of the true value wherever the result is a normal number
    (it underflows past x ~ 26.5); erfc(-inf) = 2, erfc(inf) = 0.

    >>> erfc(np.array([0.0, 1.0, 10.0, -np.inf]))
    array([1.00000000e+00, 1.57299207e-01, 2.08848758e-45, 2.00000000e+00])
    """
    v, dt = _float64(x)
    out = np.empty_like(v)
    small = np.abs(v) < 1.0
    out[small] = 1.0 - _erf_small(v[small])
    big = ~small
    vb = v[big]
    tail = _erfc_tail(np.abs(vb))
    out[big] = np.where(vb < 0, 2.0 - tail, tail)
    return out.reshape(np.shape(x)).astype(dt, copy=False)


# --- activations -------------------------------------------------------------------------------

def _work(x) -> tuple[np.ndarray, tuple, np.dtype]:
    """Flat data in the dtype to compute in, the shape and the dtype to return."""
    x = np.asarray(x)
    dt = x.dtype
    work = np.float32 if dt == np.float16 else (dt if dt.kind == "f" else np.float64)
    return x.astype(work, copy=False).reshape(-1), x.shape, dt


def _done(y: np.ndarray, shape: tuple, dt: np.dtype) -> np.ndarray:
    return y.reshape(shape).astype(dt, copy=False)


_ZERO_BLOCK = 1 << 16
_zeros_cache: dict = {}


def _positive_part(v: np.ndarray) -> np.ndarray:
    """max(v, 0) for flat v, against a cached block of zeros (2-3x faster than a scalar 0)."""
    zeros = _zeros_cache.get(v.dtype)
    if zeros is None:
        zeros = _zeros_cache[v.dtype] = np.zeros(_ZERO_BLOCK, v.dtype)
        zeros.flags.writeable = False
    out = np.empty_like(v)
    for i in range(0, v.size, _ZERO_BLOCK):
        j = min(i + _ZERO_BLOCK, v.size)
        np.maximum(v[i:j], zeros[: j - i], out=out[i:j])
    return out


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) (ONNX Relu); integer dtypes stay integer, nan stays nan.

    >>> relu(np.array([-1.5, 0.0, 2.0], np.float32))
    array([0., 0., 2.], dtype=float32)
    """
    x = np.asarray(x)
    return _positive_part(x.reshape(-1)).reshape(x.shape)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), without overflow and with full relative accuracy for x << 0.

    >>> sigmoid(np.array([-1000.0, 0.0, 2.0, 1000.0]))
    array([0.        , 0.5       , 0.88079708, 1.        ])
    """
    v, shape, dt = _work(x)
    e = np.exp(-np.abs(v))  # in (0, 1]: no overflow
    # numerator 1 for x >= 0, e for x < 0; max(e, x >= 0) picks it without a branch (nan: nan)
    y = np.maximum(e, v >= 0, dtype=v.dtype)
    e += 1.0
    y /= e
    return _done(y, shape, dt)


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) (ONNX Softplus), computed as max(x, 0) + log1p(exp(-|x|)).

    >>> softplus(np.array([-30.0, 0.0, 1000.0]))
    array([9.35762297e-14, 6.93147181e-01, 1.00000000e+03])
    """
    v, shape, dt = _work(x)
    y = np.log1p(np.exp(-np.abs(v)))
    y += _positive_part(v)
    return _done(y, shape, dt)


def softsign(x: np.ndarray) -> np.ndarray:
    """x / (1 + |x|) (ONNX Softsign).

    >>> softsign(np.array([-3.0, 0.0, 1.0]))
    array([-0.75,  0.  ,  0.5 ])
    """
    v, shape, dt = _work(x)
    d = np.abs(v)
    d += 1.0
    return _done(v / d, shape, dt)


def _exp_linear(v: np.ndarray, alpha: float, inner: float) -> np.ndarray:
    """max(v, 0) + alpha * expm1(min(v, 0) * inner): ELU-style, branch-free and overflow-free."""
    neg = np.minimum(v, 0.0)
    if inner != 1.0:
        neg *= inner
    y = np.expm1(neg, out=neg)
    y *= alpha
    y += _positive_part(v)
    return y


def elu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """x for x >= 0, alpha * (exp(x) - 1) for x < 0 (ONNX Elu).

    >>> elu(np.array([-1.0, 0.0, 2.0]))
    array([-0.63212056,  0.        ,  2.        ])
    """
    v, shape, dt = _work(x)
    return _done(_exp_linear(v, alpha, 1.0), shape, dt)


def celu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1)) (ONNX Celu).

    >>> celu(np.array([-1.0, 2.0]), alpha=2.0)
    array([-0.78693868,  2.        ])
    """
    v, shape, dt = _work(x)
    return _done(_exp_linear(v, alpha, 1.0 / alpha), shape, dt)


def selu(x: np.ndarray, *, alpha: float = 1.6732632423543772, gamma: float = 1.0507009873554805) -> np.ndarray:
    """gamma * x for x > 0, gamma * alpha * (exp(x) - 1) for x <= 0 (ONNX Selu).

    >>> selu(np.array([-1.0, 1.0]))
    array([-1.11133074,  1.05070099])
    """
    v, shape, dt = _work(x)
    y = _exp_linear(v, alpha, 1.0)
    y *= gamma
    return _done(y, shape, dt)


def leaky_relu(x: np.ndarray, *, alpha: float = 0.01) -> np.ndarray:
    """x for x >= 0, alpha * x for x < 0 (ONNX LeakyRelu).

    >>> leaky_relu(np.array([-2.0, 3.0]), alpha=0.1)
    array([-0.2,  3. ])
    """
    v, shape, dt = _work(x)
    # for alpha <= 1 the result is max(x, alpha*x), for alpha > 1 min(x, alpha*x): no branch
    pick = np.maximum if alpha <= 1.0 else np.minimum
    return _done(pick(v, v * alpha), shape, dt)


def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """x for x >= 0, slope * x for x < 0 (ONNX PRelu); slope broadcasts to x's shape.

    >>> prelu(np.array([[-1.0, 2.0], [-3.0, -4.0]]), np.array([0.5, 0.25]))
    array([[-0.5,  2. ],
           [-1.5, -1. ]])
    """
    x, slope = np.asarray(x), np.asarray(slope)
    if np.broadcast_shapes(x.shape, slope.shape) != x.shape:
        raise ValueError(f"prelu: slope of shape {slope.shape} does not broadcast to x of shape {x.shape}")
    dt = x.dtype
    work = np.float32 if dt == np.float16 else dt
    xw, sw = x.astype(work, copy=False), slope.astype(work, copy=False)
    y = np.minimum(xw, 0)
    y *= sw
    y += _positive_part(xw.reshape(-1)).reshape(x.shape)
    return y.astype(dt, copy=False)


def thresholded_relu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """x for x > alpha, else 0 (ONNX ThresholdedRelu).

    >>> thresholded_relu(np.array([0.5, 1.0, 1.5]))
    array([0. , 0. , 1.5])
    """
    v, shape, dt = _work(x)
    return _done(np.where(v > alpha, v, 0), shape, dt)


def hard_sigmoid(x: np.ndarray, *, alpha: float = 0.2, beta: float = 0.5) -> np.ndarray:
    """max(0, min(1, alpha * x + beta)) (ONNX HardSigmoid).

    >>> hard_sigmoid(np.array([-5.0, 0.0, 1.0, 5.0]))
    array([0. , 0.5, 0.7, 1. ])
    """
    v, shape, dt = _work(x)
    y = v * alpha
    y += beta
    return _done(np.clip(y, 0.0, 1.0, out=y), shape, dt)


def hard_swish(x: np.ndarray) -> np.ndarray:
    """x * max(0, min(1, x / 6 + 0.5)) (ONNX HardSwish).

    >>> hard_swish(np.array([-4.0, 1.0, 4.0]))
    array([-0.        ,  0.66666667,  4.        ])
    """
    v, shape, dt = _work(x)
    y = v * (1.0 / 6.0)
    y += 0.5
    np.clip(y, 0.0, 1.0, out=y)
    y *= v
    return _done(y, shape, dt)


_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x: np.ndarray, *, approximate: str = "none") -> np.ndarray:
    """Gaussian error linear unit (ONNX Gelu, opset 20).

    approximate="none": x * Phi(x), computed as x/2 * erfc(-x/sqrt(2)), which stays accurate
    (relative) for x << 0 where 1 + erf(x/sqrt(2)) cancels; "tanh": the tanh approximation
    x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).

    >>> gelu(np.array([-1.0, 0.0, 1.0]))
    array([-0.15865525,  0.        ,  0.84134475])
    >>> gelu(np.array([1.0]), approximate="tanh")
    array([0.84119199])
    """
    if approximate == "none":
        xs = np.asarray(x)
        v, dt = _float64(xs)
        y = erfc(v * -_SQRT_HALF)
        y *= v
        y *= 0.5
        return y.reshape(xs.shape).astype(dt, copy=False)
    if approximate != "tanh":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    v, shape, dt = _work(x)
    inner = v * v
    inner *= 0.044715
    inner += 1.0
    inner *= v
    inner *= _SQRT_2_OVER_PI
    y = np.tanh(inner, out=inner)
    y += 1.0
    y *= v
    y *= 0.5
    return _done(y, shape, dt)
