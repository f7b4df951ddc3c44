"""Neural-network kernels with ONNX semantics: softmax, normalizations, padding and layout.

The sliding-window kernels (conv, conv_transpose, pooling) live in `conv.py` and are
re-exported here, so `nn` names every NN kernel.

- Softmax shifts by the row maximum, so it never overflows; log_softmax never takes log(0)
  of an underflowed exp.
- Normalizations fold their statistics and affine parameters into one scale and one offset per
  row or channel, so the big array is read and written twice, not five times.
- float16 is computed in float32 and rounded once; inputs are never modified.
"""

from __future__ import annotations

import math

import numpy as np

from .conv import (
    _bias_shape,
    _pad_constant,
    _work_dtype,
    avg_pool,
    conv,
    conv_transpose,
    global_avg_pool,
    global_max_pool,
    max_pool,
)
from .special import _BLOCK

__all__ = ["conv", "conv_transpose", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool", "softmax",
           "log_softmax", "layer_norm", "batch_norm", "instance_norm", "lrn", "pad", "depth_to_space",
           "space_to_depth", "one_hot"]


# --- softmax and normalization -----------------------------------------------------------------

def _axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for rank {ndim}")
    return axis % ndim


def _by_rows(rows: np.ndarray, fn, dtype) -> np.ndarray:
    """fn(block, row_slice) over blocks of whole rows of a 2-D array (~32K elements each),
    gathered into one array: temporaries stay in cache (see special._apply)."""
    out = np.empty(rows.shape, dtype)
    step = max(1, _BLOCK // max(rows.shape[1], 1))
    for i in range(0, rows.shape[0], step):
        rs = slice(i, i + step)
        out[rs] = fn(rows[rs], rs)
    return out


def _along_last(x: np.ndarray, axis: int, fn) -> np.ndarray:
    """fn(block of rows in the work dtype) applied along `axis`, moved last and back."""
    if x.ndim == 0:
        return _along_last(x.reshape(1), axis, fn).reshape(())
    axis = _axis(axis, x.ndim)
    if x.size == 0:
        return x.copy()
    v = np.moveaxis(x, axis, -1)
    work = _work_dtype(x.dtype)
    y = _by_rows(v.reshape(-1, v.shape[-1]), lambda r, _: fn(r.astype(work, copy=False)), x.dtype)
    y = np.moveaxis(y.reshape(v.shape), -1, axis)
    return y if axis == x.ndim - 1 else np.ascontiguousarray(y)


def _softmax_rows(r: np.ndarray) -> np.ndarray:
    y = r - r.max(axis=1, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=1, keepdims=True)
    return y


def _softmax_rows_into(r: np.ndarray, dst: np.ndarray) -> None:
    """`_softmax_rows(r)` computed in `dst` (the same ufuncs in the same order: the same bits)."""
    np.subtract(r, r.max(axis=1, keepdims=True), out=dst)
    np.exp(dst, out=dst)
    dst /= dst.sum(axis=1, keepdims=True)


def _rows_into(x: np.ndarray, axis: int, out: np.ndarray | None, fn) -> np.ndarray | None:
    """For contiguous float32/float64 data normalized over axis..last: `fn(rows, dst, row_slice)`
    run on blocks of rows (~32K elements) writing straight into `out` (fresh when None), so no
    block result is allocated and copied. None when that layout does not apply."""
    if (x.dtype not in (np.float32, np.float64) or x.ndim == 0 or not x.flags.c_contiguous or x.size == 0
            or (out is not None and (out.dtype != x.dtype or out.shape != x.shape or not out.flags.c_contiguous))):
        return None
    axis = _axis(axis, x.ndim)
    width = math.prod(x.shape[axis:])
    rows = x.reshape(-1, width)
    if out is None:
        out = np.empty(x.shape, x.dtype)
    dst = out.reshape(rows.shape)
    step = max(1, _BLOCK // max(width, 1))
    for i in range(0, rows.shape[0], step):
        rs = slice(i, i + step)
        fn(rows[rs], dst[rs], rs)
    return out


def softmax_into(out: np.ndarray | None, x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """`softmax(x, axis=axis)` written into `out` (fresh when None); bit-identical to `softmax`.

    >>> softmax_into(np.empty((1, 2)), np.array([[0.0, 0.0]]))
    array([[0.5, 0.5]])
    """
    x = np.asarray(x)
    if x.ndim and _axis(axis, x.ndim) == x.ndim - 1:
        y = _rows_into(x, axis, out, lambda r, dst, _: _softmax_rows_into(r, dst))
        if y is not None:
            return y
    y = _along_last(x, axis, _softmax_rows)
    if out is None:
        return y
    np.copyto(out, y)
    return out


def _log_softmax_rows(r: np.ndarray) -> np.ndarray:
    y = r - r.max(axis=1, keepdims=True)
    y -= np.log(np.exp(y).sum(axis=1, keepdims=True))
    return y


def softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along `axis` (ONNX Softmax, opset 13+), shifted by the max so it
    never overflows.

    >>> softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1000.0]]))
    array([[0.09003057, 0.24472847, 0.66524096],
           [0.        , 0.        , 1.        ]])
    """
    return softmax_into(None, x, axis=axis)


def log_softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """x - log(sum(exp(x))) along `axis` (ONNX LogSoftmax, opset 13+), computed stably.

    >>> log_softmax(np.array([0.0, 0.0, 1000.0]))
    array([-1000., -1000.,     0.])
    """
    return _along_last(np.asarray(x), axis, _log_softmax_rows)


def _normalize_rows(r: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(r - mean) * 1/sqrt(var + epsilon) per row (biased variance, two-pass), and the mean."""
    mean = r.mean(axis=1, keepdims=True)
    y = r - mean
    var = np.einsum("ij,ij->i", y, y)[:, None]  # no temporary for y*y
    var /= r.shape[1]
    var += epsilon
    y /= np.sqrt(var, out=var)
    return y, mean


