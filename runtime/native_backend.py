"""The native backend: run `.castml` models through the C++ runtime (libcastml) via ctypes.

`pip install -e .` builds the library (scikit-build-core + CMake) into runtime/native/build/;
`python -m runtime.native.build` rebuilds it. Why ctypes over the plain C API
(runtime/native/src/castml.h) rather than a nanobind/pybind11 extension: the C API is the
product anyway (castml-run and C users call it), so one binary serves C and Python and there is
no second, Python-ABI-specific build to keep in step; the library carries no Python symbols,
so importing `runtime` never depends on it and a missing or unloadable library (or its BLAS)
is an ordinary `NativeUnavailableError` that `backend="auto"` turns into the NumPy backend; and
the per-call cost ctypes adds (~5 us) is small beside a model run. `NativeSession` keeps
`Session`'s contract: same pytrees in and out, same entries, `inputs`/`outputs`/`metadata`,
typed errors (`ModelFormatError` for bad files, `RuntimeInputError` for bad inputs and limits,
`KernelError` for kernel failures). A model using an op the native runtime lacks raises
`NativeUnsupportedError` at load, naming the op. The limits of `runtime.limits` are handed to
the library before every load and run (`castml_set_limits`), so both backends refuse the same
files and calls with the same messages.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import operator
import os
import threading
from typing import Any

import numpy as np

from . import limits as L
from . import pytree
from .errors import CastmlError, KernelError, ModelFormatError, RuntimeInputError
from .executor import _safe_scalar
from .memory import MemoryPlan
from .session import TensorInfo, _EntryPoints, match_arguments

_DTYPES = {1: np.bool_, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.uint8, 7: np.uint16,
           8: np.uint32, 9: np.uint64, 10: np.float16, 11: np.float32, 12: np.float64}
_CODES = {np.dtype(t): c for c, t in _DTYPES.items()}
_NP_DTYPES = {c: np.dtype(t) for c, t in _DTYPES.items()}


class NativeUnavailableError(CastmlError):
    """The native library is not built or cannot be loaded."""


class NativeUnsupportedError(ModelFormatError):
    """A valid model uses an op or dtype the native runtime has no kernel for (NumPy runs it)."""


class _CTensor(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int32), ("rank", ctypes.c_int32), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("data", ctypes.c_void_p)]


_SHAPE_TYPES = [ctypes.c_int64 * max(r, 1) for r in range(65)]  # per rank (the loader caps rank far lower)


def _address(arr: np.ndarray) -> int:
    """The data address of a C-contiguous array (`arr.ctypes.data` costs ~4x more)."""
    if arr.flags.writeable and arr.nbytes:
        return ctypes.addressof(ctypes.c_char.from_buffer(arr))
    return arr.ctypes.data


class _CLimits(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("max_rank", "max_ops", "max_region_depth", "max_file_bytes",
                                                     "max_tensor_bytes", "max_intermediate_bytes",
                                                     "max_loop_iterations")]


_lib = None
_lib_lock = threading.Lock()
_pushed_limits: L.Limits | None = None  # the Limits object last handed to the library


def library_path() -> str:
    """The shared library used: `$CASTML_NATIVE_LIB`; else the build tree's
    runtime/native/build/libcastml.so (editable installs, `python -m runtime.native.build`)
    when it exists; else runtime/native/libcastml.so (where a regular wheel installs it).

    >>> library_path().endswith("libcastml.so")
    True
    """
    env = os.environ.get("CASTML_NATIVE_LIB")
    if env:
        return env
    native = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native")
    built = os.path.join(native, "build", "libcastml.so")
    installed = os.path.join(native, "libcastml.so")
    return installed if not os.path.exists(built) and os.path.exists(installed) else built


_AVX512 = ("avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl")


@contextlib.contextmanager
def _blas_core_for_this_cpu():
    """While the library (and its OpenBLAS) loads: OPENBLAS_CORETYPE=SkylakeX on CPUs with the
    AVX-512 subsets those kernels use, unless the user set a core type. OpenBLAS's detection maps
    AVX-512 AMD EPYCs to Haswell kernels, which run GEMM ~1.8x slower there (measured: 91 vs 164
    GFLOPS, 128x256x1024 float32, one thread). NumPy's own OpenBLAS is loaded already and keeps
    its choice; the variable is restored afterwards, so subprocesses are unaffected."""
    if "OPENBLAS_CORETYPE" in os.environ:
        yield
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if not all(x in flags for x in _AVX512):
        yield
        return
    os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    try:
        yield
    finally:
        del os.environ["OPENBLAS_CORETYPE"]


def _preload_blas() -> bool:
    """Load the `scipy-openblas32` wheel's OpenBLAS with global symbols, so a library whose
    RUNPATH misses it (an environment moved since the build) finds it by its soname; False when
    that wheel is not installed or its library does not load."""
    import sys

    for entry in sys.path:  # where `import scipy_openblas32` would find the package
        blas = os.path.join(entry or ".", "scipy_openblas32", "lib", "libscipy_openblas.so")
        if os.path.exists(blas):
            try:
                ctypes.CDLL(blas, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                return False
            return True
    return False


def _library() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        path = library_path()
        if not os.path.exists(path):
            raise NativeUnavailableError(f"the native runtime is not built ({path} is missing); "
                                         f"`pip install -e .` builds it, or `python -m runtime.native.build`")
        try:
            with _blas_core_for_this_cpu():
                try:
                    lib = ctypes.CDLL(path)
                except OSError as e:
                    if "libscipy_openblas" not in str(e) or not _preload_blas():
                        raise
                    lib = ctypes.CDLL(path)
        except OSError as e:
            raise NativeUnavailableError(f"cannot load the native runtime {path}: {e} (its BLAS comes from the "
                                         f"scipy-openblas32 package)") from None
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, res, args in (("castml_load", vp, [cp]), ("castml_load_buffer", vp, [vp, ctypes.c_size_t]),
                                ("castml_free", None, [vp]), ("castml_describe", cp, [vp]),
                                ("castml_run", vp, [vp, cp, i, ctypes.POINTER(_CTensor)]),
                                ("castml_memory_plan", cp, [vp, cp, i, ctypes.POINTER(cp),
                                                            ctypes.POINTER(ctypes.c_int64)]),
                                ("castml_result_count", i, [vp]),
                                ("castml_result_get", i, [vp, i, ctypes.POINTER(_CTensor)]),
                                ("castml_result_free", None, [vp]), ("castml_last_error", cp, []),
                                ("castml_last_error_kind", i, []), ("castml_blas", cp, []),
                                ("castml_kernel_names", cp, []), ("castml_set_num_threads", None, [i]),
                                ("castml_set_limits", i, [ctypes.POINTER(_CLimits)]),
                                ("castml_get_limits", None, [ctypes.POINTER(_CLimits)])):
            try:
                fn = getattr(lib, name)
            except AttributeError:  # a library built from older sources
                raise NativeUnavailableError(f"the native runtime {path} lacks {name}(): it is out of date; "
                                             f"rebuild it with `python -m runtime.native.build`") from None
            fn.restype, fn.argtypes = res, args
        _lib = lib
        return lib


def available() -> bool:
    """Whether the native library is built and loads.

    >>> isinstance(available(), bool)
    True
    """
    try:
        _library()
    except NativeUnavailableError:
        return False
    return True


def blas() -> str:
    """The GEMM the library was built with: "openblas" or "builtin"."""
    return _library().castml_blas().decode()


def set_threads(n: int) -> None:
    """Set the native GEMM's thread count (OpenBLAS, process-wide; separate from NumPy's)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads must be a positive int, got {n!r}")
    _library().castml_set_num_threads(n)


