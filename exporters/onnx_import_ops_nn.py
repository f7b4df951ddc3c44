"""ONNX → IR translations of the neural-network ops: convolution, pooling, normalization, softmax.

Why the pad arithmetic: ONNX lets `auto_pad` (SAME_UPPER, SAME_LOWER, VALID) and ConvTranspose's
`output_shape` imply the pads, while IR ops carry explicit pads; they are computed here from the
static spatial dims. Softmax before opset 13 flattens to 2-D at `axis` (the legacy semantics),
and BatchNormalization's training outputs and `is_test`/`spatial`/`consumed_inputs` are legacy
attributes that inference ignores.
"""

from __future__ import annotations

import numpy as np

from runtime import dims as D

from .errors import UnsupportedOpError
from .onnx_import import dtype_of, shape_of


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _window(b, x, attrs, kernel, dilations=None):
    shape = shape_of(x)
    nd = len(shape) - 2
    strides = list(attrs.get("strides", [1] * nd))
    dil = list(dilations or [1] * nd)
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    auto = _s(attrs.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            size = shape[2 + i]
            if not isinstance(size, int):
                raise UnsupportedOpError(f"{b.where()}: auto_pad {auto} on symbolic dim {size!r}")
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[nd + i] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    return tuple(strides), tuple(pads), tuple(dil)


def conv(b, ins, attrs, n_out):
    x, w = ins[0], ins[1]
    kernel = [int(k) for k in shape_of(w)[2:]]
    dil = attrs.get("dilations")
    strides, pads, dil = _window(b, x, attrs, kernel, dil)
    args = [x, w] + ([ins[2]] if len(ins) > 2 and ins[2] is not None else [])
    return [b.op("conv", args, strides=strides, pads=pads, dilations=dil, group=int(attrs.get("group", 1)))]


def conv_transpose(b, ins, attrs, n_out):
    x, w = ins[0], ins[1]
    shape = shape_of(x)
    nd = len(shape) - 2
    kernel = [int(k) for k in shape_of(w)[2:]]
    strides = tuple(attrs.get("strides", [1] * nd))
    dil = tuple(attrs.get("dilations", [1] * nd))
    out_pad = list(attrs.get("output_padding", [0] * nd))
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    auto = _s(attrs.get("auto_pad", "NOTSET"))
    if "output_shape" in attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        want = list(attrs["output_shape"])[-nd:] if "output_shape" in attrs else [
            shape[2 + i] * strides[i] for i in range(nd)]
        for i in range(nd):
            total = strides[i] * (shape[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] + 1 - want[i]
            if total < 0:
                out_pad[i] -= total
                total = 0
            first, second = total // 2, total - total // 2
            pads[i], pads[nd + i] = (first, second) if auto == "SAME_UPPER" else (second, first)
    args = [x, w] + ([ins[2]] if len(ins) > 2 and ins[2] is not None else [])
    return [b.op("conv_transpose", args, strides=strides, pads=tuple(pads), dilations=dil,
                 group=int(attrs.get("group", 1)), output_padding=tuple(out_pad))]


def max_pool(b, ins, attrs, n_out):
    if n_out > 1:
        raise UnsupportedOpError(f"{b.where()}: MaxPool's Indices output is not supported")
    kernel = list(attrs["kernel_shape"])
    strides, pads, dil = _window(b, ins[0], attrs, kernel, attrs.get("dilations"))
    if attrs.get("storage_order", 0):
        raise UnsupportedOpError(f"{b.where()}: MaxPool storage_order=1 is not supported")
    return [b.op("max_pool", ins[:1], kernel_shape=tuple(kernel), strides=strides, pads=pads, dilations=dil,
                 ceil_mode=bool(attrs.get("ceil_mode", 0)))]


def avg_pool(b, ins, attrs, n_out):
    kernel = list(attrs["kernel_shape"])
    strides, pads, dil = _window(b, ins[0], attrs, kernel, attrs.get("dilations"))
    if any(d != 1 for d in dil):
        raise UnsupportedOpError(f"{b.where()}: AveragePool with dilations {list(dil)}")
    return [b.op("avg_pool", ins[:1], kernel_shape=tuple(kernel), strides=strides, pads=pads,
                 ceil_mode=bool(attrs.get("ceil_mode", 0)), count_include_pad=bool(attrs.get("count_include_pad", 0)))]


def _plain(kind):
    def imp(b, ins, attrs, n_out):
        return [b.op(kind, ins[:1])]
    return imp


def _softmax(kind):
    def imp(b, ins, attrs, n_out):
        x = ins[0]
        shape = shape_of(x)
        rank = len(shape)
        if b.opset >= 13:
            return [b.op(kind, [x], axis=attrs.get("axis", -1) % rank)]
        axis = attrs.get("axis", 1) % rank if rank else 0
        if axis == rank - 1:
            return [b.op(kind, [x], axis=axis)]
        flat = b.reshape(x, (D.product(shape[:axis]), D.product(shape[axis:])))  # legacy: flatten to 2-D
        return [b.reshape(b.op(kind, [flat], axis=1), shape)]
    return imp


def batch_norm(b, ins, attrs, n_out):
    if not attrs.get("is_test", 1) and b.opset < 7 and n_out > 1:
        raise UnsupportedOpError(f"{b.where()}: BatchNormalization in training mode")
    if attrs.get("training_mode", 0):
        raise UnsupportedOpError(f"{b.where()}: BatchNormalization in training mode")
    if attrs.get("spatial", 1) == 0:
        raise UnsupportedOpError(f"{b.where()}: BatchNormalization with spatial=0")
    y = b.op("batch_norm", ins[:5], epsilon=float(attrs.get("epsilon", 1e-5)))
    return [y] + [None] * (n_out - 1)


def instance_norm(b, ins, attrs, n_out):
    return [b.op("instance_norm", ins[:3], epsilon=float(attrs.get("epsilon", 1e-5)))]


def layer_norm(b, ins, attrs, n_out):
    x = ins[0]
    rank = len(shape_of(x))
    axis = attrs.get("axis", -1) % rank
    if n_out > 1:
        raise UnsupportedOpError(f"{b.where()}: LayerNormalization's Mean/InvStdDev outputs are not supported")
    args = [a for a in ins[:3] if a is not None]
    return [b.op("layer_norm", args, axis=axis, epsilon=float(attrs.get("epsilon", 1e-5)))]


def lrn(b, ins, attrs, n_out):
    return [b.op("lrn", ins[:1], size=int(attrs["size"]), alpha=float(attrs.get("alpha", 1e-4)),
                 beta=float(attrs.get("beta", 0.75)), bias=float(attrs.get("bias", 1.0)))]


def one_hot(b, ins, attrs, n_out):
    idx, depth, values = ins
    from .onnx_import import static

    d, v = static(depth), static(values)
    if d is None or v is None:
        raise UnsupportedOpError(f"{b.where()}: OneHot depth and values must be constant")
    hot = b.op("one_hot", [idx], depth=int(d.reshape(-1)[0]), axis=int(attrs.get("axis", -1)), dtype=np.dtype(bool))
    off, on = v.reshape(-1)[:2]
    return [b.op("where", [hot, np.asarray(on, dtype_of(values)), np.asarray(off, dtype_of(values))])]


IMPORTERS = {
    "Conv": conv, "ConvTranspose": conv_transpose, "MaxPool": max_pool, "AveragePool": avg_pool,
    "GlobalAveragePool": _plain("global_avg_pool"), "GlobalMaxPool": _plain("global_max_pool"),
    "Softmax": _softmax("softmax"), "LogSoftmax": _softmax("log_softmax"), "BatchNormalization": batch_norm,
    "InstanceNormalization": instance_norm, "LayerNormalization": layer_norm, "LRN": lrn, "OneHot": one_hot,
}