def layer_norm_into(out: np.ndarray | None, x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None, *,
                    axis: int = -1, epsilon: float = 1e-5) -> np.ndarray:
    """`layer_norm(x, scale, bias, ...)` written into `out` (fresh when None); the same ufuncs
    in the same order on contiguous float32/float64 data, so the same bits.

    >>> layer_norm_into(np.empty((1, 2)), np.array([[1.0, 3.0]]), np.ones(2), np.zeros(2), epsilon=0.0)
    array([[-1.,  1.]])
    """
    x = np.asarray(x)
    if x.ndim and x.dtype in (np.float32, np.float64):
        inner = x.shape[_axis(axis, x.ndim):]
        sc = np.broadcast_to(np.asarray(scale, x.dtype), inner).ravel()
        bi = None if bias is None else np.broadcast_to(np.asarray(bias, x.dtype), inner).ravel()

        def rows(r, dst, _):
            mean = r.mean(axis=1, keepdims=True)
            np.subtract(r, mean, out=dst)
            var = np.einsum("ij,ij->i", dst, dst)[:, None]
            var /= r.shape[1]
            var += epsilon
            dst /= np.sqrt(var, out=var)
            dst *= sc
            if bi is not None:
                dst += bi

        y = _rows_into(x, axis, out, rows)
        if y is not None:
            return y
    y = layer_norm(x, scale, bias, axis=axis, epsilon=epsilon)
    if out is None:
        return y
    np.copyto(out, y)
    return out


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None, *, axis: int = -1,
               epsilon: float = 1e-5) -> np.ndarray:
    """ONNX LayerNormalization (output Y only): normalize over the axes axis..last, then
    `* scale + bias` (both broadcast to those axes). Statistics are float32 for float16 input.

    >>> layer_norm(np.array([[1.0, 2.0, 3.0]]), np.ones(3), np.zeros(3), epsilon=0.0)
    array([[-1.22474487,  0.        ,  1.22474487]])
    """
    x = np.asarray(x)
    work = _work_dtype(x.dtype)
    axis = _axis(axis, x.ndim)
    inner = x.shape[axis:]
    scale = np.broadcast_to(np.asarray(scale, work), inner).ravel()
    bias = None if bias is None else np.broadcast_to(np.asarray(bias, work), inner).ravel()

    def rows(r, _):
        y, _ = _normalize_rows(r.astype(work, copy=False), epsilon)
        y *= scale
        if bias is not None:
            y += bias
        return y

    return _by_rows(x.reshape(math.prod(x.shape[:axis]), math.prod(inner)), rows, x.dtype).reshape(x.shape)


