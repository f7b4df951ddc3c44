"""Dead code elimination: drop ops none of whose outputs is used (all ops are pure)."""

from __future__ import annotations

from ..graph import Region


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
