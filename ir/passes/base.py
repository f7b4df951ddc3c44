"""Pass infrastructure: `PassResult`, the `Pass` protocol, `PassManager` and graph cloning.

A pass is an object with a `name` and `run(graph) -> PassResult(graph, modified)`; it may rewrite
the graph in place (as onnx-ir's passes do). `PassManager` copies the graph once, then runs its
passes in order, again and again, until none of them modifies the graph (a fixpoint), which is
what makes `ir.optimize` idempotent. In debug mode it runs `ir.verify` after every pass, so a
broken rewrite is reported with the name of the pass that made it.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import VerifyError
from ..graph import Graph, Op, Region, Value
from ..verify import verify


@dataclass
class PassResult:
    """What a pass returns: the (possibly same, rewritten in place) graph and whether it changed.

    >>> import tracer
    >>> from ir.passes import CSE
    >>> CSE().run(tracer.trace(lambda x: x * x + x * x, 2.0))
    PassResult(graph=<ir.Graph 1 inputs, 2 ops>, modified=True)
    """

    graph: Graph
    modified: bool


class Pass(Protocol):
    """A graph-to-graph pass: `run(graph) -> PassResult`.

    Any object with a `name` and such a `run` is one (a structural protocol, nothing to inherit):

    >>> class Nothing:
    ...     name = "nothing"
    ...     def run(self, graph):
    ...         return PassResult(graph, False)
    >>> import tracer
    >>> PassManager([Nothing()]).run(tracer.trace(lambda x: x + 1.0, 2.0)).modified
    False
    """

    name: str

    def run(self, graph: Graph) -> PassResult:  # pragma: no cover - protocol
        """Rewrite `graph` (in place or into a new graph) and say whether anything changed.

        >>> import tracer
        >>> from ir.passes import DCE
        >>> DCE().run(tracer.trace(lambda x: x + 1.0, 2.0)).modified
        False
        """
        ...


@dataclass
class PassStats:
    """Totals for one pass over a `PassManager.run`: ops before its first and after its last run.

    >>> import tracer
    >>> from ir.passes import CSE
    >>> pm = PassManager([CSE()]); _ = pm.run(tracer.trace(lambda x: x * x + x * x, 2.0))
    >>> s = pm.report.passes[0]; s.name, s.runs, s.modified, s.ops_before, s.ops_after
    ('cse', 2, 1, 3, 2)
    """

    name: str
    ops_before: int = 0
    ops_after: int = 0
    runs: int = 0
    modified: int = 0
    seconds: float = 0.0


@dataclass
class OptimizeReport:
    """Per-pass statistics of one optimization, printable as a table.

    >>> r = OptimizeReport([PassStats("dce", 5, 3, 2, 1, 0.001)], 2, 5, 3)
    >>> print(str(r).splitlines()[0])
    pass               runs  changed  ops before  ops after   time ms
    """

    passes: list[PassStats] = field(default_factory=list)
    iterations: int = 0
    ops_before: int = 0
    ops_after: int = 0

    def __str__(self) -> str:
        lines = [f"{'pass':<18} {'runs':>4} {'changed':>8} {'ops before':>11} {'ops after':>10} {'time ms':>9}"]
        for s in self.passes:
            lines.append(f"{s.name:<18} {s.runs:>4} {s.modified:>8} {s.ops_before:>11} {s.ops_after:>10} "
                         f"{s.seconds * 1e3:>9.2f}")
        lines.append(f"{'total':<18} {self.iterations:>4} {'':>8} {self.ops_before:>11} {self.ops_after:>10} "
                     f"{sum(s.seconds for s in self.passes) * 1e3:>9.2f}")
        return "\n".join(lines)


def count_ops(region: Region) -> int:
    """Number of ops in a region, nested regions included.

    >>> import tracer
    >>> count_ops(tracer.trace(lambda x: x * x + 1.0, 2.0))
    3
    """
    n = len(region.ops)
    for op in region.ops:
        if op.regions:  # (no generator per op: optimize counts after every pass)
            n += sum(count_ops(r) for r in op.regions)
    return n


def debug_enabled() -> bool:
    """True when `CASTML_DEBUG` is set to a non-empty value other than `0`."""
    return os.environ.get("CASTML_DEBUG", "") not in ("", "0")


class PassManager:
    """Run passes to a fixpoint on a copy of a graph.

    >>> import tracer
    >>> from ir.passes import DCE, CSE
    >>> g = tracer.trace(lambda x: (x * x) + (x * x), 2.0)
    >>> res = PassManager([CSE(), DCE()]).run(g)
    >>> res.modified, count_ops(res.graph), count_ops(g)
    (True, 2, 3)
    """

    def __init__(self, passes: Sequence[Pass], max_iterations: int = 20, debug: bool | None = None):
        self.passes = list(passes)
        self.max_iterations = max_iterations
        self.debug = debug_enabled() if debug is None else debug
        self.report = OptimizeReport()

    def run(self, graph: Graph, copy: bool = True) -> PassResult:
        """Optimize `graph` (untouched unless `copy=False`); `self.report` holds the statistics.

        >>> import tracer
        >>> from ir.passes import CSE
        >>> pm = PassManager([CSE()]); _ = pm.run(tracer.trace(lambda x: x * x + x * x, 2.0))
        >>> pm.report.iterations, pm.report.ops_before, pm.report.ops_after
        (2, 3, 2)
        """
        from . import rewrite
        from .digest import caching

        # the IR is cyclic (Value.producer <-> Op.outputs), so the cyclic collector would keep
        # walking the whole, growing heap while passes allocate: superlinear on large graphs
        # (100k ops: 40% of the time). Garbage made here is collected once it is back on.
        collecting = gc.isenabled()
        gc.disable()
        g = clone_graph(graph) if copy else graph
        saved, rewrite.DEBUG["on"] = rewrite.DEBUG["on"], self.debug
        try:
            with caching():  # each constant is hashed once per run, not once per CSE/dedup round
                return self._run(g)
        finally:
            rewrite.DEBUG["on"] = saved
            if collecting:
                gc.enable()

    def _run(self, g: Graph) -> PassResult:
        stats = {p.name: PassStats(p.name) for p in self.passes}
        report = OptimizeReport(list(stats.values()), 0, count_ops(g))
        any_change = False
        before = report.ops_before
        for _ in range(self.max_iterations):
            report.iterations += 1
            changed = False
            for p in self.passes:
                s = stats[p.name]
                if s.runs == 0:
                    s.ops_before = before
                t0 = time.perf_counter()
                res = p.run(g)
                s.seconds += time.perf_counter() - t0
                g = res.graph
                s.runs += 1
                s.ops_after = before = count_ops(g) if res.modified else before
                if res.modified:
                    s.modified += 1
                    changed = True
                    if self.debug:
                        try:
                            verify(g)
                        except VerifyError as e:
                            raise VerifyError(f"after pass {p.name!r}: {e}\n{g}") from None
            any_change |= changed
            if not changed:
                break
        report.ops_after = before
        self.report = report
        return PassResult(g, any_change)


def clone_graph(g: Graph) -> Graph:
    """A deep copy of `g` with new Values and Ops (constant arrays are shared: they are immutable).

    >>> import tracer
    >>> g = tracer.trace(lambda x: x + 1.0, 2.0)
    >>> h = clone_graph(g)
    >>> h == g, h.ops[0] is g.ops[0]
    (True, False)
    """
    vmap: dict[int, Value] = {}

    def fresh(v: Value) -> Value:
        nv = Value(v.type, v.name)
        vmap[id(v)] = nv
        return nv

    def region(r: Region, cls=Region) -> Region:
        ins = [fresh(v) for v in r.inputs]
        ops = []
        for op in r.ops:
            new = Op(op.kind, [vmap[id(v)] for v in op.inputs], op.attrs, [region(x) for x in op.regions],
                     op.loc, output_types=[v.type for v in op.outputs])
            for old, nv in zip(op.outputs, new.outputs):
                nv.name = old.name
                vmap[id(old)] = nv
            ops.append(new)
        return Region(ins, ops, [vmap[id(v)] for v in r.outputs])

    body = region(g)
    return Graph(body.inputs, body.ops, body.outputs, g.in_tree, g.out_tree, list(g.arg_names), dict(g.metadata))
