"""The memory plan: value lifetimes, the liveness lower bound, and the arena the runtime uses.

The executor frees every value right after its last user ran, so the bytes held at once follow
the liveness curve; its maximum is the lower bound for any plan that keeps whole buffers. The
runtime goes further for ops that have an `out=` kernel (`kernels.fused.out_kernel`: GEMMs,
convs, elementwise math): their results live in one arena laid out greedily by size, as TFLite's
planner does, so a call allocates nothing for them (fresh multi-megabyte arrays page-fault on
every call, PERF_NOTES.md). Each call takes its own arena from a pool (threads never share
one) and gives it back when done; results that could alias the arena are copied first.

Ops without an `out=` form but with fresh results (softmax, layer_norm, pooling...) are copied
into the arena, and an elementwise result whose input dies at that op reuses the input's
buffer in place (x + y where x is not read again), so the planned peak stays near the liveness
bound. Buffers must outlive every value that may be a view of them: an op without an `out=` kernel
(reshape, transpose, a region...) is assumed to return views of its inputs, so an arena
buffer's storage lives until the last use of anything derived from it that way. Graph inputs
(the caller's arrays) and constants (views of the model file) take no planned memory. Sizes
need every input symbol bound; data-dependent sizes are listed as unknown and not planned.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import dims as D
from .errors import RuntimeInputError
from .executor import Program, ProgramSpec
from .kernels.fused import IN_PLACE, out_kernel
from .kernels.fused_elementwise import region_out_kernel
from .kernels.shape import VIEW_KINDS
from .schedule import BoundSchedule, bind

ALIGN = 16  # what malloc gives NumPy; BLAS and the ufunc loops need no more
_POOL_IDLE = 4  # arenas kept per symbol binding
_PLANS_KEPT = 8  # symbol bindings whose plans are cached


@dataclass
class MemoryPlan:
    """Planned peak bytes next to the liveness lower bound.

    `peak_bytes` = the arena (`arena_bytes`, values written by `out=` kernels) plus the most bytes
    that the other values (allocated by their kernels; views counted as free) hold at once.
    `offsets`/`sizes` map arena value ids to their place; `intervals` maps them to (first step,
    last step of their storage); `shared` maps values computed in place to the arena value whose
    buffer they reuse (the bound counts that storage once); `unknown` lists values of
    data-dependent size (not planned).
    """

    peak_bytes: int
    lower_bound_bytes: int
    offsets: dict[int, int] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    intervals: dict[int, tuple[int, int]] = field(default_factory=dict)
    unknown: list[int] = field(default_factory=list)
    arena_bytes: int = 0
    shared: dict[int, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """peak / lower bound (1.0 when nothing is planned)."""
        return self.peak_bytes / self.lower_bound_bytes if self.lower_bound_bytes else 1.0

    def __str__(self) -> str:
        return (f"memory plan: peak {self.peak_bytes} bytes, liveness lower bound {self.lower_bound_bytes} "
                f"bytes (ratio {self.ratio:.3f}), arena {self.arena_bytes} bytes for {len(self.sizes)} buffers"
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


class BufferPlanner:
    """Decides, once per program, which step outputs go to the arena and how long their storage
    lives; lays the arena out per symbol binding (cached) and hands out arenas per call.

    >>> from runtime.executor import StepSpec, TypeSpec
    >>> t = TypeSpec(np.dtype(np.float64), ("n",))
    >>> spec = ProgramSpec([0], [t], [StepSpec("exp", [0], [1], {}, [t]), StepSpec("exp", [1], [2], {}, [t])], [2])
    >>> BufferPlanner(spec, Program(spec)).plan({"n": 1000}).arena_bytes
    8000
    """

    def __init__(self, spec: ProgramSpec, program: Program):
        self.spec, self.program = spec, program
        self.symbols = tuple(sorted({d for t in spec.input_types for d in t.shape if D.is_symbol(d)}))
        self.spans = _lifetimes(spec, program)
        self.view_base: dict[int, int] = {}  # output of a VIEW_KINDS op -> the value it views
        for s in spec.steps:
            if s.kind in VIEW_KINDS and s.inputs:
                for v in s.outputs:
                    self.view_base[v] = self.view_base.get(s.inputs[0], s.inputs[0])
        types = {v: t for v, t in zip(spec.inputs, spec.input_types)}
        for s in spec.steps:
            types.update(zip(s.outputs, s.out_types))
        self.types = types
        outputs = set(spec.outputs)
        # which step outputs an out= kernel writes (step index -> kernel), and possible aliases
        self.out_kernels: dict[int, object] = {}
        roots: dict[int, set[int]] = {}  # value -> values whose storage it may be a view of
        for i, (s, step) in enumerate(zip(spec.steps, program.steps)):
            if s.kind == "constant":
                continue
            fn = None
            if not step.regions and not step.fresh and len(s.outputs) == 1 and s.outputs[0] not in outputs \
                    and all(u in types for u in s.inputs):
                fn = out_kernel(s.kind, [types[u].dtype for u in s.inputs], np.dtype(s.out_types[0].dtype))
            elif step.regions and not step.fresh and len(s.outputs) == 1 and s.outputs[0] not in outputs:
                fn = region_out_kernel(step)  # fused_elementwise: its chain's last step writes the buffer
            if fn is not None:
                self.out_kernels[i] = fn
                roots[s.outputs[0]] = {s.outputs[0]}
                continue
            used = set(s.inputs).union(*(r.captured() for r in step.regions))
            inherited = set().union(*(roots.get(u, ()) for u in used))
            for v in s.outputs:
                roots[v] = {v} | inherited
        # storage of v lives until the last use of any value that may view it
        self.storage = {v: list(span) for v, span in self.spans.items()}
        for v, rs in roots.items():
            for r in rs:
                if r in self.storage and v in self.spans:
                    self.storage[r][1] = max(self.storage[r][1], self.spans[v][1])
        self.step_of = {spec.steps[i].outputs[0]: i for i in self.out_kernels}
        # in place: an elementwise result may take the buffer of an input of its shape and dtype
        # whose storage ends at this step (x + y where x is dead afterwards)
        self.home: dict[int, int] = {}  # value -> the arena value whose buffer it reuses
        for i in sorted(self.out_kernels):
            s = spec.steps[i]
            v = s.outputs[0]
            if s.kind not in IN_PLACE:
                continue
            for u in s.inputs:
                root = self.home.get(u, u)
                if root in self.step_of and self.storage[root][1] == i and u in self.step_of \
                        and tuple(types[u].shape) == tuple(types[v].shape) and types[u].dtype == types[v].dtype:
                    self.home[v] = root
                    self.storage[root][1] = max(self.storage[root][1], self.storage[v][1])
                    break
        self._lock = threading.Lock()
        self._plans: OrderedDict = OrderedDict()  # binding -> [MemoryPlan, idle arenas, env]

    def _key(self, env: Mapping[str, int]) -> tuple:
        try:
            return tuple(int(env[s]) for s in self.symbols)
        except KeyError:
            missing = [s for s in self.symbols if s not in env]
            example = ", ".join(f"{s}=1" for s in missing)
            raise RuntimeInputError(f"memory_plan needs a value for every input symbol ({', '.join(missing)}); "
                                    f"e.g. memory_plan({example})") from None

    def plan(self, env: Mapping[str, int]) -> MemoryPlan:
        """The plan for the input symbol values in `env` (cached)."""
        return self._entry(self._key(env))[0]

    def _entry(self, key: tuple) -> list:
        with self._lock:
            entry = self._plans.get(key)
            if entry is not None:
                self._plans.move_to_end(key)
                return entry
        env = dict(zip(self.symbols, key))
        entry = [self._make_plan(env), [], env]
        with self._lock:
            entry = self._plans.setdefault(key, entry)
            while len(self._plans) > _PLANS_KEPT:
                self._plans.popitem(last=False)
        return entry

    def _make_plan(self, env: dict[str, int]) -> MemoryPlan:
        sizes: dict[int, int] = {}
        unknown: list[int] = []
        for v in self.spans:
            t = self.types[v]
            try:
                count = int(np.prod([D.evaluate(d, env) for d in t.shape], dtype=np.int64))
            except D.DimError:
                unknown.append(v)
                continue
            sizes[v] = count * np.dtype(t.dtype).itemsize
        n = len(self.spec.steps) + 2
        # the bound: every storage alive at once, where a value computed in place shares its input's
        lives = {v: list(self.spans[v]) for v in sizes}
        for v, root in self.home.items():
            if v in lives and root in lives:
                lives[root][1] = max(lives[root][1], lives.pop(v)[1])
        # a view (slice, reshape, ...) holds no bytes of its own but keeps its base's alive
        for v, base in self.view_base.items():
            if v in lives:
                end = lives.pop(v)[1]
                base = self.home.get(base, base)
                if base in lives:
                    lives[base][1] = max(lives[base][1], end)
        lower = _max_live(((sizes[v], *span) for v, span in lives.items()), n)
        arena = {v: -(-sizes[v] // ALIGN) * ALIGN for v in self.step_of if sizes.get(v) and v not in self.home}
        offsets = _greedy_by_size(arena, self.storage)
        shared = {v: root for v, root in self.home.items() if root in offsets}
        arena_bytes = max((offsets[v] + arena[v] for v in offsets), default=0)
        kinds = {v: s.kind for s in self.spec.steps for v in s.outputs}
        others = ((0 if kinds[v] in VIEW_KINDS else size, *self.storage[v])
                  for v, size in sizes.items() if v not in arena and v not in shared)
        peak = arena_bytes + _max_live(others, n)
        return MemoryPlan(peak, lower, offsets, {v: sizes[v] for v in offsets},
                          {v: tuple(self.storage[v]) for v in offsets}, unknown, arena_bytes, shared)

    def take(self, env: Mapping[str, int]) -> _Arena | None:
        """An arena for one call (from the pool, or new); None when nothing is planned."""
        key = self._key(env)
        with self._lock:  # (the usual case, an idle arena of a known binding: one lock)
            entry = self._plans.get(key)
            if entry is not None and entry[1]:
                self._plans.move_to_end(key)
                return entry[1].pop()
        entry = self._entry(key)
        with self._lock:
            if entry[1]:
                return entry[1].pop()
        plan = entry[0]
        if not plan.sizes:
            return None
        return _Arena(self, plan, entry[1], entry[2])

    def bind(self, arena: _Arena, env: Mapping[str, int], first: list) -> BoundSchedule | None:
        """The bound schedule of `arena` after its first call left `first` (`runtime.schedule.bind`):
        only the input symbols are fixed for an arena, not the sizes a call found in its data."""
        return bind(self.program, arena.buffers, {s: env[s] for s in self.symbols}, first, self.out_kernels)

    def give(self, arena: _Arena) -> None:
        """Return an arena taken by `take` once the call's results no longer alias it."""
        with self._lock:
            if len(arena.pool) < _POOL_IDLE:
                arena.pool.append(arena)


