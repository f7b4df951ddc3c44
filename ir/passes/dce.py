"""Dead code elimination: drop ops none of whose outputs is used (all ops are pure), in nested
regions too, and narrow multi-output ops whose other outputs are unused (a `split` with one
used piece becomes a `slice`). Ops that own regions are kept whole when any output is used:
their region outputs are their semantics, which only a pass that understands them may change.
"""

from __future__ import annotations

from ..graph import Graph, Op, Region
from .base import PassResult
from .rewrite import Rewriter, rewrite_graph


def _used_in(region: Region, used: set[int]) -> None:
    for v in region.outputs:
        used.add(id(v))
    for op in reversed(region.ops):
        if any(id(v) in used for v in op.outputs):
            used.update(id(v) for v in op.inputs)
            for r in op.regions:
                _used_in(r, used)


def eliminate_dead_code(region: Region) -> bool:
    """Remove unused ops in place (nested regions too); returns True when anything changed.

    >>> import tracer
    >>> g = tracer.trace(lambda x: x + 1.0, 2.0)
    >>> eliminate_dead_code(g)
    False
    """
    used: set[int] = set()
    _used_in(region, used)
    keep = [op for op in region.ops if any(id(v) in used for v in op.outputs)]
    changed = len(keep) != len(region.ops)
    region.ops = keep
    for op in keep:
        for r in op.regions:
            changed |= eliminate_dead_code(r)
    return changed


def _narrow_split(op: Op, rw: Rewriter):
    """`split` with exactly one used output -> `slice` of that piece."""
    if op.kind != "split" or len(op.outputs) < 2:
        return None
    used = [i for i, v in enumerate(op.outputs) if rw.n_uses(v)]
    if len(used) != 1:
        return None
    (k,) = used
    from runtime import dims as D

    axis, sizes = op.attrs["axis"], op.attrs["sizes"]
    start = 0
    for s in sizes[:k]:
        start = D.add(start, s)
    x = op.inputs[0]
    starts = tuple(start if i == axis else 0 for i in range(x.type.rank))
    stops = tuple(D.add(start, sizes[k]) if i == axis else d for i, d in enumerate(x.type.shape))
    piece = rw.add("slice", [x], {"starts": starts, "stops": stops, "steps": (1,) * x.type.rank})
    return [piece if i == k else None for i in range(len(op.outputs))]


def _has_split(region: Region) -> bool:
    return any(op.kind == "split" or any(_has_split(r) for r in op.regions) for op in region.ops)


class DCE:
    """Dead code elimination as a pass.

    >>> import tracer, numpy as np
    >>> g = tracer.trace(lambda x: np.split(x, 2)[0], np.zeros(4))
    >>> print(DCE().run(g).graph, end="")
    graph(%x: f64[4]) {
      %0: f64[2] = slice[starts=(0,), steps=(1,), stops=(2,)](%x)
      return %0
    }
    """

    name = "dce"

    def run(self, graph: Graph) -> PassResult:
        """Narrow multi-output ops, then drop unused ops.

        >>> import tracer, numpy as np
        >>> DCE().run(tracer.trace(lambda x: np.split(x, 2)[0], np.zeros(4))).modified
        True
        """
        # (counting uses for the rewrite costs more than the rest of DCE: skip it without splits)
        changed = _has_split(graph) and rewrite_graph(graph, _narrow_split)
        changed |= eliminate_dead_code(graph)
        return PassResult(graph, changed)
