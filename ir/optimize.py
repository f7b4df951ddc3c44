"""`ir.optimize`: the default pipeline of `ir.passes`, run to a fixpoint on a copy of the graph.

Order matters only for speed (the fixpoint makes the result independent of how many rounds it
takes): cheap cleanups first, then pattern recognition (which needs the decomposed form), then
fusions (which need the recognized ops), then dead code elimination.
"""

from __future__ import annotations

from .graph import Graph
from .passes import (
    CSE,
    DCE,
    AlgebraicSimplification,
    ConstantFolding,
    DedupConstants,
    FuseConv,
    FuseElementwise,
    FuseLinear,
    OptimizeReport,
    Pass,
    PassManager,
    RecognizePatterns,
    ShapeSimplification,
)


def default_passes(fuse: bool = True, elementwise: bool = True) -> list[Pass]:
    """The passes of `optimize`, in order (`fuse=False` leaves out recognition and fusion,
    `elementwise=False` only the fusion of elementwise chains, for runtimes without a
    `fused_elementwise` kernel such as the native one).

    >>> [p.name for p in default_passes(fuse=False)]
    ['dce', 'shapes', 'fold', 'algebra', 'cse', 'dedup', 'dce']
    """
    passes: list[Pass] = [DCE(), ShapeSimplification(), ConstantFolding(), AlgebraicSimplification(), CSE(),
                          DedupConstants()]
    if fuse:
        passes += [RecognizePatterns(), FuseConv(), FuseLinear()]
        if elementwise:
            passes.append(FuseElementwise())
    return passes + [DCE()]


def optimize(g: Graph, report: bool = False, passes: list[Pass] | None = None, fuse: bool = True,
             debug: bool | None = None, elementwise: bool = True) -> Graph | tuple[Graph, OptimizeReport]:
    """A new, optimized graph computing the same results as `g` (which is left untouched).

    With `report=True`, returns `(graph, report)`; the report has, per pass, ops before and
    after, runs, and time. `debug=True` (or `CASTML_DEBUG=1`) verifies the graph after every pass.
    `elementwise=False` keeps elementwise chains unfused (the native runtime has no
    `fused_elementwise` kernel).

    >>> import numpy as np, tracer, ir
    >>> g = tracer.trace(lambda x: (x + 0.0) * (x + 0.0), np.zeros(3))
    >>> print(ir.optimize(g), end="")
    graph(%x: f64[3]) {
      %0: f64[3] = mul(%x, %x)
      return %0
    }
    """
    pm = PassManager(passes if passes is not None else default_passes(fuse, elementwise), debug=debug)
    out = pm.run(g).graph
    return (out, pm.report) if report else out
