"""Data-movement kernels: reshape, transpose, slicing, gathers, functional updates, creation,
and the matrix products. Shape attributes arrive with symbolic dims already evaluated.
"""

from __future__ import annotations

import numpy as np


def _slice(a: int, b: int, s: int) -> slice:
    # starts/stops are positions, never counted from the end (Python would read -1 as the last
    # element): out-of-range ones clamp as slice.indices does, a positive step's to [0, n], a
    # negative step's to [-1, n-1], where -1 is before index 0 (as the native runtime reads them)
    if s > 0:
        return slice(max(a, 0), max(b, 0), s)
    if a < 0:
        return slice(0, 0, s)  # starts before index 0: nothing
    return slice(a, b if b >= 0 else None, s)


def _slices(starts, stops, steps) -> tuple:
    return tuple(_slice(int(a), int(b), int(s)) for a, b, s in zip(starts, stops, steps))


# kinds whose results are views of their first input (the memory plan keeps that input's storage alive)
VIEW_KINDS = frozenset({"reshape", "transpose", "broadcast_to", "slice", "stop_gradient", "split"})


def reshape(x: np.ndarray, *, shape: tuple) -> np.ndarray:
    """`x.reshape(shape)`.

    >>> reshape(np.arange(6), shape=(2, 3)).shape
    (2, 3)
    """
    return np.reshape(x, shape)


def transpose(x: np.ndarray, *, perm: tuple) -> np.ndarray:
    """`x.transpose(perm)`.

    >>> transpose(np.zeros((2, 3)), perm=(1, 0)).shape
    (3, 2)
    """
    return np.transpose(x, perm)


def broadcast_to(x: np.ndarray, *, shape: tuple) -> np.ndarray:
    """`np.broadcast_to(x, shape)` (a read-only view).

    >>> broadcast_to(np.ones(3), shape=(2, 3)).shape
    (2, 3)
    """
    return np.broadcast_to(x, shape)


def concat(*xs: np.ndarray, axis: int) -> np.ndarray:
    """`np.concatenate(xs, axis)`.

    >>> concat(np.ones(2), np.zeros(1), axis=0)
    array([1., 1., 0.])
    """
    return np.concatenate(xs, axis=axis)


def split(x: np.ndarray, *, axis: int, sizes: tuple) -> tuple:
    """Split `x` along `axis` into pieces of the given sizes.

    >>> [p.tolist() for p in split(np.arange(5), axis=0, sizes=(2, 3))]
    [[0, 1], [2, 3, 4]]
    """
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def slice_(x: np.ndarray, *, starts: tuple, stops: tuple, steps: tuple) -> np.ndarray:
    """`x[start:stop:step, ...]` with one triple of positions per axis (a negative step's stop
    of -1, or any negative stop, reaches through index 0; negative starts are never wrapped).

    >>> slice_(np.arange(5), starts=(4,), stops=(-1,), steps=(-2,))
    array([4, 2, 0])
    >>> slice_(np.arange(3), starts=(-1,), stops=(1,), steps=(-1,))
    array([], dtype=int64)
    """
    return x[_slices(starts, stops, steps)]


def slice_update(x: np.ndarray, update: np.ndarray, *, starts: tuple, stops: tuple,
                 steps: tuple) -> np.ndarray:
    """A copy of `x` with `x[slices] = update` (what `__setitem__` lowers to).

    >>> slice_update(np.zeros(3), np.ones(1), starts=(1,), stops=(2,), steps=(1,))
    array([0., 1., 0.])
    """
    out = np.array(x, copy=True)
    out[_slices(starts, stops, steps)] = update
    return out


def gather(x: np.ndarray, idx: np.ndarray, *, axis: int) -> np.ndarray:
    """`np.take(x, idx, axis)`: negative indices count from the end, out of range raises.

    >>> gather(np.array([10, 20, 30]), np.array([-1, 0]), axis=0)
    array([30, 10])
    """
    return np.take(x, idx, axis=axis)


