"""Shape-arithmetic simplification with symbolic dims.

Traced code turns `x.shape[0]` on a symbolic dim into `shape_dim` ops and integer arithmetic on
them (`n = x.shape[0] * 4 // 2`). This pass gives every integer scalar the dim expression it
equals (from `runtime.dims`: `batch`, `batch*2`, `7`) and then
- replaces a value whose expression is a plain int by a constant (`shape_dim` of a static dim,
  `n - n`, `(b*4)//4 - b`),
- replaces a value by an earlier value with the same expression and dtype (`y.shape[0]` where y
  and x share the symbol `batch` reuses `x.shape[0]`; `n*2` and `n+n` merge),
- folds comparisons whose two sides differ by a known constant (`x.shape[0] == y.shape[0]`).
"""

from __future__ import annotations

import numpy as np

from runtime import dims as D

from ..graph import Graph, Op, Value
from .base import PassResult
from .rewrite import Rewriter, rewrite_graph

ARITH = {"add": D.add, "sub": D.sub, "mul": D.mul, "floordiv": D.floordiv, "mod": D.mod}
COMPARE = {"equal": lambda d: d == 0, "not_equal": lambda d: d != 0, "less": lambda d: d < 0,
           "less_equal": lambda d: d <= 0, "greater": lambda d: d > 0, "greater_equal": lambda d: d >= 0}


class _ShapeRule:
    def __init__(self):
        self.expr: dict[int, object] = {}  # id(value) -> dim expression it equals
        self.first: dict[tuple, Value] = {}  # (expr, dtype) -> earliest value holding it

    def value_expr(self, v: Value):
        if id(v) in self.expr:
            return self.expr[id(v)]
        p = v.producer
        if p is not None and p.kind == "constant" and v.type.rank == 0 and v.dtype.kind in "iu":
            return int(p.attrs["value"])
        return None

    def __call__(self, op: Op, rw: Rewriter):
        if op.regions or len(op.outputs) != 1:
            return None
        out = op.output
        if out.type.rank != 0:
            return None
        e = self._expr(op)
        if e is None:
            return None
        if isinstance(e, bool):
            return [rw.const(np.asarray(e, out.dtype))]
        if isinstance(e, int):
            info = np.iinfo(out.dtype)
            if not info.min <= e <= info.max:
                return None
            return [rw.const(np.asarray(e, out.dtype))]
        key = (e, out.dtype)
        prev = self.first.get(key)
        if prev is not None:
            return [prev]
        if rw.depth == 0:  # values defined inside a region are not visible after it
            self.first[key] = out
        self.expr[id(out)] = e
        return None

    def _expr(self, op: Op):
        out = op.output
        if op.kind == "shape_dim":
            return op.inputs[0].type.shape[op.attrs["axis"]]
        if op.kind == "cast" and out.dtype.kind in "iu" and op.inputs[0].dtype.kind in "iu":
            return self.value_expr(op.inputs[0])
        if op.kind in ARITH and out.dtype.kind in "iu":
            a, b = (self.value_expr(v) for v in op.inputs)
            if a is None or b is None or isinstance(a, int) and isinstance(b, int):
                return None  # two constants are folded by the constant folder, with overflow checks
            try:
                return ARITH[op.kind](a, b)
            except (D.DimError, ZeroDivisionError):
                return None
        if op.kind in COMPARE and op.inputs[0].dtype.kind in "iu":
            a, b = (self.value_expr(v) for v in op.inputs)
            if a is None or b is None or isinstance(a, int) and isinstance(b, int):
                return None
            diff = D.sub(a, b)
            return bool(COMPARE[op.kind](diff)) if isinstance(diff, int) else None
        return None


class ShapeSimplification:
    """Simplify integer arithmetic on symbolic dims.

    >>> import tracer
    >>> g = tracer.trace(lambda x: x * (x.shape[0] - x.shape[0] + 2), tracer.TensorSpec(("n",), np.int64))
    >>> from ir.passes import DCE, PassManager
    >>> [op.kind for op in PassManager([ShapeSimplification(), DCE()]).run(g).graph.ops]  # n - n == 0
    ['constant', 'constant', 'add', 'mul']
    """

    name = "shapes"

    def run(self, graph: Graph) -> PassResult:
        """Rewrite in place (dead ops are left for DCE).

        >>> import tracer
        >>> g = tracer.trace(lambda x: x * (x.shape[0] - x.shape[0]), tracer.TensorSpec(("n",), np.int64))
        >>> ShapeSimplification().run(g).modified
        True
        """
        return PassResult(graph, rewrite_graph(graph, _ShapeRule(), uses=False))
