"""Reductions over axes (sum, mean, max, min, prod), arg-reductions, and cumulative sums.

`axes` is normalized (non-negative, sorted, unique) by whoever creates the op; the tracer casts
inputs to NumPy's accumulation dtype first (np.sum of int32 accumulates in int64), so a
reduction's result dtype is its input dtype.
"""

from __future__ import annotations

import numpy as np

from ..errors import TypeRuleError
from ..registry import register
from ..types import TensorType
from .rules import norm_axis, require_kind

REDUCTIONS = {"reduce_sum": "bfiu", "reduce_mean": "f", "reduce_max": "bfiu", "reduce_min": "bfiu",
              "reduce_prod": "fiu"}


def _reduced_shape(t: TensorType, axes, keepdims: bool) -> tuple:
    if list(axes) != sorted(set(axes)) or any(not 0 <= a < t.rank for a in axes):
        raise TypeRuleError(f"axes {axes} must be sorted, unique and within rank {t.rank}")
    return tuple(1 if i in axes else d for i, d in enumerate(t.shape) if keepdims or i not in axes)


def _reduce_rule(kinds):
    def infer(ts, attrs, regions):
        require_kind(ts[0], kinds)
        return [TensorType(ts[0].dtype, _reduced_shape(ts[0], attrs["axes"], attrs["keepdims"]))]
    return infer


def _arg_rule(ts, attrs, regions):
    t = ts[0]
    axis = attrs["axis"]
    if not 0 <= axis < t.rank:
        raise TypeRuleError(f"axis {axis} must be within rank {t.rank}")
    return [TensorType(np.int64, _reduced_shape(t, (axis,), attrs["keepdims"]))]


def _cumsum_rule(ts, attrs, regions):
    norm_axis(attrs["axis"], ts[0].rank)
    require_kind(ts[0], "fiu")
    return [ts[0]]


for _name, _kinds in REDUCTIONS.items():
    register(_name, _reduce_rule(_kinds), attrs={"axes": "ints", "keepdims": "bool"})
for _name in ("argmax", "argmin"):
    register(_name, _arg_rule, attrs={"axis": "int", "keepdims": "bool"}, differentiable=False)
register("cumsum", _cumsum_rule, attrs={"axis": "int"})
