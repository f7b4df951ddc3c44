"""Fuse `matmul` + bias (+ activation) into `gemm` (`act(a @ b + c)`, see `ir/ops/fused.py`).

Matched forms: `add(matmul(a, b), c)` and `add(c, matmul(a, b))` where the product has no other
use and `c` broadcasts to the product's shape; then `act(gemm(...))` or `act(matmul(a, b))` for
`act` in relu, sigmoid, tanh, gelu (exact or tanh). `b` must be a matrix (weights), `a` of rank
>= 2, as in ONNX Gemm/MatMul+Add.
"""

from __future__ import annotations

from ..graph import Graph, Op, Value
from .base import PassResult
from .rewrite import Rewriter, rewrite_graph


def activation_of(op: Op) -> tuple[str, Value] | None:
    """(fused-op activation name, its input) when `op` is an activation: relu (also spelled
    `maximum(x, 0)`, as NumPy code writes it), sigmoid, tanh, gelu (`gelu_tanh` for the tanh
    approximation); None otherwise."""
    if op.regions or op.output.dtype.kind != "f":
        return None
    if op.kind in ("relu", "sigmoid", "tanh"):
        return op.kind, op.inputs[0]
    if op.kind == "gelu":
        return ("gelu" if op.attrs["approximate"] == "none" else "gelu_tanh"), op.inputs[0]
    if op.kind == "maximum":
        from .algebra import splat

        for x, z in ((op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0])):
            s = splat(z)
            if s is not None and s == 0 and x.type == op.output.type:
                return "relu", x
    return None


def _matmul_operands(v: Value, rw: Rewriter) -> tuple[Value, Value] | None:
    p = v.producer
    if p is None or p.kind != "matmul" or rw.n_uses(v) != 1:
        return None
    a, b = p.inputs
    if a.type.rank < 2 or b.type.rank != 2:
        return None
    return a, b


def _fuse(op: Op, rw: Rewriter):
    if op.kind == "add":
        for m, c in ((op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0])):
            ab = _matmul_operands(m, rw)
            if ab is not None and m.type == op.output.type:
                return [rw.add("gemm", [*ab, c], {"activation": "none"})]
        return None
    found = activation_of(op)
    if found is None:
        return None
    act, x = found
    p = x.producer
    if p is not None and p.kind == "gemm" and p.attrs["activation"] == "none" and rw.n_uses(x) == 1:
        return [rw.add("gemm", list(p.inputs), {"activation": act})]
    ab = _matmul_operands(x, rw)
    if ab is not None:
        return [rw.add("gemm", list(ab), {"activation": act})]
    return None


class FuseLinear:
    """matmul + bias (+ activation) -> gemm.

    >>> import tracer, numpy as np
    >>> w, b = np.ones((3, 2)), np.zeros(2)
    >>> g = tracer.trace(lambda x: np.tanh(x @ w + b), tracer.TensorSpec(("n", 3), np.float64))
    >>> g = FuseLinear().run(g).graph; g = FuseLinear().run(g).graph
    >>> [op.kind for op in g.ops][-1], g.ops[-1].attrs["activation"]
    ('gemm', 'tanh')
    """

    name = "fuse_linear"

    def run(self, graph: Graph) -> PassResult:
        """Fuse in place (the unfused ops are left for DCE).

        >>> import tracer, numpy as np
        >>> g = tracer.trace(lambda x: x @ np.ones((3, 2)) + np.zeros(2), np.zeros((4, 3)))
        >>> FuseLinear().run(g).graph.outputs[0].producer.kind
        'gemm'
        """
        return PassResult(graph, rewrite_graph(graph, _fuse))
