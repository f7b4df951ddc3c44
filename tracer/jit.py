"""`tracer.jit`: trace once per input signature, then run the compiled model, like `jax.jit`.

The compiled form is exactly what a deployment runs: the graph is optimized (when `ir.optimize`
exists), written to `.castml` bytes and loaded with `runtime.load`, so every jitted call
exercises the real save/load path and the standalone runtime. Arrays the function closes over
are frozen into the model at the first trace of each signature, as in `jax.jit`.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from runtime import pytree

from .api import TensorSpec, trace
from .errors import TraceError


def _leaf_key(leaf: Any) -> tuple:
    if isinstance(leaf, TensorSpec):
        raise TraceError("tracer.jit is called with concrete arrays; use tracer.trace for TensorSpecs")
    if type(leaf) in (int, float, bool):
        return ("py", type(leaf).__name__)  # weakly typed scalars, as NumPy promotes them
    a = np.asarray(leaf)
    return (a.dtype.str, a.shape)


class Jitted:
    """The callable `tracer.jit` returns; `cache_size` counts traced signatures."""

    def __init__(self, fn: Callable, static_argnums: Sequence[int]):
        self.fn = fn
        self.static_argnums = tuple(static_argnums)
        self._cache: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None
        functools.update_wrapper(self, fn)

    @property
    def cache_size(self) -> int:
        """Number of compiled input signatures."""
        return len(self._cache)

    def _positional(self, args: tuple, kwargs: dict) -> tuple:
        if not kwargs:
            return args
        if self._signature is None:
            raise TraceError(f"tracer.jit: cannot bind keyword arguments {sorted(kwargs)} without a signature")
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TraceError(f"tracer.jit: arguments do not match {self._signature}: {e}") from None
        if bound.kwargs:
            raise TraceError(f"tracer.jit: keyword-only arguments {sorted(bound.kwargs)} are not supported")
        return bound.args

    def _key(self, args: tuple) -> tuple:
        static = {i % len(args) for i in self.static_argnums} if args else set()
        parts = []
        for i, a in enumerate(args):
            if i in static:
                try:
                    hash(a)
                except TypeError:
                    raise TraceError(f"tracer.jit: static argument {i} must be hashable, got "
                                     f"{type(a).__name__}") from None
                parts.append(("static", type(a).__name__, a))
            else:
                leaves, tree = pytree.flatten(a)
                parts.append((tree, tuple(_leaf_key(x) for x in leaves)))
        return tuple(parts)

    def _compile(self, args: tuple):
        import ir
        import runtime
        from exporters.castml_format import to_bytes

        g = trace(self.fn, *args, static_argnums=self.static_argnums)
        if hasattr(ir, "optimize"):
            g = ir.optimize(g)
        return runtime.load(to_bytes(g))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args = self._positional(args, kwargs)
        key = self._key(args)
        sess = self._cache.get(key)
        if sess is None:
            with self._lock:
                sess = self._cache.get(key)
                if sess is None:
                    sess = self._cache[key] = self._compile(args)
        static = {i % len(args) for i in self.static_argnums} if args else set()
        return sess.run(*(a for i, a in enumerate(args) if i not in static))


def jit(fn: Callable | None = None, *, static_argnums: int | Sequence[int] = ()) -> Any:
    """Compile `fn` per input signature (shapes, dtypes, static arguments) and run it.

    Usable as `jit(fn)`, `@jit` or `@jit(static_argnums=1)`.

    >>> f = jit(lambda x: np.maximum(x, 0.0) * 2.0)
    >>> f(np.array([-1.0, 3.0])).tolist()
    [0.0, 6.0]
    """
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)
    if fn is None:
        return lambda f: Jitted(f, static_argnums)
    return Jitted(fn, static_argnums)
