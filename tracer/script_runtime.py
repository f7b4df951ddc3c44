"""The helpers a `tracer.script`-rewritten function calls (AutoGraph's `ag__` operators).

Why they decide at run time: a condition is often a Python value (a flag, a static shape) and
sometimes a traced one. On Python values (and on `tracer.grad`'s concrete tracers) each helper
runs ordinary Python control flow; on a traced condition it records an `if` or `loop` op whose
regions are traced by running the branch or body functions once, with the variables they change
read and written through the statement's `get_state`/`set_state` accessors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ir.graph import Region
from ir.types import TensorType

from . import script_state as S
from .core import Tracer, astype, context_of, emit, lift
from .errors import TraceError
from .script_loop import staged_loop
from .script_state import Undefined

__all__ = ["Undefined", "if_stmt", "while_stmt", "for_stmt", "range_", "and_", "or_", "not_", "not_any",
           "if_exp", "return_value", "staged", "run_region"]

RETVAL = "_cs_retval"


def staged(x: Any) -> bool:
    """Whether `x` is a traced value whose truth is unknown until run time.

    >>> staged(True), staged(np.float32(1))
    (False, False)
    """
    if not isinstance(x, Tracer) or x._concrete is not None:
        return False
    return not isinstance(x._sym, int)


def truth(x: Any) -> bool:
    """Python truth of a non-staged condition (NumPy rules for arrays)."""
    return bool(x)


def condition(x: Tracer, loc: str) -> Tracer:
    """A traced condition as a bool scalar (NumPy truth: nonzero; size-1 arrays allowed)."""
    if x.ndim:
        if not all(d == 1 for d in x._value.type.shape):
            raise TraceError(f"{loc}: the condition is a traced {x._value.type}; a condition must be a scalar "
                             "(use .any() or .all())")
        x = x.reshape(())
    if x.dtype != np.bool_:
        x = np.not_equal(x, 0)
    return x


def run_region(ctx, fn: Callable[[], Any], region: Region | None = None) -> tuple[Region, Any]:
    """Run `fn` with new ops going into `region` (a new one by default); returns (region, result)."""
    region = region if region is not None else Region()
    ctx.regions.append(region)
    try:
        result = fn()
    finally:
        ctx.regions.pop()
    return region, result


# --- if ------------------------------------------------------------------------------------------
def if_stmt(cond: Any, then_fn: Callable, else_fn: Callable, get_state: Callable, set_state: Callable,
            names: tuple, loc: str) -> None:
    """`if cond: then_fn() else: else_fn()`, recorded as an `if` op when `cond` is traced.

    >>> if_stmt(True, lambda: print("then"), lambda: print("else"), lambda: (), lambda v: None, (), "")
    then
    """
    if not staged(cond):
        then_fn() if truth(cond) else else_fn()
        return
    ctx = context_of([cond])
    c = condition(cond, loc)
    s0 = S.snapshot(get_state())
    r_then, _ = run_region(ctx, then_fn)
    s1 = S.snapshot(get_state())
    S.restore(s0, set_state)
    r_else, _ = run_region(ctx, else_fn)
    s2 = S.snapshot(get_state())
    S.restore(s0, set_state)
    set_state(_merge(ctx, c, names, s0, s1, s2, r_then, r_else, loc))


def _merge(ctx, c: Tracer, names: tuple, s0: list, s1: list, s2: list, r_then: Region, r_else: Region,
           loc: str) -> tuple:
    """Record the `if` op yielding every leaf that differs between the branches; returns the
    variables' new values."""
    plan = []  # per variable: (var0, leaves or None, undefined marker or None)
    slots = []  # per op output: (then leaf, else leaf, dtype, weak, in-place object or None)
    for name, v0, a, b in zip(names, s0, s1, s2):
        if S.is_undefined(a) or S.is_undefined(b):
            if S.is_undefined(a) and S.is_undefined(b):
                plan.append((v0, None, a.value))
                continue
            if name != RETVAL:
                plan.append((v0, None, Undefined(name, (
                    f"{loc}: variable {name!r} is assigned in only one branch of this `if` on a traced "
                    "condition and is used after it; assign it in both branches (or before the `if`)"))))
                continue
            # where the return value is undefined the function has not returned yet: a later
            # `return` overwrites it, so any value of the right type does (zeros)
            a, b = (_zeros_like(ctx, b, r_then), b) if S.is_undefined(a) else (a, _zeros_like(ctx, a, r_else))
        if a.tree != b.tree:
            raise TraceError(f"{loc}: variable {name!r} has structure {a.tree} in the then branch but "
                             f"{b.tree} in the else branch")
        leaves = []
        for k in range(len(a.leaves)):
            la, lb = a.leaves[k], b.leaves[k]
            if S.same_leaf(la, lb, a.fields[k], b.fields[k]):
                leaves.append(la)
                continue
            if not (S.is_liftable(la) and S.is_liftable(lb)):
                raise TraceError(f"{loc}: variable {name!r} holds {_what(la)} in the then branch and {_what(lb)} "
                                 "in the else branch of an `if` on a traced condition; only numbers and arrays "
                                 "can differ between branches")
            (ta, wa), (tb, wb) = S.leaf_type(la, a.fields[k]), S.leaf_type(lb, b.fields[k])
            dtype, weak = S.unify_dtype((ta.dtype, wa), (tb.dtype, wb), f"{loc}: variable {name!r}")
            if ta.rank != tb.rank:
                raise TraceError(f"{loc}: variable {name!r} is {ta} in the then branch but {tb} in the else "
                                 "branch; the ranks must agree (use np.broadcast_to or np.zeros_like)")
            inplace = None
            if k < len(v0.leaves) and v0.leaves[k] is la is lb and isinstance(la, Tracer):
                inplace = la
            leaves.append(_Slot(len(slots)))
            slots.append((S.view(a, k), S.view(b, k), dtype, weak, inplace))
        plan.append((a, leaves, None))
    outs = _emit_if(ctx, c, slots, r_then, r_else)
    new_values = []
    for var, leaves, undef in plan:
        if undef is not None:
            new_values.append(undef)
        elif not any(isinstance(x, _Slot) for x in leaves):
            new_values.append(var.value)
        else:
            new_values.append(S.rebuild(var, [outs[x.i] if isinstance(x, _Slot) else x for x in leaves]))
    return tuple(new_values)


