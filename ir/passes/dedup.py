"""Deduplicate constants by content, including transposed and reshaped copies of the same data.

Exact duplicates are merged by CSE (constants compare by content). This pass finds the copies CSE
cannot see: a constant whose bytes equal another's under a different shape becomes
`reshape(first)`, and one that equals a transpose of another (rank 2 and 3, every permutation)
becomes `transpose(first)`. Tied weights (an embedding reused transposed as the output
projection) are then stored once. Small constants (printed inline, at most 16 elements) are left
alone: a copy is cheaper than an op.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from ..graph import Graph, Op
from ..printer import INLINE_LIMIT
from .base import PassResult
from .digest import digest, permutation_fingerprint
from .rewrite import Rewriter, rewrite_graph

MAX_PERMUTED_RANK = 3


class _Dedup:
    def __init__(self):
        self.by_bytes: dict[tuple, object] = {}  # (dtype, digest) -> Value (any shape)
        self.by_layout: dict[tuple, object] = {}  # (dtype, shape, digest) -> Value
        # permutation fingerprints of the constants seen: only a constant whose fingerprint is
        # here can be a transpose of one of them, so the others skip hashing their transposes
        self.fingerprints: set[tuple] = set()

    def __call__(self, op: Op, rw: Rewriter):
        if op.kind != "constant" or rw.depth or rw.n_uses(op.output) == 0:
            return None  # (a dead constant must not become a source: that would revive it)
        a = op.attrs["value"]
        if a.size <= INLINE_LIMIT:
            return None
        dt = a.dtype.str
        d = digest(a)
        same = self.by_bytes.get((dt, d))
        if same is not None and same.type.shape != a.shape:
            return [rw.add("reshape", [same], {"shape": a.shape})]
        if 2 <= a.ndim <= MAX_PERMUTED_RANK:
            fp = permutation_fingerprint(a)
            if fp in self.fingerprints:
                for perm in permutations(range(a.ndim)):
                    if perm == tuple(range(a.ndim)):
                        continue
                    t = np.ascontiguousarray(a.transpose(perm))
                    src = self.by_layout.get((dt, t.shape, digest(t, remember=False)))
                    if src is not None:
                        # src == a.transpose(perm)  =>  a == src.transpose(inverse(perm))
                        inv = tuple(int(i) for i in np.argsort(perm))
                        return [rw.add("transpose", [src], {"perm": inv})]
            self.fingerprints.add(fp)
        self.by_bytes.setdefault((dt, d), op.output)
        self.by_layout.setdefault((dt, a.shape, d), op.output)
        return None


class DedupConstants:
    """Share the data of constants that are reshaped or transposed copies of each other.

    >>> import tracer
    >>> w = np.arange(20.0).reshape(4, 5)
    >>> g = tracer.trace(lambda x: x @ w @ np.ascontiguousarray(w.T), np.zeros((3, 4)))
    >>> op = DedupConstants().run(g).graph.ops[2]
    >>> op.kind, op.attrs["perm"], op.inputs[0] is g.ops[0].output
    ('transpose', (1, 0), True)
    """

    name = "dedup"

    def run(self, graph: Graph) -> PassResult:
        """Rewrite duplicate constants in place (the copies are left for DCE).

        >>> import tracer
        >>> w = np.arange(20.0).reshape(4, 5)
        >>> DedupConstants().run(tracer.trace(lambda x: x @ w @ np.ascontiguousarray(w.T), np.zeros((3, 4)))).modified
        True
        """
        return PassResult(graph, rewrite_graph(graph, _Dedup()))
