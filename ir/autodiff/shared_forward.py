"""Forward ops re-expressed before the reverse pass, so that the backward reuses what they compute.

A gradient graph holds the forward ops and then the backward ops. Some forward kernels compute
an intermediate inside and throw it away although the derivative needs it again. The one that
matters is exact GELU: gelu(x) = x * Phi(x), with Phi the standard normal CDF, and
gelu'(x) = Phi(x) + x * phi(x). Phi is the costliest elementwise kernel, so a rule that computed
it again would double it.

So, for each float32 or float64 `gelu[approximate="none"]` of the top-level graph that a
gradient flows through, the forward op is replaced by its parts

    Phi = normal_cdf(x);  y = x * Phi

which give the same bits as the gelu kernel: it computes exactly that (runtime/kernels/special.py).
`y`'s cotangent then gets an override rule: ct * (Phi + x * exp(-x*x/2) / sqrt(2 pi)), with Phi
shared. No cotangent flows into Phi, so it has no backward ops.

Notes:
- Not float16, which is computed in float32 and rounded once, where a float16 `mul` would round
  Phi first. Those keep the `gelu` op and its rule.
- Only the graph's own ops: gelus in If/Loop bodies, or inside fused ops (`gemm` with a gelu
  activation), keep their rule, which computes Phi again.
- The result is plain IR (normal_cdf, mul), so grad of grad, ONNX export and the native runtime
  need nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..graph import Graph, Op, Value
from ..passes.rewrite import Rewriter, rewrite_graph
from .rules_common import Builder, Rule
from .rules_elementwise import exact_gelu_derivative

_SHARED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _closed_form_gelu(x: Value, phi: Value) -> Rule:
    """The rule of `y = x * Phi(x)`: ct * gelu'(x) for x, nothing for the shared Phi."""
    def rule(b: Builder, op: Op, cts: list) -> list:
        return [b.mul(cts[0], exact_gelu_derivative(b, x, phi)), None]
    return rule


def share_gelu_cdf(g: Graph, active: set[int]) -> dict[int, Rule]:
    """Re-express, in place, every float32/float64 exact `gelu` of `g`'s own ops whose input is in
    `active` (ids of values a gradient flows through) as x * Phi(x); returns override rules
    for `backpropagate`, keyed by the id of each new `y = x * Phi` op.

    >>> import numpy as np, tracer, ir
    >>> g = tracer.trace(lambda x: tracer.ops.gelu(x), np.ones(3, np.float32))
    >>> rules = share_gelu_cdf(g, {id(g.inputs[0])})
    >>> [op.kind for op in g.ops if op.kind != "constant"], len(rules)
    (['normal_cdf', 'mul'], 1)
    """
    overrides: dict[int, Rule] = {}

    def rule(op: Op, rw: Rewriter) -> Sequence[Value] | None:
        if (rw.depth or op.kind != "gelu" or op.attrs.get("approximate") != "none"
                or op.inputs[0].dtype not in _SHARED_DTYPES or id(op.inputs[0]) not in active):
            return None
        x = op.inputs[0]
        phi = rw.add("normal_cdf", [x])
        y = rw.op("mul", [x, phi])
        overrides[id(y)] = _closed_form_gelu(x, phi)
        return [y.output]

    rewrite_graph(g, rule, uses=False)
    return overrides
