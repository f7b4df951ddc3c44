"""Elementwise kernels: each IR op is the NumPy ufunc with the same meaning.

The tracer maps ufuncs to ops through the inverse of this table, so a traced program and the
NumPy code it came from call the very same loops.
"""

from __future__ import annotations

import numpy as np

UFUNCS: dict[str, np.ufunc] = {
    "neg": np.negative, "abs": np.absolute, "sign": np.sign, "exp": np.exp, "exp2": np.exp2,
    "expm1": np.expm1, "log": np.log, "log2": np.log2, "log10": np.log10, "log1p": np.log1p,
    "sqrt": np.sqrt, "cbrt": np.cbrt, "reciprocal": np.reciprocal, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan, "sinh": np.sinh,
    "cosh": np.cosh, "tanh": np.tanh, "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh,
    "floor": np.floor, "ceil": np.ceil, "trunc": np.trunc, "round": np.rint,
    "logical_not": np.logical_not, "bitwise_not": np.invert,
    "isnan": np.isnan, "isinf": np.isinf, "isfinite": np.isfinite,
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "maximum": np.maximum,
    "minimum": np.minimum, "fmax": np.fmax, "fmin": np.fmin, "atan2": np.arctan2, "hypot": np.hypot,
    "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or, "bitwise_xor": np.bitwise_xor,
    "left_shift": np.left_shift, "right_shift": np.right_shift,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}


def where(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`np.where(cond, a, b)`.

    >>> where(np.array([True, False]), np.array([1, 2]), np.array([3, 4]))
    array([1, 4])
    """
    return np.where(cond, a, b)


def cast(x: np.ndarray, *, dtype: np.dtype) -> np.ndarray:
    """`x.astype(dtype)` (NumPy's casting: float→int truncates, out-of-range is undefined).

    >>> cast(np.array([1.7, -1.7]), dtype=np.dtype(np.int32))
    array([ 1, -1], dtype=int32)
    """
    return np.asarray(x).astype(dtype, copy=False)


KERNELS = {**UFUNCS, "where": where, "cast": cast}
