"""Forward ops re-expressed before the reverse pass, so that the backward reuses what they compute.

A gradient graph holds the forward ops and then the backward ops. Some forward kernels compute
an intermediate inside and throw it away although the derivative needs it again. The one that
matters is exact GELU: gelu(x) = x * Phi(x) with Phi(x) = (1 + erf(x/sqrt 2)) / 2, and
gelu'(x) = Phi(x) + x * phi(x). erf is the costliest elementwise kernel, so the old rule, which
computed Phi again, doubled it.

So, for each float32 `gelu[approximate="none"]` of the top-level graph that a gradient flows
through, the forward op is replaced by its parts

    s = x * sqrt(1/2);  Phi = erf(s) * 0.5 + 0.5;  y = x * Phi

which give the same bits as the float32 kernel: the same float32 operations in the same
order, since halving is exact (barring subnormal results). `y`'s cotangent then gets an
override rule: ct * (Phi + x * exp(-x*x/2) / sqrt(2 pi)), with Phi shared. No cotangent flows
into Phi, so the erf chain has no backward ops.

Notes:
- Phi is written `erf(s) * 0.5 + 0.5`, not `(1 + erf(s)) * 0.5`: the pattern pass of
  `ir.optimize` recognizes `x * (1 + erf(x/sqrt 2)) * 0.5` and would merge `y` back into a
  `gelu` op, whose kernel would compute erf a second time.
- Only float32. The float64 kernel computes x/2 * erfc(-x/sqrt 2), which keeps its relative
  accuracy for x << 0 where 1 + erf(s) cancels; float16 is computed in float32 and rounded
  once, where float16 ops would round at every step. Those keep the `gelu` op and its rule.
- Only the graph's own ops: gelus in If/Loop bodies, or inside fused ops (`gemm` with a gelu
  activation), keep their rule, which recomputes Phi.
- The result is plain IR (mul, erf, add), so grad of grad, ONNX export and the native runtime
  need nothing new.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..graph import Graph, Op, Value
from ..passes.rewrite import Rewriter, rewrite_graph
from .rules_common import Builder, Rule

_F32 = np.dtype(np.float32)


def _closed_form_gelu(x: Value, phi: Value) -> Rule:
    """The rule of `y = x * Phi(x)`: ct * gelu'(x) for x, nothing for the shared Phi."""
    def rule(b: Builder, op: Op, cts: list) -> list:
        pdf = b.mul(b.op("exp", b.mul(b.mul(x, x), -0.5)), 1.0 / math.sqrt(2.0 * math.pi))
        return [b.mul(cts[0], b.add(phi, b.mul(x, pdf))), None]
    return rule


def share_gelu_cdf(g: Graph, active: set[int]) -> dict[int, Rule]:
    """Re-express, in place, every float32 exact `gelu` of `g`'s own ops whose input is in
    `active` (ids of values a gradient flows through) as x * Phi(x); returns override rules
    for `backpropagate`, keyed by the id of each new `y = x * Phi` op.

    >>> import numpy as np, tracer, ir
    >>> g = tracer.trace(lambda x: tracer.ops.gelu(x), np.ones(3, np.float32))
    >>> rules = share_gelu_cdf(g, {id(g.inputs[0])})
    >>> [op.kind for op in g.ops if op.kind != "constant"], len(rules)
    (['mul', 'erf', 'mul', 'add', 'mul'], 1)
    """
    overrides: dict[int, Rule] = {}

    def rule(op: Op, rw: Rewriter) -> Sequence[Value] | None:
        if (rw.depth or op.kind != "gelu" or op.attrs.get("approximate") != "none"
                or op.inputs[0].dtype != _F32 or id(op.inputs[0]) not in active):
            return None
        x = op.inputs[0]
        half = rw.const(np.float32(0.5))
        s = rw.add("mul", [x, rw.const(np.float32(math.sqrt(0.5)))])
        phi = rw.add("add", [rw.add("mul", [rw.add("erf", [s]), half]), half])
        y = rw.op("mul", [x, phi])
        overrides[id(y)] = _closed_form_gelu(x, phi)
        return [y.output]

    rewrite_graph(g, rule, uses=False)
    return overrides