def _channel_affine(x: np.ndarray, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """x * a + c with a, c per channel (axis 1), in x's dtype."""
    shape = _bias_shape(x.shape[1], x.ndim - 2)
    y = x * a.astype(x.dtype).reshape(shape)
    y += c.astype(x.dtype).reshape(shape)
    return y


def batch_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray, *,
               epsilon: float = 1e-5) -> np.ndarray:
    """ONNX BatchNormalization in inference mode (output Y only), channel axis 1:
    (x - mean) / sqrt(var + epsilon) * scale + bias, as one multiply-add per element.

    >>> ones, zeros = np.ones(2), np.zeros(2)
    >>> batch_norm(np.ones((1, 2, 2)), np.array([1.0, 2.0]), zeros, zeros, ones, epsilon=0.0)
    array([[[1., 1.],
            [2., 2.]]])
    """
    x = np.asarray(x)
    v = x.astype(_work_dtype(x.dtype), copy=False)
    p = [np.asarray(t, np.float64) for t in (scale, bias, mean, var)]
    a = p[0] / np.sqrt(p[3] + epsilon)
    return _channel_affine(v, a, p[1] - p[2] * a).astype(x.dtype, copy=False)


def instance_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, *, epsilon: float = 1e-5) -> np.ndarray:
    """ONNX InstanceNormalization: normalize each (sample, channel) over its spatial dims, then
    `* scale + bias` per channel.

    >>> instance_norm(np.array([[[1.0, 3.0]]]), np.array([2.0]), np.array([1.0]), epsilon=0.0)
    array([[[-1.,  3.]]])
    """
    x = np.asarray(x)
    work = _work_dtype(x.dtype)
    n, c = x.shape[:2]
    scale = np.tile(np.asarray(scale).astype(work, copy=False), n)[:, None]
    bias = np.tile(np.asarray(bias).astype(work, copy=False), n)[:, None]

    def rows(r, rs):
        y, _ = _normalize_rows(r.astype(work, copy=False), epsilon)
        y *= scale[rs]
        y += bias[rs]
        return y

    return _by_rows(x.reshape(n * c, math.prod(x.shape[2:])), rows, x.dtype).reshape(x.shape)


def lrn(x: np.ndarray, *, size: int, alpha: float = 1e-4, beta: float = 0.75,
        bias: float = 1.0) -> np.ndarray:
    """Local response normalization across channels (ONNX LRN):
    x / (bias + alpha/size * sum of x^2 over channels c - (size-1)//2 .. c + ceil((size-1)/2))^beta.

    >>> lrn(np.ones((1, 3, 1, 1)), size=3, alpha=3.0, beta=1.0, bias=0.0)[0, :, 0, 0]
    array([0.5       , 0.33333333, 0.5       ])
    """
    x = np.asarray(x)
    v = x.astype(_work_dtype(x.dtype), copy=False)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = _pad_constant(v * v, (lo,) + (0,) * (x.ndim - 2), (hi,) + (0,) * (x.ndim - 2), 0)
    c = x.shape[1]
    total = sq[:, 0:c].copy()
    for j in range(1, size):
        total += sq[:, j:j + c]
    total *= alpha / size
    total += bias
    y = np.power(total, -beta, out=total)
    y *= v
    return y.astype(x.dtype, copy=False)


# --- layout ------------------------------------------------------------------------------------

