"""The training step's seed, seen by layers that draw random numbers (Dropout).

Why a scope: `Module.apply(params, x, train, updates)` has no seed argument, and adding one to
every layer would burden the many that never draw. `models.fit` traces its step inside
`seed_scope(seed)`, where `seed` is a traced int64 input of the step (fit passes a new value
each step); each random layer asks `next_stream()` for its own stream number, so two Dropout
layers under one seed draw independent masks, and the numbering (call order) is the same every
time the model is traced.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("castml_seed_scope", default=None)


class _Scope:
    def __init__(self, seed: Any):
        self.seed = seed
        self.calls = 0


@contextlib.contextmanager
def seed_scope(seed: Any) -> Iterator[None]:
    """Make `seed` (an int, a 0-d integer array, or a traced int64 scalar) the seed of random layers.

    >>> with seed_scope(5):
    ...     current_seed(), next_stream(), next_stream()
    (5, 0, 1)
    """
    token = _SCOPE.set(_Scope(seed))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_seed() -> Any:
    """The innermost `seed_scope`'s seed, or None outside any scope.

    >>> current_seed() is None
    True
    """
    scope = _SCOPE.get()
    return None if scope is None else scope.seed


def next_stream() -> int:
    """The next stream number of the current scope (0, 1, 2, ... in call order).

    >>> with seed_scope(0):
    ...     next_stream()
    0
    """
    scope = _SCOPE.get()
    if scope is None:
        raise LookupError("next_stream() outside seed_scope")
    scope.calls += 1
    return scope.calls - 1
