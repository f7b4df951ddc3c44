"""Kernels of the ops that own regions, `if` and `loop` (ONNX semantics; see ir/ops/control.py).

A region kernel runs nested executor `Program`s instead of NumPy code, so the reference
interpreter and the deployed runtime share it: `fn(step, inputs, env, slots, **attrs)`, where
`step.regions` are `runtime.executor.Program`s, `env` maps symbolic dims to their sizes and
`slots` holds every live value (regions read captured outer values from it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import dims as D
from .. import limits
from ..errors import KernelError, RuntimeInputError


def if_(step: Any, inputs: list, env: dict, slots: list, fresh: tuple = ()) -> Any:
    """Run the then region when the condition is true, else the else region.

    Example (as the executor calls it): `if_(step, [np.array(True)], env, slots)` returns what
    `step.regions[0]` yields (one array, or a tuple for several outputs).
    """
    branch = step.regions[0 if bool(inputs[0]) else 1]
    outs = branch.execute([], env, slots)
    return outs[0] if len(outs) == 1 else tuple(outs)


def _bind(program: Any, arrays: list, env: dict) -> dict:
    """A per-iteration env: the outer one plus the body's parameter symbols bound to this
    iteration's sizes (a loop-carried value may grow, so its dims are rebound every time)."""
    local = dict(env)
    for t, a in zip(program.input_types, arrays):
        for axis, d in enumerate(t.shape):
            if D.is_symbol(d):
                local[d] = np.shape(a)[axis]
    return local


def loop(step: Any, inputs: list, env: dict, slots: list) -> Any:
    """ONNX Loop: `while i < max_trip_count and cond: cond, *carried = body(i, cond, *carried)`.

    Example: with a body yielding `(c, h * 2)`, inputs `[5, True, 1.0]` return `32.0`.
    """
    body = step.regions[0]
    trip, cond, *carried = inputs
    n = int(trip)
    go = bool(cond)
    i = 0
    cap = limits.current().max_loop_iterations
    while i < n and go:
        if i >= cap:  # a hostile trip count (2**62) must not hang the caller
            raise RuntimeInputError(f"{step.label}: the loop ran {cap} iterations, max_loop_iterations "
                                    f"({limits.how_to_raise('max_loop_iterations')})")
        args = [np.asarray(i, np.int64), np.asarray(go), *carried]
        outs = body.execute(args, _bind(body, args, env), slots)
        if len(outs) != 1 + len(carried):
            raise KernelError(f"loop body yielded {len(outs)} values, expected {1 + len(carried)} ({step.label})")
        go = bool(outs[0])
        carried = list(outs[1:])
        i += 1
    if not carried:
        return ()
    return carried[0] if len(carried) == 1 else tuple(carried)


REGION_KERNELS = {"if": if_, "loop": loop}
