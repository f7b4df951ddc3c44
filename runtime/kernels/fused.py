"""Kernels of the fused ops that `ir.passes` creates, and the `out=` forms the runtime uses.

`gemm` = act(a @ b + c) and `fused_conv` = act(conv(x, w, b)) call the very kernels of the
unfused ops, so fusion never changes results beyond what reusing one buffer does (nothing, for
NumPy). `OUT_KERNELS` holds variants that write into a buffer from the memory plan instead of
allocating (`fn(*ins, out=buf, **attrs) -> buf`): same arithmetic, same order, so the results
are bit-identical; they exist because fresh multi-megabyte results page-fault on every call and
broadcast bias adds/activations against scalars are slow (PERF_NOTES.md, pitfalls 1-3).
`out_kernel(kind, in_dtypes, out_dtype)` says which op may use one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from . import conv as conv_kernels
from . import nn, special
from .elementwise import UFUNCS

ACTIVATIONS = {
    "none": lambda y: y,
    "relu": special.relu,
    "sigmoid": special.sigmoid,
    "tanh": np.tanh,
    "gelu": lambda y: special.gelu(y, approximate="none"),
    "gelu_tanh": lambda y: special.gelu(y, approximate="tanh"),
}


def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, *, activation: str) -> np.ndarray:
    """`act(a @ b + c)`.

    >>> gemm(np.ones((1, 2)), np.ones((2, 2)), np.array([-3.0, 1.0]), activation="relu")
    array([[0., 3.]])
    """
    y = np.matmul(a, b)
    if c is not None:
        y = np.add(y, c)
    return ACTIVATIONS[activation](y)


def fused_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, strides: tuple, pads: tuple,
               dilations: tuple, group: int, activation: str) -> np.ndarray:
    """`act(conv(x, w, b))` with ONNX Conv semantics.

    >>> fused_conv(np.ones((1, 1, 3)), np.ones((1, 1, 2)), np.array([-2.5]), strides=(1,), pads=(0, 0),
    ...            dilations=(1,), group=1, activation="relu")
    array([[[0., 0.]]])
    """
    args = (x, w) if b is None else (x, w, b)
    return ACTIVATIONS[activation](nn.conv(*args, strides=strides, pads=pads, dilations=dilations, group=group))


KERNELS = {"gemm": gemm, "fused_conv": fused_conv}


# --- out= variants -----------------------------------------------------------------------------

_BLOCK = special._BLOCK


def _relu_inplace(y: np.ndarray) -> None:
    """y = max(y, 0) in place, in blocks against cached zeros (a scalar 0 runs 2-3x slower)."""
    flat = y.reshape(-1)
    zeros = special.zeros_block(y.dtype)
    n = flat.size
    if n <= _BLOCK:
        np.maximum(flat, zeros[:n], out=flat)
        return
    for i in range(0, n, _BLOCK):
        blk = flat[i:i + _BLOCK]
        np.maximum(blk, zeros[:blk.size], out=blk)


def _activate_inplace(y: np.ndarray, activation: str) -> np.ndarray:
    if activation == "none":
        return y
    if activation == "relu" and y.dtype.kind == "f":
        _relu_inplace(y)
    elif activation == "tanh":
        np.tanh(y, out=y)
    elif activation in ("gelu", "gelu_tanh") and y.flags.c_contiguous:
        special.gelu_into(y, y, approximate="none" if activation == "gelu" else "tanh")
    else:
        y[...] = ACTIVATIONS[activation](y)
    return y


def _matmul_out(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`np.matmul(a, b, out=out)`; a stack of matrices times one matrix runs as one 2-D GEMM
    (NumPy would call BLAS once per matrix of the stack)."""
    if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous and out.flags.c_contiguous:
        rows = math.prod(a.shape[:-1])  # (not -1: a dim of 0 would leave it undetermined)
        np.matmul(a.reshape(rows, a.shape[-1]), b, out=out.reshape(rows, out.shape[-1]))
    else:
        np.matmul(a, b, out=out)
    return out


def gemm_out(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, *, activation: str,
             out: np.ndarray) -> np.ndarray:
    """`gemm` into `out`: the bias added and the activation applied in place.

    >>> gemm_out(np.ones((1, 2)), np.ones((2, 2)), np.array([-3.0, 1.0]), activation="relu", out=np.empty((1, 2)))
    array([[0., 3.]])
    """
    _matmul_out(a, b, out)
    if c is not None:
        np.add(out, c, out=out)
    return _activate_inplace(out, activation)


def matmul_out(a: np.ndarray, b: np.ndarray, *, out: np.ndarray) -> np.ndarray:
    """`np.matmul` into `out`.

    >>> matmul_out(np.ones((2, 3, 4)), np.ones((4, 2)), out=np.empty((2, 3, 2)))[1, 2]
    array([4., 4.])
    """
    return _matmul_out(a, b, out)


def conv_out(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, out: np.ndarray, strides=None,
             pads=None, dilations=None, group: int = 1) -> np.ndarray:
    """`conv` into `out` (see `conv.conv_into`).

    >>> conv_out(np.ones((1, 1, 3)), np.ones((1, 1, 2)), out=np.empty((1, 1, 2)))
    array([[[2., 2.]]])
    """
    return conv_kernels.conv_into(out, x, w, b, strides=strides, pads=pads, dilations=dilations, group=group)