class _Arena:
    """One call's buffers: `buffers[step]` is the array that step writes (or None), and `bound`, the
    schedule bound to them after the first call (runtime.schedule)."""

    __slots__ = ("data", "buffers", "pool", "bound")

    def __init__(self, planner: BufferPlanner, plan: MemoryPlan, pool: list, env: dict[str, int]):
        raw = np.empty(plan.arena_bytes + ALIGN, np.uint8)
        start = (-raw.ctypes.data) % ALIGN
        self.data = raw[start:start + plan.arena_bytes]
        self.pool = pool
        self.bound: BoundSchedule | None | bool = None  # None: not tried yet; False: nothing to bind
        self.buffers: list = [None] * len(planner.spec.steps)
        for v, root in [(v, v) for v in plan.offsets] + list(plan.shared.items()):
            off = plan.offsets[root]
            t = planner.types[v]
            shape = tuple(D.evaluate(d, env) for d in t.shape)
            view = self.data[off:off + plan.sizes[root]].view(np.dtype(t.dtype)).reshape(shape)
            self.buffers[planner.step_of[v]] = view


def _max_live(items, n: int) -> int:
    """Max over steps of the summed sizes of (size, first, last) items alive at that step."""
    delta = [0] * (n + 1)
    for size, first, last in items:
        delta[first] += size
        delta[last + 1] -= size
    best = live = 0
    for d in delta:
        live += d
        best = max(best, live)
    return best


