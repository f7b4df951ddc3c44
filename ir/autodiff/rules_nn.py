"""VJP rules of the neural-network ops: convolution, pooling, softmax, normalizations, LRN.

All backward passes are built from registry ops, so they differentiate again and export to
ONNX without new lowerings:
- conv: the input gradient is a `conv_transpose` with the forward window (sliced back to the
  input's length where a symbolic spatial dim makes its output padding symbolic), the weight
  gradient a `conv` of the input (batch as channels) with the output cotangent as the kernel
  (stride and dilation swap roles), or, for symbolic spatial dims, one `einsum` per kernel
  offset; `conv_transpose` uses the same helpers the other way round.
- pools: one strided `slice` per kernel offset reads the windows; the cotangent is added back
  with `slice_update`. max_pool splits it equally among ties (like the max reductions);
  avg_pool divides by the count of cells each window averaged over.
- normalizations: the usual closed forms, recomputing the statistics from the forward input.
"""

from __future__ import annotations

import itertools

import numpy as np

from runtime import dims as D

from ..graph import Op, Value
from ..types import TensorType
from .rules_common import AutodiffError, Builder, is_float, register_rules
from .rules_reduce import extremum_grad


def _bias_grad(b: Builder, ct: Value) -> Value:
    return b.reduce_sum(ct, [0] + list(range(2, len(ct.shape))))


def conv_weight_grad(b: Builder, inp: Value, out_ct: Value, kernel: tuple, attrs: dict) -> Value:
    """∂<conv(inp, w), out_ct>/∂w, of shape (C_out, C_in/group, *kernel).

    Static spatial dims: one `conv` of the input (batch as channels) with the cotangent as the
    kernel. Symbolic ones (a kernel's dims must be static): one contraction per kernel offset
    (`conv_weight_grad_by_offsets`)."""
    if not all(isinstance(d, int) for d in out_ct.shape[2:]):
        return conv_weight_grad_by_offsets(b, inp, out_ct, kernel, attrs)
    nd = len(kernel)
    g = attrs["group"]
    n, c = inp.shape[:2]
    spatial = tuple(range(2, 2 + nd))
    if g == 1:
        batch_as_channels = b.transpose(inp, (1, 0) + spatial)
    else:
        cg = D.floordiv(c, g)
        grouped = b.reshape(inp, (n, g, cg) + inp.shape[2:])
        moved = b.transpose(grouped, (2, 1, 0) + tuple(range(3, 3 + nd)))
        batch_as_channels = b.reshape(moved, (cg, D.mul(g, n)) + inp.shape[2:])
    kernel_from_ct = b.transpose(out_ct, (1, 0) + spatial)
    dil = attrs.get("dilations", (1,) * nd)
    raw = b.op("conv", batch_as_channels, kernel_from_ct, strides=tuple(dil), pads=tuple(attrs["pads"]),
               dilations=tuple(attrs["strides"]), group=g)
    dw = b.transpose(raw, (1, 0) + spatial)
    if tuple(dw.shape[2:]) != tuple(kernel):
        dw = b.op("slice", dw, starts=(0,) * (nd + 2), stops=dw.shape[:2] + tuple(kernel), steps=(1,) * (nd + 2))
    return dw


