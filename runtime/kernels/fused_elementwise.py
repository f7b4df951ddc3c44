"""Kernel of `fused_elementwise`: a chain of elementwise ops run step by step into reused buffers.

Why a kernel of its own instead of running the region like an `if` branch: an unfused chain
allocates a fresh full-size array per op (PERF_NOTES.md pitfall 1: fresh multi-megabyte results
page-fault on every call). Here each ufunc writes with `out=` into a buffer owned by the call,
either an intermediate that dies at that very step (in place: same shape and dtype, so
elementwise ufuncs may overwrite it) or one freed by an earlier step, so a chain of any length
touches about two full-size buffers. The arithmetic is the same ufunc on the same dtypes as the
unfused ops, so results are bit-identical.

It is a region kernel (`fn(step, inputs, env, slots)`, see `runtime.kernels.control`):
`step.regions[0]` is the executor `Program` of the chain; values the region captures from
enclosing scopes are read from `slots`. The step plan (which ufunc, which buffers die where) is
built once per program and cached on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .elementwise import UFUNCS


class _Plan:
    """Per program: for each step its ufunc (None: call the kernel), whether it may write into a
    dying input, and the ids of the call-owned intermediates that die after it."""

    __slots__ = ("steps", "inputs", "outputs")

    def __init__(self, program: Any):
        self.inputs = tuple(program.inputs)
        self.outputs = tuple(program.outputs)
        last: dict[int, int] = {}
        for j, s in enumerate(program.steps):
            for v in s.inputs:
                last[v] = j
        keep = set(self.outputs) | set(self.inputs)
        dies: dict[int, list[int]] = {}
        for v, j in last.items():
            if v not in keep:
                dies.setdefault(j, []).append(v)
        self.steps = []
        for j, s in enumerate(program.steps):
            ufunc = UFUNCS.get(s.kind)
            if ufunc is not None and ufunc.nout != 1:
                ufunc = None
            self.steps.append((s, ufunc, {}, tuple(dies.get(j, ()))))


def _plan(program: Any) -> _Plan:
    plan = getattr(program, "_fused_plan", None)
    if plan is None:
        plan = program._fused_plan = _Plan(program)
    return plan


def _new_buffer(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A fresh buffer for a step's result (one place, so tests can count allocations)."""
    return np.empty(shape, dtype)


def _out_dtype(ufunc: np.ufunc, cache: dict, dtypes: tuple) -> np.dtype:
    dt = cache.get(dtypes)
    if dt is None:
        dt = cache[dtypes] = ufunc.resolve_dtypes(dtypes + (None,))[-1]
    return dt


def _run(program: Any, inputs: Sequence[Any], slots: Sequence[Any] | None, final: np.ndarray | None) -> list:
    """The chain's outputs; with `final`, the last step writes the (single) output into it."""
    plan = _plan(program)
    vals: dict[int, Any] = dict(zip(plan.inputs, inputs))
    owned: set[int] = set()  # ids of values held in buffers this call allocated
    free: dict[tuple, list[np.ndarray]] = {}  # (shape, dtype) -> buffers no value holds any more
    last = len(plan.steps) - 1
    for j, (s, ufunc, dtype_cache, dying) in enumerate(plan.steps):
        if s.kind == "constant":
            vals[s.outputs[0]] = s.attrs["value"]
            continue
        ins = [vals[i] if i in vals else slots[i] for i in s.inputs]
        if ufunc is None:
            out = s.kernel(*ins, **s.attrs)
            if any(np.may_share_memory(out, a) for a in ins):
                out = np.array(out)  # (a cast to the same dtype is its input: buffers get reused)
        else:
            shape = np.broadcast_shapes(*(np.shape(a) for a in ins))
            key = (shape, _out_dtype(ufunc, dtype_cache, tuple(a.dtype for a in ins)))
            # inputs dying here may be overwritten: ufuncs read each element before writing it
            for v in dying:
                if v in owned:
                    free.setdefault((np.shape(vals[v]), vals[v].dtype), []).append(vals[v])
            dying = ()
            if final is not None and j == last and (final.shape, final.dtype) == key:
                out = final
            else:
                pool = free.get(key)
                out = pool.pop() if pool else _new_buffer(*key)
                owned.add(s.outputs[0])
            ufunc(*ins, out=out)
        vals[s.outputs[0]] = out
        for v in dying:
            if v in owned:
                free.setdefault((np.shape(vals[v]), vals[v].dtype), []).append(vals[v])
    outs = [vals[i] if i in vals else slots[i] for i in plan.outputs]
    if final is not None and outs[0] is not final:
        np.copyto(final, outs[0])
        outs[0] = final
    return outs


def fused_elementwise(step: Any, inputs: list, env: dict, slots: list) -> Any:
    """Run the chain in `step.regions[0]` on `inputs`; one array, or a tuple for several outputs.

    Example (as the executor calls it): for a region `(%a, %b) { %0 = mul(%a, %b); %1 = exp(%0);
    yield %1 }`, `fused_elementwise(step, [a, b], env, slots)` returns `np.exp(a * b)`, computed
    in one buffer.
    """
    outs = _run(step.regions[0], inputs, slots, None)
    return outs[0] if len(outs) == 1 else tuple(outs)


def region_out_kernel(step: Any) -> Callable | None:
    """For the memory planner (`runtime.memory`): `fn(*inputs, out=buffer) -> buffer` running the
    chain of a `fused_elementwise` step with its last step writing into the planned buffer, or
    None when the step is not such an op (or its region reads values from enclosing scopes,
    which an `out=` kernel cannot see).

    Example: `region_out_kernel(step)(a, b, out=buf)` fills `buf` with `np.exp(a * b)` for the
    region of `fused_elementwise` above.
    """
    if step.kind != "fused_elementwise" or len(step.outputs) != 1 or step.regions[0].captured():
        return None
    program = step.regions[0]

    def run(*inputs: np.ndarray, out: np.ndarray) -> np.ndarray:
        return _run(program, inputs, None, out)[0]

    run.__name__ = "fused_elementwise_out"
    return run


REGION_KERNELS = {"fused_elementwise": fused_elementwise}
