"""Sliding-window kernels with ONNX semantics: convolution, transposed convolution, pooling.

Layout is NC + 1, 2 or 3 spatial dims; `pads` lists all begins, then all ends (ONNX order).
Why the code looks the way it does (measurements in PERF_NOTES.md):

- `conv` is lowered to GEMM: the padded input is viewed as sliding windows (one strided view),
  copied once into an im2col matrix of shape (N, group, C/group * prod(kernel), prod(out)), and
  multiplied by the weights in one batched matmul whose result already is NC + spatial. A 1x1, stride-1,
  unpadded conv is that matmul on a view of the input (no copy). Depthwise convs would be
  thousands of 1-row GEMMs, so they instead accumulate one shifted view per kernel tap.
- 3x3 stride-1 convs with >= 64 channels use Winograd F(2x2, 3x3) instead: 16 GEMMs of
  (M x C) x (C x tiles) in one batched matmul, 2.25x fewer multiplies; the transforms are adds
  on whole padded rows. The im2col matrix, the padded input and Winograd's temporaries live in
  per-thread workspaces reused by every call (fresh ones page-fault each time).
- `conv_transpose` is the adjoint: one batched matmul to columns, then one strided add per tap.
- Pooling is separable: the max (or sum) over a box window is the max over one axis after the
  other, so a k x k pool costs 2k array passes instead of k*k, in the same code for 1-3 dims.
- float16 is computed in float32 (NumPy's float16 matmul has no BLAS) and rounded once.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided


def _work_dtype(dt: np.dtype) -> np.dtype:
    """The dtype to compute in: float16 -> float32, other floats as they are."""
    return np.dtype(np.float32) if dt == np.float16 else dt


def _window(nd: int, kernel, strides, pads, dilations, what: str):
    """Validated (kernel, strides, pads, dilations) tuples for `nd` spatial dims."""
    kernel = tuple(int(k) for k in kernel)
    strides = (1,) * nd if strides is None else tuple(int(s) for s in strides)
    pads = (0,) * (2 * nd) if pads is None else tuple(int(p) for p in pads)
    dilations = (1,) * nd if dilations is None else tuple(int(d) for d in dilations)
    for name, got, n in (("kernel", kernel, nd), ("strides", strides, nd), ("pads", pads, 2 * nd),
                         ("dilations", dilations, nd)):
        if len(got) != n:
            raise ValueError(f"{what}: {name} needs {n} entries for {nd} spatial dims, got {got}")
    if min(kernel + strides + dilations, default=1) < 1:
        raise ValueError(f"{what}: kernel, strides and dilations must be >= 1, got {kernel}, {strides}, "
                         f"{dilations}")
    return kernel, strides, pads, dilations


def _out_len(size: int, k: int, s: int, pb: int, pe: int, d: int, ceil_mode: bool = False) -> int:
    """Output length along one axis (ONNX): in ceil mode, a last window that would start in the
    end padding is dropped."""
    num = size + pb + pe - (k - 1) * d - 1
    if not ceil_mode:
        return num // s + 1
    out = -(-num // s) + 1
    return out - 1 if (out - 1) * s >= size + pb else out


def _spatial_dims(x: np.ndarray, what: str) -> int:
    nd = x.ndim - 2
    if nd < 1:
        raise ValueError(f"{what}: input needs rank >= 3 (N, C, spatial...), got shape {x.shape}")
    return nd


_local = threading.local()


def _workspace(name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A scratch array of this thread, reused by every call (fresh multi-megabyte im2col matrices
    page-fault on each call, PERF_NOTES.md); only for temporaries that never leave a kernel."""
    spaces = getattr(_local, "spaces", None)
    if spaces is None:
        spaces = _local.spaces = {}
        _local.views = {}
    views = _local.views
    key = (name, shape, dtype)
    hit = views.get(key)
    if hit is not None and hit[0] is spaces.get(name):  # the view made last time, of the same buffer
        return hit[1]
    nbytes = math.prod(shape) * dtype.itemsize
    buf = spaces.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = spaces[name] = np.empty(max(nbytes, 64), np.uint8)
    view = buf[:nbytes].view(dtype).reshape(shape)
    if len(views) >= 256:
        views.clear()
    views[key] = (buf, view)
    return view


