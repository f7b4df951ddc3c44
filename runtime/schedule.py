"""Bound schedules: the steps of one arena as NumPy calls on arrays fixed in advance.

A small model spends most of a call in Python: per step the executor looks up its inputs and
buffer, the limit guard sizes the call, and the kernel finds its plan and builds its views again
(LeNet at batch 1: ~48 us of dispatch around ~22 us of NumPy loops). All of that depends only on
shapes and addresses, and in an arena those are fixed: every arena belongs to one binding of the
input symbols, and one call at a time.

So after the first call in an arena has run the usual way (each kernel checked its operands
and limits), `bind` fixes what it can: constants, the arena's buffers, small graph inputs
(copied into arrays of the schedule, "staged": a copy this small costs less than the dispatch
it saves), and views of fixed arrays (reshape, transpose, slice...), made once. Each step whose
inputs are all fixed and whose output is its arena buffer gets its calls from
`kernels.bound.BINDERS`; the other steps keep running the usual way, reading fixed arrays from
their slots. Bound calls are the calls of the step's `out=` kernel, in the same order, so results
are bit-identical (tests/test_schedule.py).

Limits still hold: a bound step runs without its guard only while `max_tensor_bytes` is at
least what its guard would have required (`need_bytes`); under a lower limit the call runs the
usual way and the guard refuses it as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import dims as D
from . import limits
from .executor import BOUND, Program, _generation
from .kernels.bound import BINDERS, SMALL_BYTES, Binding
from .kernels.fused import OUT_KERNELS, out_kernel
from .kernels.shape import VIEW_KINDS


@dataclass
class BoundSchedule:
    """What `Program.execute` needs to run an arena's bound schedule.

    `steps` are compiled step tuples for `Program._loop` (code `BOUND`: a tuple of calls),
    `template` the slots with every fixed array in place, `staged` the (input position, array)
    pairs copied in before a call, `loose` the (input position, slot) pairs passed as they are,
    `owned` the schedule's own arrays (results that may alias them are copied), `need_bytes` the
    least `max_tensor_bytes` the bound steps need, `bound` how many steps are bound, and
    `outputs` each graph output's slot with its fixed array (None when computed per call).
    """

    steps: list
    template: list
    staged: list[tuple[int, np.ndarray]]
    loose: list[tuple[int, int]]
    owned: list[np.ndarray]
    need_bytes: int
    bound: int
    generation: int
    outputs: list[tuple[int, np.ndarray | None]]

    def usable(self) -> bool:
        """Whether the kernels are the ones bound and the limits in force admit every bound step."""
        return self.generation == _generation[0] and self.need_bytes <= limits.current().max_tensor_bytes

    def results(self, slots: list, data: np.ndarray) -> list:
        """A call's results, copied where they are or may view the arena's `data` or the
        schedule's arrays (a result that is a fixed array always is: copied without a check)."""
        out = []
        for i, fixed in self.outputs:
            o = slots[i]
            if o is fixed or isinstance(o, np.ndarray) and any(np.may_share_memory(o, d) for d in (data, *self.owned)):
                o = o.copy()
            out.append(o)
        return out

    def enter(self, arrays: Sequence[np.ndarray]) -> list:
        """A call's slots: the template, the staged inputs copied in and the others put in place."""
        for k, a in self.staged:
            np.copyto(a, arrays[k])
        slots = self.template.copy()
        for k, i in self.loose:
            slots[i] = arrays[k]
        return slots


