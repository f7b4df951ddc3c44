"""`runtime.load` and `Session`: run a `.castml` model with the same pytrees as the traced code.

All the work that does not depend on inputs happens at load: the file is validated, every
entry is lowered to an executor `Program` (kernels resolved, frees planned). `run` only matches
arguments to the signature, checks them, and runs the step loop. A call keeps its buffers in
its own slot list, so one session serves many threads at once; results are copied when they
would alias the model file or another internal array, so callers may write to them.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import namedtuple
from typing import Any

import numpy as np

from . import dims as D
from . import limits, pytree
from .errors import CastmlError, ModelFormatError, RuntimeInputError
from .executor import Program
from .loader import GraphDef, ModelDef, load_model, program_spec
from .memory import MemoryPlan, _lifetimes, plan_memory, use_memory_plan

TensorInfo = namedtuple("TensorInfo", ["name", "dtype", "shape"])
ProfileRow = namedtuple("ProfileRow", ["op", "kind", "calls", "seconds"])

_MISSING = object()


def _guard(program: Program, spec: Any) -> None:
    """Wrap the kernels of `program` and its regions with `limits.guard_kernel`."""
    for step, s in zip(program.steps, spec.steps):
        n_out = len(step.outputs)
        if step.regions:
            for r, rs in zip(step.regions, s.regions):
                _guard(r, rs)
            step.kernel = limits.guard_arity(step.kernel, step.label, n_out)
            continue
        if step.kind == "constant":  # a view of the file, bounded by max_file_bytes
            continue
        itemsize = max((np.dtype(t.dtype).itemsize for t in s.out_types), default=1)
        step.kernel = limits.guard_kernel(step.kernel, step.kind, step.label, itemsize, n_out)
        if step.out_kernel is not None:  # (kernels writing into a planned arena still pad or copy)
            step.out_kernel = limits.guard_kernel(step.out_kernel, step.kind, step.label, itemsize, n_out)


def _check_symbols(spec: Any, bound: set[str], where: str) -> None:
    """Every symbol an input dim or a symbolic attribute mentions must be bound when it is read:
    by a bare-symbol input dim, or by an earlier op's data-dependent output size (as the
    executor binds them); a file that says otherwise is malformed."""
    bound = set(bound)
    for t in spec.input_types:
        bound.update(d for d in t.shape if D.is_symbol(d))
    for t in spec.input_types:
        for d in t.shape:
            if D.symbols(d) - bound:
                raise ModelFormatError(f"{where}: input dim {d!r} uses symbols {sorted(D.symbols(d) - bound)} "
                                       f"that no input binds")
    for s in spec.steps:
        fresh = {d for t in s.out_types for d in t.shape if D.is_symbol(d) and d not in bound}
        for name, v in s.attrs.items():
            if isinstance(v, tuple):
                unbound = set().union(*(D.symbols(d) for d in v if isinstance(d, str))) - bound - fresh
                if unbound:
                    raise ModelFormatError(f"{where}: {s.label}: attribute {name!r} uses symbols {sorted(unbound)} "
                                           f"that are not bound before it runs")
        for r in s.regions:
            _check_symbols(r, bound, where)
        bound |= fresh


class _Entry:
    """One entry point, ready to run."""

    def __init__(self, name: str, gd: GraphDef):
        self.name = name
        self.spec = program_spec(gd)
        _check_symbols(self.spec, set(), f"entry {name!r}")
        self.program = Program(self.spec)
        self.in_tree, self.out_tree = gd.in_tree, gd.out_tree
        self.arg_names = list(gd.arg_names)
        self.flat_args = gd.in_tree == ("tuple", (pytree.LEAF,) * len(self.arg_names))
        self.single_out = gd.out_tree == pytree.LEAF
        r = gd.regions[0]
        self.inputs = [TensorInfo(n, gd.values[i].dtype, gd.values[i].shape)
                       for n, i in zip(gd.input_names, r.inputs)]
        self.outputs = [TensorInfo(n, gd.values[i].dtype, gd.values[i].shape)
                        for n, i in zip(gd.output_names, r.outputs)]
        self.metadata = dict(gd.metadata)
        use_memory_plan(self.spec, self.program)  # planned steps write into per-call arenas
        # limits: every kernel refuses outputs beyond max_tensor_bytes before allocating them,
        # and each call's declared values are checked against the limits once its symbols are bound
        _guard(self.program, self.spec)
        spans = _lifetimes(self.spec, self.program)
        self.plan = [(t.dtype, t.shape, *spans[v]) for s in self.spec.steps for v, t in zip(s.outputs, s.out_types)
                     if v in spans]
        self.checked_envs: set = set()

    def check_limits(self, env: dict) -> None:
        """Refuse a call whose planned values exceed the limits (once per distinct symbol binding)."""
        key = (limits.current(), tuple(sorted(env.items())))
        if key not in self.checked_envs:
            limits.check_plan(self.plan, env, f"entry {self.name!r}")
            if len(self.checked_envs) > 1024:
                self.checked_envs.clear()
            self.checked_envs.add(key)

    def leaves(self, args: tuple, kwargs: dict) -> list:
        """Match arguments (positional, or keywords by parameter name) and flatten them."""
        return match_arguments(self, args, kwargs)


def match_arguments(entry: Any, args: tuple, kwargs: dict) -> list:
    """Bind `args`/`kwargs` to an entry's parameters and flatten them to its input leaves.

    `entry` has `name`, `arg_names`, `in_tree` and `flat_args` (shared by the NumPy and the
    native sessions). Raises `RuntimeInputError` naming the entry and the mismatch.

    >>> from types import SimpleNamespace
    >>> e = SimpleNamespace(name="main", arg_names=["x", "y"], in_tree=("tuple", (("*",), ("*",))), flat_args=True)
    >>> match_arguments(e, (1,), {"y": 2})
    [1, 2]
    """
    name, arg_names, n = entry.name, entry.arg_names, len(entry.arg_names)
    if kwargs:
        if len(args) > n:
            raise RuntimeInputError(f"entry {name!r} takes {n} arguments ({', '.join(arg_names)}), "
                                    f"got {len(args)} positional")
        full = list(args) + [_MISSING] * (n - len(args))
        for k, v in kwargs.items():
            if k not in arg_names:
                raise RuntimeInputError(f"entry {name!r}: unexpected argument {k!r}; "
                                        f"parameters are ({', '.join(arg_names)})")
            i = arg_names.index(k)
            if full[i] is not _MISSING:
                raise RuntimeInputError(f"entry {name!r}: argument {k!r} given twice")
            full[i] = v
        missing = [a for a, v in zip(arg_names, full) if v is _MISSING]
        if missing:
            raise RuntimeInputError(f"entry {name!r}: missing arguments {', '.join(missing)}")
        args = tuple(full)
    if len(args) != n:
        raise RuntimeInputError(f"entry {name!r} takes {n} arguments ({', '.join(arg_names)}), "
                                f"got {len(args)}")
    if entry.flat_args and not any(isinstance(a, (tuple, list, dict)) or a is None for a in args):
        return list(args)
    try:
        leaves, tree = pytree.flatten(tuple(args))
    except TypeError as err:
        raise RuntimeInputError(f"entry {name!r}: {err}") from None
    if tree != entry.in_tree:
        raise RuntimeInputError(f"entry {name!r}: argument structure {pytree.treedef_to_json(tree)} does "
                                f"not match the traced {pytree.treedef_to_json(entry.in_tree)}")
    return leaves


def _owned(a: Any) -> np.ndarray:
    """`a` as an array the caller may keep and write: views and read-only arrays are copied."""
    a = np.asarray(a)
    if a.base is not None or not a.flags.writeable:
        return a.copy()
    return a


class _Profile:
    """Per-op wall time, merged from every call under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rows: dict[int, list] = {}  # id(step) -> [label, kind, calls, seconds]

    def merge(self, times: list[tuple[Any, float]]) -> None:
        with self.lock:
            for step, dt in times:
                row = self.rows.get(id(step))
                if row is None:
                    row = self.rows[id(step)] = [step.label, step.kind, 0, 0.0]
                row[2] += 1
                row[3] += dt