def _pad_constant(x: np.ndarray, begins, ends, value, scratch: str | None = None) -> np.ndarray:
    """x padded with `value` by begins[i]/ends[i] along its last len(begins) axes (negative: crop).
    Returns x itself when there is nothing to do."""
    lead = x.ndim - len(begins)
    begins, ends = (0,) * lead + tuple(begins), (0,) * lead + tuple(ends)
    if not any(begins) and not any(ends):
        return x
    shape = tuple(n + b + e for n, b, e in zip(x.shape, begins, ends))
    if min(shape) < 0:
        raise ValueError(f"pads {begins} / {ends} crop more than the shape {x.shape}")
    out = np.empty(shape, x.dtype) if scratch is None else _workspace(scratch, shape, x.dtype)
    for axis, (n, b, e) in enumerate(zip(shape, begins, ends)):
        lead_idx = (slice(None),) * axis
        if b > 0:
            out[lead_idx + (slice(0, b),)] = value
        if e > 0:
            out[lead_idx + (slice(n - e, n),)] = value
    dst = tuple(slice(max(b, 0), n - max(e, 0)) for n, b, e in zip(shape, begins, ends))
    src = tuple(slice(max(-b, 0), n - max(-e, 0)) for n, b, e in zip(x.shape, begins, ends))
    out[dst] = x[src]
    return out


def _tap(t: int, d: int, s: int, o: int) -> slice:
    """Input positions read by kernel tap t for o outputs: t*d, t*d + s, ..."""
    return slice(t * d, t * d + s * (o - 1) + 1, s)


def _tap_index(tap: tuple, dilations, strides, out) -> tuple:
    """Index of the (N, C, *spatial) positions that kernel tap `tap` reads for `out` outputs."""
    return (slice(None),) * 2 + tuple(_tap(t, d, s, o) for t, d, s, o in zip(tap, dilations, strides, out))


def _bias_shape(n: int, nd: int) -> tuple:
    return (n,) + (1,) * nd


def _channel_bias(b, dtype: np.dtype, m: int, nd: int) -> np.ndarray:
    """A conv's per-channel bias `b` (M,) in `dtype`, shaped to broadcast over (N, M, *spatial)."""
    return np.asarray(b).astype(dtype, copy=False).reshape(_bias_shape(m, nd))


# --- convolution -------------------------------------------------------------------------------

