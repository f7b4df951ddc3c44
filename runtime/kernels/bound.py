"""Binders: a planned step turned into a few NumPy calls on arrays fixed in advance.

Once a call ran in an arena (runtime.schedule), every array a step reads or writes there has a
fixed address, shape and dtype: its inputs are constants, arena buffers or views of them, and
its output is its arena buffer. A binder does the work that `out=` kernels repeat on every call
(plan lookups, reshapes, strided windows, bias and workspace views) once, and returns the
remaining calls as argument-free callables (`functools.partial` of a ufunc or `np.matmul`), so
a small model runs at the speed of its NumPy loops rather than of Python dispatch.

A binder is `bind(ins, out, **attrs) -> (needs, make) | None`: `needs` maps scratch names to
byte counts (one scratch buffer per name is shared by every bound step of the arena, since the
steps run one after the other), and `make(scratch)` returns the callables. None means "run this
step the usual way" (a layout or dtype the binder does not cover). Bound calls are the same
NumPy calls, in the same order, as the step's `out=` kernel, so results are bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from . import conv as C
from . import fused, special
from .elementwise import UFUNCS

Calls = list[Callable[[], object]]
Binding = tuple[dict[str, int], Callable[[dict[str, np.ndarray]], Calls]]


def as_view(a: np.ndarray, shape: tuple) -> np.ndarray | None:
    """`a.reshape(shape)` when that is a view of `a`'s memory, else None (a copy would go stale).

    >>> as_view(np.zeros((2, 3)), (6,)).shape
    (6,)
    >>> as_view(np.zeros((2, 3)).T, (6,)) is None
    True
    """
    v = a.reshape(shape)
    return v if v.size == 0 or np.may_share_memory(v, a) else None


# arrays up to this size are copied or materialized when that saves a per-call NumPy overhead of
# ~1 us (a broadcast operand, a graph input or result); beyond it the bytes cost more than it saves
SMALL_BYTES = 64 << 10


def _add_bias(out: np.ndarray, bias: np.ndarray, y: np.ndarray | None = None) -> Callable[[], object]:
    """`np.add(y, bias, out=out)` (y defaults to out); a small bias is broadcast to `out`'s shape
    once (a broadcast add costs ~0.8 us more per call than one of equal shapes; same sums)."""
    if bias.shape != out.shape and out.nbytes <= SMALL_BYTES:
        bias = np.broadcast_to(bias, out.shape).copy()
    return partial(np.add, out if y is None else y, bias, out=out)


def _scratch_view(scratch: dict[str, np.ndarray], name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    n = math.prod(shape) * dtype.itemsize
    return scratch[name][:n].view(dtype).reshape(shape)


def _activation(out: np.ndarray, activation: str) -> Calls:
    """The calls of `fused._activate_inplace(out, activation)`."""
    if activation == "none":
        return []
    if activation == "relu" and out.dtype.kind == "f" and out.size <= fused._BLOCK:
        flat = as_view(out, (-1,))
        if flat is not None:  # what _relu_inplace does, with its zeros block sliced once
            return [partial(np.maximum, flat, special.zeros_block(out.dtype)[:flat.size], out=flat)]
    return [partial(fused._activate_inplace, out, activation)]


def _matmul_calls(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> Calls:
    """The call of `fused._matmul_out(a, b, out)` (a stack times a matrix as one 2-D GEMM)."""
    if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous and out.flags.c_contiguous:
        a2, o2 = as_view(a, (-1, a.shape[-1])), as_view(out, (-1, out.shape[-1]))
        if a2 is not None and o2 is not None:
            return [partial(np.matmul, a2, b, out=o2)]
    return [partial(np.matmul, a, b, out=out)]


def _fixed(calls: Calls) -> Binding:
    return {}, lambda scratch: calls


def bind_gemm(ins: Sequence[np.ndarray], out: np.ndarray, *, activation: str) -> Binding:
    """`fused.gemm_out`: act(a @ b + c) into `out`.

    >>> out = np.empty((1, 2))
    >>> _, make = bind_gemm([np.ones((1, 2)), np.ones((2, 2)), np.array([-3.0, 1.0])], out, activation="relu")
    >>> for call in make({}): _ = call()
    >>> out
    array([[0., 3.]])
    """
    a, b, *c = ins
    calls = _matmul_calls(a, b, out)
    if c:
        calls.append(_add_bias(out, c[0]))
    return _fixed(calls + _activation(out, activation))


def bind_matmul(ins: Sequence[np.ndarray], out: np.ndarray) -> Binding:
    """`fused.matmul_out`.

    >>> out = np.empty((2, 2))
    >>> _, make = bind_matmul([np.eye(2), np.full((2, 2), 3.0)], out)
    >>> [call() for call in make({})][0] is out
    True
    """
    return _fixed(_matmul_calls(ins[0], ins[1], out))


def bind_conv(ins: Sequence[np.ndarray], out: np.ndarray, *, strides, pads, dilations, group: int,
              activation: str = "none") -> Binding | None:
    """`conv.conv_into` (im2col + GEMM, by columns or rows, or a 1x1 GEMM) then the activation;
    None for the depthwise and Winograd methods and for dtypes the work dtype would change.

    >>> out = np.empty((1, 1, 2))
    >>> needs, make = bind_conv([np.ones((1, 1, 3)), np.ones((1, 1, 2)), np.array([0.5])], out,
    ...                         strides=(1,), pads=(0, 0), dilations=(1,), group=1)
    >>> scratch = {k: np.empty(n, np.uint8) for k, n in needs.items()}
    >>> for call in make(scratch): _ = call()
    >>> out
    array([[[2.5, 2.5]]])
    """
    x, w, *b = ins
    dt = x.dtype
    plan = C._conv_plan(x, w, strides, pads, dilations, group)
    if (plan.mode not in ("gemm", "rows", "pointwise") or plan.work != dt or w.dtype != dt or out.dtype != dt
            or out.shape != plan.y_shape or not out.flags.c_contiguous or not x.flags.c_contiguous
            or min(plan.begins + plan.ends) < 0):  # (negative pads crop)
        return None
    n, g, k, p = plan.cols_shape
    m = plan.m
    wm = as_view(w, (g, m // g, k))
    dst = None if plan.mode == "rows" else as_view(out, (n, g, m // g, p))  # (rows: the GEMM goes to scratch)
    if wm is None or (dst is None and plan.mode != "rows"):
        return None
    padded = any(plan.begins) or any(plan.ends)
    pad_shape = x.shape[:2] + tuple(s + lo + hi for s, lo, hi in zip(x.shape[2:], plan.begins, plan.ends))
    needs = {}
    if padded:
        needs["pad"] = math.prod(pad_shape) * dt.itemsize
    if plan.mode != "pointwise":
        needs["cols"] = n * g * k * p * dt.itemsize
    if plan.mode == "rows":
        needs["rows"] = math.prod(plan.rows_shape) * dt.itemsize

    def make(scratch: dict[str, np.ndarray]) -> Calls:
        calls: Calls = []
        xp = x
        if padded:  # zero the borders, copy the interior (what _pad_constant does each call)
            xp = _scratch_view(scratch, "pad", pad_shape, dt)
            for axis, (lo, hi) in enumerate(zip(plan.begins, plan.ends), start=2):
                lead = (slice(None),) * axis
                calls.extend(partial(xp[lead + (part,)].fill, 0)
                             for part, size in ((slice(0, lo), lo), (slice(xp.shape[axis] - hi, None), hi)) if size)
            interior = (slice(None),) * 2 + tuple(slice(lo, lo + s) for s, lo in zip(x.shape[2:], plan.begins))
            calls.append(partial(np.copyto, xp[interior], x))
        if plan.mode == "pointwise":
            cols = as_view(xp, plan.cols_shape)
        else:
            cols = _scratch_view(scratch, "cols", plan.cols_shape, dt)
            win = np.ndarray(plan.win_shape, dt, xp, 0, plan.win_strides)
            calls.append(partial(np.copyto, cols.reshape(plan.win_shape), win))
        bias = C._channel_bias(b[0], dt, m, plan.nd) if b else None
        if plan.mode == "rows":  # the GEMM into scratch, read back through a strided view
            rows = _scratch_view(scratch, "rows", plan.rows_shape, dt)
            calls.append(partial(np.matmul, wm, cols, out=rows))
            view = np.ndarray(plan.y_shape, dt, rows, 0, plan.rows_strides)
            calls.append(partial(np.copyto, out, view) if bias is None else _add_bias(out, bias, view))
        else:
            calls.append(partial(np.matmul, wm, cols, out=dst))
            if bias is not None:
                calls.append(_add_bias(out, bias))
        return calls + _activation(out, activation)

    return needs, make


def bind_max_pool(ins: Sequence[np.ndarray], out: np.ndarray, *, kernel_shape, strides=None, pads=None,
                  dilations=None, ceil_mode: bool = False) -> Binding | None:
    """`conv.max_pool_into` for unpadded windows: one np.maximum per kernel tap and axis.

    >>> out = np.empty((1, 1, 2))
    >>> needs, make = bind_max_pool([np.array([[[1.0, 3.0, 2.0, 5.0]]])], out, kernel_shape=(2,), strides=(2,))
    >>> for call in make({k: np.empty(n, np.uint8) for k, n in needs.items()}): _ = call()
    >>> out
    array([[[3., 5.]]])
    """
    x = ins[0]
    axes = C._max_pool_taps(x, kernel_shape, strides, pads, dilations, ceil_mode)
    if axes is None or out.dtype != x.dtype or out.shape != axes[-1][1]:
        return None
    last = len(axes) - 1
    needs = {("pool_a" if i % 2 else "pool_b"): math.prod(shape) * x.dtype.itemsize
             for i, (_, shape) in enumerate(axes[:-1])}

    def make(scratch: dict[str, np.ndarray]) -> Calls:
        calls: Calls = []
        y = x
        for i, (taps, shape) in enumerate(axes):
            acc = out if i == last else _scratch_view(scratch, "pool_a" if i % 2 else "pool_b", shape, x.dtype)
            if len(taps) == 1:
                calls.append(partial(np.copyto, acc, y[taps[0]]))
            else:
                calls.append(partial(np.maximum, y[taps[0]], y[taps[1]], out=acc))
                calls.extend(partial(np.maximum, acc, y[t], out=acc) for t in taps[2:])
            y = acc
        return calls

    return needs, make


def bind_relu(ins: Sequence[np.ndarray], out: np.ndarray) -> Binding:
    """`fused.relu_out`: the copy, then max(., 0) in place.

    >>> out = np.empty(2)
    >>> for call in bind_relu([np.array([-1.0, 2.0])], out)[1]({}): _ = call()
    >>> out
    array([0., 2.])
    """
    return _fixed([partial(np.copyto, out, ins[0])] + _activation(out, "relu"))


def _bind_ufunc(ufunc: np.ufunc) -> Callable[..., Binding]:
    def bind(ins: Sequence[np.ndarray], out: np.ndarray) -> Binding:
        return _fixed([partial(ufunc, *ins, out=out)])

    return bind


# op kind -> binder, for the kinds whose `out=` kernel (kernels.fused.OUT_KERNELS) it mirrors
BINDERS: dict[str, Callable[..., Binding | None]] = {
    **{kind: _bind_ufunc(u) for kind, u in UFUNCS.items() if u.nout == 1},
    "gemm": bind_gemm, "matmul": bind_matmul, "fused_conv": bind_conv, "conv": bind_conv,
    "max_pool": bind_max_pool, "relu": bind_relu,
}
