"""Constant folding through the runtime's own kernels (`ir.get_op(kind).kernel`), so a folded
graph computes bit-for-bit what the unfolded one computes at run time.

Limits, each for a reason:
- size cap: a result may not exceed `max(MAX_FOLD_ELEMENTS, largest input)` elements, so folding
  never turns `broadcast_to(0.0, (4096, 4096))` or an outer product into a huge stored tensor;
- evaluation errors: kernels run with floating-point errors raised, and any exception (integer
  division by zero, overflow, invalid values) leaves the op in place, to fail or warn at run time
  exactly as before;
- shared weights: a `reshape`/`transpose` of a large constant that other ops also use is kept,
  so the data is stored once (the constant-deduplication pass creates exactly these ops);
- types: the result must have the op's declared dtype and static shape, else the op is kept.
"""

from __future__ import annotations

import numpy as np

from ..graph import Graph, Op
from ..printer import INLINE_LIMIT
from ..registry import get_op
from ..types import TensorType
from .base import PassResult
from .rewrite import Rewriter, const_value, rewrite_graph

MAX_FOLD_ELEMENTS = 1024
LAYOUT_OPS = frozenset({"reshape", "transpose"})
NO_FOLD = frozenset({"constant", "boolean_mask"})


def _static(attrs: dict) -> bool:
    return not any(isinstance(v, tuple) and any(isinstance(x, str) for x in v) for v in attrs.values())


def evaluate(op: Op, inputs: list[np.ndarray]) -> list[np.ndarray] | None:
    """Run an op's kernel on constant inputs; None when it errors or disagrees with the op's types.

    >>> import tracer
    >>> g = tracer.trace(lambda x: x // 0, np.int64(3))
    >>> evaluate(g.ops[-1], [np.array(3), np.array(0)]) is None
    True
    """
    try:
        with np.errstate(all="raise"):
            out = get_op(op.kind).kernel(*inputs, **op.attrs)
    except Exception:  # noqa: BLE001 - any failure means: do not fold, let the runtime decide
        return None
    outs = [out] if len(op.outputs) == 1 else list(out)
    result = []
    for v, o in zip(op.outputs, outs):
        o = np.asarray(o)
        if TensorType(o.dtype, o.shape) != v.type:
            return None
        result.append(np.asarray(o, order="C"))
    return result


def _fold(op: Op, rw: Rewriter):
    if op.kind in NO_FOLD or op.regions or not _static(op.attrs):
        return None
    if not all(v.type.is_static for v in op.outputs):
        return None
    arrays = [const_value(v) for v in op.inputs]
    if any(a is None for a in arrays):
        return None
    biggest = max((a.size for a in arrays), default=0)
    if any(_size(v.type.shape) > max(MAX_FOLD_ELEMENTS, biggest) for v in op.outputs):
        return None
    if op.kind in LAYOUT_OPS and arrays[0].size > INLINE_LIMIT and rw.n_uses(op.inputs[0]) > 1:
        return None
    outs = evaluate(op, arrays)
    if outs is None:
        return None
    return [rw.const(o) for o in outs]


def _size(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class ConstantFolding:
    """Evaluate ops whose inputs are all constants.

    >>> import tracer
    >>> from ir.passes import DCE
    >>> g = tracer.trace(lambda x: x + np.full_like(x, 2.0) * 3.0, 1.0)  # full, mul: traced ops
    >>> print(DCE().run(ConstantFolding().run(g).graph).graph)  # doctest: +NORMALIZE_WHITESPACE
    graph(%x: f64[]) {
      %0: f64[] = constant[value=tensor<f64[]: [6.0]>]()
      %1: f64[] = add(%x, %0)
      return %1
    }
    """

    name = "fold"

    def run(self, graph: Graph) -> PassResult:
        """Fold in place (dead inputs are left for DCE).

        >>> import tracer
        >>> res = ConstantFolding().run(tracer.trace(lambda x: x + np.full_like(x, 2.0) * 3.0, np.zeros(2)))
        >>> res.modified, [op.kind for op in res.graph.ops]
        (True, ['constant', 'constant', 'constant', 'add'])
        """
        return PassResult(graph, rewrite_graph(graph, _fold))