class _EntryPoints:
    """What the NumPy and native sessions share: entry selection and the selected entry's
    signature. A subclass keeps `_entries` (name -> entry with inputs/outputs/metadata) and
    `_entry_name`, and makes a view on another entry in `_view`."""

    _entries: dict
    _entry_name: str | None

    @property
    def entries(self) -> list[str]:
        """Names of the model's entry points."""
        return sorted(self._entries)

    def __getitem__(self, name: str) -> Any:
        if name not in self._entries:
            raise RuntimeInputError(f"no entry {name!r}; the model has {', '.join(self.entries)}")
        return self._view(name)

    def _view(self, name: str) -> Any:
        raise NotImplementedError

    @property
    def _entry(self) -> Any:
        name = self._entry_name
        if name is None:
            raise RuntimeInputError(f"the model has no entry 'main'; choose one with sess[name]: "
                                    f"{', '.join(self.entries)}")
        return self._entries[name]

    @property
    def inputs(self) -> list[TensorInfo]:
        """(name, dtype, shape) of every input leaf, symbolic dims kept (`("batch", 784)`)."""
        return list(self._entry.inputs)

    @property
    def outputs(self) -> list[TensorInfo]:
        """(name, dtype, shape) of every output leaf."""
        return list(self._entry.outputs)

    @property
    def metadata(self) -> dict[str, str]:
        """The entry's free-form metadata."""
        return dict(self._entry.metadata)