class _Slot:
    """Marks a leaf that the `if` op outputs (index into its outputs)."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


def _what(x: Any) -> str:
    return "an undefined value" if isinstance(x, Undefined) else f"a {type(x).__name__}"


def _zeros_like(ctx, var: S.Var, region: Region) -> S.Var:
    """A stand-in with `var`'s structure and types, all zeros, built inside `region`."""
    def make():
        leaves = []
        for k, x in enumerate(var.leaves):
            if not S.is_liftable(x):
                leaves.append(x)
                continue
            t, weak = S.leaf_type(x, var.fields[k])
            leaves.append(zeros(ctx, t, weak))
        return leaves
    _, leaves = run_region(ctx, make, region)
    return S.snapshot((S.rebuild(var, leaves),))[0]


def zeros(ctx, t: TensorType, weak: bool = False) -> Tracer:
    """A traced zero tensor of type `t` (symbolic dims allowed)."""
    z = lift(np.zeros((), t.dtype), ctx)
    if t.rank:
        z = emit("broadcast_to", [z], {"shape": t.shape}, ctx=ctx)
    z._weak = weak
    return z


def _emit_if(ctx, c: Tracer, slots: list, r_then: Region, r_else: Region) -> list:
    if not slots:
        return []
    fresh = []
    for branch, region in ((0, r_then), (1, r_else)):
        def yields(branch=branch):
            return [S.as_leaf_tracer(s[branch], ctx, s[2], s[3])._value for s in slots]
        _, region.outputs = run_region(ctx, yields, region)
    for a, b in zip(r_then.outputs, r_else.outputs):
        for da, db in zip(a.type.shape, b.type.shape):
            if da != db:
                fresh.append(ctx.fresh_symbol())
    outs = emit("if", [c], {"fresh": tuple(fresh)} if fresh else {}, ctx=ctx, regions=(r_then, r_else))
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    for o, s in zip(outs, slots):
        o._weak = s[3]
        if s[4] is not None:  # a tracer changed in place in a branch: change it in place here too
            s[4]._value, s[4]._concrete, s[4]._weak = o._value, None, o._weak
            o = s[4]
    return [s[4] if s[4] is not None else o for o, s in zip(outs, slots)]