def fused_conv_out(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, out: np.ndarray,
                   strides: tuple, pads: tuple, dilations: tuple, group: int, activation: str) -> np.ndarray:
    """`fused_conv` into `out`: the activation applied in place.

    >>> fused_conv_out(np.ones((1, 1, 3)), np.ones((1, 1, 2)), np.array([-2.5]), out=np.empty((1, 1, 2)),
    ...                strides=(1,), pads=(0, 0), dilations=(1,), group=1, activation="relu")
    array([[[0., 0.]]])
    """
    conv_kernels.conv_into(out, x, w, b, strides=strides, pads=pads, dilations=dilations, group=group)
    return _activate_inplace(out, activation)


def max_pool_out(x: np.ndarray, *, out: np.ndarray, **attrs) -> np.ndarray:
    """`max_pool` into `out` (see `conv.max_pool_into`).

    >>> max_pool_out(np.array([[[1.0, 3.0, 2.0, 5.0]]]), out=np.empty((1, 1, 2)), kernel_shape=(2,), strides=(2,))
    array([[[3., 5.]]])
    """
    return conv_kernels.max_pool_into(out, x, **attrs)


def softmax_out(x: np.ndarray, *, out: np.ndarray, axis: int = -1) -> np.ndarray:
    """`softmax` computed in `out` (see `nn.softmax_into`).

    >>> softmax_out(np.zeros((1, 4)), out=np.empty((1, 4)))
    array([[0.25, 0.25, 0.25, 0.25]])
    """
    return nn.softmax_into(out, x, axis=axis)


def layer_norm_out(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None, *, out: np.ndarray,
                   axis: int = -1, epsilon: float = 1e-5) -> np.ndarray:
    """`layer_norm` computed in `out` (see `nn.layer_norm_into`).

    >>> layer_norm_out(np.array([[1.0, 3.0]]), np.ones(2), np.zeros(2), out=np.empty((1, 2)), epsilon=0.0)
    array([[-1.,  1.]])
    """
    return nn.layer_norm_into(out, x, scale, bias, axis=axis, epsilon=epsilon)


def relu_out(x: np.ndarray, *, out: np.ndarray) -> np.ndarray:
    """`relu` into `out` (floats).

    >>> relu_out(np.array([-1.0, 2.0]), out=np.empty(2))
    array([0., 2.])
    """
    np.copyto(out, x)
    _relu_inplace(out)
    return out


def _ufunc_out(ufunc: np.ufunc) -> Callable:
    def run(*ins: np.ndarray, out: np.ndarray) -> np.ndarray:
        return ufunc(*ins, out=out)

    run.__name__ = f"{ufunc.__name__}_out"
    return run


OUT_KERNELS: dict[str, Callable] = {
    **{kind: _ufunc_out(u) for kind, u in UFUNCS.items() if u.nout == 1},
    "gemm": gemm_out, "matmul": matmul_out, "fused_conv": fused_conv_out, "conv": conv_out, "relu": relu_out,
    "max_pool": max_pool_out, "softmax": softmax_out, "layer_norm": layer_norm_out,
}


def _copy_into(kind: str) -> Callable:
    """For kernels without an `out=` form: the fresh result copied into the planned buffer, so the
    value lives in the arena and the temporary is freed at once. A result whose shape or dtype
    differs from the declared one (a malformed model) is returned as it is."""
    from . import KERNELS

    kernel = KERNELS[kind]

    def run(*ins: np.ndarray, out: np.ndarray, **attrs) -> np.ndarray:
        r = kernel(*ins, **attrs)
        if not isinstance(r, np.ndarray) or r.shape != out.shape or r.dtype != out.dtype:
            return r
        np.copyto(out, r)
        return out

    run.__name__ = f"{kind}_into"
    return run


# kernels whose results are fresh arrays of the declared type; copying them into the arena keeps
# the memory plan exact for a copy that costs a small fraction of the op itself
COPY_INTO = frozenset({"layer_norm", "softmax", "log_softmax", "batch_norm", "instance_norm", "max_pool",
                       "avg_pool", "global_avg_pool", "global_max_pool", "reduce_sum", "reduce_mean",
                       "reduce_max", "reduce_min", "sigmoid", "gelu", "erf", "normal_cdf", "concat", "pad", "where"})
# ufunc kinds that may write into the buffer of an input of the same shape (no reordering)
IN_PLACE = frozenset(kind for kind, u in UFUNCS.items() if u.nout == 1) | {"relu"}


def out_kernel(kind: str, in_dtypes: Sequence[np.dtype], out_dtype: np.dtype) -> Callable | None:
    """The `out=` kernel for an op whose declared input and output dtypes are given, or None when
    writing into a buffer of `out_dtype` could change the result (mixed dtypes, float16 convs,
    integer relu).

    >>> out_kernel("add", [np.dtype("f4"), np.dtype("f4")], np.dtype("f4")).__name__
    'add_out'
    >>> out_kernel("less", [np.dtype("f4"), np.dtype("f4")], np.dtype("bool")) is None
    True
    """
    fn = OUT_KERNELS.get(kind)
    if fn is None or any(d != out_dtype for d in in_dtypes):
        fn = None
    elif kind in ("conv", "fused_conv", "relu", "softmax", "layer_norm") and out_dtype not in (np.float32,
                                                                                              np.float64):
        fn = None
    elif kind in ("gemm", "matmul") and out_dtype.kind not in "fc":
        fn = None  # integer matmul: keep NumPy's own result dtype rules
    if fn is None and kind in COPY_INTO:
        return _copy_into(kind)
    return fn