def index_update(x: np.ndarray, idx: np.ndarray, update: np.ndarray, *, axis: int) -> np.ndarray:
    """A copy of `x` with `x[:, ..., idx] = update` along `axis` (last write wins, as NumPy).

    >>> index_update(np.zeros(3), np.array([2]), np.ones(1), axis=0)
    array([0., 0., 1.])
    """
    out = np.array(x, copy=True)
    out[(slice(None),) * axis + (idx,)] = update
    return out


def index_add(x: np.ndarray, idx: np.ndarray, update: np.ndarray, *, axis: int) -> np.ndarray:
    """A copy of `x` with `update` added at `idx` along `axis`; repeated indices accumulate, in
    index order (`np.add.at`): the adjoint of `gather`.

    >>> index_add(np.zeros(3), np.array([2, 0, 2]), np.ones(3), axis=0)
    array([1., 0., 2.])
    """
    out = np.array(x, copy=True)
    np.add.at(out, (slice(None),) * axis + (idx,), update)
    return out


def boolean_mask(x: np.ndarray, mask: np.ndarray, *, size: tuple) -> np.ndarray:
    """`x[mask]`; the result length is data dependent (`size` is its symbol).

    >>> boolean_mask(np.arange(4), np.array([True, False, True, False]), size=("n",))
    array([0, 2])
    """
    return x[mask]


def tile(x: np.ndarray, *, reps: tuple) -> np.ndarray:
    """`np.tile(x, reps)` with one rep per axis.

    >>> tile(np.array([1, 2]), reps=(2,))
    array([1, 2, 1, 2])
    """
    return np.tile(x, reps)


def repeat(x: np.ndarray, *, repeats: int, axis: int) -> np.ndarray:
    """`np.repeat(x, repeats, axis)`.

    >>> repeat(np.array([1, 2]), repeats=2, axis=0)
    array([1, 1, 2, 2])
    """
    return np.repeat(x, repeats, axis=axis)


def shape_dim(x: np.ndarray, *, axis: int) -> np.ndarray:
    """The size of one axis as an int64 scalar.

    >>> shape_dim(np.zeros((5, 2)), axis=0)
    array(5)
    """
    return np.asarray(x.shape[axis], np.int64)


def constant(*, value: np.ndarray) -> np.ndarray:
    """The stored constant (never written to: kernels do not mutate their inputs).

    >>> constant(value=np.array(2.0))
    array(2.)
    """
    return value


def full(*, shape: tuple, value: np.ndarray) -> np.ndarray:
    """An array of `shape` filled with the 0-d `value` (its dtype).

    >>> full(shape=(2,), value=np.array(7, np.int32))
    array([7, 7], dtype=int32)
    """
    return np.full(shape, value, dtype=value.dtype)


def arange(*, n: tuple, dtype: np.dtype) -> np.ndarray:
    """`np.arange(n, dtype=dtype)`.

    >>> arange(n=(3,), dtype=np.dtype(np.int64))
    array([0, 1, 2])
    """
    return np.arange(n[0], dtype=dtype)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`a @ b` with NumPy's semantics.

    >>> matmul(np.ones((2, 3)), np.ones(3))
    array([3., 3.])
    """
    return np.matmul(a, b)


def einsum(*xs: np.ndarray, equation: str) -> np.ndarray:
    """`np.einsum(equation, *xs)` with a contraction order chosen by NumPy.

    >>> einsum(np.ones((2, 3)), np.ones((3, 4)), equation="ij,jk->ik").shape
    (2, 4)
    """
    return np.asarray(np.einsum(equation, *xs, optimize=len(xs) > 2))


KERNELS = {
    "reshape": reshape, "transpose": transpose, "broadcast_to": broadcast_to, "concat": concat,
    "split": split, "slice": slice_, "slice_update": slice_update, "gather": gather,
    "index_update": index_update, "index_add": index_add,
    "boolean_mask": boolean_mask, "tile": tile, "repeat": repeat,
    "shape_dim": shape_dim, "constant": constant, "full": full, "arange": arange,
    "matmul": matmul, "einsum": einsum,
}
