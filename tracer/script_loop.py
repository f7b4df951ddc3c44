"""Staging a loop: find the loop-carried values, settle their types, record one `loop` op.

Why a fixpoint: the body is traced once with a parameter per carried leaf, typed like the
value before the loop. What the body yields may differ: a Python scalar meets a float32 array
(the parameter takes the array's dtype), an array grows (the differing dim becomes a fresh
symbol), a Python value turns out to change (it becomes carried). Each discovery re-traces the
body with the corrected parameters; types only ever widen, so this settles in a few rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ir.graph import Region, Value
from ir.types import TensorType

from . import script_state as S
from .core import Tracer, astype, emit, lift
from .errors import TraceError
from .script_state import Undefined

RETVAL = "_cs_retval"
MAX_ROUNDS = 8
_I64, _B1 = TensorType(np.int64, ()), TensorType(np.bool_, ())


def _run_in(ctx, region: Region, fn: Callable) -> Any:
    ctx.regions.append(region)
    try:
        return fn()
    finally:
        ctx.regions.pop()


class _Round:
    """One tracing of the body with given parameter types."""

    def __init__(self, ctx, specs: dict, bases: list, names: tuple):
        self.ctx = ctx
        self.keys = sorted(specs)
        self.region = Region()
        self.i = Value(_I64, None)
        params = [Value(specs[key][0], None) for key in self.keys]
        self.region.inputs = [self.i, Value(_B1, None), *params]
        self.params = {key: Tracer(ctx, v, None, specs[key][1]) for key, v in zip(self.keys, params)}
        self.values = []
        for vi, (name, base) in enumerate(zip(names, bases)):
            if S.is_undefined(base):
                self.values.append(Undefined(name))
                continue
            leaves = [self.params.get((vi, k), S.view(base, k)) for k in range(len(base.leaves))]
            self.values.append(S.rebuild(base, leaves))

    def run(self, item_fn, body_fn, get_state, set_state, next_cond) -> None:
        def go():
            set_state(tuple(self.values))
            body_fn(item_fn(Tracer(self.ctx, self.i)))
            self.after = S.snapshot(get_state())
            self.cond = next_cond() if next_cond is not None else None
        _run_in(self.ctx, self.region, go)


def staged_loop(ctx, trip: Any, cond0: Tracer, next_cond: Callable | None, item_fn: Callable, body_fn: Callable,
                get_state: Callable, set_state: Callable, names: tuple, loc: str) -> None:
    """Record a `loop` op running `body_fn(item_fn(i))` for i < trip (None: no limit) while the
    condition holds (`cond0` first, then `next_cond()` after each body); sets the new state."""
    s0 = S.snapshot(get_state())
    bases = list(s0)
    specs: dict[tuple[int, int], list] = {}
    for vi, v in enumerate(s0):
        if not S.is_undefined(v):
            for k, x in enumerate(v.leaves):
                if S.is_liftable(x):
                    specs[(vi, k)] = list(S.leaf_type(x, v.fields[k]))
    generalized: set[str] = set()
    for _ in range(MAX_ROUNDS):
        S.restore(s0, set_state)
        rnd = _Round(ctx, specs, bases, names)
        rnd.run(item_fn, body_fn, get_state, set_state, next_cond)
        if not _widen(ctx, rnd, specs, bases, names, generalized, loc):
            break
    else:
        raise TraceError(f"{loc}: the types of this loop's variables did not settle after {MAX_ROUNDS} tracings")
    S.restore(s0, set_state)
    set_state(_emit(ctx, rnd, specs, bases, s0, trip, cond0, names, loc))


def _widen(ctx, rnd: _Round, specs: dict, bases: list, names: tuple, generalized: set, loc: str) -> bool:
    """Compare what the body yields with the parameters; widen them; True when anything changed."""
    changed = False
    for vi, name in enumerate(names):
        base, after = bases[vi], rnd.after[vi]
        if S.is_undefined(base):
            if name == RETVAL and not S.is_undefined(after):
                # the return value before the loop: any value of its type (the flag says it is unset)
                from .script_runtime import zeros

                leaves = [zeros(ctx, *S.leaf_type(x, f)) if S.is_liftable(x) else x
                          for x, f in zip(after.leaves, after.fields)]
                bases[vi] = S.snapshot((S.rebuild(after, leaves),))[0]
                for k, x in enumerate(bases[vi].leaves):
                    if S.is_liftable(x):
                        specs[(vi, k)] = list(S.leaf_type(x, bases[vi].fields[k]))
                changed = True
            continue
        if S.is_undefined(after):
            raise TraceError(f"{loc}: variable {name!r} has a value before this loop but none after its body "
                             f"({after.value.why or 'it is undefined'})")
        if after.tree != base.tree:
            raise TraceError(f"{loc}: variable {name!r} changes structure in the loop body: {base.tree} before, "
                             f"{after.tree} after")
        for k, x in enumerate(after.leaves):
            key = (vi, k)
            if key not in specs:
                if S.same_leaf(x, base.leaves[k], after.fields[k], base.fields[k]):
                    continue
                raise TraceError(f"{loc}: variable {name!r} holds a {type(base.leaves[k]).__name__} that the body "
                                 f"of a loop on a traced condition changes (to a {type(x).__name__}); only numbers "
                                 "and arrays can be carried by a traced loop")
            if not S.is_liftable(x):
                raise TraceError(f"{loc}: variable {name!r} becomes a {type(x).__name__} in the loop body; "
                                 "a traced loop can only carry numbers and arrays")
            p, p_weak = specs[key]
            y, y_weak = S.leaf_type(x, after.fields[k])
            if y.rank != p.rank:
                raise TraceError(f"{loc}: variable {name!r} is {p} before the loop body and {y} after it; "
                                 "a loop-carried value cannot change rank")
            dtype, weak = S.unify_dtype((p.dtype, p_weak), (y.dtype, y_weak), f"{loc}: variable {name!r}")
            shape = []
            for dp, dy in zip(p.shape, y.shape):
                if dp == dy or dp in generalized:
                    shape.append(dp)
                else:
                    sym = ctx.fresh_symbol()
                    generalized.add(sym)
                    shape.append(sym)
            new = [TensorType(dtype, tuple(shape)), weak and p_weak]
            if new != [p, p_weak]:
                specs[key] = new
                changed = True
    return changed


def _emit(ctx, rnd: _Round, specs: dict, bases: list, s0: list, trip: Any, cond0: Tracer, names: tuple,
          loc: str) -> tuple:
    keys = rnd.keys

    def yields():
        cond = rnd.cond if rnd.cond is not None else lift(True, ctx, np.dtype(np.bool_))
        out = [cond._value]
        for vi, k in keys:
            t, weak = specs[(vi, k)]
            out.append(S.as_leaf_tracer(S.view(rnd.after[vi], k), ctx, t.dtype, weak)._value)
        return out

    rnd.region.outputs = _run_in(ctx, rnd.region, yields)
    inits = [S.as_leaf_tracer(S.view(bases[vi], k), ctx, specs[(vi, k)][0].dtype, specs[(vi, k)][1])
             for vi, k in keys]
    if trip is None:
        trip_t = lift(np.int64(np.iinfo(np.int64).max), ctx)
    else:
        trip_t = astype(lift(trip, ctx), np.int64)
    outs = emit("loop", [trip_t, cond0, *inits], {}, ctx=ctx, regions=(rnd.region,))
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    by_key = dict(zip(keys, outs))
    new_values = []
    for vi, name in enumerate(names):
        base = bases[vi]
        if S.is_undefined(base):
            new_values.append(Undefined(name, (
                f"{loc}: variable {name!r} is first assigned inside this loop on a traced condition and used "
                "after it; assign it before the loop (a traced loop may run zero times)")))
            continue
        leaves = []
        for k in range(len(base.leaves)):
            o = by_key.get((vi, k))
            if o is None:
                leaves.append(base.leaves[k])
                continue
            o._weak = specs[(vi, k)][1]
            original = s0[vi].leaves[k] if not S.is_undefined(s0[vi]) else None
            if isinstance(original, Tracer) and rnd.after[vi].leaves[k] is rnd.params[(vi, k)]:
                # the body changed the array in place (x[i] = v): so does the loop
                original._value, original._concrete, original._weak = o._value, None, o._weak
                o = original
            leaves.append(o)
        new_values.append(S.rebuild(base, leaves))
    return tuple(new_values)