def conv_weight_grad_by_offsets(b: Builder, inp: Value, out_ct: Value, kernel: tuple, attrs: dict) -> Value:
    """`conv_weight_grad` for any (symbolic) spatial dims: for each kernel offset, the strided
    slice of the padded input that the offset reads, contracted with `out_ct` over batch and
    space by an `einsum`; the offsets' (C_out, C_in/group) blocks are stacked into the kernel.

    >>> import numpy as np, ir
    >>> from ir.graph import Graph
    >>> g = Graph.from_inputs([("x", TensorType(np.float64, ("n", 1, "h"))),
    ...                        ("ct", TensorType(np.float64, ("n", 1, "h-1")))])
    >>> dw = conv_weight_grad_by_offsets(Builder(g), *g.inputs, (2,), {"strides": (1,), "pads": (0, 0),
    ...                                  "dilations": (1,), "group": 1})
    >>> g.outputs, g.out_tree = [dw], ("*",); str(dw.type)
    'f64[1,1,2]'
    >>> ir.interpret(g, np.array([[[1.0, 2.0, 3.0]]]), np.array([[[1.0, 10.0]]])).tolist()
    [[[21.0, 32.0]]]
    """
    nd = len(kernel)
    g = attrs["group"]
    strides, pads = tuple(attrs["strides"]), tuple(attrs["pads"])
    dil = tuple(attrs.get("dilations", (1,) * nd))
    n, c = inp.shape[:2]
    c_out = out_ct.shape[1]
    out = out_ct.shape[2:]
    padded = inp
    if any(pads):
        padded = b.op("pad", inp, pads=(0, 0) + pads[:nd] + (0, 0) + pads[nd:], mode="constant", value=0.0)
    cg, og = D.floordiv(c, g), D.floordiv(c_out, g)
    ct_groups = b.reshape(out_ct, (n, g, og) + out)
    space = "".join("stuvwxyz"[i] for i in range(nd))
    equation = f"ngo{space},ngi{space}->goi"
    blocks = []
    for off in itertools.product(*(range(k) for k in kernel)):
        starts = (0, 0) + tuple(o * dl for o, dl in zip(off, dil))
        stops = (n, c) + tuple(D.add(st, D.add(D.mul(D.sub(o, 1), s), 1))
                               for st, o, s in zip(starts[2:], out, strides))
        window = b.op("slice", padded, starts=starts, stops=stops, steps=(1, 1) + strides)
        window = b.reshape(window, (n, g, cg) + out)
        block = b.op("einsum", ct_groups, window, equation=equation)
        blocks.append(b.reshape(block, (c_out, cg, 1)))
    stacked = blocks[0] if len(blocks) == 1 else b.op("concat", *blocks, axis=2)
    return b.reshape(stacked, (c_out, cg) + tuple(kernel))


def conv_input_grad(b: Builder, x: Value, w: Value, ct: Value, attrs: dict) -> Value:
    """∂<conv(x, w), ct>/∂x: a `conv_transpose` with the forward window.

    Its `output_padding` is the part of x the last window did not reach, (x + pads - span) mod
    stride along each axis. Where that is symbolic (a symbolic spatial dim with stride > 1),
    the transpose runs with the largest possible padding, stride - 1, and is sliced back to x's
    length: output padding only appends positions at the end, so the others are unchanged.

    >>> import numpy as np, ir
    >>> from ir.graph import Graph
    >>> g = Graph.from_inputs([("x", TensorType(np.float64, (1, 1, "h"))), ("w", TensorType(np.float64, (1, 1, 2))),
    ...                        ("ct", TensorType(np.float64, (1, 1, "(h-2)//2+1")))])
    >>> dx = conv_input_grad(Builder(g), *g.inputs, {"strides": (2,), "pads": (0, 0), "dilations": (1,), "group": 1})
    >>> g.outputs, g.out_tree = [dx], ("*",); str(dx.type)
    'f64[1,1,h]'
    >>> ir.interpret(g, np.zeros((1, 1, 5)), np.array([[[1.0, 10.0]]]), np.array([[[1.0, 2.0]]])).tolist()
    [[[1.0, 10.0, 2.0, 20.0, 0.0]]]
    """
    nd = len(x.shape) - 2
    s, p = tuple(attrs["strides"]), tuple(attrs["pads"])
    d = tuple(attrs.get("dilations", (1,) * nd))
    kernel = w.shape[2:]
    out_pad, crop = [], False
    for i in range(nd):
        full = D.add(D.mul(D.sub(ct.shape[2 + i], 1), s[i]), (kernel[i] - 1) * d[i] + 1 - p[i] - p[nd + i])
        extra = D.sub(x.shape[2 + i], full)
        if isinstance(extra, int):
            out_pad.append(extra)
        else:
            out_pad.append(s[i] - 1)
            crop = True
    dx = b.op("conv_transpose", ct, w, strides=s, pads=p, dilations=d, group=attrs["group"],
              output_padding=tuple(out_pad))
    if crop:
        dx = b.op("slice", dx, starts=(0,) * (nd + 2), stops=x.shape, steps=(1,) * (nd + 2))
    return dx


def _wanted(b: Builder, v: Value) -> bool:
    """Whether a cotangent for input `v` is needed (a gradient flows to it)."""
    active = getattr(b, "active", None)
    return is_float(v) and (active is None or id(v) in active)


