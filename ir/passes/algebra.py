"""Algebraic simplification: identities that hold for every input, one rule per op kind.

`x+0`, `x-0`, `x*1`, `x/1`, `x**1` -> `x` (when broadcasting does not change x's type);
`x*0` -> zeros only for integer/bool x or x known to be finite (for floats `inf*0` is NaN);
double negation (`neg`, `logical_not`, `bitwise_not`); `transpose` of `transpose` (composed, or
removed when the composition is the identity); `reshape` of `reshape`; identity reshapes,
broadcasts, casts, transposes and slices that cover every axis; cast chains whose first cast is
lossless; `where(c, x, x)`; `maximum(x, x)`; reductions over no axis or only size-1 axes.
"""

from __future__ import annotations

import numpy as np

from ..graph import Graph, Op, Value
from .base import PassResult
from .rewrite import Rewriter, const_value, rewrite_graph


def splat(v: Value) -> float | int | bool | None:
    """The single value every element of `v` holds, when `v` is a constant or `full` (else None)."""
    p = v.producer
    if p is None:
        return None
    if p.kind == "full":
        return p.attrs["value"][()]
    a = const_value(v)
    if a is None or a.size == 0:
        return None
    first = a.reshape(-1)[0]
    if np.all(a == first) and not (a.dtype.kind == "f" and np.signbit(a).any() != np.signbit(a).all()):
        return first
    return None


def _is(v: Value, target) -> bool:
    s = splat(v)
    return s is not None and s == target


FINITE_UNARY = frozenset({"neg", "abs", "relu", "sigmoid", "tanh", "sin", "cos", "erf", "normal_cdf", "floor", "ceil",
                          "trunc", "round", "sign", "atan", "softsign"})


def known_finite(v: Value, depth: int = 0) -> bool:
    """True when every element of `v` is finite for any input (integer/bool dtypes, casts from
    them, bounded functions of finite values, finite constants)."""
    if v.dtype.kind in "biu":
        return True
    p = v.producer
    if p is None or depth > 8:
        return False
    if p.kind == "cast":
        return p.inputs[0].dtype.kind in "biu"
    if p.kind in ("constant", "full"):
        a = p.attrs["value"]
        return bool(np.isfinite(a).all())
    if p.kind in FINITE_UNARY:
        return known_finite(p.inputs[0], depth + 1)
    return False


def _keeps(op: Op, x: Value) -> bool:
    return x.type == op.output.type


def _binary(op: Op, rw: Rewriter):
    a, b = op.inputs
    k = op.kind
    if k in ("add", "sub") and _is(b, 0) and _keeps(op, a):
        return a
    if k == "add" and _is(a, 0) and _keeps(op, b):
        return b
    if k in ("mul", "div", "pow") and _is(b, 1) and _keeps(op, a):
        return a
    if k == "mul" and _is(a, 1) and _keeps(op, b):
        return b
    if k == "mul":
        for x, z in ((a, b), (b, a)):
            if _is_zero(z) and (x.dtype.kind in "biu" or known_finite(x) and not _negative_zero_possible(x)):
                return rw.add("full", [], {"shape": op.output.type.shape,
                                           "value": np.zeros((), op.output.dtype)})
    if k in ("maximum", "minimum", "fmax", "fmin") and a is b and _keeps(op, a):
        return a
    if k in ("bitwise_and", "bitwise_or", "logical_and", "logical_or") and a is b and _keeps(op, a):
        return a
    return None


def _is_zero(v: Value) -> bool:
    s = splat(v)
    return s is not None and s == 0 and not np.signbit(s)


def _negative_zero_possible(x: Value) -> bool:
    # x*0 is -0.0 for negative x; only values that are never negative fold to +0.0 exactly
    p = x.producer
    if p is None:
        return True
    if p.kind == "cast":
        return p.inputs[0].dtype.kind == "i"
    if p.kind in ("constant", "full"):
        return bool(np.signbit(p.attrs["value"]).any())
    return p.kind not in ("abs", "relu", "sigmoid")


INVOLUTIONS = frozenset({"neg", "logical_not", "bitwise_not"})


