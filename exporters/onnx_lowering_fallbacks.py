"""Rewrites for ONNX nodes the export target has no kernel for (from the capability table).

Why two strategies: for integer, bool and float16 inputs a wider dtype the target supports gives
the very same result after casting back (wrap-around of integer arithmetic included, because
ONNX Cast to a narrower integer keeps the low bits); for float64 there is nothing wider, so the
op is decomposed into ops the target runs in float64. Anything else raises `ExportError`
naming the op, dtype and source line, so no exported model fails to load.
"""

from __future__ import annotations

import math

import numpy as np

from .onnx_export import Emitter
from .onnx_lowering_float64 import _horner, with_sign_of

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
# power series for float64 near 0 (`_sinh`, `_expm1_neg`): the first term left out is < eps/8
SINH_SERIES = [1.0 / math.factorial(2 * k + 1) for k in range(9)]  # sinh(x)/x in x*x, for |x| < 1
EXPM1_SERIES = [1.0 / math.factorial(k + 1) for k in range(15)]  # expm1(x)/x in x, for |x| < 1/2


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
    """exp(min(x, 0) * inner) - 1; a power series above -1/2, where exp(m) - 1 would cancel
    (elu(-1e-12) kept only 4 digits)."""
    m = _neg_part(cx, x)
    if inner != 1.0:
        m = cx.node("Mul", [m, _s(cx, inner, x)])
    near = cx.node("Mul", [m, _horner(cx, EXPM1_SERIES, m)])
    far = cx.node("Sub", [cx.node("Exp", [m]), _s(cx, 1.0, x)])
    return cx.node("Where", [cx.node("Greater", [m, _s(cx, -0.5, x)], dtype=np.bool_), near, far], key_input=1)


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
    tail = _log1p(cx, cx.node("Exp", [cx.node("Neg", [cx.node("Abs", [x])])]))  # (log(1 + e^x) is 0 below -37)
    return cx.node("Add", [_pos(cx, x), tail], out)


def _softsign(cx, ins, out, a):
    x = ins[0]
    return cx.node("Div", [x, cx.node("Add", [_s(cx, 1.0, x), cx.node("Abs", [x])])], out)


# --- hyperbolic functions (float64 on onnxruntime: no kernels) --------------------------------------
# Why not the textbook formulas (asinh = log(x + sqrt(x*x + 1)), sinh = (e^x - e^-x)/2, ...):
# x*x overflows for |x| > 1e154 and 1 + tiny rounds to 1, so they lose every digit at the ends
# of the range, far outside DESIGN.md's float64 tolerance. These follow the forms libm uses:
# log1p by Kahan's correction (`_log1p`), power series near 0, log(2|x|) asymptotics far out,
# each branch picked by Where. The sign of odd functions comes last, as in `_erf`.


def _far(cx, x: str) -> float:
    """|x| above which log(2|x|) is asinh/acosh to within float rounding (1/(4x^2) < eps)."""
    return float(2.0 / np.sqrt(np.finfo(cx.dtypes[x]).eps))


def _log1p(cx, y):
    """log(1 + y), accurate for tiny y: log(u) * y / (u - 1) with u = 1 + y corrects the rounding
    of u (Goldberg, "What every computer scientist should know...", thm. 4); y itself where u
    rounds to 1, and +inf for +inf."""
    one = _s(cx, 1.0, y)
    u = cx.node("Add", [one, y])
    d = cx.node("Sub", [u, one])
    r = cx.node("Mul", [cx.node("Log", [u]), cx.node("Div", [y, d])])
    r = cx.node("Where", [cx.node("Equal", [d, _s(cx, 0.0, y)], dtype=np.bool_), y, r], key_input=1)
    return cx.node("Where", [cx.node("Equal", [u, _s(cx, np.inf, y)], dtype=np.bool_), u, r], key_input=1)


def _half_exp(cx, a):
    """(exp(a/2), 0.5 * exp(a/2)): e^a / 2 = first * second stays finite wherever it is."""
    e = cx.node("Exp", [cx.node("Mul", [a, _s(cx, 0.5, a)])])
    return e, cx.node("Mul", [e, _s(cx, 0.5, a)])


def _sinh(cx, ins, out, a):
    x = ins[0]
    ax = cx.node("Abs", [x])
    near = cx.node("Mul", [ax, _horner(cx, SINH_SERIES, cx.node("Mul", [ax, ax]))])
    e, h = _half_exp(cx, ax)
    far = cx.node("Sub", [cx.node("Mul", [e, h]), cx.node("Div", [cx.node("Div", [_s(cx, 0.5, x), e]), e])])
    mag = cx.node("Where", [cx.node("Less", [ax, _s(cx, 1.0, x)], dtype=np.bool_), near, far], key_input=1)
    return with_sign_of(cx, x, mag, out)


def _cosh(cx, ins, out, a):
    x = ins[0]
    e, h = _half_exp(cx, cx.node("Abs", [x]))
    return cx.node("Add", [cx.node("Mul", [e, h]), cx.node("Div", [cx.node("Div", [_s(cx, 0.5, x), e]), e])], out)


def _tan(cx, ins, out, a):
    return cx.node("Div", [cx.node("Sin", ins), cx.node("Cos", ins)], out)


def _log_twice(cx, ax):
    """log(2|x|) = log|x| + log 2, the far branch of asinh and acosh (no overflow at 1e308)."""
    return cx.node("Add", [cx.node("Log", [ax]), _s(cx, math.log(2.0), ax)])


def _asinh(cx, ins, out, a):
    """asinh|x| = log1p(|x| + x^2 / (1 + sqrt(1 + x^2))) up to `_far`, log(2|x|) beyond."""
    x = ins[0]
    ax = cx.node("Abs", [x])
    one = _s(cx, 1.0, x)
    sq = cx.node("Mul", [ax, ax])
    y = cx.node("Add", [ax, cx.node("Div", [sq, cx.node("Add", [one, cx.node("Sqrt", [cx.node("Add", [one, sq])])])])])
    far = cx.node("Greater", [ax, _s(cx, _far(cx, x), x)], dtype=np.bool_)
    mag = cx.node("Where", [far, _log_twice(cx, ax), _log1p(cx, y)], key_input=1)
    return with_sign_of(cx, x, mag, out)


def _acosh(cx, ins, out, a):
    """acosh x = log1p(t + sqrt(2t + t^2)) with t = x - 1 (exact near 1) up to `_far`, log(2x)
    beyond, NaN below 1."""
    x = ins[0]
    t = cx.node("Sub", [x, _s(cx, 1.0, x)])
    root = cx.node("Sqrt", [cx.node("Mul", [t, cx.node("Add", [t, _s(cx, 2.0, x)])])])
    near = _log1p(cx, cx.node("Add", [t, root]))
    r = cx.node("Where", [cx.node("Greater", [x, _s(cx, _far(cx, x), x)], dtype=np.bool_), _log_twice(cx, x), near],
                key_input=1)
    return cx.node("Where", [cx.node("Less", [x, _s(cx, 1.0, x)], dtype=np.bool_), _s(cx, np.nan, x), r], out,
                   key_input=1)


def _atanh(cx, ins, out, a):
    """atanh|x| = log1p(2|x| / (1 - |x|)) / 2 (1 - |x| is exact where it matters, near 1)."""
    x = ins[0]
    ax = cx.node("Abs", [x])
    y = cx.node("Div", [cx.node("Add", [ax, ax]), cx.node("Sub", [_s(cx, 1.0, x), ax])])
    return with_sign_of(cx, x, cx.node("Mul", [_log1p(cx, y), _s(cx, 0.5, x)]), out)


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
