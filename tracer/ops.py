"""Neural-network ops NumPy lacks. Each works on plain arrays (eagerly, through the runtime's
kernel) and on tracers (recording the IR op), so one model runs eagerly or traced.

Conventions follow PyTorch's functional API (NCHW layout, `stride`/`padding`/`dilation`/`groups`);
the IR ops are N-d (`conv`, `max_pool`, `avg_pool` over 1, 2 or 3 spatial dims).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.kernels import KERNELS

from .core import Tracer, context_of, emit, lift

IntOrSeq = int | Sequence[int]


def _apply(kind: str, inputs: Sequence[Any], attrs: dict) -> Any:
    """Record `kind` when any input is traced; otherwise run its kernel now. Inputs after the
    first are cast to the first one's dtype (weights follow the activations)."""
    if any(isinstance(x, Tracer) for x in inputs):
        ctx = context_of(inputs)
        first = lift(inputs[0], ctx)
        rest = [lift(x, ctx, first.dtype) for x in inputs[1:]]
        return emit(kind, [first, *rest], attrs)
    first = np.asarray(inputs[0])
    rest = [np.asarray(x, dtype=first.dtype) for x in inputs[1:]]
    return KERNELS[kind](first, *rest, **attrs)


def _tuple(v: IntOrSeq, n: int, name: str) -> tuple[int, ...]:
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(x) for x in v)
    if len(v) != n:
        raise ValueError(f"{name} must have {n} entries, got {v}")
    return v


def _window(x: Any, nd: int | None) -> int:
    rank = np.ndim(x) if not isinstance(x, Tracer) else x.ndim
    n = rank - 2 if nd is None else nd
    if n not in (1, 2, 3) or rank != n + 2:
        raise ValueError(f"expected an input of rank {n + 2} (N, C, spatial...), got rank {rank}")
    return n


def conv(x: Any, w: Any, b: Any = None, stride: IntOrSeq = 1, padding: IntOrSeq = 0,
         dilation: IntOrSeq = 1, groups: int = 1) -> Any:
    """N-d convolution (1, 2 or 3 spatial dims), like `torch.nn.functional.conv{1,2,3}d`.

    >>> conv(np.ones((1, 1, 4)), np.ones((1, 1, 2))).tolist()
    [[[2.0, 2.0, 2.0]]]
    """
    nd = _window(x, None)
    pad = _tuple(padding, nd, "padding")
    attrs = {"strides": _tuple(stride, nd, "stride"), "pads": pad + pad,
             "dilations": _tuple(dilation, nd, "dilation"), "group": int(groups)}
    return _apply("conv", [x, w] + ([b] if b is not None else []), attrs)


def conv2d(x: Any, w: Any, b: Any = None, stride: IntOrSeq = 1, padding: IntOrSeq = 0,
           dilation: IntOrSeq = 1, groups: int = 1) -> Any:
    """2-D convolution over NCHW input with OIHW weights.

    >>> conv2d(np.ones((1, 1, 3, 3)), np.ones((2, 1, 2, 2)), padding=1).shape
    (1, 2, 4, 4)
    """
    _window(x, 2)
    return conv(x, w, b, stride, padding, dilation, groups)


def _pool(kind: str, x: Any, kernel_size: IntOrSeq, stride: IntOrSeq | None, padding: IntOrSeq,
          nd: int, **extra: Any) -> Any:
    k = _tuple(kernel_size, nd, "kernel_size")
    pad = _tuple(padding, nd, "padding")
    attrs = {"kernel_shape": k, "strides": _tuple(stride if stride is not None else k, nd, "stride"),
             "pads": pad + pad, **extra}
    return _apply(kind, [x], attrs)


def max_pool(x: Any, kernel_size: IntOrSeq, stride: IntOrSeq | None = None, padding: IntOrSeq = 0,
             dilation: IntOrSeq = 1, ceil_mode: bool = False) -> Any:
    """N-d max pooling (stride defaults to the kernel size, as in PyTorch).

    >>> max_pool(np.arange(4.0).reshape(1, 1, 4), 2).tolist()
    [[[1.0, 3.0]]]
    """
    nd = _window(x, None)
    return _pool("max_pool", x, kernel_size, stride, padding, nd,
                 dilations=_tuple(dilation, nd, "dilation"), ceil_mode=bool(ceil_mode))


