"""The executor: a graph lowered to a flat list of steps over numbered slots, run by one loop.

Both `ir.interpret` and `runtime.Session` build a `Program` and call `run`, so the reference
interpreter and the deployed runtime share one execution path and one set of kernels. Work
that does not depend on the inputs happens once in `Program.__init__`: kernels are resolved,
symbolic attributes are found, and the slot of every value is freed right after its last use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np

from . import dims as D
from .errors import CastmlError, KernelError, RuntimeInputError
from .kernels import KERNELS, REGION_KERNELS


@dataclass
class TypeSpec:
    """A value's declared dtype and shape (ints and symbolic dims)."""

    dtype: np.dtype
    shape: tuple

    def __str__(self) -> str:
        from .format_names import short_dtype

        return f"{short_dtype(self.dtype)}[{','.join(str(d) for d in self.shape)}]"


@dataclass
class StepSpec:
    """One op to execute: kernel by kind, value ids in and out, attributes, declared out types."""

    kind: str
    inputs: Sequence[int]
    outputs: Sequence[int]
    attrs: dict[str, Any]
    out_types: Sequence[TypeSpec]
    label: str = ""  # printed op and source line, for error messages
    regions: Sequence[Any] = field(default_factory=tuple)  # nested ProgramSpecs


@dataclass
class ProgramSpec:
    """A graph or region: input ids and types, steps, output ids."""

    inputs: Sequence[int]
    input_types: Sequence[TypeSpec]
    steps: Sequence[StepSpec]
    outputs: Sequence[int]
    input_names: Sequence[str] = ()


def _has_symbols(v: Any) -> bool:
    return isinstance(v, tuple) and any(isinstance(x, str) for x in v)


_generation = [0]  # bumped whenever a step's kernel changes, so compiled loops are rebuilt
BOUND = 3  # the arity code of a step bound to fixed arrays (runtime.schedule): its kernel is a tuple of calls


class _Step:
    __slots__ = ("_kernel", "inputs", "outputs", "attrs", "sym_attrs", "fresh", "label", "free", "kind",
                 "regions", "_out_kernel", "out0")

    # kernels are replaced after construction (runtime.memory sets `out_kernel`, runtime.session
    # wraps both with limit guards): every change invalidates the programs' compiled step tuples
    @property
    def kernel(self) -> Callable:
        return self._kernel

    @kernel.setter
    def kernel(self, fn: Callable) -> None:
        self._kernel = fn
        _generation[0] += 1

    @property
    def out_kernel(self) -> Callable | None:
        return self._out_kernel

    @out_kernel.setter
    def out_kernel(self, fn: Callable | None) -> None:
        self._out_kernel = fn
        _generation[0] += 1

    def __init__(self, spec: StepSpec, bound: set[str], regions: list[Program]):
        self.kind = spec.kind
        region_kernel = REGION_KERNELS.get(spec.kind)
        try:
            self.kernel = region_kernel or KERNELS[spec.kind]
        except KeyError:
            raise CastmlError(f"no kernel for op kind {spec.kind!r} ({spec.label})") from None
        self.inputs = tuple(spec.inputs)
        self.outputs = tuple(spec.outputs)
        self.attrs = dict(spec.attrs)
        # output dims that are bare symbols nobody bound yet get their value from the result
        self.fresh = []
        for i, t in enumerate(spec.out_types):
            for axis, d in enumerate(t.shape):
                if D.is_symbol(d) and d not in bound:
                    self.fresh.append((i, axis, d))
                    bound.add(d)
        # symbolic attributes are evaluated before each call, except those naming this op's own
        # fresh sizes (boolean_mask's `size`), which are only known once it ran
        own = {sym for _, _, sym in self.fresh}
        self.sym_attrs = tuple(k for k, v in self.attrs.items()
                               if _has_symbols(v) and not any(isinstance(d, str) and d in own for d in v))
        self.label = spec.label or spec.kind
        self.free: tuple[int, ...] = ()
        self.regions = regions
        # set by runtime.memory.use_memory_plan: `fn(*ins, out=buffer, **attrs)` for planned outputs
        self.out_kernel: Callable | None = None
        self.out0 = self.outputs[0] if len(self.outputs) == 1 else None  # the slot of a single output


