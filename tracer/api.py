"""`tracer.trace` and `tracer.TensorSpec`: run a NumPy function on tracers, get an `ir.Graph`."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ir.graph import Graph
from ir.passes.dce import eliminate_dead_code
from ir.types import TensorType, as_dtype
from runtime import pytree

from .core import TraceContext, Tracer, current, lift
from .errors import TraceError, trace_error


class TensorSpec:
    """An abstract argument: shape (ints or symbol names) and dtype, no values.

    >>> TensorSpec(("batch", 784), np.float32)
    TensorSpec(('batch', 784), float32)
    """

    def __init__(self, shape: Sequence[int | str], dtype: Any = np.float32):
        self.type = TensorType(as_dtype(dtype), tuple(shape))

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self) -> np.dtype:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"TensorSpec({self.shape}, {self.dtype})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorSpec) and self.type == other.type

    def __hash__(self) -> int:
        return hash(self.type)


def arg_names(fn: Callable, n: int) -> list[str]:
    """Parameter names for `n` positional arguments (`args0`, `args1` for `*args`; `arg3` where
    Python has no name)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    var = next((j for j, p in enumerate(params) if p.kind == p.VAR_POSITIONAL), None)
    names: list[str] = []
    for i in range(n):
        if var is not None and i >= var:
            names.append(f"{params[var].name}{i - var}")
        elif i < len(params) and params[i].kind in (params[i].POSITIONAL_ONLY, params[i].POSITIONAL_OR_KEYWORD):
            names.append(params[i].name)
        else:
            names.append(f"arg{i}")
    return names


def _leaf_type(leaf: Any, where: str) -> tuple[TensorType, Any, bool]:
    """(type, concrete value or None, weak) of one argument leaf."""
    if isinstance(leaf, TensorSpec):
        return leaf.type, None, False
    if isinstance(leaf, Tracer):
        return leaf._value.type, leaf._concrete, leaf._weak
    weak = type(leaf) in (int, float)  # a Python bool argument becomes a strong b1 input
    try:
        arr = np.asarray(leaf)
        t = TensorType(as_dtype(arr.dtype), arr.shape)
    except (TypeError, ValueError) as e:
        raise TraceError(f"argument {where}: cannot trace a {type(leaf).__name__}: {e}") from None
    return t, arr, weak


@contextlib.contextmanager
def _no_numpy_random():
    """Make np.random calls inside the traced function fail loudly instead of freezing values."""
    patched = {}

    def make(name, orig):
        def guarded(*a, **k):
            if current() is not None:
                raise trace_error(
                    f"np.random.{name} inside a traced function would be frozen into a constant",
                    "pass random values in as arguments; traced random ops come with tracer.ops")
            return orig(*a, **k)
        return guarded

    for name in ("rand", "randn", "random", "random_sample", "normal", "uniform", "randint", "choice",
                 "permutation", "shuffle", "default_rng", "standard_normal", "binomial", "poisson",
                 "beta", "gamma", "exponential", "bernoulli"):
        orig = getattr(np.random, name, None)
        if orig is not None:
            patched[name] = orig
            setattr(np.random, name, make(name, orig))
    try:
        yield
    finally:
        for name, orig in patched.items():
            setattr(np.random, name, orig)


def trace_into(fn: Callable, args: tuple, static_argnums: Sequence[int] = (), concrete: bool = False,
               names: Sequence[str] | None = None):
    """Trace `fn(*args)` into a new graph; returns (graph, output tracers, captured outer tracers).

    Tracers of an enclosing trace found among `args` or closed over become inputs (captures are
    appended after the arguments, in first-use order)."""
    parent = current()
    ctx = TraceContext(concrete=concrete, parent=parent)
    static = {i % len(args) for i in static_argnums} if args else set()
    names = list(names) if names is not None else arg_names(fn, len(args))
    call_args = list(args)
    dyn_trees, dyn_names = [], []
    with ctx:
        for i, a in enumerate(args):
            if i in static:
                continue
            leaves, tree = pytree.flatten(a)
            paths = pytree.leaf_paths(tree, names[i])
            tracers = []
            for leaf, path in zip(leaves, paths):
                t, value, weak = _leaf_type(leaf, path)
                if concrete and value is None:
                    raise TraceError(f"argument {path}: a TensorSpec has no value to differentiate at")
                tracers.append(ctx.new_input(t, path, value if concrete else None, weak))
            call_args[i] = pytree.unflatten(tree, tracers)
            dyn_trees.append(tree)
            dyn_names.append(names[i])
        with _no_numpy_random():
            result = fn(*call_args)
        out_leaves, out_tree = pytree.flatten(result)
        outs = [lift(x, ctx) for x in out_leaves]
    captured = [outer for outer, _ in ctx.captures.values()]
    inputs = ctx.inputs + [v for _, v in ctx.captures.values()]
    g = Graph(inputs, ctx.region.ops, [t._value for t in outs], in_tree=("tuple", tuple(dyn_trees)),
              out_tree=out_tree, arg_names=dyn_names)
    if captured:
        g.in_tree = ("tuple", tuple(dyn_trees) + (pytree.LEAF,) * len(captured))
        g.arg_names = dyn_names + [v.name for _, v in ctx.captures.values()]
    eliminate_dead_code(g)
    return g, outs, captured


def trace(fn: Callable, *args: Any, static_argnums: int | Sequence[int] = ()) -> Graph:
    """Trace `fn(*args)` into an `ir.Graph`.

    Arguments may be arrays, Python scalars (weakly typed, as NumPy treats them), `TensorSpec`s,
    or pytrees (dict/list/tuple) of those; `static_argnums` are passed through as Python values.

    >>> g = trace(lambda x, w: np.maximum(x @ w, 0.0), TensorSpec(("batch", 3)), np.ones((3, 2), np.float32))
    >>> print(g.outputs[0].type)
    f32[batch,2]
    """
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)
    if current() is not None and any(isinstance(leaf, Tracer) for leaf in pytree.flatten(args)[0]):
        raise TraceError("tracer.trace inside a traced function: use tracer.jit or call the function directly")
    g, _, _ = trace_into(fn, args, static_argnums)
    return g
