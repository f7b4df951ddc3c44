"""Content digests of constant arrays, computed once per `PassManager.run`.

Why a cache: CSE keys constants by content and `DedupConstants` by bytes, and the pass manager
runs both several times to a fixpoint, so a 6-layer transformer's 19 MB of weights were hashed
six times per `ir.optimize` (two thirds of its time). Constant arrays are immutable in the IR
(`clone_graph` shares them), so within one run a digest can be remembered by the array's
identity; the cache holds the arrays themselves, so an id cannot be reused while it is active,
and it is dropped when the run ends.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import numpy as np

_CACHE: list[dict[int, tuple[np.ndarray, bytes]]] = []  # a stack: runs may nest (a pass running a PassManager)


def digest(a: np.ndarray, remember: bool = True) -> bytes:
    """SHA-256 of the C-order bytes of `a` (dtype and shape are the caller's to compare);
    `remember=False` for temporaries, which the cache would otherwise keep alive.

    >>> digest(np.zeros(2, np.float32)) == digest(np.zeros((1, 2), np.float32))
    True
    """
    cache = _CACHE[-1] if _CACHE and remember else None
    if cache is not None:
        hit = cache.get(id(a))
        if hit is not None and hit[0] is a:
            return hit[1]
    d = hashlib.sha256(np.ascontiguousarray(a).data if a.size else b"").digest()
    if cache is not None:
        cache[id(a)] = (a, d)
    return d


def permutation_fingerprint(a: np.ndarray) -> tuple:
    """A key equal for `a` and every transpose of it: dtype, sorted dims and the wrapping sum of
    its elements read as unsigned words (exact, so it never hides a true duplicate).

    >>> w = np.arange(6.0).reshape(2, 3)
    >>> permutation_fingerprint(w) == permutation_fingerprint(np.ascontiguousarray(w.T))
    True
    """
    c = np.ascontiguousarray(a)
    words = c.reshape(-1).view(np.uint8) if c.dtype.itemsize not in (2, 4, 8) else \
        c.reshape(-1).view(f"u{c.dtype.itemsize}")
    return c.dtype.str, tuple(sorted(c.shape)), int(words.sum(dtype=np.uint64))


@contextlib.contextmanager
def caching() -> Iterator[None]:
    """Remember digests while the block runs (what `PassManager.run` does).

    >>> a = np.ones(1000)
    >>> with caching():
    ...     digest(a) == digest(a)
    True
    """
    _CACHE.append({})
    try:
        yield
    finally:
        _CACHE.pop()
