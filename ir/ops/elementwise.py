"""Elementwise ops: unary math, binary arithmetic, comparisons, logic, where, cast.

One table row per op: the dtype kinds it accepts (and whether it is commutative). The kernels
are the NumPy ufuncs listed in `runtime.kernels.elementwise`. Inputs of a binary op share one
dtype: the tracer resolves NumPy 2 promotion (NEP 50) and inserts casts, so the IR itself never
promotes (like JAX's lax beneath jax.numpy).
"""

from __future__ import annotations

import numpy as np

from ..registry import register
from ..types import TensorType
from .rules import broadcast_shapes, require_kind, same_dtype

ANY, NUM, FLOAT, INT, BOOL, BOOLINT = "bfiu", "fiu", "f", "iu", "b", "biu"

UNARY = {
    "neg": NUM, "abs": NUM, "sign": NUM, "exp": FLOAT, "exp2": FLOAT, "expm1": FLOAT, "log": FLOAT,
    "log2": FLOAT, "log10": FLOAT, "log1p": FLOAT, "sqrt": FLOAT, "cbrt": FLOAT, "reciprocal": NUM,
    "sin": FLOAT, "cos": FLOAT, "tan": FLOAT, "asin": FLOAT, "acos": FLOAT, "atan": FLOAT,
    "sinh": FLOAT, "cosh": FLOAT, "tanh": FLOAT, "asinh": FLOAT, "acosh": FLOAT, "atanh": FLOAT,
    "floor": NUM, "ceil": NUM, "trunc": NUM, "round": NUM, "logical_not": BOOL, "bitwise_not": BOOLINT,
    "erf": FLOAT, "sigmoid": FLOAT, "relu": NUM, "softplus": FLOAT, "softsign": FLOAT,
    "hard_swish": FLOAT,
}
UNARY_ATTRS = {
    "gelu": {"approximate": "str"}, "selu": {"alpha": "float", "gamma": "float"},
    "elu": {"alpha": "float"}, "celu": {"alpha": "float"}, "leaky_relu": {"alpha": "float"},
    "hard_sigmoid": {"alpha": "float", "beta": "float"}, "thresholded_relu": {"alpha": "float"},
}
PREDICATES = ("isnan", "isinf", "isfinite")
BINARY = {  # name: (kinds, commutative)
    "add": (ANY, True), "sub": (NUM, False), "mul": (ANY, True), "div": (FLOAT, False),
    "floordiv": (NUM, False), "mod": (NUM, False), "pow": (NUM, False), "maximum": (ANY, True),
    "minimum": (ANY, True), "fmax": (NUM, True), "fmin": (NUM, True), "atan2": (FLOAT, False),
    "hypot": (FLOAT, True), "bitwise_and": (BOOLINT, True), "bitwise_or": (BOOLINT, True),
    "bitwise_xor": (BOOLINT, True), "left_shift": (INT, False), "right_shift": (INT, False),
}
COMPARE = {"equal": True, "not_equal": True, "less": False, "less_equal": False, "greater": False,
           "greater_equal": False}
LOGICAL = ("logical_and", "logical_or", "logical_xor")

NONDIFF = {"sign", "floor", "ceil", "trunc", "round", "logical_not", "bitwise_not", "floordiv",
           "bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift"}


def _unary_rule(kinds):
    def infer(ts, attrs, regions):
        require_kind(ts[0], kinds)
        return [ts[0]]
    return infer


def _binary_rule(kinds, out_dtype=None):
    def infer(ts, attrs, regions):
        dt = same_dtype(ts)
        require_kind(ts[0], kinds)
        return [TensorType(out_dtype or dt, broadcast_shapes(ts[0].shape, ts[1].shape))]
    return infer


def _predicate(ts, attrs, regions):
    require_kind(ts[0], NUM)
    return [TensorType(np.bool_, ts[0].shape)]


def _where(ts, attrs, regions):
    require_kind(ts[0], BOOL, "condition")
    dt = same_dtype(ts[1:], "branches")
    return [TensorType(dt, broadcast_shapes(*(t.shape for t in ts)))]


def _cast(ts, attrs, regions):
    return [TensorType(attrs["dtype"], ts[0].shape)]


def _prelu(ts, attrs, regions):
    same_dtype(ts)
    require_kind(ts[0], FLOAT)
    if broadcast_shapes(ts[0].shape, ts[1].shape) != ts[0].shape:
        raise ValueError(f"slope {ts[1]} must broadcast to {ts[0]}")
    return [ts[0]]


for _name, _kinds in UNARY.items():
    register(_name, _unary_rule(_kinds), elementwise=True, differentiable=_name not in NONDIFF)
for _name, _attrs in UNARY_ATTRS.items():
    register(_name, _unary_rule(FLOAT), attrs=_attrs, elementwise=True)
for _name in PREDICATES:
    register(_name, _predicate, elementwise=True, differentiable=False)
for _name, (_kinds, _comm) in BINARY.items():
    register(_name, _binary_rule(_kinds), arity=(2, 2), elementwise=True, commutative=_comm,
             differentiable=_name not in NONDIFF)
for _name, _comm in COMPARE.items():
    register(_name, _binary_rule(ANY, np.bool_), arity=(2, 2), elementwise=True, commutative=_comm,
             differentiable=False)
for _name in LOGICAL:
    register(_name, _binary_rule(BOOL, np.bool_), arity=(2, 2), elementwise=True, commutative=True,
             differentiable=False)
register("where", _where, arity=(3, 3), elementwise=True)
register("cast", _cast, attrs={"dtype": "dtype"}, elementwise=True)
register("prelu", _prelu, arity=(2, 2), elementwise=True)
