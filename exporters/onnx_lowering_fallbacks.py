"""Rewrites for ONNX nodes the export target has no kernel for (from the capability table).

Why two strategies: for integer, bool and float16 inputs a wider dtype the target supports gives
the very same result after casting back (wrap-around of integer arithmetic included, because
ONNX Cast to a narrower integer keeps the low bits); for float64 there is nothing wider, so the
op is decomposed into ops the target runs in float64. Anything else raises `ExportError`
naming the op, dtype and source line, so no exported model fails to load.
"""

from __future__ import annotations

import numpy as np

from .onnx_export import Emitter

WIDER = {
    "bool": ("uint8", "int32", "int64"), "int8": ("int32", "int64"), "int16": ("int32", "int64"),
    "uint8": ("int32", "uint32", "int64"), "uint16": ("int32", "uint32", "int64"), "uint32": ("int64", "uint64"),
    "int32": ("int64",), "float16": ("float32",),
}
# ops whose result is the same when computed in a wider dtype and cast back (or not cast: bool results)
WIDENABLE = {"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Max", "Min", "Sum", "Relu", "MatMul", "Einsum",
             "CumSum", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "Sign", "Equal", "Less", "Greater",
             "LessOrEqual", "GreaterOrEqual", "Where", "ArgMax", "ArgMin", "IsInf", "IsNaN", "Pow", "Range",
             "NonZero", "MaxPool", "Concat", "DepthToSpace", "SpaceToDepth", "Pad", "PRelu", "OneHot", "Erf",
             "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Floor", "Ceil", "Round", "Softmax", "LogSoftmax"}
WIDEN_BACK_EXEMPT = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "ArgMax", "ArgMin", "IsInf",
                     "IsNaN", "NonZero"}


def rewrite(cx: Emitter, op_type: str, key: str, inputs: list[str], outs: list[str], in_dt: np.dtype,
            out_dt: np.dtype, key_input: int, attrs: dict) -> list[str]:
    """Emit an equivalent of the node `op_type(inputs) -> outs` that the target supports.

    >>> "Add" in WIDENABLE and "Elu" in DECOMPOSITIONS
    True
    """
    if op_type in WIDENABLE and len(outs) == 1:
        for wide in WIDER.get(in_dt.name, ()):
            if cx.caps.supports(key, wide, cx.opset):
                skip = {0} if op_type == "Where" else set()
                wide_ins = [cx.cast(x, wide) if (i not in skip and x and cx.dtypes.get(x) == in_dt) else x
                            for i, x in enumerate(inputs)]
                if op_type in WIDEN_BACK_EXEMPT or out_dt != in_dt:
                    return [cx.node(op_type, wide_ins, outs[0], dtype=out_dt, key=key, key_input=key_input, **attrs)]
                r = cx.node(op_type, wide_ins, dtype=wide, key=key, key_input=key_input, **attrs)
                return [cx.cast(r, in_dt, outs[0])]
    fn = DECOMPOSITIONS.get(op_type)
    if fn is not None and len(outs) == 1:
        got = fn(cx, inputs, outs[0], attrs)
        if got is not None:
            return [got]
    raise cx.unsupported(key, in_dt)


def _s(cx, v, like):
    return cx.scalar(v, like)


def _pos(cx, x):
    return cx.node("Max", [x, _s(cx, 0.0, x)])


def _neg_part(cx, x):
    return cx.node("Min", [x, _s(cx, 0.0, x)])


def _expm1_neg(cx, x, inner=1.0):
    """exp(min(x, 0) * inner) - 1."""
    m = _neg_part(cx, x)
    if inner != 1.0:
        m = cx.node("Mul", [m, _s(cx, inner, x)])
    return cx.node("Sub", [cx.node("Exp", [m]), _s(cx, 1.0, x)])


def _elu(cx, ins, out, a):
    x = ins[0]
    alpha = a.get("alpha", 1.0)
    return cx.node("Add", [_pos(cx, x), cx.node("Mul", [_expm1_neg(cx, x), _s(cx, alpha, x)])], out)


def _celu(cx, ins, out, a):
    x = ins[0]
    alpha = a.get("alpha", 1.0)
    neg = cx.node("Mul", [_expm1_neg(cx, x, 1.0 / alpha), _s(cx, alpha, x)])
    return cx.node("Add", [_pos(cx, x), neg], out)


def _selu(cx, ins, out, a):
    x = ins[0]
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    inner = cx.node("Add", [_pos(cx, x), cx.node("Mul", [_expm1_neg(cx, x), _s(cx, alpha, x)])])
    return cx.node("Mul", [inner, _s(cx, gamma, x)], out)


def _leaky(cx, ins, out, a):
    x = ins[0]
    return cx.node("Add", [_pos(cx, x), cx.node("Mul", [_neg_part(cx, x), _s(cx, a.get("alpha", 0.01), x)])], out)


def _prelu(cx, ins, out, a):
    x, slope = ins
    zero = _s(cx, 0, x)
    return cx.node("Where", [cx.node("Less", [x, zero], dtype=np.bool_), cx.node("Mul", [x, slope]), x], out,
                   key_input=1)