def _conv(b: Builder, op: Op, cts: list) -> list:
    x, w = op.inputs[:2]
    ct = cts[0]
    grads = [conv_input_grad(b, x, w, ct, op.attrs) if _wanted(b, x) else None,
             conv_weight_grad(b, x, ct, w.shape[2:], op.attrs) if _wanted(b, w) else None]
    if len(op.inputs) == 3:
        grads.append(_bias_grad(b, ct))
    return grads


def _conv_transpose(b: Builder, op: Op, cts: list) -> list:
    x, w = op.inputs[:2]
    ct = cts[0]
    attrs = {k: op.attrs[k] for k in ("strides", "pads", "dilations", "group")}
    dx = None
    if _wanted(b, x):
        # with symbolic spatial dims the conv's length is x's, in a form the dims algebra may
        # not reduce to it ((l*2-1)//2+1 for l): restate it
        dx = b.reshape(b.op("conv", ct, w, **attrs), x.shape)
    grads = [dx, conv_weight_grad(b, ct, x, w.shape[2:], attrs) if _wanted(b, w) else None]
    if len(op.inputs) == 3:
        grads.append(_bias_grad(b, ct))
    return grads


class _Windows:
    """The kernel offsets of a pooling op as strided slices of the padded input."""

    def __init__(self, b: Builder, op: Op):
        x, y = op.inputs[0], op.outputs[0]
        self.b, self.x, self.nd = b, x, len(x.shape) - 2
        nd = self.nd
        self.kernel, self.strides, pads = op.attrs["kernel_shape"], op.attrs["strides"], op.attrs["pads"]
        self.dil = op.attrs.get("dilations", (1,) * nd)
        self.begin, end = pads[:nd], list(pads[nd:])
        self.out = y.shape[2:]
        self.extra = []  # ceil_mode windows may hang past the padded input
        for i in range(nd):
            need = D.add(D.mul(D.sub(self.out[i], 1), self.strides[i]), (self.kernel[i] - 1) * self.dil[i] + 1)
            have = D.add(x.shape[2 + i], self.begin[i] + end[i])
            more = D.sub(need, have) if op.attrs.get("ceil_mode") else 0
            if not isinstance(more, int):
                raise AutodiffError(f"{op.kind} with ceil_mode: no gradient for symbolic spatial dims ({x.type})")
            self.extra.append(max(more, 0))
        self.end = tuple(e + m for e, m in zip(end, self.extra))
        self.padded = TensorType(x.dtype, x.shape[:2] + tuple(
            D.add(x.shape[2 + i], self.begin[i] + self.end[i]) for i in range(nd)))

    def pad(self, v: Value, value: float, pads_end: tuple | None = None) -> Value:
        end = self.end if pads_end is None else pads_end
        if not any(self.begin) and not any(end):
            return v
        return self.b.op("pad", v, pads=(0, 0) + tuple(self.begin) + (0, 0) + tuple(end), mode="constant",
                         value=float(value))

    def offsets(self):
        """(slice attrs) for each kernel offset."""
        n, c = self.x.shape[:2]
        for off in itertools.product(*(range(k) for k in self.kernel)):
            starts = (0, 0) + tuple(o * dl for o, dl in zip(off, self.dil))
            stops = (n, c) + tuple(D.add(st, D.add(D.mul(D.sub(o, 1), s), 1))
                                   for st, o, s in zip(starts[2:], self.out, self.strides))
            yield {"starts": starts, "stops": stops, "steps": (1, 1) + tuple(self.strides)}

    def scatter(self, contribs: list[Value]) -> Value:
        """Add each offset's contribution into a padded zero gradient, then crop the padding."""
        b = self.b
        acc = b.zeros(self.padded)
        for attrs, v in zip(self.offsets(), contribs):
            acc = b.op("slice_update", acc, b.add(b.op("slice", acc, **attrs), v), **attrs)
        if self.padded.shape == self.x.shape:
            return acc
        starts = (0, 0) + tuple(self.begin)
        stops = self.x.shape[:2] + tuple(D.add(self.x.shape[2 + i], self.begin[i]) for i in range(self.nd))
        return b.op("slice", acc, starts=starts, stops=stops, steps=(1,) * (self.nd + 2))


