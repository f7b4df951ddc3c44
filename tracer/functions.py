"""Implementations of NumPy array functions on tracers, registered into `FUNCTIONS`.

Each mirrors NumPy 2's signature and result dtype; a call NumPy would reject is rejected here
too (with a `TraceError` naming the user's line).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from ir.types import as_dtype
from runtime import dims as D

from .core import Tracer, astype, context_of, emit, lift, reshape_static
from .errors import trace_error
from .numpy_api import FUNCTIONS, dispatch_ufunc


def implements(*funcs):
    def deco(fn):
        for f in funcs:
            FUNCTIONS[f] = fn
        return fn
    return deco


def T(x: Any, ctx=None) -> Tracer:
    """Any array-like as a tracer of the current trace."""
    return lift(x, ctx or context_of([x]))


def sym(d: Any) -> Any:
    """A dim given by the user: an int, a symbol tracer from `x.shape`, or a traced shape expression."""
    if isinstance(d, Tracer):
        if d._sym is not None:
            return d._sym
        if d._concrete is not None:
            return int(d._concrete)
        raise trace_error("a size computed from traced data (not from shapes) was used as a dim",
                          "sizes must come from x.shape and arithmetic on it")
    if isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)):
        return int(d)
    if isinstance(d, str):  # a symbolic dim taken from a type (internal callers pass raw shapes)
        return d
    raise trace_error(f"expected an integer dim, got {type(d).__name__} {d!r}")


def shape_arg(shape: Any) -> tuple:
    if isinstance(shape, (int, np.integer, Tracer)):
        shape = (shape,)
    return tuple(sym(d) for d in shape)


def norm_axes(axis, rank: int) -> tuple:
    if axis is None:
        return tuple(range(rank))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axes:
        a = int(a)
        if not -rank <= a < rank:
            raise trace_error(f"axis {a} is out of bounds for an array of dimension {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise trace_error(f"duplicate value in axis {axis}")
    return tuple(sorted(out))


def raw_shape(x: Tracer) -> tuple:
    return x._value.type.shape


# --- reductions ------------------------------------------------------------------------------

@cache
def _result_dtype(fn_name: str, dtype: np.dtype) -> np.dtype:
    fn = getattr(np, fn_name)
    with np.errstate(all="ignore"):
        return np.asarray(fn(np.ones((1,), dtype))).dtype


def _reduce(kind: str, np_name: str, x, axis=None, dtype=None, keepdims=False, initial=None, where=None,
            out=None):
    if out is not None or initial is not None or where is not None:
        raise trace_error(f"np.{np_name}: out=/initial=/where= are not supported when tracing")
    x = T(x)
    acc = as_dtype(dtype) if dtype is not None else _result_dtype(np_name, x.dtype)
    axes = norm_axes(axis, x.ndim)
    if kind in ("reduce_max", "reduce_min") and any(raw_shape(x)[a] == 0 for a in axes):
        raise trace_error(f"zero-size array to reduction operation {np_name} which has no identity")
    x = astype(x, acc)
    if not axes and x.ndim:
        return x
    return emit(kind, [x], {"axes": axes, "keepdims": bool(keepdims)})


@implements(np.sum)
def sum_(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    return _reduce("reduce_sum", "sum", a, axis, dtype, keepdims, initial, where, out)


@implements(np.prod)
def prod(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    return _reduce("reduce_prod", "prod", a, axis, dtype, keepdims, initial, where, out)


@implements(np.max, np.amax)
def max_(a, axis=None, out=None, keepdims=False, initial=None, where=None):
    return _reduce("reduce_max", "max", a, axis, None, keepdims, initial, where, out)


@implements(np.min, np.amin)
def min_(a, axis=None, out=None, keepdims=False, initial=None, where=None):
    return _reduce("reduce_min", "min", a, axis, None, keepdims, initial, where, out)


@implements(np.any)
def any_(a, axis=None, out=None, keepdims=False, *, where=None):
    return _any_all(True, a, axis, out, keepdims, where)


@implements(np.all)
def all_(a, axis=None, out=None, keepdims=False, *, where=None):
    return _any_all(False, a, axis, out, keepdims, where)


def _any_all(is_any: bool, a, axis, out, keepdims, where):
    """np.any / np.all: the max / min of bools when every reduced axis is statically non-empty;
    else a count (reduce_sum has an identity), so that any() of nothing is False, all() True."""
    x = astype(T(a), np.bool_)
    shape = raw_shape(x)
    if all(isinstance(shape[ax], int) and shape[ax] > 0 for ax in norm_axes(axis, x.ndim)):
        kind, name = ("reduce_max", "max") if is_any else ("reduce_min", "min")
        return _reduce(kind, name, x, axis, None, keepdims, None, where, out)
    counted = astype(x if is_any else np.logical_not(x), np.int64)
    n = _reduce("reduce_sum", "any" if is_any else "all", counted, axis, np.int64, keepdims, None, where, out)
    return np.greater(n, 0) if is_any else np.equal(n, 0)


@implements(np.mean)
def mean(a, axis=None, dtype=None, out=None, keepdims=False, *, where=None):
    x = T(a)
    acc = as_dtype(dtype) if dtype is not None else _result_dtype("mean", x.dtype)
    if out is not None or where is not None:
        raise trace_error("np.mean: out=/where= are not supported when tracing")
    axes = norm_axes(axis, x.ndim)
    x = astype(x, acc)
    if not axes and x.ndim:
        return x
    return emit("reduce_mean", [x], {"axes": axes, "keepdims": bool(keepdims)})


def _count(x: Tracer, axes: tuple):
    """Number of reduced elements: an int, or a traced int64 that keeps its symbolic value."""
    n = 1
    for a in axes:
        n = n * x.shape[a]
    return n


@implements(np.var)
def var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=None, mean=None,
        correction=None):
    if out is not None or where is not None or mean is not None:
        raise trace_error("np.var: out=/where=/mean= are not supported when tracing")
    x = T(a)
    if correction is not None:
        ddof = correction
    acc = as_dtype(dtype) if dtype is not None else _result_dtype("var", x.dtype)
    x = astype(x, acc)
    axes = norm_axes(axis, x.ndim)
    n = _count(x, axes)

    def as_acc(count):
        return astype(count, acc) if isinstance(count, Tracer) else np.asarray(max(count, 0), acc)

    # NumPy's _var: the mean is sum/n in the accumulation dtype (not np.mean, which sums float16
    # in float32), so float16 results match bit for bit
    mu = emit("reduce_sum", [x], {"axes": axes, "keepdims": True}) / as_acc(n)
    d = x - mu
    s = emit("reduce_sum", [d * d], {"axes": axes, "keepdims": bool(keepdims)})
    return s / as_acc(n - ddof)


@implements(np.std)
def std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=None, mean=None,
        correction=None):
    return np.sqrt(var(a, axis, dtype, out, ddof, keepdims, where=where, mean=mean, correction=correction))


def _argreduce(kind, a, axis=None, out=None, *, keepdims=False):
    if out is not None:
        raise trace_error(f"np.{kind}: out= is not supported when tracing")
    x = T(a)
    if axis is None:  # over the flattened array; keepdims keeps every axis, with size 1
        y = emit(kind, [reshape_static(x, (D.product(raw_shape(x)),))], {"axis": 0, "keepdims": False})
        return reshape_static(y, (1,) * x.ndim) if keepdims else y
    (axis,) = norm_axes(axis, x.ndim)
    return emit(kind, [x], {"axis": axis, "keepdims": bool(keepdims)})


@implements(np.argmax)
def argmax(a, axis=None, out=None, *, keepdims=False):
    return _argreduce("argmax", a, axis, out, keepdims=keepdims)


@implements(np.argmin)
def argmin(a, axis=None, out=None, *, keepdims=False):
    return _argreduce("argmin", a, axis, out, keepdims=keepdims)


@implements(np.cumsum)
def cumsum(a, axis=None, dtype=None, out=None):
    x = T(a)
    if axis is None:
        x = reshape_static(x, (D.product(raw_shape(x)),))
        axis = 0
    (axis,) = norm_axes(axis, x.ndim)
    acc = as_dtype(dtype) if dtype is not None else _result_dtype("cumsum", x.dtype)
    return emit("cumsum", [astype(x, acc)], {"axis": axis})


_UFUNC_REDUCE = {np.add: sum_, np.multiply: prod, np.maximum: max_, np.minimum: min_,
                 np.logical_and: all_, np.logical_or: any_}


def ufunc_reduce(ufunc, x, axis=0, dtype=None, keepdims=False, **kw):
    """`np.add.reduce(x, axis)` and friends."""
    fn = _UFUNC_REDUCE.get(ufunc)
    if fn is None or kw:
        raise trace_error(f"np.{ufunc.__name__}.reduce is not supported when tracing")
    if dtype is not None:
        x = astype(T(x), dtype)
    return fn(x, axis=axis, keepdims=keepdims)


# --- linear algebra --------------------------------------------------------------------------

def _promote(*xs):
    ctx = context_of(xs)
    ts = [lift(x, ctx) for x in xs]
    dt = np.result_type(*[t.dtype for t in ts])
    return [astype(t, dt) for t in ts]


@implements(np.matmul)
def matmul(a, b, out=None, **kw):
    if out is not None or kw:
        raise trace_error("np.matmul: out= and other keywords are not supported when tracing")
    a, b = _promote(a, b)
    if a.dtype == np.bool_:
        raise trace_error("matmul of bool arrays is not supported when tracing")
    return emit("matmul", [a, b])


@implements(np.dot)
def dot(a, b, out=None):
    a, b = _promote(a, b)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    if b.ndim <= 2:
        return emit("matmul", [a, b])
    raise trace_error("np.dot with an operand of rank > 2 is not supported; use np.matmul or np.einsum")


@implements(np.einsum)
def einsum(subscripts, *operands, out=None, dtype=None, optimize=False, **kw):
    if not isinstance(subscripts, str) or out is not None or kw:
        raise trace_error("np.einsum needs a subscripts string first and no out=")
    eq = subscripts.replace(" ", "")
    ins = eq.split("->")[0].split(",")
    if "..." in eq:
        raise trace_error("np.einsum with '...' is not supported when tracing; spell out the indices")
    if "->" not in eq:
        letters = "".join(ins)
        eq += "->" + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    ts = _promote(*operands)
    if dtype is not None:
        ts = [astype(t, dtype) for t in ts]
    return emit("einsum", ts, {"equation": eq})


@implements(np.outer)
def outer(a, b, out=None):
    a, b = _promote(a, b)
    return reshape_static(a, (D.product(raw_shape(a)), 1)) * reshape_static(b, (D.product(raw_shape(b)),))


@implements(np.tensordot)
def tensordot(a, b, axes=2):
    a, b = _promote(a, b)
    if isinstance(axes, int):
        ax_a, ax_b = list(range(a.ndim - axes, a.ndim)), list(range(axes))
    else:
        ax_a, ax_b = [list(np.atleast_1d(x)) for x in axes]
    letters = "abcdefghijklmnopqrstuvwxyz"
    sa = list(letters[:a.ndim])
    sb = list(letters[a.ndim:a.ndim + b.ndim])
    for i, j in zip(ax_a, ax_b):
        sb[j % b.ndim] = sa[i % a.ndim]
    out = [c for c in sa if c not in [sa[i % a.ndim] for i in ax_a]] + [c for k, c in enumerate(sb)
                                                                      if k not in [j % b.ndim for j in ax_b]]
    return emit("einsum", [a, b], {"equation": f"{''.join(sa)},{''.join(sb)}->{''.join(out)}"})


# --- elementwise helpers that are functions, not ufuncs ---------------------------------------

@implements(np.where)
def where(condition, x=None, y=None):
    if x is None or y is None:
        raise trace_error("np.where(cond) with one argument has a data-dependent size",
                          "use the three-argument np.where(cond, x, y), or boolean indexing")
    ctx = context_of([condition, x, y])
    cond = astype(lift(condition, ctx), np.bool_)
    dt = _result_type(x, y)
    out = emit("where", [cond, lift(x, ctx, dt), lift(y, ctx, dt)])
    return out


def _result_type(*xs) -> np.dtype:
    from .numpy_api import _dtype_arg

    # weak Python scalar types become values of that type, which np.result_type treats as weak
    return np.result_type(*[a(0) if isinstance(a, type) else a for a in map(_dtype_arg, xs)])


@implements(np.clip)
def clip(a, a_min=None, a_max=None, out=None, *, min=None, max=None, **kw):
    if out is not None or kw:
        raise trace_error("np.clip: out= is not supported when tracing")
    lo = a_min if a_min is not None else min
    hi = a_max if a_max is not None else max
    x = a
    if lo is not None:
        x = np.maximum(x, lo)
    if hi is not None:
        x = np.minimum(x, hi)
    return x


@implements(np.round, np.around)
def round_(a, decimals=0, out=None):
    if decimals != 0 or out is not None:
        raise trace_error("np.round: only decimals=0 is supported when tracing")
    x = T(a)
    if x.dtype.kind in "iu":
        return x
    return np.rint(x)  # np.round(bool) is float16, like np.rint


@implements(np.isclose)
def isclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    # NumPy's formula: within tolerance of a finite b, or equal (infinities of the same sign)
    diff = np.abs(np.subtract(a, b))
    ok = np.logical_and(np.less_equal(diff, np.add(atol, np.multiply(rtol, np.abs(b)))), np.isfinite(b))
    ok = np.logical_or(ok, np.equal(a, b))
    if equal_nan:
        ok = np.logical_or(ok, np.logical_and(np.isnan(a), np.isnan(b)))
    return ok


def ufunc(f, *args):
    return dispatch_ufunc(f, "__call__", args, {})