class Session(_EntryPoints):
    """A loaded model. `run` executes entry "main"; `sess["name"]` selects another entry.

    >>> import tracer
    >>> from exporters.castml_format import to_bytes
    >>> sess = load(to_bytes(tracer.trace(lambda x: x * x, 2.0)))
    >>> sess.inputs
    [TensorInfo(name='x', dtype=dtype('float64'), shape=())]
    >>> float(sess.run(3.0))
    9.0
    """

    backend = "numpy"  # which runtime executes it (runtime.native_backend.NativeSession says "native")

    def __init__(self, model: ModelDef, entries: dict[str, _Entry], entry: str | None, profile: bool):
        self._model = model
        self._entries = entries
        self._entry_name = entry
        self._profile = _Profile() if profile else None

    def _view(self, name: str) -> Session:
        view = Session(self._model, self._entries, name, False)
        view._profile = self._profile
        return view

    # -- running -------------------------------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the entry on arguments shaped like the traced function's; returns its pytree.

        >>> import tracer
        >>> from exporters.castml_format import to_bytes
        >>> sess = load(to_bytes(tracer.trace(lambda x, y: {"s": x + y, "d": x - y}, 1.0, 2.0)), backend="numpy")
        >>> {k: float(v) for k, v in sess.run(5.0, y=1.0).items()}
        {'s': 6.0, 'd': 4.0}
        """
        e = self._entry
        arrays, env = e.program.bind(e.leaves(args, kwargs))
        e.check_limits(env)
        if self._profile is None:
            outs = e.program.execute(arrays, env)
        else:
            outs = self._run_profiled(e, arrays, env)
        if e.single_out:
            return _owned(outs[0])
        return pytree.unflatten(e.out_tree, [_owned(o) for o in outs])

    def _run_profiled(self, e: _Entry, arrays: list, env: dict) -> list:
        times: list[tuple[Any, float]] = []
        last = [time.perf_counter()]

        def hook(step, _out) -> None:
            now = time.perf_counter()
            times.append((step, now - last[0]))
            last[0] = now

        outs = e.program.execute(arrays, env, hook=hook)
        self._profile.merge(times)
        return outs

    def profile(self) -> list[ProfileRow]:
        """Time per op over all calls so far, slowest first (load with `profile=True`).

        >>> import tracer
        >>> from exporters.castml_format import to_bytes
        >>> sess = load(to_bytes(tracer.trace(lambda x: np.exp(x) * 2.0, 1.0)), profile=True)
        >>> _ = sess.run(0.0); _ = sess.run(1.0)
        >>> sorted((r.kind, r.calls) for r in sess.profile())
        [('constant', 2), ('exp', 2), ('mul', 2)]
        """
        if self._profile is None:
            raise CastmlError("no profile: load the model with runtime.load(..., profile=True)")
        with self._profile.lock:
            rows = [ProfileRow(*r) for r in self._profile.rows.values()]
        return sorted(rows, key=lambda r: -r.seconds)

    def memory_plan(self, **dims: int) -> MemoryPlan:
        """Planned peak bytes vs the liveness lower bound, for the given symbol values.

        >>> import tracer
        >>> from exporters.castml_format import to_bytes
        >>> g = tracer.trace(lambda x: np.exp(np.exp(x)), tracer.TensorSpec(("n",), np.float64))
        >>> load(to_bytes(g), backend="numpy").memory_plan(n=4).peak_bytes
        64
        """
        e = self._entry
        return plan_memory(e.spec, e.program, dims)

    def __repr__(self) -> str:
        return f"<runtime.Session entries={self.entries} selected={self._entry_name!r}>"


def _blas_function(action: str):
    """NumPy's OpenBLAS `<prefix>openblas_{action}_num_threads<suffix>`, found among loaded libraries."""
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if "blas" in line.lower() and "/" in line})
    for path in libs:
        lib = ctypes.CDLL(path)
        for symbol in (f"scipy_openblas_{action}_num_threads64_", f"openblas_{action}_num_threads64_",
                       f"openblas_{action}_num_threads", f"scipy_openblas_{action}_num_threads"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                return fn
    raise CastmlError(f"blas_threads: no OpenBLAS with {action}_num_threads is loaded by NumPy")


def set_blas_threads(n: int) -> int:
    """Set the thread count of NumPy's OpenBLAS (process-wide); returns the previous count.

    >>> old = set_blas_threads(1); _ = set_blas_threads(old)
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"blas_threads must be a positive int, got {n!r}")
    old = int(_blas_function("get")())
    _blas_function("set")(ctypes.c_int(n))
    return old


def load(source: Any, verify: bool = False, profile: bool = False, blas_threads: int | None = None,
         backend: str = "auto") -> Session:
    """Load a `.castml` model from a path (memory-mapped), bytes or memoryview.

    `verify=True` checks the tensor data against the hash in the file; `profile=True` records
    time per op (`sess.profile()`, NumPy backend only); `blas_threads` sets the BLAS thread count
    (process-wide). `backend`: "auto" (the default): the C++ runtime when its library (built by
    `pip install -e .`) and its BLAS load and it has a kernel for every op of the model, else
    NumPy; "numpy" (this module); "native" (`runtime.native_backend`, an error when it cannot).
    `sess.backend` says which one runs.

    >>> import tracer
    >>> from exporters.castml_format import to_bytes
    >>> load(to_bytes({"a": tracer.trace(lambda x: -x, 1.0)})).entries
    ['a']
    """
    if backend not in ("auto", "numpy", "native"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'native', got {backend!r}")
    if backend == "native" or (backend == "auto" and not profile):
        from . import native_backend

        if backend == "native":
            if profile:
                raise CastmlError("profile=True needs backend='numpy' (the native runtime keeps no per-op times)")
            if blas_threads is not None:
                native_backend.set_threads(blas_threads)
            return native_backend.load(source, verify)
        if native_backend.available():
            try:
                sess = native_backend.load(source, verify)
            except CastmlError:  # an op without a native kernel, or a bad file: NumPy decides
                pass
            else:
                if blas_threads is not None:
                    native_backend.set_threads(blas_threads)
                return sess
    if blas_threads is not None:
        set_blas_threads(blas_threads)
    model = load_model(source, verify)
    entries = {name: _Entry(name, gd) for name, gd in model.entries.items()}
    return Session(model, entries, "main" if "main" in entries else None, profile)