def _unary(op: Op, rw: Rewriter):
    x = op.inputs[0]
    p = x.producer
    if op.kind in INVOLUTIONS and p is not None and p.kind == op.kind and _keeps(op, p.inputs[0]):
        return p.inputs[0]
    return None


def _transpose(op: Op, rw: Rewriter):
    x = op.inputs[0]
    perm = op.attrs["perm"]
    if perm == tuple(range(len(perm))):
        return x
    p = x.producer
    if p is not None and p.kind == "transpose":
        inner = p.attrs["perm"]
        composed = tuple(inner[i] for i in perm)
        if composed == tuple(range(len(composed))):
            return p.inputs[0]
        return rw.add("transpose", [p.inputs[0]], {"perm": composed})
    return None


def _reshape(op: Op, rw: Rewriter):
    x = op.inputs[0]
    if _keeps(op, x):
        return x
    p = x.producer
    if p is not None and p.kind == "reshape":
        src = p.inputs[0]
        if src.type.shape == op.output.type.shape:
            return src
        return rw.add("reshape", [src], {"shape": op.attrs["shape"]})
    return None


def _identity_if_same(op: Op, rw: Rewriter):
    return op.inputs[0] if _keeps(op, op.inputs[0]) else None


def _cast(op: Op, rw: Rewriter):
    x = op.inputs[0]
    if _keeps(op, x):
        return x
    p = x.producer
    if p is not None and p.kind == "cast":
        src, mid, dst = p.inputs[0].dtype, x.dtype, op.output.dtype
        lossless = np.can_cast(src, mid, "safe")
        # float->int conversion of the same real value agrees; int->int wraps modulo either way
        if lossless and (dst.kind not in "iu" or src.kind in "biu" or mid.kind == src.kind):
            if dst == src:
                return p.inputs[0]
            return rw.add("cast", [p.inputs[0]], {"dtype": dst})
    return None


def _slice(op: Op, rw: Rewriter):
    x = op.inputs[0]
    shape = x.type.shape
    a = op.attrs
    if all(s == 1 for s in a["steps"]) and all(st == 0 for st in a["starts"]) and tuple(a["stops"]) == shape:
        return x
    return None


def _where(op: Op, rw: Rewriter):
    _, a, b = op.inputs
    if a is b and _keeps(op, a):
        return a
    return None


def _reduce(op: Op, rw: Rewriter):
    x = op.inputs[0]
    # a reduction over no axis, or over axes of size 1 kept as size 1, is the identity
    if _keeps(op, x) and all(x.type.shape[i] == 1 for i in op.attrs["axes"]):
        return x
    return None


def _concat(op: Op, rw: Rewriter):
    return op.inputs[0] if len(op.inputs) == 1 else None


RULES = {
    **{k: _binary for k in ("add", "sub", "mul", "div", "pow", "maximum", "minimum", "fmax", "fmin",
                            "bitwise_and", "bitwise_or", "logical_and", "logical_or")},
    **{k: _unary for k in INVOLUTIONS},
    "transpose": _transpose, "reshape": _reshape, "broadcast_to": _identity_if_same, "cast": _cast,
    "slice": _slice, "where": _where, "concat": _concat, "tile": _identity_if_same,
    **{k: _reduce for k in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod")},
}


def simplify(op: Op, rw: Rewriter):
    """The rule for one op: a replacement list, or None."""
    rule = RULES.get(op.kind)
    if rule is None or op.regions:
        return None
    out = rule(op, rw)
    return None if out is None else [out]


class AlgebraicSimplification:
    """Apply the identities of this module.

    >>> import tracer, numpy as np
    >>> g = tracer.trace(lambda x: -(-x).T.T * 1.0 + 0.0, np.zeros((2, 3)))
    >>> print(AlgebraicSimplification().run(g).graph.outputs[0])
    Value(%x: f64[2,3])
    """

    name = "algebra"

    def run(self, graph: Graph) -> PassResult:
        """Simplify in place (dead ops are left for DCE).

        >>> import tracer
        >>> AlgebraicSimplification().run(tracer.trace(lambda x: x * 1.0, 2.0)).graph.outputs
        [Value(%x: f64[])]
        """
        return PassResult(graph, rewrite_graph(graph, simplify, uses=False))
