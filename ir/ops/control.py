"""Structured control flow: `if` and `loop`, each owning `Region`s, with ONNX's semantics.

Why ONNX's: export becomes a one-to-one mapping, and the semantics are already well specified.

    %r: f32[_n0] = if[fresh=(_n0,)](%c) regions {
      () { ... yield %a }          # then: no inputs
      () { ... yield %b }          # else: no inputs
    }
    %h: f32[4] = loop(%max_trip, %cond, %h0) regions {
      (%i: i64[], %c: b1[], %h: f32[4]) { ... yield %c2, %h2 }
    }

`if` takes a bool scalar; both branches yield the same number of values with equal dtypes and
ranks. Where the branches disagree on a dim, the output dim is the next symbol of the `fresh`
attribute, chosen by the tracer (type rules are pure functions of the op, so the symbols must
live in the op itself to be re-inferred identically by the verifier and the parser).

`loop` takes (max_trip_count i64 scalar, cond bool scalar, *carried); its one region takes
(iteration i64 scalar, cond bool scalar, *carried) and yields (cond, *carried). It runs while
`iteration < max_trip_count and cond`. The region's parameter types are the loop-carried types
and the op's output types; a parameter dim may be a symbol where the initial or the yielded
value's dim differs (a value that grows across iterations), so fresh symbols live there.
"""

from __future__ import annotations

import numpy as np

from runtime import dims as D

from ..errors import TypeRuleError
from ..registry import register
from ..types import TensorType


def _require_scalar(t: TensorType, dtype, what: str) -> None:
    if t.dtype != np.dtype(dtype) or t.rank != 0:
        raise TypeRuleError(f"{what} must be a {np.dtype(dtype).name} scalar, got {t}")


def _if(ts, attrs, regions):
    _require_scalar(ts[0], np.bool_, "if: the condition")
    then, other = regions
    for name, r in (("then", then), ("else", other)):
        if r.inputs:
            raise TypeRuleError(f"if: the {name} region takes no inputs, got {len(r.inputs)}")
    if len(then.outputs) != len(other.outputs):
        raise TypeRuleError(f"if: the then branch yields {len(then.outputs)} values, "
                            f"the else branch {len(other.outputs)}")
    fresh = list(attrs.get("fresh", ()))
    used = 0
    out = []
    for k, (a, b) in enumerate(zip(then.outputs, other.outputs)):
        ta, tb = a.type, b.type
        if ta.dtype != tb.dtype or ta.rank != tb.rank:
            raise TypeRuleError(f"if: output {k} is {ta} in the then branch but {tb} in the else branch "
                                "(dtypes and ranks must agree)")
        shape = []
        for da, db in zip(ta.shape, tb.shape):
            if da == db:
                shape.append(da)
                continue
            if used >= len(fresh) or not D.is_symbol(fresh[used]):
                raise TypeRuleError(f"if: output {k} is {ta} vs {tb}: each disagreeing dim needs a symbol "
                                    f"in `fresh`, which has {len(fresh)}")
            shape.append(fresh[used])
            used += 1
        out.append(TensorType(ta.dtype, tuple(shape)))
    if used != len(fresh):
        raise TypeRuleError(f"if: `fresh` names {len(fresh)} symbols but the branches disagree on {used} dims")
    return out


def _compatible(param: TensorType, t: TensorType) -> bool:
    """A loop parameter type admits a value type: same dtype and rank, and each dim equal or
    generalized to a symbol."""
    if param.dtype != t.dtype or param.rank != t.rank:
        return False
    return all(p == d or D.is_symbol(p) for p, d in zip(param.shape, t.shape))


def _loop(ts, attrs, regions):
    _require_scalar(ts[0], np.int64, "loop: max_trip_count (input 0)")
    _require_scalar(ts[1], np.bool_, "loop: cond (input 1)")
    (body,) = regions
    carried = ts[2:]
    n = len(carried)
    if len(body.inputs) != 2 + n:
        raise TypeRuleError(f"loop: the body takes (iteration, cond, *carried) = {2 + n} inputs, "
                            f"got {len(body.inputs)}")
    if len(body.outputs) != 1 + n:
        raise TypeRuleError(f"loop: the body yields (cond, *carried) = {1 + n} values, got {len(body.outputs)}"
                            " (scan outputs are not supported)")
    _require_scalar(body.inputs[0].type, np.int64, "loop: body input 0 (iteration)")
    _require_scalar(body.inputs[1].type, np.bool_, "loop: body input 1 (cond)")
    _require_scalar(body.outputs[0].type, np.bool_, "loop: body output 0 (cond)")
    params = [v.type for v in body.inputs[2:]]
    for k, (p, init, y) in enumerate(zip(params, carried, (v.type for v in body.outputs[1:]))):
        if not _compatible(p, init):
            raise TypeRuleError(f"loop: carried value {k} starts as {init} but the body takes {p}")
        if not _compatible(p, y):
            raise TypeRuleError(f"loop: carried value {k} is yielded as {y} but the body takes {p}")
    return params


register("if", _if, arity=(1, 1), attrs={"fresh": "dims"}, optional=frozenset({"fresh"}), num_regions=2,
         doc="if(cond) regions {then, else}: run one branch; outputs are its yielded values")
register("loop", _loop, arity=(2, None), num_regions=1,
         doc="loop(max_trip_count, cond, *carried) regions {body}: ONNX Loop without scan outputs")