def kernel_names() -> list[str]:
    """The op kinds the native runtime has kernels for (sorted)."""
    return _library().castml_kernel_names().decode().split(",")


def _push_limits(lib: ctypes.CDLL) -> None:
    """Hand `runtime.limits.current()` to the library when it changed since the last push (a
    load or run reads the library's limits when it starts; they are process-wide on both sides)."""
    global _pushed_limits
    cur = L.current()
    if cur is _pushed_limits:
        return
    top = (1 << 64) - 1
    lim = _CLimits(*(min(getattr(cur, name), top) for name, _ in _CLimits._fields_))
    if lib.castml_set_limits(ctypes.byref(lim)) != 0:
        _raise_last(lib, "castml_set_limits")
    _pushed_limits = cur


def native_limits() -> L.Limits:
    """The limits the library holds now (those of `runtime.limits` after any load or run).

    >>> native_limits().max_rank if available() else 8
    8
    """
    lim = _CLimits()
    _library().castml_get_limits(ctypes.byref(lim))
    return L.Limits(**{name: int(getattr(lim, name)) for name, _ in _CLimits._fields_})


def _raise_last(lib: ctypes.CDLL, what: str) -> None:
    kind, message = lib.castml_last_error_kind(), lib.castml_last_error().decode("utf-8", "replace")
    cls = {1: ModelFormatError, 2: NativeUnsupportedError, 3: RuntimeInputError, 4: KernelError}.get(kind)
    if cls is None:
        raise OSError(f"{what}: {message}")
    raise cls(message)


