"""Reduction kernels: NumPy reductions over normalized axes; arg-reductions return int64."""

from __future__ import annotations

import numpy as np


def _reduction(fn):
    def kernel(x: np.ndarray, *, axes: tuple, keepdims: bool) -> np.ndarray:
        return np.asarray(fn(x, axis=tuple(axes), keepdims=keepdims))
    kernel.__name__ = fn.__name__
    kernel.__doc__ = f"`np.{fn.__name__}(x, axis=axes, keepdims=keepdims)`, result dtype = input dtype."
    return kernel


def _sum(x, axis, keepdims):
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=x.dtype)


def _prod(x, axis, keepdims):
    return np.prod(x, axis=axis, keepdims=keepdims, dtype=x.dtype)


def argmax(x: np.ndarray, *, axis: int, keepdims: bool) -> np.ndarray:
    """Index of the first maximum along `axis`, as int64.

    >>> argmax(np.array([[1, 3, 3]]), axis=1, keepdims=False)
    array([1])
    """
    return np.asarray(np.argmax(x, axis=axis, keepdims=keepdims), np.int64)


def argmin(x: np.ndarray, *, axis: int, keepdims: bool) -> np.ndarray:
    """Index of the first minimum along `axis`, as int64.

    >>> argmin(np.array([2, 1, 1]), axis=0, keepdims=False)
    array(1)
    """
    return np.asarray(np.argmin(x, axis=axis, keepdims=keepdims), np.int64)


def cumsum(x: np.ndarray, *, axis: int) -> np.ndarray:
    """Inclusive cumulative sum along `axis`, in the input dtype.

    >>> cumsum(np.array([1, 2, 3]), axis=0)
    array([1, 3, 6])
    """
    return np.cumsum(x, axis=axis, dtype=x.dtype)


KERNELS = {
    "reduce_sum": _reduction(_sum), "reduce_mean": _reduction(np.mean), "reduce_max": _reduction(np.max),
    "reduce_min": _reduction(np.min), "reduce_prod": _reduction(_prod),
    "argmax": argmax, "argmin": argmin, "cumsum": cumsum,
}
