"""ONNX lowerings of the elementwise ops, keeping NumPy semantics where ONNX differs.

Why not one-to-one everywhere: ONNX `Div` truncates integers and `Mod` needs `fmod=1` for floats,
ONNX `Max` does not promise NaN propagation, `Round` is half-to-even (as `np.rint`, so that one
maps directly), and there are no ops for trunc, exp2, expm1, log1p, atan2, hypot or NumPy's
signed shifts. Each such op is written with ONNX ops whose results equal NumPy's bit for bit
where the inputs are exact (integers) and to within rounding otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from .onnx_export import Emitter, onnx_dtype

SIMPLE_UNARY = {
    "abs": "Abs", "sign": "Sign", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "sin": "Sin", "cos": "Cos",
    "tan": "Tan", "asin": "Asin", "acos": "Acos", "atan": "Atan", "sinh": "Sinh", "cosh": "Cosh",
    "tanh": "Tanh", "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh", "erf": "Erf", "sigmoid": "Sigmoid",
    "softplus": "Softplus", "softsign": "Softsign", "logical_not": "Not", "isnan": "IsNaN", "isinf": "IsInf",
}
ATTR_UNARY = {"selu": "Selu", "elu": "Elu", "celu": "Celu", "leaky_relu": "LeakyRelu", "hard_sigmoid": "HardSigmoid",
              "thresholded_relu": "ThresholdedRelu"}
FLOAT_ROUNDING = {"floor": "Floor", "ceil": "Ceil", "round": "Round"}
SIMPLE_BINARY = {"sub": "Sub", "div": "Div", "pow": "Pow", "equal": "Equal", "less": "Less",
                 "less_equal": "LessOrEqual", "greater": "Greater", "greater_equal": "GreaterOrEqual",
                 "logical_and": "And", "logical_or": "Or", "logical_xor": "Xor"}
BOOL_BINARY = {"add": "Or", "mul": "And", "maximum": "Or", "minimum": "And", "fmax": "Or", "fmin": "And",
               "bitwise_and": "And", "bitwise_or": "Or", "bitwise_xor": "Xor", "equal": "Equal",
               "not_equal": "Xor"}
BITWISE = {"bitwise_and": "BitwiseAnd", "bitwise_or": "BitwiseOr", "bitwise_xor": "BitwiseXor"}


def _is_float(cx: Emitter, name: str) -> bool:
    return cx.dtypes[name].kind == "f"


def _unary(onnx_op):
    def lower(cx, op, ins, outs):
        if onnx_op in ("IsNaN", "IsInf") and not _is_float(cx, ins[0]):  # integers: never nan or inf
            cx.node("Not", [cx.node("Equal", [ins[0], ins[0]], dtype=np.bool_)], outs[0])
            return
        cx.node(onnx_op, ins, outs[0], dtype=op.outputs[0].dtype)
    return lower


def _attr_unary(onnx_op):
    def lower(cx, op, ins, outs):
        attrs = {k: float(v) for k, v in op.attrs.items()}
        if cx.dtypes[ins[0]] == np.float64 and any(float(np.float32(v)) != v for v in attrs.values()):
            # ONNX float attributes are float32: 0.1 would become 0.100000001 in a float64 model
            from .onnx_lowering_fallbacks import DECOMPOSITIONS

            DECOMPOSITIONS[onnx_op](cx, ins, outs[0], attrs)
            return
        cx.node(onnx_op, ins, outs[0], **attrs)
    return lower


def _rounding(onnx_op):
    def lower(cx, op, ins, outs):
        cx.node(onnx_op if _is_float(cx, ins[0]) else "Identity", ins, outs[0])
    return lower


def _binary(onnx_op):
    def lower(cx, op, ins, outs):
        if cx.dtypes[ins[0]] == np.bool_ and op.kind in BOOL_BINARY:
            cx.node(BOOL_BINARY[op.kind], ins, outs[0])
            return
        if cx.dtypes[ins[0]] == np.bool_ and onnx_op in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual"):
            ins = [cx.cast(i, np.int32) for i in ins]  # ONNX orders numbers only; False < True as ints
        cx.node(onnx_op, ins, outs[0], dtype=op.outputs[0].dtype)
    return lower


def neg(cx, op, ins, outs):
    if cx.dtypes[ins[0]].kind == "u":  # NumPy wraps: -x == 0 - x modulo 2**bits
        cx.node("Sub", [cx.scalar(0, ins[0]), ins[0]], outs[0])
    else:
        cx.node("Neg", ins, outs[0])


def add(cx, op, ins, outs):
    cx.node("Or" if cx.dtypes[ins[0]] == np.bool_ else "Add", ins, outs[0])


def mul(cx, op, ins, outs):
    cx.node("And" if cx.dtypes[ins[0]] == np.bool_ else "Mul", ins, outs[0])


def not_equal(cx, op, ins, outs):
    if cx.dtypes[ins[0]] == np.bool_:
        cx.node("Xor", ins, outs[0])
    else:
        cx.node("Not", [cx.node("Equal", ins, dtype=np.bool_)], outs[0])


def trunc(cx, op, ins, outs):
    (x,) = ins
    if not _is_float(cx, x):
        cx.node("Identity", ins, outs[0])
        return
    # sign(x) * floor(|x|): exact, keeps inf and nan
    cx.node("Mul", [cx.node("Sign", [x]), cx.node("Floor", [cx.node("Abs", [x])])], outs[0])


def reciprocal(cx, op, ins, outs):
    if _is_float(cx, ins[0]):
        cx.node("Reciprocal", ins, outs[0])
    else:  # NumPy's integer reciprocal is C division 1 / x (truncating), as ONNX Div
        cx.node("Div", [cx.scalar(1, ins[0]), ins[0]], outs[0])


def exp2(cx, op, ins, outs):
    cx.node("Pow", [cx.scalar(2.0, ins[0]), ins[0]], outs[0])


def expm1(cx, op, ins, outs):
    cx.node("Sub", [cx.node("Exp", ins), cx.scalar(1.0, ins[0])], outs[0])


def log1p(cx, op, ins, outs):
    cx.node("Log", [cx.node("Add", [ins[0], cx.scalar(1.0, ins[0])])], outs[0])


def _log_base(base):
    def lower(cx, op, ins, outs):
        cx.node("Div", [cx.node("Log", ins), cx.scalar(math.log(base), ins[0])], outs[0])
    return lower


def cbrt(cx, op, ins, outs):
    (x,) = ins
    mag = cx.node("Pow", [cx.node("Abs", [x]), cx.scalar(1.0 / 3.0, x)])
    cx.node("Mul", [cx.node("Sign", [x]), mag], outs[0])


def bitwise_not(cx, op, ins, outs):
    (x,) = ins
    dt = cx.dtypes[x]
    if dt == np.bool_:
        cx.node("Not", ins, outs[0])
    elif cx.opset >= 18:
        cx.node("BitwiseNot", ins, outs[0])
    else:  # two's complement: ~x == all-ones - x, with wrap-around
        cx.node("Sub", [cx.scalar(np.array(-1).astype(dt), x), x], outs[0])


def relu(cx, op, ins, outs):
    if _is_float(cx, ins[0]):
        cx.node("Relu", ins, outs[0])
    else:
        cx.node("Max", [ins[0], cx.scalar(0, ins[0])], outs[0])


def hard_swish(cx, op, ins, outs):
    if cx.dtypes[ins[0]] == np.float64:  # its 1/6 is a float32 constant inside onnxruntime
        from .onnx_lowering_fallbacks import DECOMPOSITIONS

        DECOMPOSITIONS["HardSwish"](cx, ins, outs[0], {})
    elif cx.opset >= 14:
        cx.node("HardSwish", ins, outs[0])
    else:
        cx.node("Mul", [ins[0], cx.node("HardSigmoid", ins, alpha=1.0 / 6.0, beta=0.5)], outs[0])


def gelu(cx, op, ins, outs):
    gelu_names(cx, ins[0], op.attrs["approximate"], outs[0])


def gelu_names(cx: Emitter, x: str, approx: str, out: str) -> None:
    """Emit GELU of tensor `x` into `out`: the opset-20 op where the target has it, else its formula."""
    ins, outs = [x], [out]
    if cx.opset >= 20 and (cx.caps is None or cx.caps.supports("Gelu", cx.dtypes[x], cx.opset)):
        cx.node("Gelu", ins, outs[0], approximate=approx)
        return
    half_x = cx.node("Mul", [x, cx.scalar(0.5, x)])
    if approx == "tanh":
        cube = cx.node("Mul", [cx.node("Mul", [x, x]), x])
        inner = cx.node("Add", [x, cx.node("Mul", [cube, cx.scalar(0.044715, x)])])
        t = cx.node("Tanh", [cx.node("Mul", [inner, cx.scalar(math.sqrt(2.0 / math.pi), x)])])
    else:
        t = _erf_of_scaled(cx, x)
    cx.node("Mul", [half_x, cx.node("Add", [t, cx.scalar(1.0, x)])], outs[0])


def _erf_of_scaled(cx: Emitter, x: str) -> str:
    return cx.node("Erf", [cx.node("Mul", [x, cx.scalar(math.sqrt(0.5), x)])])


def normal_cdf(cx, op, ins, outs):
    """Phi(x) = (1 + Erf(x / sqrt 2)) / 2. ONNX has no Erfc, so for x << 0, where 1 + Erf cancels,
    this keeps absolute accuracy only (as ONNX's own Gelu)."""
    (x,) = ins
    t = cx.node("Add", [_erf_of_scaled(cx, x), cx.scalar(1.0, x)])
    cx.node("Mul", [t, cx.scalar(0.5, x)], outs[0])


def isfinite(cx, op, ins, outs):
    (x,) = ins
    if not _is_float(cx, x):  # integers are always finite
        cx.node("Equal", [x, x], outs[0], dtype=np.bool_)
        return
    bad = cx.node("Or", [cx.node("IsNaN", [x], dtype=np.bool_), cx.node("IsInf", [x], dtype=np.bool_)])
    cx.node("Not", [bad], outs[0])


def _any_nan(cx, a, b):
    return cx.node("Or", [cx.node("IsNaN", [a], dtype=np.bool_), cx.node("IsNaN", [b], dtype=np.bool_)])


def _extremum(onnx_op, propagate_nan):
    def lower(cx, op, ins, outs):
        a, b = ins
        dt = cx.dtypes[a]
        if dt == np.bool_:
            cx.node("Or" if onnx_op == "Max" else "And", ins, outs[0])
            return
        if dt.kind != "f":
            cx.node(onnx_op, ins, outs[0])
            return
        m = cx.node(onnx_op, ins)
        if propagate_nan:  # np.maximum: nan if either is nan (a + b is then nan)
            cx.node("Where", [_any_nan(cx, a, b), cx.node("Add", ins), m], outs[0], key_input=1)
        else:  # np.fmax: the other operand when one is nan
            pick_b = cx.node("Where", [cx.node("IsNaN", [b], dtype=np.bool_), a, m], key_input=1)
            cx.node("Where", [cx.node("IsNaN", [a], dtype=np.bool_), b, pick_b], outs[0], key_input=1)
    return lower


def floordiv(cx, op, ins, outs):
    a, b = ins
    dt = cx.dtypes[a]
    if dt.kind == "u":
        cx.node("Div", ins, outs[0])
        return
    if dt.kind in "i":
        q = cx.node("Div", ins)  # truncates toward zero
        r = cx.node("Sub", [a, cx.node("Mul", [q, b])])
        zero = cx.scalar(0, a)
        fix = cx.node("And", [cx.node("Not", [cx.node("Equal", [r, zero], dtype=np.bool_)]),
                              cx.node("Xor", [cx.node("Less", [r, zero], dtype=np.bool_),
                                              cx.node("Less", [b, zero], dtype=np.bool_)])])
        cx.node("Sub", [q, cx.cast(fix, dt)], outs[0])
        return
    # floats: NumPy's npy_divmod — div = (a - fmod(a, b)) / b, adjusted, then rounded to an integer
    mod = cx.node("Mod", ins, key="Mod.fmod", fmod=1)
    div = cx.node("Div", [cx.node("Sub", [a, mod]), b])
    zero = cx.scalar(0.0, a)
    adjust = cx.node("And", [cx.node("Not", [cx.node("Equal", [mod, zero], dtype=np.bool_)]),
                             cx.node("Xor", [cx.node("Less", [b, zero], dtype=np.bool_),
                                             cx.node("Less", [mod, zero], dtype=np.bool_)])])
    div = cx.node("Sub", [div, cx.cast(adjust, dt)])
    fl = cx.node("Floor", [div])
    up = cx.node("Greater", [cx.node("Sub", [div, fl]), cx.scalar(0.5, a)], dtype=np.bool_)
    fl = cx.node("Add", [fl, cx.cast(up, dt)])
    # b == 0 gives a / b (inf or nan) as NumPy does
    cx.node("Where", [cx.node("Equal", [b, zero], dtype=np.bool_), cx.node("Div", ins), fl], outs[0], key_input=1)


def mod(cx, op, ins, outs):
    a, b = ins
    dt = cx.dtypes[a]
    if dt.kind in "iu":
        cx.node("Mod", ins, outs[0], fmod=0)  # integer Mod takes the divisor's sign, as Python
        return
    m = cx.node("Mod", ins, key="Mod.fmod", fmod=1)
    zero = cx.scalar(0.0, a)
    wrong_sign = cx.node("And", [cx.node("Not", [cx.node("Equal", [m, zero], dtype=np.bool_)]),
                                 cx.node("Xor", [cx.node("Less", [b, zero], dtype=np.bool_),
                                                 cx.node("Less", [m, zero], dtype=np.bool_)])])
    fixed = cx.node("Where", [wrong_sign, cx.node("Add", [m, b]), m], key_input=1)
    # a zero remainder takes the divisor's sign: copysign(0, b) == 0 * sign(b) except b = +-0
    signed_zero = cx.node("Mul", [zero, cx.node("Sign", [b])])
    cx.node("Where", [cx.node("Equal", [fixed, zero], dtype=np.bool_), signed_zero, fixed], outs[0], key_input=1)


def atan2(cx, op, ins, outs):
    y, x = ins
    zero = cx.scalar(0.0, y)
    base = cx.node("Atan", [cx.node("Div", [y, x])])
    pi = cx.scalar(math.pi, y)
    y_neg = cx.node("Less", [y, zero], dtype=np.bool_)
    shift = cx.node("Where", [y_neg, cx.node("Neg", [pi]), pi], key_input=1)
    left = cx.node("Add", [base, shift])
    res = cx.node("Where", [cx.node("Less", [x, zero], dtype=np.bool_), left, base], key_input=1)
    half = cx.node("Mul", [cx.node("Sign", [y]), cx.scalar(math.pi / 2, y)])
    cx.node("Where", [cx.node("Equal", [x, zero], dtype=np.bool_), half, res], outs[0], key_input=1)


def hypot(cx, op, ins, outs):
    a, b = [cx.node("Abs", [v]) for v in ins]
    big = cx.node("Max", [a, b])
    small = cx.node("Min", [a, b])
    safe = cx.node("Where", [cx.node("Equal", [big, cx.scalar(0.0, a)], dtype=np.bool_), cx.scalar(1.0, a), big],
                   key_input=1)
    r = cx.node("Div", [small, safe])
    one_plus = cx.node("Add", [cx.scalar(1.0, a), cx.node("Mul", [r, r])])
    cx.node("Mul", [big, cx.node("Sqrt", [one_plus])], outs[0])


def bitwise(cx, op, ins, outs):
    dt = cx.dtypes[ins[0]]
    if dt == np.bool_:
        cx.node(BOOL_BINARY[op.kind], ins, outs[0])
    elif cx.opset >= 18:
        cx.node(BITWISE[op.kind], ins, outs[0])
    else:
        from .onnx_lowering_bits import bitwise_by_bits

        bitwise_by_bits(cx, op.kind, ins, outs[0])


def shift(cx, op, ins, outs):
    x, s = ins
    dt = cx.dtypes[x]
    if dt.kind == "u":
        cx.node("BitShift", ins, outs[0], direction="LEFT" if op.kind == "left_shift" else "RIGHT")
        return
    # signed: x << s == x * 2**s (wrapping), x >> s == floor(x / 2**s)
    p = cx.cast(cx.node("Pow", [cx.const(np.array(2, np.int64)), cx.cast(s, np.int64)]), dt)
    if op.kind == "left_shift":
        cx.node("Mul", [x, p], outs[0])
    else:
        floordiv(cx, op, [x, p], outs)


def where(cx, op, ins, outs):
    cx.node("Where", ins, outs[0], key_input=1)


def cast(cx, op, ins, outs):
    dt = op.attrs["dtype"]
    cx.node("Cast", ins, outs[0], dtype=dt, to=onnx_dtype(dt))


def prelu(cx, op, ins, outs):
    cx.node("PRelu", ins, outs[0])


LOWERINGS = {
    **{k: _unary(v) for k, v in SIMPLE_UNARY.items()},
    **{k: _attr_unary(v) for k, v in ATTR_UNARY.items()},
    **{k: _rounding(v) for k, v in FLOAT_ROUNDING.items()},
    **{k: _binary(v) for k, v in SIMPLE_BINARY.items()},
    "neg": neg, "add": add, "mul": mul, "not_equal": not_equal, "trunc": trunc, "reciprocal": reciprocal,
    "exp2": exp2, "expm1": expm1, "log1p": log1p, "log2": _log_base(2.0), "log10": _log_base(10.0),
    "cbrt": cbrt, "bitwise_not": bitwise_not, "relu": relu, "hard_swish": hard_swish, "gelu": gelu,
    "normal_cdf": normal_cdf,
    "isfinite": isfinite, "maximum": _extremum("Max", True), "minimum": _extremum("Min", True),
    "fmax": _extremum("Max", False), "fmin": _extremum("Min", False), "floordiv": floordiv, "mod": mod,
    "atan2": atan2, "hypot": hypot, "bitwise_and": bitwise, "bitwise_or": bitwise, "bitwise_xor": bitwise,
    "left_shift": shift, "right_shift": shift, "where": where, "cast": cast, "prelu": prelu,
    "stop_gradient": _unary("Identity"),
}