_PAD_MODES = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _fresh(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y, copied if it is a view of x (reshapes that need no copy, e.g. blocksize 1): a kernel
    result never aliases an input, so the memory planner may reuse input buffers."""
    return y.copy() if np.may_share_memory(y, x) else y


def pad(x: np.ndarray, *, pads, mode: str = "constant", value: float = 0.0) -> np.ndarray:
    """ONNX Pad over all axes: pads = (begin_0, ..., begin_n, end_0, ..., end_n); negative pads
    crop (before any reflect/edge/wrap padding). Modes: constant, reflect, edge, wrap.

    >>> pad(np.array([[1, 2, 3]]), pads=(0, 1, 0, -1), mode="reflect")
    array([[2, 1, 2]])
    """
    x = np.asarray(x)
    pads = tuple(int(p) for p in pads)
    if len(pads) != 2 * x.ndim:
        raise ValueError(f"pad: pads needs {2 * x.ndim} entries for shape {x.shape}, got {pads}")
    begins, ends = pads[:x.ndim], pads[x.ndim:]
    if mode == "constant":
        y = _pad_constant(x, begins, ends, np.asarray(value).astype(x.dtype))
        return y.copy() if y is x else y
    if mode not in _PAD_MODES:
        raise ValueError(f"pad: mode must be constant, reflect, edge or wrap, got {mode!r}")
    y = _pad_constant(x, [min(b, 0) for b in begins], [min(e, 0) for e in ends], 0)
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    if any(n == 0 and w != (0, 0) for n, w in zip(y.shape, widths)):
        raise ValueError(f"pad: cannot {mode}-pad an empty axis (shape {y.shape})")
    return np.pad(y, widths, mode=_PAD_MODES[mode])


def depth_to_space(x: np.ndarray, *, blocksize: int, mode: str = "DCR") -> np.ndarray:
    """Move channel blocks into b x b spatial blocks (ONNX DepthToSpace, 4-D).
    DCR: channel = (row_in_block * b + col_in_block) * C' + c'; CRD: c' * b*b + row * b + col.

    >>> depth_to_space(np.arange(4).reshape(1, 4, 1, 1), blocksize=2)[0, 0]
    array([[0, 1],
           [2, 3]])
    """
    x = np.asarray(x)
    n, c, h, w = x.shape
    b = blocksize
    if c % (b * b):
        raise ValueError(f"depth_to_space: channels {c} not divisible by blocksize^2 = {b * b}")
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise ValueError(f"depth_to_space: mode must be 'DCR' or 'CRD', got {mode!r}")
    return _fresh(y.reshape(n, c // (b * b), h * b, w * b), x)


def space_to_depth(x: np.ndarray, *, blocksize: int) -> np.ndarray:
    """Move b x b spatial blocks into channels (ONNX SpaceToDepth, 4-D; inverse of DCR
    depth_to_space).

    >>> space_to_depth(np.arange(4).reshape(1, 1, 2, 2), blocksize=2)[0, :, 0, 0]
    array([0, 1, 2, 3])
    """
    x = np.asarray(x)
    n, c, h, w = x.shape
    b = blocksize
    if h % b or w % b:
        raise ValueError(f"space_to_depth: spatial shape {(h, w)} not divisible by blocksize {b}")
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return _fresh(y.reshape(n, c * b * b, h // b, w // b), x)


def one_hot(indices: np.ndarray, *, depth: int, axis: int = -1, dtype=np.float32,
            values=(0, 1)) -> np.ndarray:
    """ONNX OneHot: a new axis of length `depth` at `axis`, `values[1]` where it equals the
    index, `values[0]` elsewhere. Negative indices count from depth; indices out of
    [-depth, depth) give an all-off row. Non-integer indices are truncated.

    >>> one_hot(np.array([0, -1, 5]), depth=3, dtype=np.int64)
    array([[1, 0, 0],
           [0, 0, 1],
           [0, 0, 0]])
    """
    idx = np.asarray(indices)
    idx = np.trunc(idx).astype(np.int64) if idx.dtype.kind == "f" else idx.astype(np.int64)
    depth = int(depth)
    if not -idx.ndim - 1 <= axis <= idx.ndim:
        raise ValueError(f"one_hot: axis {axis} out of range for indices of rank {idx.ndim}")
    axis = axis % (idx.ndim + 1)
    idx = np.where(idx < 0, idx + depth, idx)
    hot = np.expand_dims(idx, axis) == np.arange(depth).reshape((depth,) + (1,) * (idx.ndim - axis))
    off, on = values
    if off == 0 and on == 1:
        return hot.astype(dtype)
    return np.where(hot, np.asarray(on).astype(dtype), np.asarray(off).astype(dtype))