def bind(program: Program, buffers: list, env: dict[str, int], first: list,
         out_kernels: dict[int, Any]) -> BoundSchedule | None:
    """The bound schedule of `program` for an arena with these `buffers` and input symbol values,
    after a first call that left its `first` slots; `out_kernels` are the memory plan's `out=`
    kernels by step. None when no step can be bound (the arena keeps running the usual way).

    >>> from runtime.executor import ProgramSpec, StepSpec, TypeSpec
    >>> from runtime.memory import use_memory_plan
    >>> t = TypeSpec(np.dtype(np.float64), (2,))
    >>> spec = ProgramSpec([0], [t], [StepSpec("exp", [0], [1], {}, [t]), StepSpec("neg", [1], [2], {}, [t])], [2])
    >>> p = Program(spec); planner = use_memory_plan(spec, p); arena = planner.take({})
    >>> slots = [np.zeros(2), None, -np.ones(2)]  # (what a first call leaves: its result)
    >>> bind(p, arena.buffers, {}, slots, planner.out_kernels).bound  # exp into the arena, neg into a result
    2
    """
    compiled = program._compiled if program._compiled_gen == _generation[0] else program._compile()
    fixed: dict[int, np.ndarray] = dict(program._consts)
    staged, loose, results = [], [], []
    for k, (i, t) in enumerate(zip(program.inputs, program.input_types)):
        shape = tuple(D.evaluate(d, env) for d in t.shape)
        dtype = np.dtype(t.dtype)
        if math.prod(shape) * dtype.itemsize <= SMALL_BYTES:
            fixed[i] = np.empty(shape, dtype)
            staged.append((k, fixed[i]))
        else:
            loose.append((k, i))
    outputs = set(program.outputs)
    steps: list = []  # the compiled steps, bound ones replaced, fixed views left out
    makers: list[tuple[int, Any]] = []
    needs: dict[str, int] = {}
    need_bytes = 0
    reads: set[int] = set()  # slots read by bound steps and fixed views
    for entry in compiled:
        s, j = entry[:2]
        ins = [fixed.get(v) for v in s.inputs]
        out = binding = None
        if not s.regions and s.out0 is not None and not s.fresh and all(x is not None for x in ins):
            try:
                attrs = {**s.attrs, **{k: tuple(D.evaluate(d, env) for d in s.attrs[k]) for k in s.sym_attrs}}
                out, binding = _bind_step(s, ins, attrs, buffers[j], out_kernels.get(j),
                                          first[s.out0] if s.out0 in outputs else None)
            except Exception:  # (the usual path reports it, with the step's label)
                out = binding = None
        if out is None:  # the step runs the usual way
            if buffers[j] is not None and out_kernels.get(j) is OUT_KERNELS.get(s.kind):
                fixed[s.out0] = buffers[j]  # (an out= kernel writes its buffer and returns it)
            steps.append(entry)
            continue
        need_bytes = max(need_bytes, out.nbytes,
                         limits.guard_threshold(s.kind, tuple(ins), attrs, out.dtype.itemsize))
        fixed[s.out0] = out
        reads.update(s.inputs)
        if binding is not None:
            if out is not buffers[j]:
                results.append(out)
            for name, n in binding[0].items():
                needs[name] = max(needs.get(name, 0), n)
            makers.append((len(steps), binding[1]))
            steps.append(entry)
    if not makers:
        return None
    scratch = {name: np.empty(max(n, 1), np.uint8) for name, n in needs.items()}
    for at, make in makers:
        s, j = steps[at][:2]
        steps[at] = (s, j, BOUND, tuple(make(scratch)), None, None, s.out0, None, ())
    for k, _ in staged:
        if program.inputs[k] not in reads:  # no bound step reads it: passed as it is, not copied
            loose.append((k, program.inputs[k]))
            del fixed[program.inputs[k]]
    staged = [(k, a) for k, a in staged if program.inputs[k] in reads]
    template = list(program._template)
    for i, a in fixed.items():
        template[i] = a
    owned = [a for _, a in staged] + results + list(scratch.values())
    return BoundSchedule(steps, template, staged, loose, owned, need_bytes, len(makers), _generation[0],
                         [(i, fixed.get(i)) for i in program.outputs])


def _bind_step(s: Any, ins: list, attrs: dict, buf: np.ndarray | None, kernel: Any,
               result: Any) -> tuple[np.ndarray | None, Binding | None]:
    """(the fixed value of step `s`, its binding) when its inputs `ins` are fixed: a view made
    once (no binding), or its buffer with the binder's calls; (None, None) when neither. `kernel`
    is the plan's out= kernel for `buf`; `result` the first call's value of a graph result."""
    if buf is None and s.kind in VIEW_KINDS:
        view = s.kernel(*ins, **attrs)
        if isinstance(view, np.ndarray) and any(np.may_share_memory(view, x) for x in ins):
            return view, None
        return None, None  # (a copy: it would go stale)
    if buf is None and isinstance(result, np.ndarray) and result.nbytes <= SMALL_BYTES:
        buf = np.empty(result.shape, result.dtype)  # a small graph result: into an array of ours
        kernel = out_kernel(s.kind, [x.dtype for x in ins], buf.dtype)
    if buf is None or s.kind not in BINDERS or kernel is not OUT_KERNELS[s.kind]:
        return None, None
    binding = BINDERS[s.kind](ins, buf, **attrs)
    return (buf, binding) if binding is not None else (None, None)
