"""The variables a scripted `if` or loop changes, as seen by the runtime helpers.

Why a module of its own: staging an `if` or a loop means taking snapshots of Python variables
(any pytree of tracers, arrays, Python scalars and opaque objects), restoring them between
branches, and deciding for each leaf whether it is static (the same Python value on every
path) or must become an op output, with which type. Tracers can also change in place
(`x[i] = v` rebinds the tracer's value), so a snapshot records each tracer's value too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ir.types import TensorType, as_dtype
from runtime import pytree

from .core import Tracer, astype, lift
from .errors import TraceError


class Undefined:
    """Stands for a variable that has no value on this path; any use raises `TraceError`.

    >>> u = Undefined("y", "y is assigned in only one branch")
    >>> isinstance(u, Undefined)
    True
    """

    __slots__ = ("name", "why")

    def __init__(self, name: str, why: str | None = None):
        self.name = name
        self.why = why

    def fail(self, *args: Any, **kwargs: Any):
        """Raise the error this marker stands for."""
        raise TraceError(self.why or f"variable {self.name!r} is used before it is assigned")

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)  # let copy/pickle/NumPy probes see a plain object
        self.fail()

    def __repr__(self) -> str:
        return f"<undefined {self.name}>"


for _dunder in ("__bool__", "__float__", "__int__", "__index__", "__len__", "__iter__", "__call__",
                "__getitem__", "__setitem__", "__array__", "__array_ufunc__", "__array_function__", "__neg__",
                "__abs__", "__invert__", "__pos__", "__matmul__", "__rmatmul__", "__lt__", "__le__", "__gt__",
                "__ge__", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
                "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pow__", "__rpow__",
                "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__"):
    setattr(Undefined, _dunder, Undefined.fail)


@dataclass
class Var:
    """One variable at one moment: the bound object, its leaves, and each tracer leaf's value."""

    value: Any
    leaves: list
    tree: Any  # pytree structure (LEAF for a tracer or an object pytree does not open)
    fields: list  # per leaf: (ir Value, concrete, weak) of tracers, else None


def _flatten(value: Any) -> tuple[list, Any]:
    if isinstance(value, (Tracer, Undefined)):
        return [value], pytree.LEAF
    try:
        return pytree.flatten(value)
    except (TypeError, ValueError):
        return [value], pytree.LEAF


def snapshot(values: tuple) -> list[Var]:
    """Record the current state of some variables (`get_state()` of a rewritten statement)."""
    out = []
    for v in values:
        leaves, tree = _flatten(v)
        fields = [(x._value, x._concrete, x._weak) if isinstance(x, Tracer) else None for x in leaves]
        out.append(Var(v, leaves, tree, fields))
    return out


def restore(snap: list[Var], set_state) -> None:
    """Put variables (and tracers changed in place) back as they were at `snapshot`."""
    for var in snap:
        for x, f in zip(var.leaves, var.fields):
            if f is not None:
                x._value, x._concrete, x._weak = f
    set_state(tuple(var.value for var in snap))


def view(var: Var, k: int) -> Any:
    """Leaf `k` as it was when snapshotted (a tracer changed in place since then is seen as it was)."""
    x, f = var.leaves[k], var.fields[k]
    if f is None:
        return x
    t = Tracer(x._ctx, f[0], f[1], f[2])
    t._sym = x._sym
    return t


def rebuild(var: Var, leaves: list) -> Any:
    """The variable's value with new leaves (same structure)."""
    if var.tree == pytree.LEAF:
        return leaves[0]
    return pytree.unflatten(var.tree, leaves)


def is_undefined(var: Var) -> bool:
    return isinstance(var.value, Undefined)


def same_leaf(a: Any, b: Any, fa: Any, fb: Any) -> bool:
    """Whether two leaves are the same value on both paths (no op output needed)."""
    if fa is not None or fb is not None:
        return fa is not None and fb is not None and fa[0] is fb[0]
    if a is b:
        return True
    if is_liftable(a) and is_liftable(b):
        x, y = np.asarray(a), np.asarray(b)
        return type(a) is type(b) and x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # objects whose == is not a bool
        return False


def is_liftable(x: Any) -> bool:
    """A leaf that can become a tensor: a tracer, an array, a NumPy or Python number."""
    if isinstance(x, Tracer):
        return True
    if isinstance(x, (bool, int, float, np.generic, np.ndarray)):
        return np.asarray(x).dtype.kind in "biuf"
    return False


def leaf_type(x: Any, f: Any) -> tuple[TensorType, bool]:
    """(type, weak) of a liftable leaf (Python scalars are weak, as NumPy 2 treats them)."""
    if f is not None:
        return f[0].type, bool(f[2])
    arr = np.asarray(x)
    weak = type(x) in (int, float, bool)
    return TensorType(as_dtype(arr.dtype), arr.shape), weak


_WEAK_EXAMPLE = {"b": False, "i": 0, "u": 0, "f": 0.0}


def unify_dtype(a: tuple[np.dtype, bool], b: tuple[np.dtype, bool], what: str) -> tuple[np.dtype, bool]:
    """The one dtype two paths' values of a variable take, NumPy 2 style: a weak Python scalar
    adopts the other side's dtype when NumPy would keep it; two different strong dtypes are an
    error (each path would give a different dtype, a graph has one).

    >>> unify_dtype((np.dtype("f4"), False), (np.dtype("f8"), True), "y")
    (dtype('float32'), False)
    """
    (da, wa), (db, wb) = a, b
    if da == db:
        return da, wa and wb
    if wa and wb:
        return as_dtype(np.result_type(_WEAK_EXAMPLE[da.kind], _WEAK_EXAMPLE[db.kind])), True
    if wa or wb:
        strong, weak = (db, da) if wa else (da, db)
        if np.result_type(strong, _WEAK_EXAMPLE[weak.kind]) == strong:
            return strong, False
    raise TraceError(f"{what} is {_dt(da, wa)} on one path and {_dt(db, wb)} on another; a traced "
                     "graph needs one dtype (cast explicitly, e.g. with .astype())")


def _dt(d: np.dtype, weak: bool) -> str:
    return f"a Python {type(_WEAK_EXAMPLE[d.kind]).__name__}" if weak else str(d)


def as_leaf_tracer(x: Any, ctx, dtype: np.dtype, weak: bool) -> Tracer:
    """A leaf as a tracer of `dtype` in the current region (constants and casts recorded there)."""
    t = lift(x, ctx, dtype) if not isinstance(x, Tracer) else astype(lift(x, ctx), dtype)
    if isinstance(x, Tracer) and t is x and x._weak != weak:
        t = Tracer(ctx, x._value, x._concrete, weak)
    return t