def _max_pool(b: Builder, op: Op, cts: list) -> list:
    win = _Windows(b, op)
    y = op.outputs[0]
    xp = win.pad(op.inputs[0], -np.inf)
    hits = [b.cast(b.op("equal", b.op("slice", xp, **attrs), y), y.dtype) for attrs in win.offsets()]
    count = hits[0]
    for h in hits[1:]:
        count = b.add(count, h)
    share = b.div(cts[0], count)
    return [win.scatter([b.mul(h, share) for h in hits])]


def _avg_pool(b: Builder, op: Op, cts: list) -> list:
    win = _Windows(b, op)
    x = op.inputs[0]
    k = int(np.prod(win.kernel))
    if op.attrs["count_include_pad"] and not any(win.extra):
        divisor = b.const(k, x.dtype)
    else:
        # the cells each window averaged over: real ones, plus padding when count_include_pad
        ones = b.full(x.type, 1)
        if op.attrs["count_include_pad"]:
            ones = win.pad(ones, 1.0, tuple(e - m for e, m in zip(win.end, win.extra)))
            ones = b.op("pad", ones, pads=(0,) * (win.nd + 2) + (0, 0) + tuple(win.extra), mode="constant",
                        value=0.0)
        else:
            ones = win.pad(ones, 0.0)
        parts = [b.op("slice", ones, **attrs) for attrs in win.offsets()]
        divisor = parts[0]
        for v in parts[1:]:
            divisor = b.add(divisor, v)
    share = b.div(cts[0], divisor)
    return [win.scatter([share] * k)]


def _global_avg_pool(b: Builder, op: Op, cts: list) -> list:
    x = op.inputs[0]
    spatial = list(range(2, len(x.shape)))
    return [b.broadcast_to(b.div(cts[0], b.count(x, spatial, x.dtype)), x.shape)]


def _global_max_pool(b: Builder, op: Op, cts: list) -> list:
    x = op.inputs[0]
    return [extremum_grad(b, x, op.outputs[0], cts[0], tuple(range(2, len(x.shape))), True)]


def _softmax(b: Builder, op: Op, cts: list) -> list:
    y, ct = op.outputs[0], cts[0]
    axis = op.attrs["axis"]
    dot = b.op("reduce_sum", b.mul(ct, y), axes=(axis,), keepdims=True)
    return [b.mul(y, b.sub(ct, dot))]


def _log_softmax(b: Builder, op: Op, cts: list) -> list:
    y, ct = op.outputs[0], cts[0]
    total = b.op("reduce_sum", ct, axes=(op.attrs["axis"],), keepdims=True)
    return [b.sub(ct, b.mul(b.op("exp", y), total))]


def _normalized(b: Builder, x: Value, axes: tuple, eps: float) -> tuple[Value, Value]:
    """(x̂, 1/σ) over `axes` (keepdims), as the normalization kernels compute them.

    1/σ is taken as sqrt(1/(var + eps)), not 1/sqrt(var + eps): the pattern pass of
    `ir.optimize` turns (x - mean) * (1/sqrt(var + eps)) into a `layer_norm` op, whose kernel
    would compute the mean and variance a second time; here x̂ costs one multiplication."""
    mean = b.op("reduce_mean", x, axes=axes, keepdims=True)
    xc = b.sub(x, mean)
    var = b.op("reduce_mean", b.mul(xc, xc), axes=axes, keepdims=True)
    rstd = b.op("sqrt", b.op("reciprocal", b.add(var, eps)))
    return b.mul(xc, rstd), rstd


def _normalize_backward(b: Builder, dxhat: Value, xhat: Value, rstd: Value, axes: tuple) -> Value:
    """dx from dx̂ for x̂ = (x - mean) / σ over `axes`."""
    m1 = b.op("reduce_mean", dxhat, axes=axes, keepdims=True)
    m2 = b.op("reduce_mean", b.mul(dxhat, xhat), axes=axes, keepdims=True)
    return b.mul(rstd, b.sub(b.sub(dxhat, m1), b.mul(xhat, m2)))