class Program:
    """An executable form of a `ProgramSpec`.

    >>> t = TypeSpec(np.dtype(np.float64), ())
    >>> p = Program(ProgramSpec([0], [t], [StepSpec("mul", [0, 0], [1], {}, [t])], [1]))
    >>> [float(y) for y in p.run([np.array(2.0)])]
    [4.0]
    """

    def __init__(self, spec: ProgramSpec, outer_bound: set[str] | None = None):
        self.inputs = tuple(spec.inputs)
        self.input_types = list(spec.input_types)
        self.input_names = list(spec.input_names) or [f"input {i}" for i in range(len(self.inputs))]
        self.outputs = tuple(spec.outputs)
        bound = set(outer_bound or ())
        for t in self.input_types:
            bound.update(d for d in t.shape if D.is_symbol(d))
        self.steps = [
            _Step(s, bound, [Program(r, bound) for r in s.regions]) for s in spec.steps
        ]
        ids = set(self.inputs)
        for s in self.steps:
            ids.update(s.inputs)
            ids.update(s.outputs)
        ids.update(self.outputs)
        self.num_slots = (max(ids) + 1) if ids else 0
        # regions write their own values into the shared slots, so make room for them too
        self.num_slots = max([self.num_slots] + [r.num_slots for s in self.steps for r in s.regions])
        # a runtime.memory.BufferPlanner when the steps write into planned arenas (runtime.Session)
        self.planner: Any = None
        self._plan_frees()
        # constants are stored once: a call puts them in their slots instead of running a kernel
        # (a profiled call still runs them, so every op shows up in the profile)
        stored = [s.kind == "constant" and s.out0 is not None and "value" in s.attrs and not s.sym_attrs
                  for s in self.steps]
        self._consts = [(s.out0, s.attrs["value"]) for s, c in zip(self.steps, stored) if c]
        self._work = [(j, s) for j, (s, c) in enumerate(zip(self.steps, stored)) if not c]
        # a fresh call's slots: constants already in place (a list copy instead of a loop)
        self._template: list = [None] * self.num_slots
        for i, value in self._consts:
            self._template[i] = value
        self._compiled: list = []
        self._compiled_gen = -1
        # per input: (axis, symbol) dims that bind symbols, (axis, dim) dims checked after binding
        self._in_syms = [tuple((a, d) for a, d in enumerate(t.shape) if D.is_symbol(d)) for t in self.input_types]
        self._in_dims = [tuple((a, d) for a, d in enumerate(t.shape) if not D.is_symbol(d))
                         for t in self.input_types]
        self._in_ranks = [len(t.shape) for t in self.input_types]
        self._in_dtypes = [np.dtype(t.dtype) for t in self.input_types]

    def _plan_frees(self) -> None:
        last: dict[int, int] = {}
        for i, s in enumerate(self.steps):
            for v in s.inputs:
                last[v] = i
            for v in s.outputs:
                last.setdefault(v, i)
            for r in s.regions:
                for v in r.captured():
                    last[v] = i
        keep = set(self.outputs)
        # values captured from an enclosing program are its to free (a loop body runs again)
        own = set(self.inputs).union(*(s.outputs for s in self.steps))
        frees: dict[int, list[int]] = {}
        for v, i in last.items():
            if v not in keep and v in own:
                frees.setdefault(i, []).append(v)
        for i, s in enumerate(self.steps):
            s.free = tuple(frees.get(i, ()))

    def captured(self) -> set[int]:
        """Value ids used inside this program (and nested ones) but defined outside."""
        defined = set(self.inputs)
        used: set[int] = set()
        for s in self.steps:
            used.update(v for v in s.inputs if v not in defined)
            for r in s.regions:
                used.update(v for v in r.captured() if v not in defined)
            defined.update(s.outputs)
        used.update(v for v in self.outputs if v not in defined)
        return used

    def bind(self, args: Sequence[Any], env: dict[str, int] | None = None) -> tuple[list, dict]:
        """Check inputs against the signature and bind their symbolic dims; returns (arrays, env)."""
        if len(args) != len(self.inputs):
            raise RuntimeInputError(f"expected {len(self.inputs)} inputs ({', '.join(self.input_names)}), "
                                    f"got {len(args)}")
        env = dict(env) if env else {}
        arrays = []
        for k, a in enumerate(args):
            arr = a if type(a) is np.ndarray else np.asarray(a)
            dtype = self._in_dtypes[k]
            if arr.dtype != dtype:
                if not _safe_scalar(a, arr, dtype):
                    raise RuntimeInputError(f"input {self.input_names[k]!r}: expected dtype {self.input_types[k]}, "
                                            f"got {arr.dtype} {arr.shape}")
                arr = arr.astype(dtype)
            if arr.ndim != self._in_ranks[k]:
                t = self.input_types[k]
                raise RuntimeInputError(f"input {self.input_names[k]!r}: expected {t} (rank {len(t.shape)}), "
                                        f"got shape {arr.shape}")
            shape = arr.shape
            for axis, d in self._in_syms[k]:
                if env.setdefault(d, shape[axis]) != shape[axis]:
                    raise RuntimeInputError(
                        f"input {self.input_names[k]!r}: dim {axis} is {shape[axis]} but {d} = {env[d]} "
                        f"from an earlier input (expected {self.input_types[k]})")
            arrays.append(arr)
        for k, arr in enumerate(arrays):
            for axis, d in self._in_dims[k]:
                if (d if type(d) is int else D.evaluate(d, env)) != arr.shape[axis]:
                    raise RuntimeInputError(f"input {self.input_names[k]!r}: expected {self.input_types[k]}, "
                                            f"got shape {arr.shape}")
        return arrays, env

    def run(self, args: Sequence[Any], env: dict[str, int] | None = None,
            slots: list | None = None) -> list:
        """Run on already-ordered flat inputs; returns the flat outputs."""
        arrays, env = self.bind(args, env)
        return self.execute(arrays, env, slots)

    def execute(self, arrays: Sequence[np.ndarray], env: dict[str, int], slots: list | None = None,
                hook: Callable | None = None) -> list:
        """Run with checked inputs and bound symbols (used by regions and by `run`).

        With a memory plan attached, the call takes an arena of its own, planned steps write
        into it, and results that could alias it are copied before it is given back. From an
        arena's second call on, its bound schedule (runtime.schedule) runs instead.
        """
        fresh = slots is None
        if fresh:
            slots = self._template.copy() if hook is None else [None] * self.num_slots
        for i, a in zip(self.inputs, arrays):
            slots[i] = a
        planner = self.planner
        if planner is None:
            self._loop(slots, env, None, hook, fresh)
            return [slots[i] for i in self.outputs]
        arena = planner.take(env)
        try:
            if arena is None:
                self._loop(slots, env, None, hook, fresh)
                return [slots[i] for i in self.outputs]
            bound, data = arena.bound, arena.data
            if bound and fresh and hook is None and bound.usable():
                slots = bound.enter(arrays)
                self._loop(slots, env, arena.buffers, None, True, bound.steps)
                return bound.results(slots, data)
            self._loop(slots, env, arena.buffers, hook, fresh)
            if bound is None and fresh and hook is None:  # the arena's first call: bind the rest
                arena.bound = planner.bind(arena, env, slots) or False
            return [o.copy() if isinstance(o, np.ndarray) and np.may_share_memory(o, data) else o
                    for o in (slots[i] for i in self.outputs)]
        finally:
            if arena is not None:
                planner.give(arena)

    def _compile(self) -> list:
        """The non-constant steps as tuples the loop unpacks without attribute lookups:
        (step, arity code, kernel, out kernel, input getter, output slot, attrs, slots to free).
        Arity code 1: one input, 2: several (an itemgetter returns a tuple), 0: none, -1: the
        general path (regions, several outputs, data-dependent sizes, symbolic attributes)."""
        compiled = []
        for j, s in self._work:
            n = len(s.inputs)
            simple = not s.regions and s.out0 is not None and not s.fresh and not s.sym_attrs
            code = -1 if not simple else (0 if n == 0 else 1 if n == 1 else 2)
            get = itemgetter(*s.inputs) if n else None
            compiled.append((s, j, code, s.kernel, s.out_kernel, get, s.out0, s.attrs, s.free))
        self._compiled, self._compiled_gen = compiled, _generation[0]
        return compiled

    def _loop(self, slots: list, env: dict[str, int], buffers: list | None, hook: Callable | None,
              consts_placed: bool = False, compiled: list | None = None) -> None:
        s = None
        if hook is not None:
            return self._loop_general(slots, env, buffers, hook)
        if compiled is None:
            compiled = self._compiled if self._compiled_gen == _generation[0] else self._compile()
        if not consts_placed:
            for i, value in self._consts:
                slots[i] = value
        with np.errstate(all="ignore"):
            try:
                for s, j, code, kernel, okernel, get, out0, attrs, free in compiled:
                    if code == BOUND:
                        for call in kernel:
                            call()
                        continue
                    buf = None if buffers is None else buffers[j]
                    if code == 1:
                        if buf is None:
                            slots[out0] = kernel(get(slots), **attrs)
                        else:
                            slots[out0] = okernel(get(slots), out=buf, **attrs)
                    elif code == 2:
                        if buf is None:
                            slots[out0] = kernel(*get(slots), **attrs)
                        else:
                            slots[out0] = okernel(*get(slots), out=buf, **attrs)
                    elif code == 0:
                        slots[out0] = kernel(**attrs) if buf is None else okernel(out=buf, **attrs)
                    else:
                        self._step(s, slots, env, buf)
                    for i in free:
                        slots[i] = None
            except CastmlError:
                raise
            except Exception as e:
                raise KernelError(f"while executing {s.label}: {type(e).__name__}: {e}") from e

    def _step(self, s: _Step, slots: list, env: dict[str, int], buf: np.ndarray | None) -> Any:
        """Run one step the general way: symbolic attributes, regions, several outputs, fresh sizes."""
        ins = [slots[i] for i in s.inputs]
        attrs = s.attrs
        if s.sym_attrs:
            attrs = dict(attrs)
            for k in s.sym_attrs:
                attrs[k] = tuple(D.evaluate(d, env) for d in attrs[k])
        if buf is not None:
            out = s.out_kernel(*ins, out=buf, **attrs)
        elif s.regions:
            out = s.kernel(s, ins, env, slots, **attrs)
        else:
            out = s.kernel(*ins, **attrs)
        if s.out0 is not None:
            slots[s.out0] = out
            for _, axis, sym in s.fresh:
                env[sym] = np.shape(out)[axis]
        else:
            for i, o in zip(s.outputs, out):
                slots[i] = o
            for oi, axis, sym in s.fresh:
                env[sym] = np.shape(out[oi])[axis]
        return out

    def _loop_general(self, slots: list, env: dict[str, int], buffers: list | None, hook: Callable) -> None:
        """Every step, constants included, with `hook(step, outputs)` after each (profiling)."""
        s = None
        with np.errstate(all="ignore"):
            try:
                for j, s in enumerate(self.steps):
                    out = self._step(s, slots, env, None if buffers is None else buffers[j])
                    hook(s, (out,) if s.out0 is not None else out)
                    for i in s.free:
                        slots[i] = None
            except CastmlError:
                raise
            except Exception as e:
                raise KernelError(f"while executing {s.label}: {type(e).__name__}: {e}") from e


def _safe_scalar(a: Any, arr: np.ndarray, dtype: np.dtype) -> bool:
    """A Python scalar may stand for a 0-d input of any kind it converts to without loss of
    kind (an int where f64 is expected), as NumPy treats Python scalars as weakly typed."""
    allowed = {bool: "biuf", int: "iuf", float: "f"}.get(type(a), "")
    return arr.ndim == 0 and dtype.kind in allowed

