"""The rewrite driver shared by the local passes: one forward walk over the ops with a
substitution map, so every pass is a small table of rules and runs in linear time.

A rule sees one op (its inputs already substituted) and a `Rewriter`; it returns `None` to keep
the op, or one replacement `Value` per output (`None` for an output nobody uses). Replacements
are existing values or outputs of new ops made with the rewriter (inserted where the old op
was). A replacement must have the exact type of what it replaces; rules that would change a
type are dropped (and raise in debug mode), so a pass can never retype the graph. Nested
regions are walked too (their ops may be simplified), but ops that own regions are only
rewritten by rules that ask for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import TypeRuleError
from ..graph import Graph, Op, Region, Value

Rule = Callable[[Op, "Rewriter"], Sequence[Value] | None]

# set by PassManager in debug mode: a rule whose replacement changes a type raises instead of
# being skipped
DEBUG = {"on": False}


def use_counts(region: Region) -> dict[int, int]:
    """Uses of each value by live ops (nested regions included) and region outputs, keyed by id.

    >>> import tracer
    >>> g = tracer.trace(lambda x: x * x, 2.0)
    >>> use_counts(g)[id(g.inputs[0])]
    2
    """
    counts: dict[int, int] = {}
    _count(region, counts)
    return counts


def _count(region: Region, counts: dict[int, int]) -> None:
    # one dict for all regions: a value is live once counted (ids are unique across regions), and
    # an op is met (in reverse) before the producers of the values it captures
    get = counts.get
    for v in region.outputs:
        counts[id(v)] = get(id(v), 0) + 1
    for op in reversed(region.ops):
        for v in op.outputs:
            if id(v) in counts:
                break
        else:
            continue
        for v in op.inputs:
            k = id(v)
            counts[k] = get(k, 0) + 1
        for r in op.regions:
            _count(r, counts)


class Rewriter:
    """Builds replacement ops for the op being rewritten, and answers questions about values."""

    def __init__(self, uses: dict[int, int], debug: bool = False):
        self.uses = uses
        self.debug = debug
        self.new_ops: list[Op] = []
        self.loc: str | None = None
        self.depth = 0  # region nesting of the op being rewritten (0: the graph's own ops)

    def op(self, kind: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None) -> Op:
        """Create an op (type inferred) placed before the op being rewritten."""
        op = Op(kind, inputs, attrs, loc=self.loc)
        self.new_ops.append(op)
        return op

    def add(self, kind: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None) -> Value:
        """`op(...)` for a single-output op, returning its output."""
        return self.op(kind, inputs, attrs).output

    def const(self, value: np.ndarray) -> Value:
        """A new `constant` op holding `value`."""
        return self.add("constant", [], {"value": np.asarray(value, order="C")})

    def n_uses(self, v: Value) -> int:
        """Live uses of `v` when the pass started (0 for values made during the pass)."""
        return self.uses.get(id(v), 0)


def producer_kind(v: Value) -> str | None:
    """The kind of the op defining `v`, or None for region inputs."""
    return v.producer.kind if v.producer is not None else None


def const_value(v: Value) -> np.ndarray | None:
    """The array of a value defined by a `constant` op, else None."""
    p = v.producer
    if p is not None and p.kind == "constant":
        return p.attrs["value"]
    return None


def rewrite_graph(graph: Graph, rule: Rule, debug: bool | None = None, uses: bool = True) -> bool:
    """Apply `rule` to every op of `graph` (nested regions included); True when anything changed.

    `uses=False` skips counting uses (then `Rewriter.n_uses` is 0 for every value) for rules
    that never ask."""
    rw = Rewriter(use_counts(graph) if uses else {}, DEBUG["on"] if debug is None else debug)
    return _rewrite_region(graph, rule, {}, rw)


def _rewrite_region(region: Region, rule: Rule, subst: dict[int, Value], rw: Rewriter) -> bool:
    changed = False
    new_ops: list[Op] = []
    for op in region.ops:
        if subst and any(id(v) in subst for v in op.inputs):
            op.inputs = tuple(subst.get(id(v), v) for v in op.inputs)
            changed = True
        rw.depth += 1
        for r in op.regions:
            changed |= _rewrite_region(r, rule, subst, rw)
        rw.depth -= 1
        rw.new_ops, rw.loc = [], op.loc
        try:
            repl = rule(op, rw)
        except TypeRuleError:
            if rw.debug:
                raise
            repl = None
        if repl is not None and any(new is old for new, old in zip(repl, op.outputs)):
            repl = None  # a rule that keeps one of the op's own outputs keeps the op
        if repl is not None and not _same_types(op, repl):
            if rw.debug:
                raise TypeRuleError(f"rewrite of {op} would change types to {[v.type for v in repl]}")
            repl = None
        if repl is None:
            new_ops.append(op)
            continue
        new_ops.extend(rw.new_ops)
        for old, new in zip(op.outputs, repl):
            if new is not None:
                subst[id(old)] = new
        changed = True
    region.ops = new_ops
    if subst and any(id(v) in subst for v in region.outputs):
        region.outputs = [subst.get(id(v), v) for v in region.outputs]
        changed = True
    return changed


def _same_types(op: Op, repl: Sequence[Value | None]) -> bool:
    return len(repl) == len(op.outputs) and all(b is None or a.type == b.type for a, b in zip(op.outputs, repl))
