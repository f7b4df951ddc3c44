"""The memory plan: value lifetimes, the liveness lower bound, and a buffer arena layout.

The executor frees every value right after its last user ran, so at run time the bytes held
at once follow the liveness curve. `plan_memory` reports that curve's maximum (the lower bound
for any plan that keeps whole buffers) next to the peak of a static arena layout assigned
greedily by size, as TFLite's planner does; a native runtime can allocate that arena once.
Graph inputs (the caller's arrays) and constants (views of the model file) take no planned
memory. Sizes need every symbolic dim bound; data-dependent sizes are listed as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import dims as D
from .errors import RuntimeInputError
from .executor import Program, ProgramSpec


@dataclass
class MemoryPlan:
    """Planned peak bytes of the arena next to the liveness lower bound.

    `offsets`/`sizes` map value ids to their place in the arena; `unknown` lists values whose
    size depends on data (not planned); `intervals` maps value ids to (first step, last step).
    """

    peak_bytes: int
    lower_bound_bytes: int
    offsets: dict[int, int] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    intervals: dict[int, tuple[int, int]] = field(default_factory=dict)
    unknown: list[int] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """peak / lower bound (1.0 when nothing is planned)."""
        return self.peak_bytes / self.lower_bound_bytes if self.lower_bound_bytes else 1.0

    def __str__(self) -> str:
        return (f"memory plan: peak {self.peak_bytes} bytes, liveness lower bound {self.lower_bound_bytes} "
                f"bytes (ratio {self.ratio:.3f}), {len(self.sizes)} buffers"
                + (f", {len(self.unknown)} of data-dependent size" if self.unknown else ""))


def _lifetimes(spec: ProgramSpec, program: Program) -> dict[int, list[int]]:
    """value id -> [defining step, last step that reads it] for values the steps produce."""
    spans: dict[int, list[int]] = {}
    end = len(spec.steps)
    for i, (s, step) in enumerate(zip(spec.steps, program.steps)):
        used = set(s.inputs)
        for r in step.regions:
            used |= r.captured()
        for v in used:
            if v in spans:
                spans[v][1] = i
        if s.kind == "constant":
            continue
        for v in s.outputs:
            spans[v] = [i, i]
    for v in spec.outputs:
        if v in spans:
            spans[v][1] = end
    return spans


def plan_memory(spec: ProgramSpec, program: Program, env: Mapping[str, int]) -> MemoryPlan:
    """Plan the top-level buffers of `program` for the symbol values in `env`.

    >>> from runtime.executor import StepSpec, TypeSpec
    >>> t = TypeSpec(np.dtype(np.float64), ("n",))
    >>> spec = ProgramSpec([0], [t], [StepSpec("exp", [0], [1], {}, [t]), StepSpec("exp", [1], [2], {}, [t])], [2])
    >>> plan_memory(spec, Program(spec), {"n": 4}).peak_bytes
    64
    """
    env = dict(env)
    needed = sorted({d for t in spec.input_types for d in t.shape if D.is_symbol(d)} - set(env))
    if needed:
        example = ", ".join(f"{s}=1" for s in needed)
        raise RuntimeInputError(f"memory_plan needs a value for every input symbol ({', '.join(needed)}); "
                                f"e.g. memory_plan({example})")
    spans = _lifetimes(spec, program)
    sizes: dict[int, int] = {}
    unknown: list[int] = []
    for s in spec.steps:
        for v, t in zip(s.outputs, s.out_types):
            if v not in spans:
                continue
            try:
                count = int(np.prod([D.evaluate(d, env) for d in t.shape], dtype=np.int64))
            except D.DimError:
                unknown.append(v)
                continue
            sizes[v] = count * np.dtype(t.dtype).itemsize
    n = len(spec.steps) + 1
    delta = [0] * (n + 1)
    for v, size in sizes.items():
        first, last = spans[v]
        delta[first] += size
        delta[last + 1] -= size
    lower, live = 0, 0
    for d in delta:
        live += d
        lower = max(lower, live)
    offsets = _greedy_by_size(sizes, spans)
    peak = max((offsets[v] + sizes[v] for v in sizes), default=0)
    return MemoryPlan(peak, lower, offsets, sizes, {v: tuple(spans[v]) for v in sizes}, unknown)


def _greedy_by_size(sizes: dict[int, int], spans: dict[int, list[int]]) -> dict[int, int]:
    """Largest buffers first, each at the lowest offset free during its whole lifetime."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets: dict[int, int] = {}
    for v in sorted(sizes, key=lambda v: (-sizes[v], spans[v][0], v)):
        size, (first, last) = sizes[v], spans[v]
        busy = sorted((o, s) for o, s, f, ll in placed if f <= last and first <= ll)
        offset = 0
        for o, s in busy:
            if o - offset >= size:
                break
            offset = max(offset, o + s)
        offsets[v] = offset
        placed.append((offset, size, first, last))
    return offsets