class _Model:
    """Owns one native model handle; freed when the last session view goes away."""

    def __init__(self, lib: ctypes.CDLL, handle: int):
        self.lib, self.handle = lib, handle

    def __del__(self):
        if self.handle:
            self.lib.castml_free(self.handle)
            self.handle = None


class _Result:
    """Owns one native result; its output buffers stay valid while this object lives."""

    def __init__(self, lib: ctypes.CDLL, handle: int):
        self.lib, self.handle = lib, handle

    def __del__(self):
        self.lib.castml_result_free(self.handle)


class _EntryInfo:
    def __init__(self, name: str, d: dict):
        self.name = name
        self.bname = name.encode()
        self.in_array_type = _CTensor * max(len(d["inputs"]), 1)
        self.inputs = [TensorInfo(t["name"], np.dtype(t["dtype"]), tuple(t["shape"])) for t in d["inputs"]]
        self.outputs = [TensorInfo(t["name"], np.dtype(t["dtype"]), tuple(t["shape"])) for t in d["outputs"]]
        self.in_tree = pytree.treedef_from_json(d["in_tree"])
        self.out_tree = pytree.treedef_from_json(d["out_tree"])
        self.arg_names = list(d["arg_names"])
        self.metadata = dict(d["metadata"])
        self.flat_args = self.in_tree == ("tuple", (pytree.LEAF,) * len(self.arg_names))


