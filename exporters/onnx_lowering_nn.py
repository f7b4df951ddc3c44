"""ONNX lowerings of the neural-network ops (convolution, pooling, normalization, softmax).

Why so thin: the IR's NN ops were modeled on ONNX's (NC+spatial layout, explicit pads), so each
is one node; only LayerNormalization (opset 17) needs a decomposition for older opsets, and the
target's missing float64 kernels are handled by `onnx_lowering_fallbacks`.
"""

from __future__ import annotations

from .onnx_lowering_reduce import reduce_node


def conv(cx, op, ins, outs):
    a = op.attrs
    cx.node("Conv", ins, outs[0], kernel_shape=list(op.inputs[1].shape[2:]), strides=list(a["strides"]),
            pads=list(a["pads"]), dilations=list(a["dilations"]), group=a["group"])


def conv_transpose(cx, op, ins, outs):
    a = op.attrs
    cx.node("ConvTranspose", ins, outs[0], kernel_shape=list(op.inputs[1].shape[2:]), strides=list(a["strides"]),
            pads=list(a["pads"]), dilations=list(a["dilations"]), group=a["group"],
            output_padding=list(a["output_padding"]))


def max_pool(cx, op, ins, outs):
    a = op.attrs
    cx.node("MaxPool", ins, outs[0], kernel_shape=list(a["kernel_shape"]), strides=list(a["strides"]),
            pads=list(a["pads"]), dilations=list(a.get("dilations", (1,) * len(a["kernel_shape"]))),
            ceil_mode=int(a["ceil_mode"]))


def avg_pool(cx, op, ins, outs):
    a = op.attrs
    cx.node("AveragePool", ins, outs[0], kernel_shape=list(a["kernel_shape"]), strides=list(a["strides"]),
            pads=list(a["pads"]), ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]))


def _plain(onnx_op):
    def lower(cx, op, ins, outs):
        cx.node(onnx_op, ins, outs[0])
    return lower


def _softmax(onnx_op):
    def lower(cx, op, ins, outs):
        cx.node(onnx_op, ins, outs[0], axis=op.attrs["axis"])
    return lower


def layer_norm(cx, op, ins, outs):
    axis, eps = op.attrs["axis"], op.attrs["epsilon"]
    if cx.opset >= 17:
        cx.node("LayerNormalization", ins, outs[0], axis=axis, epsilon=eps)
        return
    x = ins[0]
    axes = list(range(axis, op.inputs[0].type.rank))
    d = cx.node("Sub", [x, reduce_node(cx, "ReduceMean", x, axes, True)])
    var = reduce_node(cx, "ReduceMean", cx.node("Mul", [d, d]), axes, True)
    y = cx.node("Div", [d, cx.node("Sqrt", [cx.node("Add", [var, cx.scalar(eps, x)])])])
    if len(ins) == 3:
        y = cx.node("Mul", [y, ins[1]])
        cx.node("Add", [y, ins[2]], outs[0])
    else:
        cx.node("Mul", [y, ins[1]], outs[0])


def batch_norm(cx, op, ins, outs):
    cx.node("BatchNormalization", ins, outs[0], epsilon=op.attrs["epsilon"])


def instance_norm(cx, op, ins, outs):
    cx.node("InstanceNormalization", ins, outs[0], epsilon=op.attrs["epsilon"])


def lrn(cx, op, ins, outs):
    a = op.attrs
    cx.node("LRN", ins, outs[0], size=a["size"], alpha=a["alpha"], beta=a["beta"], bias=a["bias"])


LOWERINGS = {
    "conv": conv, "conv_transpose": conv_transpose, "max_pool": max_pool, "avg_pool": avg_pool,
    "global_avg_pool": _plain("GlobalAveragePool"), "global_max_pool": _plain("GlobalMaxPool"),
    "softmax": _softmax("Softmax"), "log_softmax": _softmax("LogSoftmax"), "layer_norm": layer_norm,
    "batch_norm": batch_norm, "instance_norm": instance_norm, "lrn": lrn,
}


def _contrib(cx, op_type: str, variant: str | None, dtype) -> str | None:
    """The capability key of contrib op `op_type` when the target is `onnxruntime-cpu-contrib`
    and its probed table runs it on `dtype`; None otherwise (lower as plain ONNX)."""
    has = getattr(cx.caps, "has_contrib", None)
    if has is None:
        return None
    from .capabilities_contrib import contrib_key

    key = contrib_key(op_type, variant)
    return key if has(key, dtype, cx.opset) else None