def max_pool2d(x: Any, kernel_size: IntOrSeq, stride: IntOrSeq | None = None, padding: IntOrSeq = 0,
               dilation: IntOrSeq = 1, ceil_mode: bool = False) -> Any:
    """2-D max pooling over NCHW input.

    >>> max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """
    _window(x, 2)
    return max_pool(x, kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool(x: Any, kernel_size: IntOrSeq, stride: IntOrSeq | None = None, padding: IntOrSeq = 0,
             ceil_mode: bool = False, count_include_pad: bool = True) -> Any:
    """N-d average pooling (`count_include_pad=True` by default, as in PyTorch).

    >>> avg_pool(np.arange(4.0).reshape(1, 1, 4), 2).tolist()
    [[[0.5, 2.5]]]
    """
    nd = _window(x, None)
    return _pool("avg_pool", x, kernel_size, stride, padding, nd, ceil_mode=bool(ceil_mode),
                 count_include_pad=bool(count_include_pad))


def avg_pool2d(x: Any, kernel_size: IntOrSeq, stride: IntOrSeq | None = None, padding: IntOrSeq = 0,
               ceil_mode: bool = False, count_include_pad: bool = True) -> Any:
    """2-D average pooling over NCHW input.

    >>> avg_pool2d(np.ones((1, 1, 4, 4)), 2).shape
    (1, 1, 2, 2)
    """
    _window(x, 2)
    return avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad)


def global_avg_pool2d(x: Any) -> Any:
    """Mean over the spatial dims, keeping them as size 1: (N, C, H, W) -> (N, C, 1, 1).

    >>> global_avg_pool2d(np.ones((2, 3, 4, 4))).shape
    (2, 3, 1, 1)
    """
    _window(x, 2)
    return _apply("global_avg_pool", [x], {})


def softmax(x: Any, axis: int = -1) -> Any:
    """Numerically stable softmax along `axis`.

    >>> softmax(np.array([0.0, 0.0])).tolist()
    [0.5, 0.5]
    """
    return _apply("softmax", [x], {"axis": int(axis) % max(np.ndim(x) if not isinstance(x, Tracer) else x.ndim, 1)})


def log_softmax(x: Any, axis: int = -1) -> Any:
    """Numerically stable log-softmax along `axis`.

    >>> round(float(log_softmax(np.array([0.0, 0.0]))[0]), 6)
    -0.693147
    """
    return _apply("log_softmax", [x], {"axis": int(axis) % max(np.ndim(x) if not isinstance(x, Tracer) else x.ndim, 1)})


def layer_norm(x: Any, weight: Any, bias: Any = None, eps: float = 1e-5) -> Any:
    """Layer normalization over the trailing `weight.ndim` axes (PyTorch's `normalized_shape`).

    >>> layer_norm(np.array([[1.0, 3.0]]), np.ones(2)).round(3).tolist()
    [[-1.0, 1.0]]
    """
    rank = x.ndim if isinstance(x, Tracer) else np.ndim(x)
    axis = rank - (weight.ndim if isinstance(weight, Tracer) else np.ndim(weight))
    return _apply("layer_norm", [x, weight] + ([bias] if bias is not None else []),
                  {"axis": axis, "epsilon": float(eps)})