def _thresholded(cx, ins, out, a):
    x = ins[0]
    keep = cx.node("Greater", [x, _s(cx, a.get("alpha", 1.0), x)], dtype=np.bool_)
    return cx.node("Where", [keep, x, _s(cx, 0.0, x)], out, key_input=1)


def _hard_sigmoid(cx, ins, out, a):
    x = ins[0]
    y = cx.node("Add", [cx.node("Mul", [x, _s(cx, a.get("alpha", 0.2), x)]), _s(cx, a.get("beta", 0.5), x)])
    return cx.node("Max", [cx.node("Min", [y, _s(cx, 1.0, x)]), _s(cx, 0.0, x)], out)


def _hard_swish(cx, ins, out, a):
    return cx.node("Mul", [ins[0], _hard_sigmoid(cx, ins, None, {"alpha": 1.0 / 6.0, "beta": 0.5})], out)


def _softplus(cx, ins, out, a):
    x = ins[0]
    tail = cx.node("Log", [cx.node("Add", [_s(cx, 1.0, x), cx.node("Exp", [cx.node("Neg", [cx.node("Abs", [x])])])])])
    return cx.node("Add", [_pos(cx, x), tail], out)


def _softsign(cx, ins, out, a):
    x = ins[0]
    return cx.node("Div", [x, cx.node("Add", [_s(cx, 1.0, x), cx.node("Abs", [x])])], out)


def _sinh(cx, ins, out, a):
    x = ins[0]
    d = cx.node("Sub", [cx.node("Exp", [x]), cx.node("Exp", [cx.node("Neg", [x])])])
    return cx.node("Mul", [d, _s(cx, 0.5, x)], out)


def _cosh(cx, ins, out, a):
    x = ins[0]
    d = cx.node("Add", [cx.node("Exp", [x]), cx.node("Exp", [cx.node("Neg", [x])])])
    return cx.node("Mul", [d, _s(cx, 0.5, x)], out)


def _tan(cx, ins, out, a):
    return cx.node("Div", [cx.node("Sin", ins), cx.node("Cos", ins)], out)


def _asinh(cx, ins, out, a):
    x = ins[0]
    ax = cx.node("Abs", [x])
    r = cx.node("Log", [cx.node("Add", [ax, cx.node("Sqrt", [cx.node("Add", [cx.node("Mul", [x, x]),
                                                                            _s(cx, 1.0, x)])])])])
    return cx.node("Mul", [cx.node("Sign", [x]), r], out)


def _acosh(cx, ins, out, a):
    x = ins[0]
    root = cx.node("Sqrt", [cx.node("Sub", [cx.node("Mul", [x, x]), _s(cx, 1.0, x)])])
    return cx.node("Log", [cx.node("Add", [x, root])], out)


def _atanh(cx, ins, out, a):
    x = ins[0]
    ratio = cx.node("Div", [cx.node("Add", [_s(cx, 1.0, x), x]), cx.node("Sub", [_s(cx, 1.0, x), x])])
    return cx.node("Mul", [cx.node("Log", [ratio]), _s(cx, 0.5, x)], out)


def _global_pool(onnx_reduce):
    def fn(cx, ins, out, a):
        from .onnx_lowering_reduce import reduce_node

        rank = cx.op.inputs[0].type.rank if cx.op is not None else None
        if rank is None:
            return None
        return reduce_node(cx, onnx_reduce, ins[0], list(range(2, rank)), True, out)
    return fn


def _instance_norm(cx, ins, out, a):
    from .onnx_lowering_reduce import reduce_node

    x, scale, bias = ins
    rank = cx.op.inputs[0].type.rank
    axes = list(range(2, rank))
    d = cx.node("Sub", [x, reduce_node(cx, "ReduceMean", x, axes, True)])
    var = reduce_node(cx, "ReduceMean", cx.node("Mul", [d, d]), axes, True)
    y = cx.node("Div", [d, cx.node("Sqrt", [cx.node("Add", [var, _s(cx, a.get("epsilon", 1e-5), x)])])])
    per_channel = cx.const(np.array([-1] + [1] * (rank - 2), np.int64))
    y = cx.node("Mul", [y, cx.node("Reshape", [scale, per_channel])])
    return cx.node("Add", [y, cx.node("Reshape", [bias, per_channel])], out)


DECOMPOSITIONS = {
    "Elu": _elu, "Celu": _celu, "Selu": _selu, "LeakyRelu": _leaky, "PRelu": _prelu, "ThresholdedRelu": _thresholded,
    "HardSigmoid": _hard_sigmoid, "HardSwish": _hard_swish, "Softplus": _softplus, "Softsign": _softsign,
    "Sinh": _sinh, "Cosh": _cosh, "Tan": _tan, "Asinh": _asinh, "Acosh": _acosh, "Atanh": _atanh,
    "GlobalAveragePool": _global_pool("ReduceMean"), "GlobalMaxPool": _global_pool("ReduceMax"),
    "InstanceNormalization": _instance_norm,
}


def _register_float64() -> None:
    from .onnx_lowering_float64 import DECOMPOSITIONS as FLOAT64

    for key, fn in FLOAT64.items():
        DECOMPOSITIONS.setdefault(key, fn)


_register_float64()