def if_exp(cond: Any, then_fn: Callable, else_fn: Callable, loc: str) -> Any:
    """`then_fn() if cond else else_fn()`; an `if` op when `cond` is traced.

    >>> if_exp(False, lambda: 1, lambda: 2, "")
    2
    """
    if not staged(cond):
        return then_fn() if truth(cond) else else_fn()
    box = [None]
    if_stmt(cond, lambda: box.__setitem__(0, then_fn()), lambda: box.__setitem__(0, else_fn()),
            lambda: (box[0],), lambda v: box.__setitem__(0, v[0]), ("<expression>",), loc)
    return box[0]


# --- loops ---------------------------------------------------------------------------------------
class TracedRange:
    """`range(start, stop, step)` with traced bounds (the step must be a Python int)."""

    def __init__(self, start: Any, stop: Any, step: int):
        self.start, self.stop, self.step = start, stop, step

    def trip_count(self) -> Any:
        """max(0, ceil((stop - start) / step)), traced."""
        if isinstance(self.start, int) and self.start == 0 and self.step > 0:
            n = self.stop
        else:
            n = self.stop - self.start if self.step > 0 else self.start - self.stop
        s = abs(self.step)
        if s != 1:
            n = (n + (s - 1)) // s
        return np.maximum(n, 0)

    def item(self, i: Tracer) -> Any:
        out = i
        if self.step != 1:
            out = out * self.step
        if not (isinstance(self.start, int) and self.start == 0):
            out = out + self.start
        return out


def range_(*args: Any) -> range | TracedRange:
    """`range(...)` that stays a Python range on Python ints and becomes traced otherwise.

    >>> range_(3)
    range(0, 3)
    """
    if not any(staged(a) for a in args):
        return range(*(int(a) if not isinstance(a, int) else a for a in args))
    if len(args) == 1:
        start, stop, step = 0, args[0], 1
    else:
        start, stop, step = args[0], args[1], args[2] if len(args) > 2 else 1
    if staged(step):
        raise TraceError("range() with a traced step is not supported in a traced loop; the step must be a "
                         "Python int")
    step = int(step)
    if step == 0:
        raise ValueError("range() arg 3 must not be zero")
    return TracedRange(start, stop, step)


def while_stmt(cond_fn: Callable, body_fn: Callable, get_state: Callable, set_state: Callable, names: tuple,
               loc: str) -> None:
    """`while cond_fn(): body_fn()`; the rest of the loop is a `loop` op once the condition is traced.

    >>> n = [0]
    >>> while_stmt(lambda: n[0] < 3, lambda: n.__setitem__(0, n[0] + 1), lambda: (), lambda v: None, (), "")
    >>> n[0]
    3
    """
    while True:
        c = cond_fn()
        if staged(c):
            ctx = context_of([c])
            staged_loop(ctx, None, condition(c, loc), lambda: condition_or_true(ctx, cond_fn(), loc),
                        lambda i: None, lambda item: body_fn(), get_state, set_state, names, loc)
            return
        if not truth(c):
            return
        body_fn()


def condition_or_true(ctx, c: Any, loc: str) -> Tracer:
    """A condition as a traced bool scalar (Python values become constants)."""
    if isinstance(c, Tracer):
        return astype(condition(c, loc), np.bool_) if c.ndim or c.dtype != np.bool_ else c
    return lift(bool(c), ctx, np.dtype(np.bool_))


