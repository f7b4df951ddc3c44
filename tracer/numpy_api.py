"""NumPy → IR: ufuncs and array functions dispatched by table.

`dispatch_ufunc` resolves NumPy 2's type promotion with the ufunc's own `resolve_dtypes`
(Python scalars and weakly typed tracers count as NEP 50 weak scalars), casts inputs to the
loop dtypes, and records the op whose kernel is that very ufunc. `FUNCTIONS` maps array
functions (`np.sum`, `np.concatenate`, …) to implementations in `tracer.functions`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime import dims as D
from runtime.kernels.elementwise import UFUNCS

from .core import Tracer, astype, context_of, emit, lift, weak_python_scalar
from .errors import trace_error

UFUNC_TO_OP: dict[np.ufunc, str] = {uf: name for name, uf in UFUNCS.items()}
LOGICAL = {np.logical_and, np.logical_or, np.logical_xor, np.logical_not}
FUNCTIONS: dict[Any, Any] = {}  # filled by tracer.functions

_WEAK_TYPES = {"f": float, "i": int, "u": int, "b": bool}


def _dtype_arg(x: Any):
    """What `resolve_dtypes` takes for one operand: a dtype, or a Python type for weak scalars."""
    if isinstance(x, Tracer):
        return _WEAK_TYPES[x.dtype.kind] if x._weak and x.dtype.kind != "b" else x.dtype
    if weak_python_scalar(x):
        return np.dtype(np.bool_) if type(x) is bool else type(x)
    return np.asarray(x).dtype


def is_weak(x: Any) -> bool:
    return x._weak if isinstance(x, Tracer) else weak_python_scalar(x)


def _resolve(ufunc: np.ufunc, inputs: tuple, dtype=None) -> tuple:
    args = tuple(_dtype_arg(x) for x in inputs)
    try:
        if dtype is not None:
            return ufunc.resolve_dtypes(args + (np.dtype(dtype),) * ufunc.nout, casting="unsafe")
        resolved = ufunc.resolve_dtypes(args + (None,) * ufunc.nout)
        if any(d.kind == "O" for d in resolved):  # only weak scalars (int, int): NumPy picks object loops
            raise TypeError("object loop")
        return resolved
    except TypeError:
        if all(isinstance(a, type) for a in args):  # only weak scalars: NumPy makes them default dtypes
            strong = tuple(x.dtype if isinstance(x, Tracer) else np.asarray(x).dtype for x in inputs)
            return ufunc.resolve_dtypes(strong + (None,) * ufunc.nout)
        names = ", ".join(str(a if not isinstance(a, type) else a.__name__) for a in args)
        raise trace_error(f"np.{ufunc.__name__} has no loop for ({names})") from None


def _is_scalar_half(x: Any) -> bool:
    """Whether `x` is the constant 0.5 as a Python or NumPy scalar (or 0-d array), not traced."""
    return not isinstance(x, Tracer) and np.ndim(x) == 0 and np.asarray(x).dtype.kind in "fiu" and x == 0.5


def dispatch_ufunc(ufunc: np.ufunc, method: str, inputs: tuple, kwargs: dict) -> Any:
    """Record a ufunc call on tracers (called from `Tracer.__array_ufunc__`)."""
    out = kwargs.pop("out", None)
    if out is not None:
        raise trace_error(f"np.{ufunc.__name__}(..., out=...) writes into an array in place",
                          "write `y = np.add(a, b)` (in-place updates of closed-over arrays "
                          "cannot be traced)")
    if method == "reduce":
        from .functions import ufunc_reduce

        return ufunc_reduce(ufunc, inputs[0], **kwargs)
    if method != "__call__":
        raise trace_error(f"np.{ufunc.__name__}.{method} is not supported when tracing")
    dtype = kwargs.pop("dtype", None)
    if kwargs:
        raise trace_error(f"np.{ufunc.__name__}: keyword arguments {sorted(kwargs)} are not supported "
                          "when tracing")
    if ufunc is np.matmul:
        from .functions import matmul

        return matmul(*inputs)
    special = _SPECIAL.get(ufunc)
    if special is not None:
        return special(*inputs, dtype=dtype)
    name = UFUNC_TO_OP.get(ufunc)
    if name is None:
        raise trace_error(f"np.{ufunc.__name__} is not supported when tracing",
                          "see docs/numpy_coverage.md for the supported functions")
    ctx = context_of(inputs)
    loop = _resolve(ufunc, inputs, dtype)
    if ufunc in LOGICAL:
        loop = (np.dtype(np.bool_),) * len(inputs) + loop[len(inputs):]
    ins = [lift(x, ctx, dt) for x, dt in zip(inputs, loop)]
    if name == "pow" and loop[0].kind == "f" and _is_scalar_half(inputs[1]):
        # x ** 0.5 is NumPy's sqrt (its scalar-exponent fast path): NaN for -inf, -0.0 for -0.0,
        # where C pow gives inf and +0.0 (only np.power on float16 skips the fast path)
        ins, name = ins[:1], "sqrt"
    result = emit(name, ins)
    if result.dtype != loop[-1]:
        result = astype(result, loop[-1])
    result._weak = all(is_weak(x) for x in inputs)
    if ufunc in _DIM_ARITH and all(_dim_of(x) is not None for x in inputs):
        result._sym = _DIM_ARITH[ufunc](*(_dim_of(x) for x in inputs))
    return result


# shape arithmetic on dims stays symbolic: x.shape[0] * 4 remembers "batch*4"
_DIM_ARITH = {np.add: D.add, np.subtract: D.sub, np.multiply: D.mul, np.floor_divide: D.floordiv,
              np.remainder: D.mod}


def _dim_of(x: Any):
    if isinstance(x, Tracer):
        return x._sym
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return int(x)
    return None


def _via(ufunc: np.ufunc, impl):
    """A ufunc without an op of its own: cast to the ufunc's own loop dtypes (so dtypes and
    errors are NumPy's), then record `impl` on the cast inputs."""
    def run(*inputs, dtype=None):
        loop = _resolve(ufunc, inputs, dtype)
        ctx = context_of(inputs)
        ins = [lift(x, ctx, dt) for x, dt in zip(inputs, loop)]
        for t, x in zip(ins, inputs):
            t._weak = is_weak(x)
        out = impl(*ins)
        return tuple(astype(o, d) for o, d in zip(out, loop[ufunc.nin:])) if ufunc.nout > 1 else astype(out, loop[-1])
    return run


_SPECIAL = {
    np.square: _via(np.square, lambda x: np.multiply(x, x)),
    np.positive: _via(np.positive, lambda x: x),
    np.conjugate: _via(np.conjugate, lambda x: x),
    np.fabs: _via(np.fabs, lambda x: np.absolute(x)),
    np.float_power: _via(np.float_power, lambda a, b: np.power(a, b)),
    np.divmod: _via(np.divmod, lambda a, b: (np.floor_divide(a, b), np.remainder(a, b))),
}


def dispatch_function(func: Any, args: tuple, kwargs: dict) -> Any:
    """Record an array function call on tracers (called from `Tracer.__array_function__`)."""
    impl = FUNCTIONS.get(func)
    if impl is None:
        mod = getattr(func, "__module__", "numpy") or "numpy"
        name = f"{'np.random' if 'random' in mod else 'np'}.{func.__name__}"
        hint = ("random numbers would be frozen into the graph as constants; random ops arrive "
                "with the models issue" if "random" in mod else "see docs/numpy_coverage.md")
        raise trace_error(f"{name} is not supported when tracing", hint)
    return impl(*args, **kwargs)
