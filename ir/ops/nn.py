"""Neural-network ops: N-d convolution and pooling (1, 2 or 3 spatial dims, NC+spatial layout),
normalizations and softmax. Kernels live in `runtime.kernels.nn` with ONNX semantics.
"""

from __future__ import annotations

from runtime import dims as D

from ..errors import TypeRuleError
from ..registry import register
from ..types import TensorType
from .rules import conv_out_dim, norm_axis, require_kind, same_dtype


def _spatial(t: TensorType, what: str) -> int:
    nd = t.rank - 2
    if nd not in (1, 2, 3):
        raise TypeRuleError(f"{what} needs 1-3 spatial dims (rank 3-5), got {t}")
    return nd


def _check_window(nd: int, attrs, kernel) -> None:
    for name, n in (("strides", nd), ("pads", 2 * nd), ("dilations", nd)):
        if name in attrs and len(attrs[name]) != n:
            raise TypeRuleError(f"{name} must have {n} entries, got {attrs[name]}")
    if len(kernel) != nd or any(k < 1 for k in kernel):
        raise TypeRuleError(f"kernel shape {kernel} invalid for {nd} spatial dims")
    if any(s < 1 for s in attrs.get("strides", ())) or any(d < 1 for d in attrs.get("dilations", ())):
        raise TypeRuleError("strides and dilations must be >= 1")


def _window_out(t, nd, kernel, attrs, ceil_mode=False):
    strides, pads = attrs["strides"], attrs["pads"]
    dil = attrs.get("dilations", (1,) * nd)
    return tuple(conv_out_dim(t.shape[2 + i], kernel[i], strides[i], pads[i], pads[nd + i], dil[i], ceil_mode)
                 for i in range(nd))


def _conv(ts, attrs, regions):
    x, w = ts[0], ts[1]
    dt = same_dtype(ts)
    require_kind(x, "f")
    nd = _spatial(x, "conv")
    if w.rank != x.rank:
        raise TypeRuleError(f"conv weight {w} must have the rank of the input {x}")
    kernel = w.shape[2:]
    if not all(isinstance(k, int) for k in kernel):
        raise TypeRuleError(f"conv kernel dims must be static, got {w}")
    _check_window(nd, attrs, kernel)
    g = attrs["group"]
    if x.shape[1] != D.mul(w.shape[1], g):
        raise TypeRuleError(f"conv: input channels {x.shape[1]} != weight {w.shape[1]} x group {g}")
    if len(ts) == 3 and ts[2].shape != (w.shape[0],):
        raise TypeRuleError(f"conv bias {ts[2]} must have shape ({w.shape[0]},)")
    return [TensorType(dt, (x.shape[0], w.shape[0]) + _window_out(x, nd, kernel, attrs))]


def _conv_transpose(ts, attrs, regions):
    x, w = ts[0], ts[1]
    dt = same_dtype(ts)
    require_kind(x, "f")
    nd = _spatial(x, "conv_transpose")
    kernel = w.shape[2:]
    _check_window(nd, attrs, kernel)
    g, s, p, d, op = attrs["group"], attrs["strides"], attrs["pads"], attrs["dilations"], attrs["output_padding"]
    if x.shape[1] != w.shape[0]:
        raise TypeRuleError(f"conv_transpose: input channels {x.shape[1]} != weight dim 0 {w.shape[0]}")
    spatial = tuple(
        D.add(D.mul(D.sub(x.shape[2 + i], 1), s[i]), op[i] + (kernel[i] - 1) * d[i] + 1 - p[i] - p[nd + i])
        for i in range(nd))
    return [TensorType(dt, (x.shape[0], D.mul(w.shape[1], g)) + spatial)]


def _pool(ts, attrs, regions):
    x = ts[0]
    require_kind(x, "fiu")
    nd = _spatial(x, "pool")
    kernel = attrs["kernel_shape"]
    _check_window(nd, attrs, kernel)
    return [TensorType(x.dtype, x.shape[:2] + _window_out(x, nd, kernel, attrs, attrs["ceil_mode"]))]


def _global_pool(ts, attrs, regions):
    x = ts[0]
    _spatial(x, "global pool")
    return [TensorType(x.dtype, x.shape[:2] + (1,) * (x.rank - 2))]


def _softmax(ts, attrs, regions):
    require_kind(ts[0], "f")
    if not 0 <= attrs["axis"] < ts[0].rank:
        raise TypeRuleError(f"axis {attrs['axis']} out of range for {ts[0]}")
    return [ts[0]]


def _layer_norm(ts, attrs, regions):
    x = ts[0]
    same_dtype(ts)
    require_kind(x, "f")
    axis = norm_axis(attrs["axis"], x.rank)
    if axis != attrs["axis"]:
        raise TypeRuleError(f"layer_norm axis must be normalized, got {attrs['axis']}")
    for t in ts[1:]:
        if t.shape != x.shape[axis:]:
            raise TypeRuleError(f"layer_norm scale/bias {t} must have shape {x.shape[axis:]}")
    return [x]


def _channel_norm(ts, attrs, regions):
    x = ts[0]
    same_dtype(ts)
    require_kind(x, "f")
    if x.rank < 2:
        raise TypeRuleError(f"normalization input must have rank >= 2, got {x}")
    for t in ts[1:]:
        if t.shape != (x.shape[1],):
            raise TypeRuleError(f"per-channel parameter {t} must have shape ({x.shape[1]},)")
    return [x]


def _lrn(ts, attrs, regions):
    require_kind(ts[0], "f")
    return [ts[0]]


WINDOW = {"strides": "ints", "pads": "ints", "dilations": "ints"}
register("conv", _conv, arity=(2, 3), attrs={**WINDOW, "group": "int"})
register("conv_transpose", _conv_transpose, arity=(2, 3),
         attrs={**WINDOW, "group": "int", "output_padding": "ints"})
register("max_pool", _pool, attrs={**WINDOW, "kernel_shape": "ints", "ceil_mode": "bool"})
register("avg_pool", _pool, attrs={"strides": "ints", "pads": "ints", "kernel_shape": "ints",
                                   "ceil_mode": "bool", "count_include_pad": "bool"})
register("global_avg_pool", _global_pool)
register("global_max_pool", _global_pool)
register("softmax", _softmax, attrs={"axis": "int"})
register("log_softmax", _softmax, attrs={"axis": "int"})
register("layer_norm", _layer_norm, arity=(2, 3), attrs={"axis": "int", "epsilon": "float"})
register("batch_norm", _channel_norm, arity=(5, 5), attrs={"epsilon": "float"})
register("instance_norm", _channel_norm, arity=(3, 3), attrs={"epsilon": "float"})
register("lrn", _lrn, attrs={"size": "int", "alpha": "float", "beta": "float", "bias": "float"})
