"""ONNX → IR translations of the elementwise ops, reductions and matrix products.

Why a table of small functions: every ONNX op type maps to one entry `fn(b, ins, attrs, n_out)
-> [handles]`, so `from_onnx` can list every unsupported op up front, and version differences
(opset-6 `broadcast`/`axis` on binary ops, `axes` moving from attribute to input, integer `Div`
truncating where the IR's `floordiv` floors) are handled in the entry of the op they affect.
Shape and NN ops live in `onnx_import_ops_shape.py` and `onnx_import_ops_nn.py`.
"""

from __future__ import annotations

import numpy as np

from .errors import UnsupportedOpError
from .onnx_import import SymInts, dtype_of, shape_of, static

UNARY = {
    "Abs": "abs", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Sin": "sin", "Cos": "cos",
    "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan", "Sinh": "sinh", "Cosh": "cosh", "Tanh": "tanh",
    "Asinh": "asinh", "Acosh": "acosh", "Atanh": "atanh", "Floor": "floor", "Ceil": "ceil", "Round": "round",
    "Sign": "sign", "Erf": "erf", "Sigmoid": "sigmoid", "Relu": "relu", "Softplus": "softplus",
    "Softsign": "softsign", "Not": "logical_not", "IsNaN": "isnan", "Reciprocal": "reciprocal",
    "HardSwish": "hard_swish", "BitwiseNot": "bitwise_not",
}
ATTR_UNARY = {  # ONNX op: (IR op, {attr: default})
    "Elu": ("elu", {"alpha": 1.0}), "Celu": ("celu", {"alpha": 1.0}), "LeakyRelu": ("leaky_relu", {"alpha": 0.01}),
    "Selu": ("selu", {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}),
    "HardSigmoid": ("hard_sigmoid", {"alpha": 0.2, "beta": 0.5}),
    "ThresholdedRelu": ("thresholded_relu", {"alpha": 1.0}),
}
BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Pow": "pow", "And": "logical_and", "Or": "logical_or",
    "Xor": "logical_xor", "Equal": "equal", "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
    "GreaterOrEqual": "greater_equal", "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or",
    "BitwiseXor": "bitwise_xor",
}


def legacy_broadcast(b, x, y, attrs):
    """Opset < 7 binary ops: with `broadcast=1` and `axis`, B's dims align with A's from `axis`."""
    if b.opset >= 7 or not attrs.get("broadcast"):
        return y
    rx, ry = len(shape_of(x)), len(shape_of(y))
    axis = attrs.get("axis", rx - ry)
    axis = axis + rx if axis < 0 else axis
    trailing = rx - axis - ry
    if trailing > 0:
        return b.reshape(y, tuple(shape_of(y)) + (1,) * trailing)
    return y


def _sym_dims(h):
    """Entries of an int tensor as Python dims when it is a SymInts or a small static int array."""
    if isinstance(h, SymInts):
        return list(h.dims), h.scalar
    a = static(h)
    if a is not None and a.dtype.kind in "iu" and a.ndim <= 1 and a.size <= 64:
        return [int(v) for v in a.reshape(-1)], a.ndim == 0
    return None


def _sym_binary(kind, x, y):
    """Shape arithmetic on SymInts (Shape → Mul/Add/Sub/Div → Reshape), or None."""
    if not (isinstance(x, SymInts) or isinstance(y, SymInts)):
        return None
    dx, dy = _sym_dims(x), _sym_dims(y)
    if dx is None or dy is None:
        return None
    (lx, sx), (ly, sy) = dx, dy
    if len(lx) != len(ly) and 1 not in (len(lx), len(ly)):
        return None
    n = max(len(lx), len(ly))
    lx, ly = (lx * n if len(lx) == 1 else lx), (ly * n if len(ly) == 1 else ly)
    from runtime import dims as D

    fn = {"add": D.add, "sub": D.sub, "mul": D.mul, "floordiv": D.floordiv}.get(kind)
    if fn is None:
        return None
    return SymInts([fn(a, c) for a, c in zip(lx, ly)], scalar=sx and sy)


def _binary(kind):
    def imp(b, ins, attrs, n_out):
        x, y = ins
        y = legacy_broadcast(b, x, y, attrs)
        sym = _sym_binary(kind, x, y)
        if sym is not None:
            return [sym]
        if kind == "pow" and dtype_of(y) != dtype_of(x):
            y = b.op("cast", [y], dtype=dtype_of(x))
        if dtype_of(x) == np.bool_ and kind in ("less", "greater", "less_equal", "greater_equal"):
            raise UnsupportedOpError(f"{b.where()}: ONNX compares numbers only, got bool")
        return [b.op(kind, [x, y])]
    return imp


def div(b, ins, attrs, n_out):
    x, y = ins
    y = legacy_broadcast(b, x, y, attrs)
    if dtype_of(x).kind == "f":
        return [b.op("div", [x, y])]
    sym = _sym_binary("floordiv", x, y)  # dims are non-negative: truncation == floor
    if sym is not None:
        return [sym]
    return [truncating_div(b, x, y)]