def batch_norm(x: Any, mean: Any, var: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Any:
    """Inference-mode batch normalization over channel axis 1 (PyTorch's argument order).

    >>> batch_norm(np.ones((1, 2, 1, 1)), np.ones(2), np.ones(2)).ravel().tolist()
    [0.0, 0.0]
    """
    c = (x.shape if isinstance(x, Tracer) else np.shape(x))[1]
    weight = np.ones(c) if weight is None else weight
    bias = np.zeros(c) if bias is None else bias
    return _apply("batch_norm", [x, weight, bias, mean, var], {"epsilon": float(eps)})


def gelu(x: Any, approximate: str = "none") -> Any:
    """GELU, exact (`"none"`: x * normal_cdf(x)) or the `"tanh"` approximation.

    >>> float(gelu(np.array(0.0)))
    0.0
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _apply("gelu", [x], {"approximate": approximate})


def sigmoid(x: Any) -> Any:
    """Logistic sigmoid, stable for large |x|.

    >>> float(sigmoid(np.array(0.0)))
    0.5
    """
    return _apply("sigmoid", [x], {})


def relu(x: Any) -> Any:
    """max(x, 0).

    >>> relu(np.array([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """
    return _apply("relu", [x], {})


def erf(x: Any) -> Any:
    """The error function (within 1 ulp in float32, 1e-14 relative in float64).

    >>> round(float(erf(np.array(1.0))), 12)
    0.84270079295
    """
    return _apply("erf", [x], {})


def normal_cdf(x: Any) -> Any:
    """The standard normal CDF, (1 + erf(x/sqrt 2)) / 2, accurate also in the lower tail.

    >>> round(float(normal_cdf(np.array(1.0))), 9)
    0.841344746
    """
    return _apply("normal_cdf", [x], {})


def one_hot(indices: Any, depth: int, dtype: Any = np.float32, axis: int = -1) -> Any:
    """One-hot encoding along a new `axis`; negative indices count from `depth` (as ONNX OneHot).

    >>> one_hot(np.array([1, 0]), 2).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    from ir.types import as_dtype

    return _apply("one_hot", [indices], {"depth": int(depth), "axis": int(axis), "dtype": as_dtype(dtype)})


# --- randomness with an explicit seed (see ir/ops/random.py) --------------------------------------

def _random(kind: str, shape: Any, seed: Any, stream: int, dtype: Any) -> Any:
    """Record a random op when the seed or a dim is traced; otherwise run its kernel now."""
    from ir.types import as_dtype

    from .functions import shape_arg

    shape = (shape,) if isinstance(shape, (int, np.integer, Tracer)) else tuple(shape)
    if int(stream) < 0:
        raise ValueError(f"{kind}: stream must be >= 0, got {stream}")
    attrs = {"stream": int(stream)}
    if kind != "random_bits":
        attrs["dtype"] = as_dtype(dtype)
    if isinstance(seed, Tracer) or any(isinstance(d, Tracer) for d in shape):
        ctx = context_of([seed, *shape])
        return emit(kind, [lift(seed, ctx)], {"shape": shape_arg(shape), **attrs}, ctx=ctx)
    seed = np.asarray(seed)
    if seed.dtype.kind not in "iu" or seed.ndim != 0:
        raise ValueError(f"{kind}: the seed must be a 0-d integer, got {seed.dtype} of shape {seed.shape}")
    return KERNELS[kind](seed, shape=tuple(int(d) for d in shape), **attrs)


def random_bits(shape: Any, seed: Any, stream: int = 0) -> Any:
    """uint32 random bits, a pure function of (seed, stream, element index): the same seed gives
    the same bits eagerly, in `ir.interpret`, the runtime and onnxruntime.

    >>> random_bits((2,), 0).dtype
    dtype('uint32')
    """
    return _random("random_bits", shape, seed, stream, None)


def random_uniform(shape: Any, seed: Any, low: float = 0.0, high: float = 1.0, dtype: Any = np.float32,
                   stream: int = 0) -> Any:
    """Uniform floats in [low, high) drawn from an explicit integer `seed` (a traced input in a
    training step, so each step draws anew); `stream` separates draws sharing one seed.

    >>> u = random_uniform((1000,), seed=3)
    >>> u.dtype, bool(((0 <= u) & (u < 1)).all())
    (dtype('float32'), True)
    """
    u = _random("random_uniform", shape, seed, stream, dtype)
    return u if (low, high) == (0.0, 1.0) else low + (high - low) * u


def random_normal(shape: Any, seed: Any, mean: float = 0.0, std: float = 1.0, dtype: Any = np.float32,
                  stream: int = 0) -> Any:
    """Normal floats (Box-Muller on two counter-based uniforms) from an explicit integer `seed`.

    >>> z = random_normal((20000,), seed=1, dtype=np.float64)
    >>> abs(float(z.mean())) < 0.05
    True
    """
    z = _random("random_normal", shape, seed, stream, dtype)
    return z if (mean, std) == (0.0, 1.0) else mean + std * z


def dropout(x: Any, rate: float, seed: Any, train: bool = True, stream: int = 0) -> Any:
    """Zero each element with probability `rate` and scale the rest by 1/(1-rate) (identity when
    `train` is False or `rate` is 0). The mask comes from `random_uniform(x.shape, seed)`, so a
    traced step with `seed` as an input draws a new mask every call.

    >>> dropout(np.ones(8, np.float32), 0.5, seed=1).tolist()
    [0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
    if not train or rate == 0.0:
        return x
    dtype = x.dtype if isinstance(x, Tracer) else np.asarray(x).dtype
    if dtype.kind != "f":
        raise ValueError(f"dropout: x must be floating, got {dtype}")
    shape = x._value.type.shape if isinstance(x, Tracer) else np.shape(x)
    if isinstance(x, Tracer) and not isinstance(seed, Tracer):
        seed = lift(np.asarray(seed), x._ctx)
    u = _random("random_uniform", shape, seed, stream, dtype)
    return np.where(u >= rate, x * (1.0 / (1.0 - rate)), 0.0)


__all__ = ["conv", "conv2d", "max_pool", "max_pool2d", "avg_pool", "avg_pool2d", "global_avg_pool2d",
           "softmax", "log_softmax", "layer_norm", "batch_norm", "gelu", "sigmoid", "relu", "erf", "normal_cdf",
           "one_hot", "random_bits", "random_uniform", "random_normal", "dropout"]
