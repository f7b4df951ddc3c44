"""float64 replacements for the ONNX nodes onnxruntime has no float64 kernel for: Conv,
ConvTranspose, AveragePool, LRN, Erf, Gelu (measured with onnxruntime 1.32; the capability table
says which, `onnx_lowering_fallbacks.rewrite` calls these when the target lacks a pair).

Why these shapes of rewrite: nothing is wider than float64, so precision is kept by building each
op from ops that do run in float64 (Pad, Slice, Concat, Reshape, MatMul, Add, Div, Pow, Exp,
Where). Convolution is im2col: one strided Slice of the padded input per kernel offset, stacked
and multiplied with the reshaped weights by one batched MatMul (one per group via broadcasting);
the transposed convolution is a convolution of the stride-dilated input with the flipped weights.
Average pooling sums the same window slices and divides by a divisor table computed at export
time (padding and ceil-mode windows counted as the kernels count them). Erf and Gelu use the very
polynomial tables of `runtime/kernels/special.py`, branch-free with Where, so they agree with
`ir.interpret` to ~1e-15. Spatial dims must be static (the batch may be symbolic); otherwise the
rewrite declines and the caller raises the usual `ExportError`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from runtime.kernels import special

from .onnx_export import Emitter


def _s(cx: Emitter, v: float, like: str) -> str:
    return cx.scalar(v, like)


def _static(dims) -> list[int] | None:
    return [int(d) for d in dims] if all(isinstance(d, int) for d in dims) else None


# --- erf / erfc / gelu ---------------------------------------------------------------------------

def _horner(cx: Emitter, coefs, s: str) -> str:
    p = cx.node("Mul", [s, _s(cx, coefs[-1], s)])
    for c in coefs[-2:0:-1]:
        p = cx.node("Mul", [cx.node("Add", [p, _s(cx, c, s)]), s])
    return cx.node("Add", [p, _s(cx, coefs[0], s)])


def _erf_small(cx: Emitter, x: str) -> str:
    return cx.node("Mul", [x, _horner(cx, special._ERF_SMALL, cx.node("Mul", [x, x]))])


def _erfc_tail(cx: Emitter, a: str) -> str:
    """erfc(a) for a >= 1 (other elements get values that the caller's Where drops)."""
    e = cx.node("Exp", [cx.node("Neg", [cx.node("Mul", [a, a])])])
    s_mid = cx.node("Sub", [cx.node("Div", [_s(cx, 12.0, a), cx.node("Add", [a, _s(cx, 2.0, a)])]), _s(cx, 3.0, a)])
    mid = cx.node("Mul", [_horner(cx, special._ERFC_MID, s_mid), e])
    s_far = cx.node("Sub", [cx.node("Div", [_s(cx, 32.0, a), cx.node("Mul", [a, a])]), _s(cx, 1.0, a)])
    far = cx.node("Div", [cx.node("Mul", [_horner(cx, special._ERFC_FAR, s_far), e]), a])
    return cx.node("Where", [cx.node("Less", [a, _s(cx, 4.0, a)], dtype=np.bool_), mid, far], key_input=1)


def _erf(cx: Emitter, ins: list[str], out: str | None, attrs: dict) -> str:
    """erf(x) as `special._erf64`: a*p(a*a) for a = |x| < 1, 1 - erfc(a) beyond, times the sign
    of x. The sign comes last, as a factor of +-1: onnxruntime's Where turns -0.0 into +0.0,
    and erf(-0.0) is -0.0 (found by 1/x < 0)."""
    x = ins[0]
    a = cx.node("Abs", [x])
    one = _s(cx, 1.0, x)
    small = cx.node("Less", [a, one], dtype=np.bool_)  # (nan is not small: the tail propagates it)
    mag = cx.node("Where", [small, _erf_small(cx, a), cx.node("Sub", [one, _erfc_tail(cx, a)])], key_input=1)
    return with_sign_of(cx, x, mag, out)


def with_sign_of(cx: Emitter, x: str, mag: str, out: str | None = None) -> str:
    """mag * (+-1 by the sign of x, -0.0 included, found by 1/x < 0): the last step of an odd
    function, since onnxruntime's Where turns -0.0 into +0.0.

    >>> cx = Emitter(18, None); cx.dtypes["x"] = cx.dtypes["m"] = np.dtype(np.float64)
    >>> _ = with_sign_of(cx, "x", "m"); cx.nodes[-1].op_type
    'Mul'
    """
    one, zero = _s(cx, 1.0, x), _s(cx, 0.0, x)
    negative = cx.node("Or", [cx.node("Less", [x, zero], dtype=np.bool_),
                              cx.node("Less", [cx.node("Div", [one, x]), zero], dtype=np.bool_)])
    return cx.node("Mul", [mag, cx.node("Where", [negative, _s(cx, -1.0, x), one], key_input=1)], out)


def _erfc(cx: Emitter, v: str) -> str:
    """erfc(v) as `special._erfc64`: 1 - erf for |v| < 1, tail for v >= 1, 2 - tail for v <= -1."""
    a = cx.node("Abs", [v])
    one = _s(cx, 1.0, v)
    tail = _erfc_tail(cx, a)
    big = cx.node("Where", [cx.node("Less", [v, _s(cx, 0.0, v)], dtype=np.bool_),
                            cx.node("Sub", [_s(cx, 2.0, v), tail]), tail], key_input=1)
    small = cx.node("Sub", [one, _erf_small(cx, v)])
    return cx.node("Where", [cx.node("Less", [a, one], dtype=np.bool_), small, big], key_input=1)


def _gelu(cx: Emitter, ins: list[str], out: str | None, attrs: dict) -> str:
    """Gelu (opset 20) as the kernel computes it: x/2 * erfc(-x/sqrt 2), or the tanh formula."""
    x = ins[0]
    approx = attrs.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    half_x = cx.node("Mul", [x, _s(cx, 0.5, x)])
    if approx == "tanh":
        cube = cx.node("Mul", [cx.node("Mul", [x, x]), x])
        inner = cx.node("Add", [x, cx.node("Mul", [cube, _s(cx, 0.044715, x)])])
        t = cx.node("Tanh", [cx.node("Mul", [inner, _s(cx, math.sqrt(2.0 / math.pi), x)])])
        return cx.node("Mul", [half_x, cx.node("Add", [t, _s(cx, 1.0, x)])], out)
    return cx.node("Mul", [half_x, _erfc(cx, cx.node("Mul", [x, _s(cx, -math.sqrt(0.5), x)]))], out)


# --- windows ---------------------------------------------------------------------------------------

def _pad_spatial(cx: Emitter, x: str, begin: list[int], end: list[int]) -> str:
    if not any(begin) and not any(end):
        return x
    return cx.node("Pad", [x, cx.ints([0, 0, *begin, 0, 0, *end]), _s(cx, 0.0, x)], key="Pad.constant",
                   mode="constant")


def _windows(cx: Emitter, xp: str, kernel, dilations, strides, out_dims) -> list[str]:
    """One strided slice of `xp` (N, C, *spatial) per kernel offset, each (N, C, *out_dims)."""
    nd = len(kernel)
    axes = cx.ints(range(2, 2 + nd))
    steps = cx.ints(strides)
    parts = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        starts = [o * d for o, d in zip(offset, dilations)]
        ends = [b + (n - 1) * s + 1 for b, n, s in zip(starts, out_dims, strides)]
        parts.append(cx.node("Slice", [xp, cx.ints(starts), cx.ints(ends), axes, steps]))
    return parts


def conv_nd(cx: Emitter, x: str, w: str, b: str | None, xshape, wshape, strides, pads, dilations, group: int,
            out: str | None) -> str | None:
    """Convolution (ONNX Conv semantics) by im2col + MatMul; None when spatial dims are symbolic.

    >>> callable(conv_nd)
    True
    """
    nd = len(wshape) - 2
    spatial, wdims = _static(xshape[2:]), _static(wshape)
    if spatial is None or wdims is None:
        return None
    m, cg, kernel = wdims[0], wdims[1], wdims[2:]
    out_dims = [(n + pads[i] + pads[i + nd] - dilations[i] * (k - 1) - 1) // strides[i] + 1
                for i, (n, k) in enumerate(zip(spatial, kernel))]
    if min(out_dims) < 1:
        return None
    xp = _pad_spatial(cx, x, list(pads[:nd]), list(pads[nd:]))
    parts = [cx.node("Unsqueeze", [p, cx.ints([2])]) for p in _windows(cx, xp, kernel, dilations, strides, out_dims)]
    cols = parts[0] if len(parts) == 1 else cx.node("Concat", parts, axis=2)  # (N, C, K, *out)
    ck, p = cg * len(parts), int(np.prod(out_dims))
    cols = cx.node("Reshape", [cols, cx.ints([0, group, ck, p])])
    wr = cx.node("Reshape", [w, cx.ints([group, m // group, ck])])
    y = cx.node("Reshape", [cx.node("MatMul", [wr, cols]), cx.ints([0, m, *out_dims])], None if b else out)
    if b is None:
        return y
    return cx.node("Add", [y, cx.node("Reshape", [b, cx.ints([m] + [1] * nd)])], out)


def _conv(cx: Emitter, ins: list[str], out: str | None, attrs: dict) -> str | None:
    if cx.op is None:
        return None
    xshape, wshape = cx.op.inputs[0].shape, cx.op.inputs[1].shape
    nd = len(wshape) - 2
    return conv_nd(cx, ins[0], ins[1], ins[2] if len(ins) > 2 and ins[2] else None, xshape, wshape,
                   list(attrs.get("strides", [1] * nd)), list(attrs.get("pads", [0] * 2 * nd)),
                   list(attrs.get("dilations", [1] * nd)), int(attrs.get("group", 1)), out)


def _dilate(cx: Emitter, x: str, spatial: list[int], strides: list[int]) -> str:
    """Insert stride-1 zeros between the elements of each spatial axis (N may be symbolic)."""
    dims = list(spatial)
    for i, s in enumerate(strides):
        if s == 1:
            continue
        axis = 2 + i
        up = cx.node("Unsqueeze", [x, cx.ints([axis + 1])])
        pads = [0] * (len(dims) + 3) * 2
        pads[axis + 1 + len(dims) + 3] = s - 1
        wide = cx.node("Pad", [up, cx.ints(pads), _s(cx, 0.0, x)], key="Pad.constant", mode="constant")
        shape = [0, 0, *dims[:i], dims[i] * s, *dims[i + 1:]]
        flat = cx.node("Reshape", [wide, cx.ints(shape)])
        x = cx.node("Slice", [flat, cx.ints([0]), cx.ints([(dims[i] - 1) * s + 1]), cx.ints([axis])])
        dims[i] = (dims[i] - 1) * s + 1
    return x


def _conv_transpose(cx: Emitter, ins: list[str], out: str | None, attrs: dict) -> str | None:
    """ConvTranspose = Conv(dilate(x, strides), flip(w) with in/out channels swapped per group)."""
    if cx.op is None or attrs.get("output_shape"):
        return None
    xshape, wshape = cx.op.inputs[0].shape, cx.op.inputs[1].shape
    spatial, wdims = _static(xshape[2:]), _static(wshape)
    if spatial is None or wdims is None:
        return None
    nd = len(spatial)
    group = int(attrs.get("group", 1))
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(attrs.get("dilations", [1] * nd))
    pads = list(attrs.get("pads", [0] * 2 * nd))
    opad = list(attrs.get("output_padding", [0] * nd))
    c, mg, kernel = wdims[0], wdims[1], wdims[2:]
    x, w = ins[0], ins[1]
    xd = _dilate(cx, x, spatial, strides)
    ddims = [(n - 1) * s + 1 for n, s in zip(spatial, strides)]
    begin = [d * (k - 1) - p for d, k, p in zip(dil, kernel, pads[:nd])]
    end = [d * (k - 1) - p + o for d, k, p, o in zip(dil, kernel, pads[nd:], opad)]
    # negative amounts crop instead of padding
    if any(v < 0 for v in begin + end):
        starts = [max(0, -v) for v in begin]
        ends = [n - max(0, -v) for n, v in zip(ddims, end)]
        xd = cx.node("Slice", [xd, cx.ints(starts), cx.ints(ends), cx.ints(range(2, 2 + nd))])
        ddims = [e - s for s, e in zip(starts, ends)]
        begin, end = [max(0, v) for v in begin], [max(0, v) for v in end]
    flip = cx.node("Slice", [w, cx.ints([-1] * nd), cx.ints([-(2**63)] * nd), cx.ints(range(2, 2 + nd)),
                             cx.ints([-1] * nd)])
    wt = cx.node("Reshape", [flip, cx.ints([group, c // group, mg, *kernel])])
    wt = cx.node("Transpose", [wt], perm=[0, 2, 1, *range(3, 3 + nd)])
    wt = cx.node("Reshape", [wt, cx.ints([group * mg, c // group, *kernel])])
    return conv_nd(cx, xd, wt, ins[2] if len(ins) > 2 and ins[2] else None, (0, c, *ddims),
                   (group * mg, c // group, *kernel), [1] * nd, begin + end, dil, group, out)


def _average_pool(cx: Emitter, ins: list[str], out: str | None, attrs: dict) -> str | None:
    """Window sums divided by a divisor table: the count of input elements (or of input and pad
    elements, with count_include_pad) each window covers."""
    if cx.op is None or cx.op.kind != "avg_pool":
        return None
    spatial, out_dims = _static(cx.op.inputs[0].shape[2:]), _static(cx.op.outputs[0].shape[2:])
    if spatial is None or out_dims is None:
        return None
    kernel = list(attrs["kernel_shape"])
    nd = len(kernel)
    strides = list(attrs.get("strides", [1] * nd))
    pads = list(attrs.get("pads", [0] * 2 * nd))
    if any(d != 1 for d in attrs.get("dilations", [1] * nd)):
        return None
    include_pad = bool(attrs.get("count_include_pad", 0))
    extra = [max(0, (o - 1) * s + k - (n + pads[i] + pads[i + nd]))
             for i, (o, s, k, n) in enumerate(zip(out_dims, strides, kernel, spatial))]
    x = ins[0]
    xp = _pad_spatial(cx, x, pads[:nd], [e + x_ for e, x_ in zip(pads[nd:], extra)])
    parts = _windows(cx, xp, kernel, [1] * nd, strides, out_dims)
    total = parts[0]
    for p in parts[1:]:
        total = cx.node("Add", [total, p])
    counts = np.ones((), np.float64)
    for i, (o, s, k, n) in enumerate(zip(out_dims, strides, kernel, spatial)):
        lo, hi = (0, n + pads[i] + pads[i + nd]) if include_pad else (pads[i], pads[i] + n)
        starts = np.arange(o) * s
        per_axis = np.clip(np.minimum(starts + k, hi) - np.maximum(starts, lo), 0, None).astype(np.float64)
        counts = np.multiply.outer(counts, per_axis)
    return cx.node("Div", [total, cx.const(counts.astype(cx.dtypes[x]))], out)


def _lrn(cx: Emitter, ins: list[str], out: str | None, attrs: dict) -> str | None:
    """x * (bias + alpha/size * sum of x^2 over a channel window)^-beta, as `kernels.nn.lrn`."""
    if cx.op is None:
        return None
    shape = cx.op.inputs[0].shape
    c = shape[1]
    if not isinstance(c, int):
        return None
    size = int(attrs["size"])
    alpha, beta, bias = attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0)
    x = ins[0]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    rank = len(shape)
    pads = [0] * (2 * rank)
    pads[1], pads[1 + rank] = lo, hi
    sq = cx.node("Mul", [x, x])
    if lo or hi:
        sq = cx.node("Pad", [sq, cx.ints(pads), _s(cx, 0.0, x)], key="Pad.constant", mode="constant")
    total = None
    for j in range(size):
        part = cx.node("Slice", [sq, cx.ints([j]), cx.ints([j + c]), cx.ints([1])])
        total = part if total is None else cx.node("Add", [total, part])
    total = cx.node("Add", [cx.node("Mul", [total, _s(cx, alpha / size, x)]), _s(cx, bias, x)])
    return cx.node("Mul", [cx.node("Pow", [total, _s(cx, -beta, x)]), x], out)


DECOMPOSITIONS = {
    "Erf": _erf, "Gelu": _gelu, "Conv": _conv, "ConvTranspose": _conv_transpose, "AveragePool": _average_pool,
    "LRN": _lrn,
}