def for_stmt(iterable: Any, cond_fn: Callable | None, body_fn: Callable, get_state: Callable,
             set_state: Callable, names: tuple, loc: str) -> None:
    """`for item in iterable: body_fn(item)` while `cond_fn()` (break/return flags) holds.

    A `TracedRange`, or a traced array whose first dim is symbolic, gives a `loop` op; Python
    iterables run in Python (a `range` switches to a `loop` op when a flag becomes traced).

    >>> seen = []
    >>> for_stmt(range(3), None, seen.append, lambda: (), lambda v: None, (), "")
    >>> seen
    [0, 1, 2]
    """
    if isinstance(iterable, TracedRange):
        _stage_range(iterable, cond_fn, body_fn, get_state, set_state, names, loc)
        return
    if isinstance(iterable, Tracer) and iterable.ndim and not isinstance(iterable._value.type.shape[0], int) \
            and iterable._concrete is None:
        rows = iterable
        n = rows.shape[0]
        _stage(context_of([rows]), n, cond_fn, lambda i: rows[i], body_fn, get_state, set_state, names, loc)
        return
    if isinstance(iterable, range):
        for item in iterable:
            if cond_fn is not None:
                c = cond_fn()
                if staged(c):
                    rest = TracedRange(item, iterable.stop, iterable.step)
                    _stage_range(rest, cond_fn, body_fn, get_state, set_state, names, loc, c)
                    return
                if not truth(c):
                    return
            body_fn(item)
        return
    for item in iterable:
        if cond_fn is not None:
            c = cond_fn()
            if staged(c):  # a traced break: the remaining iterations each run under an `if`
                if_stmt(c, lambda item=item: body_fn(item), lambda: None, get_state, set_state, names, loc)
                continue
            if not truth(c):
                return
        body_fn(item)


def _stage_range(r: TracedRange, cond_fn, body_fn, get_state, set_state, names, loc, c0=None) -> None:
    ctx = context_of([x for x in (r.start, r.stop, c0) if isinstance(x, Tracer)])
    _stage(ctx, r.trip_count(), cond_fn, r.item, body_fn, get_state, set_state, names, loc, c0)


def _stage(ctx, trip: Any, cond_fn, item_fn, body_fn, get_state, set_state, names, loc, c0=None) -> None:
    if c0 is None:
        c0 = cond_fn() if cond_fn is not None else True
    cond0 = condition_or_true(ctx, c0, loc)
    next_cond = (lambda: condition_or_true(ctx, cond_fn(), loc)) if cond_fn is not None else None
    staged_loop(ctx, trip, cond0, next_cond, item_fn, body_fn, get_state, set_state, names, loc)


# --- expressions ---------------------------------------------------------------------------------
def and_(*thunks: Callable) -> Any:
    """`a and b and ...`: Python short-circuit on Python values, np.logical_and once traced.

    >>> and_(lambda: 1, lambda: 0)
    0
    """
    value = thunks[0]()
    for t in thunks[1:]:
        if staged(value):
            value = np.logical_and(value, t())
        elif not truth(value):
            return value
        else:
            value = t()
    return value


def or_(*thunks: Callable) -> Any:
    """`a or b or ...`: Python short-circuit on Python values, np.logical_or once traced.

    >>> or_(lambda: 0, lambda: 2)
    2
    """
    value = thunks[0]()
    for t in thunks[1:]:
        if staged(value):
            value = np.logical_or(value, t())
        elif truth(value):
            return value
        else:
            value = t()
    return value


def not_(x: Any) -> Any:
    """`not x`; np.logical_not for traced values.

    >>> not_(0)
    True
    """
    return np.logical_not(x) if staged(x) else not x


def not_any(*flags: Any) -> Any:
    """`not (f1 or f2 ...)` for the break/continue/return flags the rewrite introduces.

    >>> not_any(False, False)
    True
    """
    out: Any = True
    for f in flags:
        if staged(f):
            out = np.logical_and(out, np.logical_not(f)) if isinstance(out, Tracer) else np.logical_not(f)
        elif truth(f):
            return False
    return out


def return_value(returned: Any, value: Any, always: bool, loc: str) -> Any:
    """The function's result after its `return`s became flags (None when it fell off the end)."""
    if always:
        return value
    if staged(returned):
        raise TraceError(f"{loc}: the function returns a value on some paths and falls off the end (None) on "
                         "others, depending on a traced condition; add a final `return`")
    if not truth(returned) or isinstance(value, Undefined):
        return None
    return value