def plan_memory(spec: ProgramSpec, program: Program, env: Mapping[str, int]) -> MemoryPlan:
    """Plan the top-level buffers of `program` for the symbol values in `env`.

    >>> from runtime.executor import StepSpec, TypeSpec
    >>> t = TypeSpec(np.dtype(np.float64), ("n",))
    >>> spec = ProgramSpec([0], [t], [StepSpec("exp", [0], [1], {}, [t]), StepSpec("exp", [1], [2], {}, [t])], [2])
    >>> plan = plan_memory(spec, Program(spec), {"n": 1000})
    >>> plan.peak_bytes, plan.lower_bound_bytes
    (16000, 16000)
    """
    planner = program.planner if isinstance(program.planner, BufferPlanner) else BufferPlanner(spec, program)
    return planner.plan(env)


def use_memory_plan(spec: ProgramSpec, program: Program) -> BufferPlanner:
    """Make `program` run its `out=`-capable steps in arenas from the plan; returns the planner.

    >>> from runtime.executor import StepSpec, TypeSpec
    >>> t = TypeSpec(np.dtype(np.float64), (2,))
    >>> spec = ProgramSpec([0], [t], [StepSpec("exp", [0], [1], {}, [t]), StepSpec("neg", [1], [2], {}, [t])], [2])
    >>> p = Program(spec); _ = use_memory_plan(spec, p); p.run([np.zeros(2)])
    [array([-1., -1.])]
    """
    planner = BufferPlanner(spec, program)
    for i, fn in planner.out_kernels.items():
        program.steps[i].out_kernel = fn
    program.planner = planner
    return planner


def _greedy_by_size(sizes: dict[int, int], spans: Mapping[int, list[int]]) -> dict[int, int]:
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
