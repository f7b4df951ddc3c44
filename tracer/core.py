"""Tracing machinery: the `Tracer` array stand-in and the context that records ops into a graph.

A `Tracer` wraps an IR `Value`. NumPy hands it every ufunc call (`__array_ufunc__`) and every
array function (`__array_function__`); tables in `tracer.numpy_api` turn those into ops. In
*concrete* mode (used by `tracer.grad`) each tracer also carries its NumPy value, computed by
the same kernel, so Python control flow can follow the actual numbers as `jax.grad` does.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ir.errors import TypeRuleError
from ir.graph import Op, Region, Value
from ir.registry import get_op
from ir.types import TensorType, as_dtype
from runtime import dims as D

from .errors import trace_error, user_location

_state = threading.local()


def _stack() -> list:
    try:
        return _state.stack
    except AttributeError:
        _state.stack = []
        return _state.stack


class TraceContext:
    """One trace in progress: where new ops go, captured outer values, fresh symbol names."""

    def __init__(self, concrete: bool = False, parent: TraceContext | None = None):
        self.concrete = concrete
        self.parent = parent
        self.regions: list[Region] = [Region()]
        self.inputs: list[Value] = []
        self.captures: dict[int, tuple[Tracer, Value]] = {}  # id(outer tracer) -> (tracer, inner value)
        self.fresh_count = 0
        self.symbols: set[str] = set()

    def __enter__(self) -> TraceContext:
        _stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        _stack().pop()

    @property
    def region(self) -> Region:
        return self.regions[-1]

    def fresh_symbol(self) -> str:
        """A new symbol for a data-dependent size (`_n0`, `_n1`, …)."""
        while True:
            name = f"_n{self.fresh_count}"
            self.fresh_count += 1
            if name not in self.symbols:
                self.symbols.add(name)
                return name

    def new_input(self, t: TensorType, name: str, value: Any = None, weak: bool = False) -> Tracer:
        v = Value(t, name)
        self.inputs.append(v)
        self.symbols.update(s for d in t.shape for s in D.symbols(d))
        return Tracer(self, v, value, weak)

    def capture(self, outer: Tracer) -> Tracer:
        """Use a tracer of an enclosing trace as an implicit input of this one (closure conversion)."""
        key = id(outer)
        if key not in self.captures:
            v = Value(outer._value.type, f"captured{len(self.captures)}")
            self.captures[key] = (outer, v)
        _, v = self.captures[key]
        return Tracer(self, v, outer._concrete, outer._weak)


def current() -> TraceContext | None:
    """The innermost active trace, or None."""
    st = _stack()
    return st[-1] if st else None


class Tracer:
    """Stands in for a NumPy array while tracing; records every operation applied to it.

    >>> import tracer
    >>> g = tracer.trace(lambda x: print(repr(x), x.shape) or -x, np.zeros((2, 3), np.float32))
    Tracer(f32[2,3]) (2, 3)
    >>> [op.kind for op in g.ops]
    ['neg']
    """

    __slots__ = ("_ctx", "_value", "_concrete", "_weak", "_sym", "_base", "__weakref__")
    __array_priority__ = 1000

    def __init__(self, ctx: TraceContext, value: Value, concrete: Any = None, weak: bool = False,
                 sym: Any = None):
        self._ctx = ctx
        self._value = value
        self._concrete = concrete
        self._weak = weak
        self._sym = sym  # for int scalars derived from shapes: the symbolic dim they equal
        self._base = None  # set on views (basic indexing, reshape), which cannot be written to

    # --- array-like attributes -------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return self._value.type.dtype

    @property
    def ndim(self) -> int:
        return self._value.type.rank

    @property
    def shape(self) -> tuple:
        """Static dims as ints; symbolic dims as traced int64 scalars that remember their symbol."""
        out = []
        for axis, d in enumerate(self._value.type.shape):
            if isinstance(d, int):
                out.append(d)
            else:
                t = emit("shape_dim", [self], {"axis": axis})
                t._sym = d
                out.append(t)
        return tuple(out)

    @property
    def size(self):
        n = 1
        for d in self.shape:
            n = n * d
        return n

    def __len__(self) -> int:
        if not self.ndim:
            raise TypeError("len() of a 0-d traced array")
        d = self._value.type.shape[0]
        if isinstance(d, int):
            return d
        raise trace_error(f"len() of a traced array whose first dim is symbolic ({d})",
                          "use x.shape[0], which stays symbolic")

    def __repr__(self) -> str:
        return f"Tracer({self._value.type})"

    # --- conversions to Python: only in concrete mode ---------------------------------------
    def _concrete_or_raise(self, what: str):
        if self._concrete is not None:
            return self._concrete
        if self._sym is not None and isinstance(self._sym, int):
            return np.asarray(self._sym)
        raise trace_error(
            f"{what} needs the concrete value of a traced {self._value.type}, which tracing does not have",
            "for data-dependent selection use np.where(cond, a, b); for data-dependent control flow "
            "decorate the function with @tracer.script")

    def __bool__(self) -> bool:
        return bool(self._concrete_or_raise("bool() / an `if` on a traced value"))

    def __float__(self) -> float:
        return float(self._concrete_or_raise("float()"))

    def __int__(self) -> int:
        return int(self._concrete_or_raise("int()"))

    def __index__(self) -> int:
        if self._concrete is None and self._sym is not None:
            raise trace_error(
                f"a symbolic dim ({self._sym}) was used where NumPy needs a Python int "
                "(np.zeros/np.empty/np.ones read the shape before dispatching)",
                "use np.zeros_like(x, shape=...), np.full(shape, v, like=x) or np.ones(shape, like=x)")
        return int(self._concrete_or_raise("using a traced value as an index or size"))

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._concrete_or_raise("np.asarray()/np.array()"), dtype=dtype)

    def __iter__(self):
        if not self.ndim:
            raise TypeError("iteration over a 0-d traced array")
        n = self._value.type.shape[0]
        if not isinstance(n, int):
            raise trace_error(f"iterating over a symbolic dim ({n})",
                              "index with slices, or use tracer.script for a loop")
        return (self[i] for i in range(n))

    def __hash__(self) -> int:
        return id(self)

    def item(self):
        """The value as a Python scalar: only in concrete mode (under `tracer.grad`), as for `bool()`.

        >>> import tracer
        >>> float(tracer.grad(lambda x: x * x.item())(3.0))  # item() is a constant: d/dx = 3
        3.0
        """
        return self._concrete_or_raise(".item()").item()

    def tolist(self):
        """The value as nested Python lists: only in concrete mode (under `tracer.grad`), as for `bool()`.

        >>> import tracer
        >>> tracer.grad(lambda x: (x * max(x.tolist())).sum())(np.array([1.0, 2.0])).tolist()
        [2.0, 2.0]
        """
        return self._concrete_or_raise(".tolist()").tolist()

    # dispatch: see tracer.numpy_api (imported on first use: it imports this module; a
    # function-level import on every traced op costs ~1 us of import machinery)
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return (_api or _load_api()).dispatch_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return (_api or _load_api()).dispatch_function(func, args, kwargs)


_api = None


def _load_api():
    global _api
    from . import numpy_api

    _api = numpy_api
    return _api


def is_tracer(x: Any) -> bool:
    return isinstance(x, Tracer)


def context_of(args: Sequence[Any]) -> TraceContext:
    """The innermost trace among the tracers in `args` (the current one if they are outer)."""
    ctx = current()
    for a in args:
        if isinstance(a, Tracer) and ctx is None:
            ctx = a._ctx
    # (arguments may be None: creation functions reach us through like=, which NumPy strips)
    if ctx is None:
        raise RuntimeError("no trace is active")
    return ctx


def weak_python_scalar(x: Any) -> bool:
    return type(x) in (int, float, bool)


def lift(x: Any, ctx: TraceContext, dtype: np.dtype | None = None) -> Tracer:
    """A tracer for `x`: tracers of this trace pass through, outer ones are captured, arrays and
    scalars become constants (Python scalars weakly typed, cast to `dtype` when given)."""
    if isinstance(x, Tracer):
        if x._ctx is not ctx:
            x = ctx.capture(x) if _is_outer(x._ctx, ctx) else _foreign(x)
        return x if dtype is None or x._value.type.dtype == dtype else astype(x, dtype)
    weak = weak_python_scalar(x)
    if dtype is not None:
        try:
            arr = np.asarray(x, dtype=dtype) if weak else np.asarray(x).astype(dtype)
        except OverflowError as e:
            raise trace_error(f"Python integer {x} does not fit {dtype}: {e}") from None
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise trace_error(f"cannot use a {type(x).__name__} of dtype {arr.dtype} in a traced computation")
        arr = arr.astype(as_dtype(arr.dtype), copy=False)
    t = emit("constant", [], {"value": np.asarray(arr, order="C")}, ctx=ctx)
    t._weak = weak and dtype is None
    return t


def _is_outer(inner_of: TraceContext, ctx: TraceContext) -> bool:
    p = ctx.parent
    while p is not None:
        if p is inner_of:
            return True
        p = p.parent
    return False


def _foreign(x: Tracer):
    raise trace_error("a traced value escaped from the trace that created it (stored in a global "
                      "or returned through a side channel)")


def emit(kind: str, inputs: Sequence[Any], attrs: dict | None = None, ctx: TraceContext | None = None,
         regions: Sequence[Region] = ()) -> Any:
    """Record one op on the current trace and return tracer(s) for its output(s)."""
    ctx = ctx or context_of(inputs)
    # inputs are mostly tracers of this trace already: only the others go through `lift`
    ins = [x if type(x) is Tracer and x._ctx is ctx else lift(x, ctx) for x in inputs]
    try:
        op = Op(kind, [t._value for t in ins], attrs, regions, user_location())
    except TypeRuleError as e:
        raise trace_error(str(e)) from None
    if not ctx.concrete:
        ctx.region.ops.append(op)
        outs = op.outputs
        if len(outs) == 1:
            return Tracer(ctx, outs[0])
        return tuple(Tracer(ctx, v) for v in outs)
    concrete = None
    if ctx.concrete:
        vals = [t._concrete for t in ins]
        if kind == "constant":
            out = attrs["value"]
        else:
            with np.errstate(all="ignore"):
                out = get_op(kind).kernel(*vals, **(attrs or {}))
        concrete = (out,) if len(op.outputs) == 1 else tuple(out)
        concrete = [np.asarray(c) for c in concrete]
    ctx.region.ops.append(op)
    outs = [Tracer(ctx, v, concrete[i] if concrete else None) for i, v in enumerate(op.outputs)]
    return outs[0] if len(outs) == 1 else tuple(outs)


def astype(x: Tracer, dtype) -> Tracer:
    """Cast (no op when the dtype already matches)."""
    dtype = as_dtype(dtype)
    if x.dtype == dtype:
        return x
    return emit("cast", [x], {"dtype": dtype})


def reshape_static(x: Tracer, shape: tuple) -> Tracer:
    """Reshape to dims (ints/symbols) with no -1 (no op when the shape already matches)."""
    shape = tuple(D.parse_dim(d) for d in shape)
    if x._value.type.shape == shape:
        return x
    out = emit("reshape", [x], {"shape": shape})
    out._weak = x._weak
    return out
