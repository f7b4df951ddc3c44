"""Common subexpression elimination: two ops of the same kind, attributes and inputs compute the
same value (all ops are pure), so the later one is replaced by the earlier. Inputs of commutative
ops (`OpDef.commutative`) are compared as a multiset, so `a*b` and `b*a` merge. Constants compare
by content (dtype, shape and bytes), which also merges duplicated weights. Ops inside a region
may reuse an equal op of an enclosing region, never the other way round.
"""

from __future__ import annotations

import numpy as np

from ..graph import Graph, Op, Region, Value
from ..printer import INLINE_LIMIT, format_attr
from ..registry import get_op
from .base import PassResult
from .digest import digest


def op_key(op: Op, vid) -> tuple | None:
    """A hashable key equal for ops computing the same thing; None for ops with regions.

    `vid(value)` numbers input values (any injective function of the value works).
    """
    if op.regions:
        return None
    ins = [vid(v) for v in op.inputs]
    if len(ins) > 1 and get_op(op.kind).commutative:
        ins.sort()
    attrs = tuple((k, _attr_key(op.attrs[k])) for k in sorted(op.attrs))
    return (op.kind, tuple(ins), attrs, tuple(v.type for v in op.outputs))


def _attr_key(v):
    # text of the attribute: exact for small tensors (inline values, -0.0 and NaN kept), dtypes,
    # symbolic dims and floats; larger tensors by dtype, shape and a digest of their bytes that
    # is computed once per optimize run (see digest.py)
    if isinstance(v, np.ndarray) and v.size > INLINE_LIMIT:
        return ("tensor", v.dtype.str, v.shape, digest(v))
    return format_attr(v, elide=False)


def _cse_region(region: Region, table: dict, subst: dict[int, Value], added: list | None = None) -> bool:
    # a nested region sees the enclosing entries; what it adds is removed when it is done (an
    # undo list instead of a copy of the table per region, which was quadratic)
    changed = False
    keep = []
    for op in region.ops:
        if subst and any(id(v) in subst for v in op.inputs):
            op.inputs = tuple(subst.get(id(v), v) for v in op.inputs)
            changed = True
        for r in op.regions:
            inner: list = []
            changed |= _cse_region(r, table, subst, inner)
            for k in inner:
                del table[k]
        key = op_key(op, id)
        if key is None:
            keep.append(op)
            continue
        prev = table.get(key)
        if prev is None:
            table[key] = op
            if added is not None:
                added.append(key)
            keep.append(op)
            continue
        for old, new in zip(op.outputs, prev.outputs):
            subst[id(old)] = new
        changed = True
    region.ops = keep
    if subst and any(id(v) in subst for v in region.outputs):
        region.outputs = [subst.get(id(v), v) for v in region.outputs]
        changed = True
    return changed


class CSE:
    """Common subexpression elimination.

    >>> import tracer, numpy as np
    >>> g = tracer.trace(lambda a, b: a * b + b * a, 1.0, 2.0)
    >>> print(CSE().run(g).graph, end="")
    graph(%a: f64[], %b: f64[]) {
      %0: f64[] = mul(%a, %b)
      %1: f64[] = add(%0, %0)
      return %1
    }
    """

    name = "cse"

    def run(self, graph: Graph) -> PassResult:
        """Merge equal ops (in place).

        >>> import tracer
        >>> [op.kind for op in CSE().run(tracer.trace(lambda x: x * x + x * x, 2.0)).graph.ops]
        ['mul', 'add']
        """
        return PassResult(graph, _cse_region(graph, {}, {}))
