"""Elementwise ops: unary math, binary arithmetic, comparisons, logic, where, cast.

One table row per op: the dtype kinds it accepts (and whether it is commutative). The kernels
are the NumPy ufuncs listed in `runtime.kernels.elementwise`. Inputs of a binary op share one
dtype: the tracer resolves NumPy 2 promotion (NEP 50) and inserts casts, so the IR itself never
promotes (like JAX's lax beneath jax.numpy).
"""

from __future__ import annotations

import numpy as np

from runtime.kernels.elementwise import UFUNCS

from ..errors import TypeRuleError
from ..registry import register
from ..types import SUPPORTED_DTYPES, TensorType, dtype_name
from .rules import broadcast_shapes, require_kind, same_dtype

ANY, NUM, FLOAT, INT, BOOL, BOOLINT = "bfiu", "fiu", "f", "iu", "b", "biu"

# ops whose kernel is a NumPy ufunc accept exactly the dtypes that ufunc has a loop for
UNARY_UFUNCS = ("neg", "abs", "sign", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt",
                "cbrt", "reciprocal", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh",
                "asinh", "acosh", "atanh", "floor", "ceil", "trunc", "round", "logical_not", "bitwise_not")
UNARY = {"erf": FLOAT, "normal_cdf": FLOAT, "sigmoid": FLOAT, "relu": NUM, "softplus": FLOAT, "softsign": FLOAT,
         "hard_swish": FLOAT}
UNARY_ATTRS = {
    "gelu": {"approximate": "str"}, "selu": {"alpha": "float", "gamma": "float"},
    "elu": {"alpha": "float"}, "celu": {"alpha": "float"}, "leaky_relu": {"alpha": "float"},
    "hard_sigmoid": {"alpha": "float", "beta": "float"}, "thresholded_relu": {"alpha": "float"},
}
PREDICATES = ("isnan", "isinf", "isfinite")
BINARY = {  # name: commutative
    "add": True, "sub": False, "mul": True, "div": False, "floordiv": False, "mod": False, "pow": False,
    "maximum": True, "minimum": True, "fmax": True, "fmin": True, "atan2": False, "hypot": True,
    "bitwise_and": True, "bitwise_or": True, "bitwise_xor": True, "left_shift": False, "right_shift": False,
}
COMPARE = {"equal": True, "not_equal": True, "less": False, "less_equal": False, "greater": False,
           "greater_equal": False}
LOGICAL = ("logical_and", "logical_or", "logical_xor")


def _loop_dtypes(name: str) -> frozenset:
    """Dtypes `d` for which the op's ufunc has a loop taking and returning `d` (bool for predicates)."""
    uf = UFUNCS[name]
    ok = set()
    for dt in SUPPORTED_DTYPES:
        try:
            loop = uf.resolve_dtypes((dt,) * uf.nin + (None,) * uf.nout)
        except TypeError:
            continue
        if all(d == dt for d in loop[:uf.nin]) and loop[-1] in (dt, np.dtype(np.bool_)):
            ok.add(dt)
    return frozenset(ok)


NONDIFF = {"sign", "floor", "ceil", "trunc", "round", "logical_not", "bitwise_not", "floordiv",
           "bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift"}


def _unary_rule(kinds):
    def infer(ts, attrs, regions):
        require_kind(ts[0], kinds)
        return [ts[0]]
    return infer


def _ufunc_rule(name: str, out_dtype=None):
    allowed = _loop_dtypes(name)

    def infer(ts, attrs, regions):
        dt = same_dtype(ts)
        if dt not in allowed:
            names = ", ".join(sorted(dtype_name(d) for d in allowed))
            raise TypeRuleError(f"{name} is not defined for {dtype_name(dt)} (NumPy has loops for {names})")
        shape = broadcast_shapes(*(t.shape for t in ts))
        return [TensorType(out_dtype or dt, shape)]
    return infer


def _logical_rule(ts, attrs, regions):
    same_dtype(ts)
    require_kind(ts[0], BOOL)
    return [TensorType(np.bool_, broadcast_shapes(*(t.shape for t in ts)))]


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


for _name in UNARY_UFUNCS:
    register(_name, _ufunc_rule(_name), elementwise=True, differentiable=_name not in NONDIFF)
for _name, _kinds in UNARY.items():
    register(_name, _unary_rule(_kinds), elementwise=True, differentiable=_name not in NONDIFF)
for _name, _attrs in UNARY_ATTRS.items():
    register(_name, _unary_rule(FLOAT), attrs=_attrs, elementwise=True)
for _name in PREDICATES:
    register(_name, _ufunc_rule(_name, np.bool_), elementwise=True, differentiable=False)
for _name, _comm in BINARY.items():
    register(_name, _ufunc_rule(_name), arity=(2, 2), elementwise=True, commutative=_comm,
             differentiable=_name not in NONDIFF)
for _name, _comm in COMPARE.items():
    register(_name, _ufunc_rule(_name, np.bool_), arity=(2, 2), elementwise=True, commutative=_comm,
             differentiable=False)
for _name in LOGICAL:
    register(_name, _logical_rule, arity=(2, 2), elementwise=True, commutative=True, differentiable=False)
register("where", _where, arity=(3, 3), elementwise=True)
register("cast", _cast, attrs={"dtype": "dtype"}, elementwise=True)
register("prelu", _prelu, arity=(2, 2), elementwise=True)