def truncating_div(b, x, y):
    """C-style integer division (ONNX Div) from the IR's floor division."""
    q = b.op("floordiv", [x, y])
    if dtype_of(x).kind == "u":
        return q
    r = b.op("mod", [x, y])
    zero = np.zeros((), dtype_of(x))
    inexact = b.op("not_equal", [r, zero])
    signs_differ = b.op("logical_xor", [b.op("less", [x, zero]), b.op("less", [y, zero])])
    fix = b.op("cast", [b.op("logical_and", [inexact, signs_differ])], dtype=dtype_of(x))
    return b.op("add", [q, fix])


def mod(b, ins, attrs, n_out):
    x, y = ins
    if not attrs.get("fmod", 0):
        return [b.op("mod", [x, y])]
    # C fmod: the sign of the dividend, magnitude |x| mod |y|
    mag = b.op("mod", [b.op("abs", [x]), b.op("abs", [y])])
    if dtype_of(x).kind == "u":
        return [mag]
    return [b.op("mul", [b.op("sign", [x]), mag])]


def bit_shift(b, ins, attrs, n_out):
    return [b.op("left_shift" if attrs["direction"] == b"LEFT" or attrs["direction"] == "LEFT" else "right_shift",
                 ins)]


def _unary(kind):
    def imp(b, ins, attrs, n_out):
        return [b.op(kind, ins[:1])]
    return imp


def _attr_unary(kind, defaults):
    def imp(b, ins, attrs, n_out):
        return [b.op(kind, ins[:1], **{k: float(attrs.get(k, v)) for k, v in defaults.items()})]
    return imp


def gelu(b, ins, attrs, n_out):
    approx = attrs.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return [b.op("gelu", ins[:1], approximate=approx)]


def is_inf(b, ins, attrs, n_out):
    x = ins[0]
    pos, neg = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    inf = b.op("isinf", [x])
    if pos and neg:
        return [inf]
    zero = np.zeros((), dtype_of(x))
    side = b.op("greater" if pos else "less", [x, zero])
    if not (pos or neg):
        return [b.op("logical_and", [inf, b.op("logical_not", [inf])])]
    return [b.op("logical_and", [inf, side])]


def _variadic(kind):
    def imp(b, ins, attrs, n_out):
        acc = ins[0]
        for y in ins[1:]:
            acc = b.op(kind, [acc, y])
        return [acc]
    return imp


def mean(b, ins, attrs, n_out):
    acc = _variadic("add")(b, ins, attrs, n_out)[0]
    return [b.op("div", [acc, np.asarray(len(ins), dtype_of(acc))])]


def where(b, ins, attrs, n_out):
    return [b.op("where", ins)]


def cast(b, ins, attrs, n_out):
    from .onnx_import import _dtype

    dt = _dtype(attrs["to"], b.where())
    x = ins[0]
    if isinstance(x, SymInts) and dt in (np.dtype(np.int64), np.dtype(np.int32)):
        return [x] if dt == np.int64 else [b.op("cast", [b.sym_tensor(x)], dtype=dt)]
    return [b.op("cast", [x], dtype=dt)]


def clip(b, ins, attrs, n_out):
    x = ins[0]
    if b.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
        lo = None if lo is None else np.asarray(lo, dtype_of(x))
        hi = None if hi is None else np.asarray(hi, dtype_of(x))
    else:
        lo = ins[1] if len(ins) > 1 else None
        hi = ins[2] if len(ins) > 2 else None
    if lo is not None:
        x = b.op("maximum", [x, lo])
    if hi is not None:
        x = b.op("minimum", [x, hi])
    return [x]


def reduce_axes(b, ins, attrs, rank, input_since):
    """The normalized, sorted axes of a reduction (attribute or input form), or None for all."""
    if b.opset >= input_since:
        axes = static(ins[1]) if len(ins) > 1 and ins[1] is not None else None
        if len(ins) > 1 and ins[1] is not None and axes is None:
            raise UnsupportedOpError(f"{b.where()}: reduction axes must be constant")
        axes = None if axes is None else [int(a) for a in np.reshape(axes, -1)]
    else:
        axes = attrs.get("axes")
    if axes is None or (len(axes) == 0 and not attrs.get("noop_with_empty_axes", 0)):
        return tuple(range(rank))
    return tuple(sorted({a % rank if rank else 0 for a in axes}))


def _reduce(kind, input_since):
    def imp(b, ins, attrs, n_out):
        x = ins[0]
        axes = reduce_axes(b, ins, attrs, len(shape_of(x)), input_since)
        keep = bool(attrs.get("keepdims", 1))
        if isinstance(x, SymInts) and kind == "reduce_prod" and axes == (0,) and not x.scalar:  # Shape → ReduceProd
            from runtime import dims as D

            return [SymInts([D.product(x.dims)], scalar=not keep)]
        return [b.op(kind, [x], axes=axes, keepdims=keep)]
    return imp