def _layer_norm(b: Builder, op: Op, cts: list) -> list:
    x, scale = op.inputs[:2]
    ct = cts[0]
    axis = op.attrs["axis"]
    axes = tuple(range(axis, len(x.shape)))
    xhat, rstd = _normalized(b, x, axes, op.attrs["epsilon"])
    lead = list(range(axis))
    grads = [_normalize_backward(b, b.mul(ct, scale), xhat, rstd, axes),
             b.reduce_sum(b.mul(ct, xhat), lead)]
    if len(op.inputs) == 3:
        grads.append(b.reduce_sum(ct, lead))
    return grads


def _per_channel(b: Builder, v: Value, rank: int) -> Value:
    return b.reshape(v, (v.shape[0],) + (1,) * (rank - 2))


def _batch_norm(b: Builder, op: Op, cts: list) -> list:
    x, scale, _, mean, var = op.inputs
    ct = cts[0]
    rank = len(x.shape)
    rest = [0] + list(range(2, rank))
    rstd = b.op("reciprocal", b.op("sqrt", b.add(var, op.attrs["epsilon"])))
    xc = b.sub(x, _per_channel(b, mean, rank))
    ct_sum = b.reduce_sum(ct, rest)
    ct_xc = b.reduce_sum(b.mul(ct, xc), rest)
    dx = b.mul(ct, _per_channel(b, b.mul(scale, rstd), rank))
    dscale = b.mul(ct_xc, rstd)
    dmean = b.neg(b.mul(ct_sum, b.mul(scale, rstd)))
    rstd3 = b.mul(rstd, b.mul(rstd, rstd))
    dvar = b.mul(b.mul(ct_xc, b.mul(scale, rstd3)), -0.5)
    return [dx, dscale, ct_sum, dmean, dvar]


def _instance_norm(b: Builder, op: Op, cts: list) -> list:
    x, scale, _ = op.inputs
    ct = cts[0]
    rank = len(x.shape)
    axes = tuple(range(2, rank))
    xhat, rstd = _normalized(b, x, axes, op.attrs["epsilon"])
    dx = _normalize_backward(b, b.mul(ct, _per_channel(b, scale, rank)), xhat, rstd, axes)
    rest = [0] + list(axes)
    return [dx, b.reduce_sum(b.mul(ct, xhat), rest), b.reduce_sum(ct, rest)]


def _channel_window_sum(b: Builder, v: Value, before: int, after: int) -> Value:
    """out[:, c] = sum of v[:, c - before .. c + after] (zeros outside), along axis 1."""
    rank = len(v.shape)
    padded = b.op("pad", v, pads=(0, before) + (0,) * (rank - 2) + (0, after) + (0,) * (rank - 2),
                  mode="constant", value=0.0)
    out = None
    for o in range(before + after + 1):
        starts = (0, o) + (0,) * (rank - 2)
        stops = (v.shape[0], D.add(v.shape[1], o)) + v.shape[2:]
        part = b.op("slice", padded, starts=starts, stops=stops, steps=(1,) * rank)
        out = part if out is None else b.add(out, part)
    return out


def _lrn(b: Builder, op: Op, cts: list) -> list:
    # y = x * D^-beta with D = bias + alpha/size * (window sum of x² over channels)
    x, ct = op.inputs[0], cts[0]
    size, alpha, beta, bias = (op.attrs[k] for k in ("size", "alpha", "beta", "bias"))
    lo, hi = (size - 1) // 2, size // 2  # floor((size-1)/2) before, ceil((size-1)/2) after
    den = b.add(b.mul(_channel_window_sum(b, b.mul(x, x), lo, hi), alpha / size), bias)
    scale = b.op("pow", den, b.const(-beta, x.dtype))
    t = b.div(b.mul(b.mul(ct, x), scale), den)
    back = _channel_window_sum(b, t, hi, lo)
    return [b.sub(b.mul(ct, scale), b.mul(b.mul(x, back), 2.0 * alpha * beta / size))]


RULES = {
    "conv": _conv, "conv_transpose": _conv_transpose, "max_pool": _max_pool, "avg_pool": _avg_pool,
    "global_avg_pool": _global_avg_pool, "global_max_pool": _global_max_pool, "softmax": _softmax,
    "log_softmax": _log_softmax, "layer_norm": _layer_norm, "batch_norm": _batch_norm,
    "instance_norm": _instance_norm, "lrn": _lrn,
}
register_rules(RULES)
