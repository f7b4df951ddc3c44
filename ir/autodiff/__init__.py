"""Reverse-mode automatic differentiation on the IR: `ir.vjp` and `ir.grad` build new graphs.

Importing this package attaches one VJP rule to every differentiable op's registry entry
(`ir.get_op(kind).vjp`), one module per op family (`rules_*.py`); `vjp.py` holds the graph
transformation; the rules of ops with regions (if/loop) are in `rules_control.py`;
`shared_forward.py` re-expresses forward ops whose intermediates the backward reuses (float32
exact gelu: Phi(x) is computed once).

>>> import tracer, ir
>>> float(ir.interpret(ir.grad(tracer.trace(lambda x: x ** 2, 2.0)), 2.0))
4.0
"""

from . import (  # noqa: F401
    rules_control,
    rules_elementwise,
    rules_fused,
    rules_linalg,
    rules_nn,
    rules_reduce,
    rules_shape,
)
from .rules_common import AutodiffError, Builder
from .vjp import backpropagate, grad, vjp

__all__ = ["vjp", "grad", "backpropagate", "AutodiffError", "Builder"]