def _arg(kind):
    def imp(b, ins, attrs, n_out):
        x = ins[0]
        rank = len(shape_of(x))
        axis = attrs.get("axis", 0) % max(rank, 1)
        keep = bool(attrs.get("keepdims", 1))
        if not attrs.get("select_last_index", 0):
            return [b.op(kind, [x], axis=axis, keepdims=keep)]
        # last index: search the reversed axis, then mirror the index
        n = shape_of(x)[axis]
        rev = _reverse(b, x, axis)
        idx = b.op(kind, [rev], axis=axis, keepdims=keep)
        last = b.op("sub", [b.dim_value(n), np.asarray(1, np.int64)])
        return [b.op("sub", [last, idx])]
    return imp


def _reverse(b, x, axis):
    shape = shape_of(x)
    starts = tuple(0 if i != axis else _dim_minus_one(shape[i]) for i in range(len(shape)))
    stops = tuple(shape[i] if i != axis else -1 for i in range(len(shape)))
    steps = tuple(1 if i != axis else -1 for i in range(len(shape)))
    return b.op("slice", [x], starts=starts, stops=stops, steps=steps)


def _dim_minus_one(d):
    from runtime import dims as D

    return D.sub(d, 1)


def cumsum(b, ins, attrs, n_out):
    x = ins[0]
    axis_arr = static(ins[1])
    if axis_arr is None:
        raise UnsupportedOpError(f"{b.where()}: CumSum axis must be constant")
    axis = int(axis_arr.reshape(-1)[0]) % len(shape_of(x))
    rev = attrs.get("reverse", 0)
    y = _reverse(b, x, axis) if rev else x
    s = b.op("cumsum", [y], axis=axis)
    if attrs.get("exclusive", 0):
        s = b.op("sub", [s, y])
    return [_reverse(b, s, axis) if rev else s]


def matmul(b, ins, attrs, n_out):
    return [b.op("matmul", ins)]


def gemm(b, ins, attrs, n_out):
    a, w = ins[0], ins[1]
    if attrs.get("transA", 0):
        a = b.op("transpose", [a], perm=(1, 0))
    if attrs.get("transB", 0):
        w = b.op("transpose", [w], perm=(1, 0))
    y = b.op("matmul", [a, w])
    dt = dtype_of(y)
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if alpha != 1.0:
        y = b.op("mul", [y, np.asarray(alpha, dt)])
    if len(ins) > 2 and ins[2] is not None and beta != 0.0:
        c = ins[2]
        if beta != 1.0:
            c = b.op("mul", [c, np.asarray(beta, dt)])
        y = b.op("add", [y, c])
    return [y]


def einsum(b, ins, attrs, n_out):
    eq = attrs["equation"]
    eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
    return [b.op("einsum", ins, equation=eq)]


def identity(b, ins, attrs, n_out):
    return [ins[0]]


def prelu(b, ins, attrs, n_out):
    x, slope = ins
    rx, rs = len(shape_of(x)), len(shape_of(slope))
    if b.opset < 7 and rs == 1 and rx > 2 and shape_of(slope)[0] == shape_of(x)[1]:
        slope = b.reshape(slope, (shape_of(slope)[0],) + (1,) * (rx - 2))  # per-channel slope (opset 6)
    return [b.op("prelu", [x, slope])]


IMPORTERS = {
    **{k: _unary(v) for k, v in UNARY.items()},
    **{k: _attr_unary(*v) for k, v in ATTR_UNARY.items()},
    **{k: _binary(v) for k, v in BINARY.items()},
    "Div": div, "Mod": mod, "BitShift": bit_shift, "Gelu": gelu, "IsInf": is_inf,
    "Max": _variadic("maximum"), "Min": _variadic("minimum"), "Sum": _variadic("add"), "Mean": mean,
    "Where": where, "Cast": cast, "Clip": clip, "Identity": identity, "PRelu": prelu,
    "ReduceSum": _reduce("reduce_sum", 13), "ReduceMean": _reduce("reduce_mean", 18),
    "ReduceMax": _reduce("reduce_max", 18), "ReduceMin": _reduce("reduce_min", 18),
    "ReduceProd": _reduce("reduce_prod", 18), "ArgMax": _arg("argmax"), "ArgMin": _arg("argmin"),
    "CumSum": cumsum, "MatMul": matmul, "Gemm": gemm, "Einsum": einsum,
}


def _register_families() -> None:
    from . import onnx_import_ops_control, onnx_import_ops_nn, onnx_import_ops_scatter, onnx_import_ops_shape

    IMPORTERS.update(onnx_import_ops_shape.IMPORTERS)
    IMPORTERS.update(onnx_import_ops_nn.IMPORTERS)
    IMPORTERS.update(onnx_import_ops_control.IMPORTERS)
    IMPORTERS.update(onnx_import_ops_scatter.IMPORTERS)


_register_families()