class NativeSession(_EntryPoints):
    """A model loaded by the native runtime; `run` has the same contract as `Session.run`.

    >>> import tracer
    >>> from exporters.castml_format import to_bytes
    >>> sess = load(to_bytes(tracer.trace(lambda x: x * x, 2.0)))  # doctest: +SKIP
    >>> float(sess.run(3.0))  # doctest: +SKIP
    9.0
    """

    backend = "native"

    def __init__(self, model: _Model, entries: dict[str, _EntryInfo], entry: str | None):
        self._model = model
        self._entries = entries
        self._entry_name = entry

    def _view(self, name: str) -> NativeSession:
        return NativeSession(self._model, self._entries, name)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the entry on arguments shaped like the traced function's; returns its pytree."""
        e = self._entry
        outs = self._run_flat(match_arguments(e, args, kwargs))
        if e.out_tree == pytree.LEAF:
            return outs[0]
        return pytree.unflatten(e.out_tree, outs)

    def _run_flat(self, leaves: list) -> list[np.ndarray]:
        """Run on the flat input leaves; returns the flat outputs."""
        e = self._entry
        n = len(leaves)
        if n != len(e.inputs):
            raise RuntimeInputError(f"expected {len(e.inputs)} inputs, got {n}")
        keep, tensors = [], e.in_array_type()
        for k, (info, a) in enumerate(zip(e.inputs, leaves)):
            arr = a
            if type(a) is not np.ndarray or a.dtype != info.dtype or not a.flags.c_contiguous:
                arr = np.asarray(a)
                if arr.dtype != info.dtype and _safe_scalar(a, arr, info.dtype):
                    arr = arr.astype(info.dtype)
                if arr.dtype not in _CODES:
                    raise RuntimeInputError(f"input {info.name!r}: unsupported dtype {arr.dtype}")
                if not arr.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
                    arr = np.ascontiguousarray(arr)
            shape = _SHAPE_TYPES[arr.ndim](*arr.shape)
            keep.append((arr, shape))
            t = tensors[k]
            t.dtype, t.rank, t.shape, t.data = _CODES[arr.dtype], arr.ndim, shape, _address(arr)
        lib = self._model.lib
        _push_limits(lib)
        res = lib.castml_run(self._model.handle, e.bname, n, tensors)
        if not res:
            _raise_last(lib, "castml_run")
        # outputs are zero-copy views of the result's buffers, which live until the last view dies
        holder = _Result(lib, res)
        outs = []
        t = _CTensor()
        ref = ctypes.byref(t)
        for k in range(lib.castml_result_count(res)):
            lib.castml_result_get(res, k, ref)
            shape = tuple(t.shape[:t.rank])
            dtype = _NP_DTYPES[t.dtype]
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes:
                buf = (ctypes.c_char * nbytes).from_address(t.data)
                buf._owner = holder
                outs.append(np.frombuffer(buf, dtype).reshape(shape))
            else:
                outs.append(np.empty(shape, dtype))
        return outs

    def memory_plan(self, **dims: int) -> MemoryPlan:
        """The native runtime's plan for the given input symbol values, as `Session.memory_plan`:
        `peak_bytes` = the arena plus the returned values (allocated apart); `lower_bound_bytes`,
        the most bytes alive at once. Values inside if/loop bodies are planned when they run.

        >>> import tracer
        >>> from exporters.castml_format import to_bytes
        >>> g = tracer.trace(lambda x: np.exp(np.exp(x)), tracer.TensorSpec(("n",), np.float64))
        >>> load(to_bytes(g)).memory_plan(n=4).peak_bytes  # (a 64-byte aligned arena) # doctest: +SKIP
        96
        """
        lib = self._model.lib
        names = [name.encode() for name in dims]
        values = [operator.index(v) for v in dims.values()]
        for name, v in zip(dims, values):
            if not 0 <= v < 2**63:
                raise RuntimeInputError(f"memory_plan: {name}={v} is not a dim size (0 <= size < 2**63)")
        _push_limits(lib)
        text = lib.castml_memory_plan(self._model.handle, self._entry.bname, len(names),
                                      (ctypes.c_char_p * len(names))(*names), (ctypes.c_int64 * len(values))(*values))
        if text is None:
            _raise_last(lib, "castml_memory_plan")
        r = json.loads(text.decode("utf-8"))
        arena = r["arena"]
        return MemoryPlan(r["arena_bytes"] + r["output_bytes"], r["lower_bound_bytes"],
                          offsets={v: off for v, off, _, _, _ in arena}, sizes={v: n for v, _, n, _, _ in arena},
                          intervals={v: (first, last) for v, _, _, first, last in arena}, unknown=r["unknown"],
                          arena_bytes=r["arena_bytes"])

    def profile(self) -> list:
        """Not available on the native backend (load with backend="numpy", profile=True)."""
        raise CastmlError("no profile on the native backend: load with runtime.load(..., backend='numpy', "
                          "profile=True)")

    def __repr__(self) -> str:
        return f"<runtime.NativeSession entries={self.entries} selected={self._entry_name!r}>"


def load(source: Any, verify: bool = False) -> NativeSession:
    """Load a `.castml` path (memory-mapped), bytes or memoryview with the native runtime.

    Raises NativeUnavailableError when the library is not built, ModelFormatError for a bad
    file (NativeUnsupportedError when an op has no native kernel).
    """
    lib = _library()
    _push_limits(lib)
    if verify:  # the data hash is checked by the Python loader (its only extra check)
        from .loader import decode

        decode(source, verify=True)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb"):  # FileNotFoundError / PermissionError as for the NumPy backend
            pass
        handle = lib.castml_load(os.fsencode(source))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        handle = lib.castml_load_buffer(data, len(data))
    else:
        raise TypeError(f"expected a path, bytes or memoryview, got {type(source).__name__}")
    if not handle:
        _raise_last(lib, "castml_load")
    model = _Model(lib, handle)
    described = json.loads(lib.castml_describe(handle).decode("utf-8"))
    entries = {name: _EntryInfo(name, d) for name, d in described.items()}
    return NativeSession(model, entries, "main" if "main" in entries else None)