class _ConvPlan:
    """What a conv call needs that depends only on shapes, dtypes and attributes: validated
    window, padding, output dims, the method, and the im2col view's shape and byte strides
    (cached per signature, so a repeated call skips validation and stride arithmetic)."""

    __slots__ = ("nd", "kernel", "strides", "dilations", "begins", "ends", "out", "work", "mode", "y_shape",
                 "win_shape", "win_strides", "cols_shape", "group", "m", "rows_shape", "rows_strides")

    def __init__(self, xshape: tuple, xdtype: np.dtype, wshape: tuple, strides, pads, dilations, group: int):
        nd = len(xshape) - 2
        if nd < 1:
            raise ValueError(f"conv: input needs rank >= 3 (N, C, spatial...), got shape {xshape}")
        kernel, strides, pads, dilations = _window(nd, wshape[2:], strides, pads, dilations, "conv")
        n, c = xshape[:2]
        m, cg = wshape[:2]
        if group < 1 or c != cg * group or m % group:
            raise ValueError(f"conv: input channels {c} and weight {wshape} do not fit group={group}")
        work = _work_dtype(xdtype)
        begins, ends = pads[:nd], pads[nd:]
        padded = tuple(size + b + e for size, b, e in zip(xshape[2:], begins, ends))
        if min(padded) < 0:
            raise ValueError(f"pads {(0, 0) + begins} / {(0, 0) + ends} crop more than the shape {xshape}")
        out = tuple(_out_len(padded[i], kernel[i], strides[i], 0, 0, dilations[i]) for i in range(nd))
        if min(out) < 1:
            raise ValueError(f"conv: kernel {kernel} (dilations {dilations}) is larger than the padded "
                             f"input {padded}")
        self.nd, self.kernel, self.strides, self.dilations, self.out = nd, kernel, strides, dilations, out
        self.begins, self.ends, self.work, self.group, self.m = begins, ends, work, group, m
        self.y_shape = (n, m) + out
        if cg == 1 and group > 1:
            self.mode = "depthwise"
        elif (nd == 2 and kernel == (3, 3) and strides == (1, 1) and dilations == (1, 1) and group == 1
              and work in (np.float32, np.float64) and min(m, cg) >= _WINOGRAD_MIN_CHANNELS
              and n * ((padded[0] - 1) // 2) * ((padded[1] - 1) // 2) >= _WINOGRAD_MIN_TILES):
            self.mode = "winograd"
        elif all(k == 1 for k in kernel) and all(st == 1 for st in strides):
            self.mode = "pointwise"
        else:
            self.mode = "gemm"
        item = work.itemsize
        el = [item * math.prod(((n, c) + padded)[i + 1:]) for i in range(nd + 2)]  # byte strides, padded x
        # "rows": a stride-1 conv over whole padded rows. Output position o reads tap t at input
        # offset off(o) + off(t) of the padded channel plane, so one tap's columns for all outputs
        # are the contiguous run of Q = off(last output) + 1 elements from off(t): the im2col copy
        # moves C*taps runs of Q elements instead of C*taps*prod(out[:-1]) runs of out[-1] (a
        # 5x5 conv at 8x8 out: 3.3x faster), at the price of GEMM columns for positions past
        # each row's end (dropped when the result is read through a strided view)
        q = sum((o - 1) * e for o, e in zip(out, el[2:])) // item + 1
        if (self.mode == "gemm" and nd >= 2 and all(st == 1 for st in strides)
                and _RUN_FLOPS * math.prod(out[:-1]) > 2 * (m // group) * (q - math.prod(out))):
            self.mode = "rows"  # (per input channel and tap: the runs it saves outweigh the extra GEMM)
        cols = q if self.mode == "rows" else math.prod(out)
        self.cols_shape = (n, group, (c // group) * math.prod(kernel), cols)
        self.win_shape = (n, c) + kernel + ((q,) if self.mode == "rows" else out)
        self.win_strides = (tuple(el[:2]) + tuple(el[2 + i] * dilations[i] for i in range(nd))
                            + ((item,) if self.mode == "rows" else tuple(el[2 + i] * strides[i] for i in range(nd))))
        # the GEMM result (N, group, M/group, Q) read as (N, M, *out)
        self.rows_shape = (n, group, m // group, q)
        self.rows_strides = (m * q * item, q * item) + tuple(el[2:])


_conv_plans: dict = {}
_CONV_PLANS_KEPT = 1024


def _conv_plan(x: np.ndarray, w: np.ndarray, strides, pads, dilations, group: int) -> _ConvPlan:
    """The cached `_ConvPlan` for this call's signature (attributes given as lists: not cached)."""
    try:
        key = (x.shape, x.dtype, w.shape, strides, pads, dilations, group)
        plan = _conv_plans.get(key)
    except TypeError:
        key, plan = None, None
    if plan is None:
        if w.ndim < 2:
            raise ValueError(f"conv: weight needs rank >= 3 (M, C/group, kernel...), got shape {w.shape}")
        plan = _ConvPlan(x.shape, x.dtype, w.shape, strides, pads, dilations, group)
        if key is not None:
            if len(_conv_plans) >= _CONV_PLANS_KEPT:
                _conv_plans.clear()
            _conv_plans[key] = plan
    return plan


def _conv_operands(plan: _ConvPlan, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(padded x, w), both in the work dtype; the padded input lives in a per-thread workspace."""
    xp = x.astype(plan.work, copy=False)
    if any(plan.begins) or any(plan.ends):
        xp = _pad_constant(xp, plan.begins, plan.ends, 0, scratch="conv_pad")
    return xp, w.astype(plan.work, copy=False)


def _gemm_conv(plan: _ConvPlan, xp: np.ndarray, w: np.ndarray, dst: np.ndarray | None) -> np.ndarray:
    """The conv as one batched matmul of the weights and the im2col columns (into `dst`'s
    buffer when given): (N, group, M/group, prod(out)). In "rows" mode the result is a strided
    (N, M, *out) view of a workspace instead, and `dst` is not written."""
    g, m = plan.group, plan.m
    cols = _im2col(plan, xp)
    wm = w.reshape(g, m // g, -1)
    if plan.mode == "rows":
        rows = np.matmul(wm, cols, out=_workspace("conv_rows", plan.rows_shape, xp.dtype))
        return np.ndarray(plan.y_shape, rows.dtype, rows, 0, plan.rows_strides)
    if dst is None:
        return np.matmul(wm, cols)
    return np.matmul(wm, cols, out=dst.reshape(plan.cols_shape[0], g, m // g, plan.cols_shape[3]))


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, strides=None, pads=None,
         dilations=None, group: int = 1) -> np.ndarray:
    """N-d convolution (ONNX Conv): x (N, C, *S), w (M, C/group, *K), b (M,) -> (N, M, *out).

    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> conv(x, np.ones((1, 1, 2, 2)), strides=(2, 2))
    array([[[[10., 18.],
             [42., 50.]]]])
    """
    x, w = np.asarray(x), np.asarray(w)
    dt = x.dtype
    plan = _conv_plan(x, w, strides, pads, dilations, group)
    xp, w = _conv_operands(plan, x, w)
    if plan.mode == "depthwise":
        y = _depthwise(xp, w, plan.strides, plan.dilations, plan.out)
    elif plan.mode == "winograd":
        y = _winograd_3x3(xp, w, plan.out, np.empty(plan.y_shape, xp.dtype))
    elif plan.mode == "rows":  # (a view of a workspace: the bias add or a copy makes it the caller's)
        y = _gemm_conv(plan, xp, w, None)
        y = y.copy() if b is None else y + _channel_bias(b, w.dtype, plan.m, plan.nd)
        return y.astype(dt, copy=False)
    else:
        y = _gemm_conv(plan, xp, w, None)
    y = y.reshape(plan.y_shape)
    if b is not None:
        y += _channel_bias(b, w.dtype, plan.m, plan.nd)
    return y.astype(dt, copy=False)


def conv_into(dst: np.ndarray, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, strides=None,
              pads=None, dilations=None, group: int = 1) -> np.ndarray:
    """`conv(x, w, b)` written into the C-contiguous array `dst` (the memory plan's buffer): the
    GEMM writes its result there directly and the bias is added in place; returns `dst`.

    >>> conv_into(np.empty((1, 1, 2)), np.ones((1, 1, 3)), np.ones((1, 1, 2)), np.array([0.5]))
    array([[[2.5, 2.5]]])
    """
    x, w = np.asarray(x), np.asarray(w)
    dt = x.dtype
    plan = _conv_plan(x, w, strides, pads, dilations, group)
    if (plan.mode == "depthwise" or plan.work != dt or w.dtype != dt or dst.dtype != dt
            or not dst.flags.c_contiguous or dst.shape != plan.y_shape):
        np.copyto(dst, conv(x, w, b, strides=strides, pads=pads, dilations=dilations, group=group))
        return dst
    xp, wk = _conv_operands(plan, x, w)
    if plan.mode == "winograd":
        _winograd_3x3(xp, wk, plan.out, dst)
    elif plan.mode == "rows":
        rows = _gemm_conv(plan, xp, wk, dst)
        if b is None:
            np.copyto(dst, rows)
        else:
            np.add(rows, _channel_bias(b, dt, plan.m, plan.nd), out=dst)
        return dst
    else:
        _gemm_conv(plan, xp, wk, dst)
    if b is not None:
        dst += _channel_bias(b, dt, plan.m, plan.nd)
    return dst


def _windows(xp: np.ndarray, kernel, strides, dilations, out) -> np.ndarray:
    """The (N, C, *K, *out) sliding windows of xp as one read-only strided view."""
    n, c = xp.shape[:2]
    sp = xp.strides[2:]
    return as_strided(xp, shape=(n, c) + tuple(kernel) + tuple(out),
                      strides=xp.strides[:2] + tuple(st * d for st, d in zip(sp, dilations))
                      + tuple(st * s for st, s in zip(sp, strides)), writeable=False)


def _im2col(plan: _ConvPlan, xp: np.ndarray) -> np.ndarray:
    """The `plan.cols_shape` columns of the padded input: a view in "pointwise" mode (1x1,
    stride 1), else a copy into a per-thread workspace. The windows are one strided view in
    (N, C, *K, *out) order ("rows": (N, C, *K, Q)), so the copy reads along output rows, mostly
    contiguous; built directly (np.ndarray ~0.3 us, as_strided ~2.5, sliding_window_view ~15)."""
    if plan.mode == "pointwise":
        return xp.reshape(plan.cols_shape)
    cols = _workspace("conv_cols", plan.cols_shape, xp.dtype)
    if plan.mode == "rows" or xp.flags.c_contiguous:
        xp = np.ascontiguousarray(xp)
        win = np.ndarray(plan.win_shape, xp.dtype, xp, 0, plan.win_strides)
    else:
        win = _windows(xp, plan.kernel, plan.strides, plan.dilations, plan.out)
    np.copyto(cols.reshape(plan.win_shape), win)
    return cols


# "rows" im2col saves prod(out[:-1]) - 1 copy runs per input channel and tap (~2.5 ns each) and
# costs 2 * M/group * (Q - prod(out)) GEMM flops more (~0.01 ns each): one run ~ 250 flops.
# LeNet's 5x5 convs at 24x24 and 8x8 out, bound with bias and relu: 6.0 -> 5.2 us, 7.4 -> 6.5 us;
# ResNet's 512-channel 3x3 convs at 7x7 keep the columns (24% more flops, few runs saved).
_RUN_FLOPS = 250


# --- Winograd F(2x2, 3x3) -----------------------------------------------------------------------
# Y = A^T [ (G g G^T) * (B^T d B) ] A per 4x4 input tile d and 2x2 output tile: 16 multiplies
# instead of 36, done as 16 GEMMs (M x C times C x tiles) in one batched matmul, 2.25x fewer
# FLOPs than im2col for 3x3 stride-1 convs (PERF_NOTES.md). The transforms are adds only.

# below these the transforms cost more than the GEMM saves (measured: 16 channels at 32x32 0.6x,
# 64-256 channels at 56-14 px 1.2-2x, 512 channels at 7x7 (16 tiles) 1.0x)
_WINOGRAD_MIN_CHANNELS = 64
_WINOGRAD_MIN_TILES = 32
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
_filters: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(weights) -> (weights, transformed)
_filters_lock = threading.Lock()


def _winograd_filter(w: np.ndarray) -> np.ndarray:
    """G g G^T for every (out, in) channel pair as (16, M, C), computed in float64. Read-only
    weights (a loaded model's constants: the same array on every call) are transformed once and
    cached; writable ones may change between calls and are transformed every time."""
    if not w.flags.writeable:
        with _filters_lock:
            hit = _filters.get(id(w))
        if hit is not None and hit[0] is w:
            return hit[1]
    g = np.tensordot(np.tensordot(w.astype(np.float64), _G, axes=([3], [1])), _G, axes=([2], [1]))  # M,C,b,a
    u = np.ascontiguousarray(g.transpose(3, 2, 0, 1).reshape(16, *w.shape[:2]), dtype=w.dtype)
    if not w.flags.writeable:
        with _filters_lock:
            if len(_filters) >= 512:
                _filters.clear()
            _filters[id(w)] = (w, u)
    return u


def _winograd_3x3(xp: np.ndarray, w: np.ndarray, out: tuple, dst: np.ndarray) -> np.ndarray:
    """3x3 stride-1 conv of the padded input xp (N, C, H, W) into dst (N, M, *out); returns dst."""
    n, c = xp.shape[:2]
    m = w.shape[0]
    ho, wo = out
    th, tw = -(-ho // 2), -(-wo // 2)
    if xp.shape[2] < 2 * th + 2 or xp.shape[3] < 2 * tw + 2:  # odd output: one more zero row/column
        xp = _pad_constant(xp, (0, 0), (2 * th + 2 - xp.shape[2], 2 * tw + 2 - xp.shape[3]), 0)
    dt = xp.dtype
    # B^T d B, separably on whole rows: first along H (tile row i reads padded rows 2i..2i+3),
    # then along W, written as (4, 4, C, N, th, tw) so that each GEMM reads C x tiles
    r = [xp[:, :, k:k + 2 * th:2, :2 * tw + 2] for k in range(4)]
    rows = _workspace("wino_rows", (4, n, c, th, 2 * tw + 2), dt)
    np.subtract(r[0], r[2], out=rows[0])
    np.add(r[1], r[2], out=rows[1])
    np.subtract(r[2], r[1], out=rows[2])
    np.subtract(r[1], r[3], out=rows[3])
    v = _workspace("wino_v", (4, 4, c, n, th, tw), dt)
    for a in range(4):
        q = [rows[a][..., k:k + 2 * tw:2].transpose(1, 0, 2, 3) for k in range(4)]
        np.subtract(q[0], q[2], out=v[a, 0])
        np.add(q[1], q[2], out=v[a, 1])
        np.subtract(q[2], q[1], out=v[a, 2])
        np.subtract(q[1], q[3], out=v[a, 3])
    t = n * th * tw
    y = _workspace("wino_y", (4, 4, m, t), dt)
    np.matmul(_winograd_filter(w), v.reshape(16, c, t), out=y.reshape(16, m, t))
    # A^T Y A: rows, then columns, straight into the (N, M, 2th, 2tw) layout
    z = _workspace("wino_z", (2, 4, m, t), dt)
    np.add(y[0], y[1], out=z[0])
    z[0] += y[2]
    np.subtract(y[1], y[2], out=z[1])
    z[1] -= y[3]
    full = dst if (2 * th, 2 * tw) == (ho, wo) else _workspace("wino_out", (n, m, 2 * th, 2 * tw), dt)
    tiles = full.reshape(n, m, th, 2, tw, 2).transpose(3, 5, 1, 0, 2, 4)  # (a, b, M, N, th, tw)
    for a in range(2):
        za = z[a].reshape(4, m, n, th, tw)
        np.add(za[0], za[1], out=tiles[a, 0])
        tiles[a, 0] += za[2]
        np.subtract(za[1], za[2], out=tiles[a, 1])
        tiles[a, 1] -= za[3]
    if full is not dst:
        np.copyto(dst, full[:, :, :ho, :wo])
    return dst


def _depthwise(xp: np.ndarray, w: np.ndarray, strides, dilations, out) -> np.ndarray:
    """Depthwise conv (one input channel per group, w of shape (C * mult, 1, *K)) as a sum of
    shifted views times per-channel weights: (N, C, mult, *out)."""
    n, c = xp.shape[:2]
    nd = len(out)
    mult = w.shape[0] // c
    wc = w.reshape((c, mult) + w.shape[2:])
    y = np.zeros((n, c, mult) + out, xp.dtype)
    tmp = np.empty_like(y)
    for tap in np.ndindex(*w.shape[2:]):
        view = xp[_tap_index(tap, dilations, strides, out)]
        np.multiply(view[:, :, None], wc[(slice(None),) * 2 + tap].reshape((c, mult) + (1,) * nd), out=tmp)
        y += tmp
    return y


def conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, strides=None, pads=None,
                   dilations=None, group: int = 1, output_padding=None) -> np.ndarray:
    """N-d transposed convolution (ONNX ConvTranspose): x (N, C, *S), w (C, M/group, *K).

    Output length per axis: stride*(S-1) + output_padding + (K-1)*dilation + 1 - pad_begin - pad_end.

    >>> conv_transpose(np.array([[[1.0, 2.0]]]), np.array([[[1.0, 1.0, 1.0]]]), strides=(2,))
    array([[[1., 1., 3., 2., 2.]]])
    """
    x, w = np.asarray(x), np.asarray(w)
    nd = _spatial_dims(x, "conv_transpose")
    kernel, strides, pads, dilations = _window(nd, w.shape[2:], strides, pads, dilations, "conv_transpose")
    output_padding = (0,) * nd if output_padding is None else tuple(int(p) for p in output_padding)
    n, c = x.shape[:2]
    if group < 1 or w.shape[0] != c or c % group or len(output_padding) != nd:
        raise ValueError(f"conv_transpose: input {x.shape}, weight {w.shape}, group={group}, "
                         f"output_padding={output_padding} do not fit")
    m = w.shape[1] * group
    dt = x.dtype
    work = _work_dtype(dt)
    insp = x.shape[2:]
    # columns[n, g, (m/g, *K), L] = sum over c/g of w[g, c/g, (m/g, *K)] * x[n, g, c/g, L]
    wg = w.astype(work, copy=False).reshape(group, c // group, -1).transpose(0, 2, 1)
    cols = np.matmul(wg, x.astype(work, copy=False).reshape(n, group, c // group, -1))
    cols = cols.reshape((n, m) + kernel + insp)
    full = tuple(s * (i - 1) + (k - 1) * d + 1 + p
                 for s, i, k, d, p in zip(strides, insp, kernel, dilations, output_padding))
    y = np.zeros((n, m) + full, work)
    for tap in np.ndindex(*kernel):
        dst = y[_tap_index(tap, dilations, strides, insp)]
        dst += cols[(slice(None),) * 2 + tap]
    if any(pads):
        if any(p < 0 for p in pads) or any(f - pb - pe < 1 for f, pb, pe in zip(full, pads, pads[nd:])):
            raise ValueError(f"conv_transpose: pads {pads} leave no output from length {full}")
        y = np.ascontiguousarray(y[(slice(None),) * 2 + tuple(slice(pb, f - pe)
                                                             for f, pb, pe in zip(full, pads, pads[nd:]))])
    if b is not None:
        y += _channel_bias(b, work, m, nd)
    return y.astype(dt, copy=False)


# --- pooling -----------------------------------------------------------------------------------

def _pool(x: np.ndarray, kernel, strides, pads, dilations, ceil_mode: bool, reduce, fill, counts=None):
    """Separable pooling: reduce along each spatial axis in turn. `counts(o, size, k, s, pb, pe)`,
    if given, returns the per-axis divisor for averaging."""
    nd = len(kernel)
    y = x
    for i in range(nd):
        axis = 2 + i
        size, k, s, d, pb, pe = y.shape[axis], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i]
        o = _out_len(size, k, s, pb, pe, d, ceil_mode)
        if o < 1:
            raise ValueError(f"pool: window {kernel} does not fit the input {x.shape[2:]} with pads {pads}")
        used = (o - 1) * s + (k - 1) * d + 1  # padded length the windows read
        begins, ends = [0] * (y.ndim - 2), [0] * (y.ndim - 2)
        begins[i], ends[i] = pb, used - size - pb
        yp = _pad_constant(y, begins, ends, fill)
        lead = (slice(None),) * axis
        acc = yp[lead + (_tap(0, d, s, o),)].copy()
        for t in range(1, k):
            reduce(acc, yp[lead + (_tap(t, d, s, o),)], out=acc)
        if counts is not None:
            acc /= counts(o, size, k, s, pb, pe).reshape((o,) + (1,) * (nd - 1 - i))
        y = acc
    return y


_pool_plans: dict = {}


def _max_pool_taps(x: np.ndarray, kernel_shape, strides, pads, dilations, ceil_mode: bool) -> list | None:
    """For a max pool whose windows never reach past the input (no padding): per spatial axis,
    the index of each kernel tap's view and the shape after reducing that axis (cached per
    signature). None when the windows need padding (the general `_pool` handles that)."""
    try:
        key = (x.shape, kernel_shape, strides, pads, dilations, ceil_mode)
        hit = _pool_plans.get(key, False)
    except TypeError:
        key, hit = None, False
    if hit is not False:
        return hit
    nd = _spatial_dims(x, "max_pool")
    kernel, strides, pads, dilations = _window(nd, kernel_shape, strides, pads, dilations, "max_pool")
    axes: list | None = []
    shape = list(x.shape)
    for i in range(nd):
        axis = 2 + i
        size, k, s, d, pb, pe = shape[axis], kernel[i], strides[i], dilations[i], pads[i], pads[nd + i]
        o = _out_len(size, k, s, pb, pe, d, ceil_mode)
        if o < 1:
            raise ValueError(f"pool: window {kernel} does not fit the input {x.shape[2:]} with pads {pads}")
        if pb != 0 or (o - 1) * s + (k - 1) * d + 1 > size:
            axes = None
            break
        lead = (slice(None),) * axis
        shape[axis] = o
        axes.append((tuple(lead + (_tap(t, d, s, o),) for t in range(k)), tuple(shape)))
    if key is not None:
        if len(_pool_plans) >= 1024:
            _pool_plans.clear()
        _pool_plans[key] = axes
    return axes


def max_pool_into(dst: np.ndarray | None, x: np.ndarray, *, kernel_shape, strides=None, pads=None,
                  dilations=None, ceil_mode: bool = False) -> np.ndarray:
    """`max_pool`, written into `dst` when given (the memory plan's buffer). Unpadded windows
    are reduced one axis at a time straight from views of x (the max is exact, so any order
    gives the same bits as `max_pool`); intermediates live in per-thread workspaces.

    >>> max_pool_into(np.empty((1, 1, 2)), np.array([[[1.0, 3.0, 2.0, 5.0]]]), kernel_shape=(2,), strides=(2,))
    array([[[3., 5.]]])
    """
    x = np.asarray(x)
    axes = _max_pool_taps(x, kernel_shape, strides, pads, dilations, ceil_mode)
    if axes is None or (dst is not None and (dst.dtype != x.dtype or dst.shape != axes[-1][1])):
        y = max_pool(x, kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations,
                     ceil_mode=ceil_mode)
        if dst is None:
            return y
        np.copyto(dst, y)
        return dst
    y = x
    last = len(axes) - 1
    for i, (taps, shape) in enumerate(axes):
        if i < last:
            acc = _workspace("pool_a" if i % 2 else "pool_b", shape, x.dtype)
        else:
            acc = np.empty(shape, x.dtype) if dst is None else dst
        if len(taps) == 1:
            np.copyto(acc, y[taps[0]])
        else:
            np.maximum(y[taps[0]], y[taps[1]], out=acc)
            for t in taps[2:]:
                np.maximum(acc, y[t], out=acc)
        y = acc
    return y


def max_pool(x: np.ndarray, *, kernel_shape, strides=None, pads=None, dilations=None,
             ceil_mode: bool = False) -> np.ndarray:
    """Max pooling (ONNX MaxPool, output Y only); integer dtypes allowed. Padding never wins; a
    window that covers only padding (possible with pads >= kernel) gives -inf (integer minimum).

    >>> max_pool(np.array([[[1.0, 3.0, 2.0, 5.0, 4.0]]]), kernel_shape=(2,), strides=(2,), ceil_mode=True)
    array([[[3., 5., 4.]]])
    """
    x = np.asarray(x)
    if _max_pool_taps(x, kernel_shape, strides, pads, dilations, ceil_mode) is not None:
        return max_pool_into(None, x, kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations,
                             ceil_mode=ceil_mode)
    nd = _spatial_dims(x, "max_pool")
    kernel, strides, pads, dilations = _window(nd, kernel_shape, strides, pads, dilations, "max_pool")
    dt = x.dtype
    fill = -np.inf if dt.kind == "f" else np.iinfo(dt).min
    work = _work_dtype(dt)
    y = _pool(x.astype(work, copy=False), kernel, strides, pads, dilations, ceil_mode, np.maximum, fill)
    return y.astype(dt, copy=False)


def avg_pool(x: np.ndarray, *, kernel_shape, strides=None, pads=None, ceil_mode: bool = False,
             count_include_pad: bool = False) -> np.ndarray:
    """Average pooling (ONNX AveragePool). The divisor counts the input positions a window
    covers, plus its explicit padding if `count_include_pad`; never the extra positions past
    the end padding that ceil_mode windows reach.

    >>> avg_pool(np.array([[[1.0, 2.0, 3.0]]]), kernel_shape=(2,), pads=(1, 1))
    array([[[1. , 1.5, 2.5, 3. ]]])
    >>> avg_pool(np.array([[[1.0, 2.0, 3.0]]]), kernel_shape=(2,), pads=(1, 1), count_include_pad=True)
    array([[[0.5, 1.5, 2.5, 1.5]]])
    """
    x = np.asarray(x)
    nd = _spatial_dims(x, "avg_pool")
    kernel, strides, pads, dilations = _window(nd, kernel_shape, strides, pads, None, "avg_pool")
    dt = x.dtype
    work = _work_dtype(dt) if dt.kind == "f" else np.dtype(np.float64)

    def counts(o, size, k, s, pb, pe):
        start = np.arange(o) * s - pb
        if count_include_pad:
            return np.minimum(start + k, size + pe) - start
        return np.minimum(start + k, size) - np.maximum(start, 0)

    y = _pool(x.astype(work, copy=False), kernel, strides, pads, dilations, ceil_mode, np.add, 0, counts)
    return y.astype(dt, copy=False)


def global_avg_pool(x: np.ndarray) -> np.ndarray:
    """Mean over all spatial dims, kept as size 1 (ONNX GlobalAveragePool).

    >>> global_avg_pool(np.arange(8.0).reshape(1, 2, 2, 2))
    array([[[[1.5]],
    <BLANKLINE>
            [[5.5]]]])
    """
    x = np.asarray(x)
    nd = _spatial_dims(x, "global_avg_pool")
    work = _work_dtype(x.dtype)
    y = x.reshape(x.shape[:2] + (math.prod(x.shape[2:]),)).mean(axis=-1, dtype=work)
    return y.reshape(x.shape[:2] + (1,) * nd).astype(x.dtype, copy=False)


def global_max_pool(x: np.ndarray) -> np.ndarray:
    """Max over all spatial dims, kept as size 1 (ONNX GlobalMaxPool).

    >>> global_max_pool(np.arange(8.0).reshape(1, 2, 4))
    array([[[3.],
            [7.]]])
    """
    x = np.asarray(x)
    nd = _spatial_dims(x, "global_max_pool")
    return x.reshape(x.shape[:2] + (math.prod(x.shape[2:]),)).max(axis=-1).reshape(x.shape[:2] + (1,) * nd)