def _activation(cx, x: str, act: str, out: str) -> None:
    """Apply a fused op's activation (see `ir.ops.fused.ACTIVATIONS`) to `x`, writing `out`."""
    if act == "none":
        cx.node("Identity", [x], out)
    elif act in ("relu", "sigmoid", "tanh"):
        cx.node({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[act], [x], out)
    else:
        from .capabilities_contrib import DOMAIN, GELUS

        key = _contrib(cx, GELUS[act], None, cx.dtypes[x])
        if key is not None:  # one contrib node instead of the formula (ORT fuses it the same way)
            cx.node(GELUS[act], [x], out, key=key, domain=DOMAIN)
            return
        from .onnx_lowering_elementwise import gelu_names

        gelu_names(cx, x, "tanh" if act == "gelu_tanh" else "none", out)


def _fused_activation(cx, op_type: str, act: str, dtype) -> str | None:
    """The contrib key of `op_type` (FusedConv, FusedGemm) with activation `act`, when usable."""
    from .capabilities_contrib import ACTIVATIONS

    return _contrib(cx, op_type, ACTIVATIONS[act], dtype) if act in ACTIVATIONS else None


def gemm(cx, op, ins, outs):
    # a 2-D float product is ONNX Gemm (one node; runtimes prepack its constant B); a stack of
    # matrices, an integer product or a bias-less Gemm before opset 11 stays MatMul (+ Add)
    # (with no activation the product still ends in an Identity: a lone Gemm node would not be
    # tagged by onnx_groups, and the importer reads Gemm as matmul + add, so export -> import ->
    # export would change the bytes; onnxruntime aliases Identity's output to its input)
    a, act = op.inputs[0], op.attrs["activation"]
    if a.type.rank == 2 and a.dtype.kind == "f" and (len(ins) == 3 or cx.opset >= 11):
        key = _fused_activation(cx, "FusedGemm", act, a.dtype)
        if key is not None:  # onnxruntime-cpu-contrib: product, bias and activation in one node
            from .capabilities_contrib import ACTIVATIONS, DOMAIN

            cx.node("FusedGemm", ins, outs[0], key=key, domain=DOMAIN, activation=ACTIVATIONS[act])
            return
        y = cx.node("Gemm", ins)
    else:
        y = cx.node("MatMul", ins[:2])
        if len(ins) == 3:
            y = cx.node("Add", [y, ins[2]])
    _activation(cx, y, act, outs[0])


def fused_conv(cx, op, ins, outs):
    a, act = op.attrs, op.attrs["activation"]
    conv_attrs = dict(kernel_shape=list(op.inputs[1].shape[2:]), strides=list(a["strides"]), pads=list(a["pads"]),
                      dilations=list(a["dilations"]), group=a["group"])
    key = _fused_activation(cx, "FusedConv", act, op.inputs[0].dtype)
    if key is not None:  # onnxruntime-cpu-contrib: Conv and activation in one MLAS kernel
        from .capabilities_contrib import ACTIVATIONS, DOMAIN

        cx.node("FusedConv", ins, outs[0], key=key, domain=DOMAIN, activation=ACTIVATIONS[act], **conv_attrs)
        return
    _activation(cx, cx.node("Conv", ins, **conv_attrs), act, outs[0])


LOWERINGS.update({"gemm": gemm, "fused_conv": fused_conv})


def fused_elementwise(cx, op, ins, outs):
    """The region's ops inline, its parameters named by the op's inputs: ONNX runtimes fuse
    elementwise chains themselves, so a subgraph would only hide the chain from them."""
    body = op.regions[0]
    for p, name in zip(body.inputs, ins):
        cx.names[id(p)] = name
    params = {id(p) for p in body.inputs}
    direct = {}  # region outputs the last op can write under the op's own output names
    for v, name in zip(body.outputs, outs):
        if id(v) not in params and id(v) not in cx.names and id(v) not in direct:
            direct[id(v)] = name
    cx.names.update(direct)
    saved = cx.op
    cx.lower_ops(body.ops)
    cx.op = saved
    for v, name in zip(body.outputs, outs):
        if cx.names[id(v)] != name:  # a parameter, an outer value, an initializer or a repeated output
            cx.node("Identity", [cx.names[id(v)]], name, dtype=v.dtype)


LOWERINGS["fused_elementwise"] = fused_elementwise
