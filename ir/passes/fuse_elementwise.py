"""Fuse chains of elementwise ops into one `fused_elementwise` op that owns the chain as a region.

Why a region: the fused op stays plain IR, so printing, parsing, verifying, `.castml` files,
ONNX export (the region's ops emitted inline), autodiff (the region differentiated op by op)
and the interpreter need nothing new but one kernel, which runs the chain into reused buffers
instead of a fresh array per op (runtime/kernels/fused_elementwise.py).

A group is a tree of elementwise ops (unary, binary with broadcasting, `where`, `cast`, …) whose
inner values each have exactly one use, the consumer inside the group; the root's outputs may
have any number of uses. Every value the group reads from outside becomes an input of the fused
op (in first-use order) and a parameter of its region. Groups need two ops at least. Existing
`fused_elementwise` ops join a group like any elementwise op (their regions are inlined), so the
pass reaches a fixpoint when chains grow in later rounds; a value read twice by one fused op
counts once, so in a later round a shared value (`t` in `x + t - t`) joins the op that holds all
of its uses. Ops that the other fusions want
(a bias add or an activation after `matmul`/`conv`, a decomposed softmax or gelu) are left to
them. The pass runs last among the fusions of `ir.optimize`.

    %2: f32[n,4] = fused_elementwise(%x, %c) regions {
      (%3: f32[n,4], %4: f32[]) {
        %5: f32[n,4] = mul(%3, %4)
        %6: f32[n,4] = tanh(%5)
        yield %6
      }
    }
"""

from __future__ import annotations

from ..errors import TypeRuleError
from ..graph import Graph, Op, Region, Value
from ..registry import get_op
from .base import PassResult
from .rewrite import Rewriter

FUSED = "fused_elementwise"


def _all_uses(region: Region, counts: dict[int, int]) -> dict[int, int]:
    """Uses of each value by every op (dead ones too: a dead user must block fusion as long as it
    is in the graph) and region outputs, nested regions included."""
    for op in region.ops:
        for v in op.inputs:
            counts[id(v)] = counts.get(id(v), 0) + 1
        for r in op.regions:
            _all_uses(r, counts)
    for v in region.outputs:
        counts[id(v)] = counts.get(id(v), 0) + 1
    return counts


def _claimed_by_other_fusions(op: Op, rw: Rewriter) -> bool:
    """True when pattern recognition or the gemm/conv fusions would rewrite `op` (their rules
    are asked with a scratch rewriter whose new ops are thrown away)."""
    from . import fuse_conv, fuse_linear, patterns

    for rule in (patterns._rule, fuse_conv._rule, fuse_linear._fuse):
        rw.new_ops = []
        try:
            if rule(op, rw) is not None:
                return True
        except TypeRuleError:
            continue
    return False


def _fusible(op: Op, rw: Rewriter) -> bool:
    if op.kind == FUSED:
        return len(op.outputs) == 1
    if op.regions or len(op.outputs) != 1 or op.kind == "constant":
        return False
    return get_op(op.kind).elementwise and not _claimed_by_other_fusions(op, rw)


def _groups(region: Region, uses: dict[int, int], rw: Rewriter) -> list[list[Op]]:
    """Maximal trees of fusible ops joined through single-use values, each in region order."""
    group_of: dict[int, list[Op]] = {}
    for op in region.ops:
        if not _fusible(op, rw):
            continue
        members: list[Op] = []
        for v in dict.fromkeys(op.inputs):
            p = v.producer
            if p is not None and id(p) in group_of and uses.get(id(v), 0) == 1:
                sub = group_of.pop(id(p))
                if len(sub) > len(members):  # extend the longer list: linear on long chains
                    sub, members = members, sub
                members.extend(sub)
        members.append(op)
        group_of[id(op)] = members
    order = {id(op): k for k, op in enumerate(region.ops)}
    return [sorted(g, key=lambda o: order[id(o)]) for g in group_of.values() if len(g) > 1]


def _fuse_group(group: list[Op]) -> Op:
    """The `fused_elementwise` op computing `group`; it takes over the root's output Value, so
    every use of the root sees the fused op without a substitution pass. The members (and the
    ops of member fused ops) move into the region with their inputs renamed; only the root is
    rebuilt, as its output Value now belongs to the fused op."""
    inner = {id(v) for op in group[:-1] for v in op.outputs}
    alias: dict[int, Value] = {}  # output of a member fused op -> what its chain yields
    params: dict[int, Value] = {}
    externals: list[Value] = []
    ops: list[Op] = []

    def use(v: Value) -> Value:
        if id(v) in inner:
            return alias.get(id(v), v)
        if id(v) not in params:
            params[id(v)] = Value(v.type)
            externals.append(v)
        return params[id(v)]

    root = group[-1]
    out = root.output
    for op in group:
        ins = tuple(use(v) for v in op.inputs)
        if op.kind == FUSED:  # its chain moves in, reading the group's values
            body = op.regions[0]
            local = {id(p): x for p, x in zip(body.inputs, ins)}
            for o in body.ops:
                if any(id(v) in local for v in o.inputs):
                    o.inputs = tuple(local.get(id(v), v) for v in o.inputs)
                ops.append(o)
            alias[id(op.output)] = out = local.get(id(body.outputs[0]), body.outputs[0])
        elif op is root:
            new = Op(op.kind, ins, op.attrs, loc=op.loc, output_types=[op.output.type])
            ops.append(new)
            out = new.output
        else:
            op.inputs = ins
            ops.append(op)
    body = Region([params[id(v)] for v in externals], ops, [out])
    fused = Op(FUSED, externals, {}, [body], loc=root.loc)
    root_out = root.output
    root_out.producer, root_out.index = fused, 0
    fused.outputs = (root_out,)
    return fused


def fuse_region(region: Region, uses: dict[int, int], rw: Rewriter) -> bool:
    """Fuse the chains of `region` and of the regions nested in it (not inside fused ops)."""
    changed = False
    for op in region.ops:
        if op.kind != FUSED:
            for r in op.regions:
                changed |= fuse_region(r, uses, rw)
    groups = _groups(region, uses, rw)
    if not groups:
        return changed
    replace = {id(g[-1]): _fuse_group(g) for g in groups}
    gone = {id(op) for g in groups for op in g[:-1]}
    region.ops = [replace.get(id(op), op) for op in region.ops if id(op) not in gone]
    return True


class FuseElementwise:
    """Chains of elementwise ops -> one `fused_elementwise` op each.

    >>> import tracer, numpy as np
    >>> g = tracer.trace(lambda x: np.exp(-x) * 2.0, np.zeros(3, np.float32))
    >>> g = FuseElementwise().run(g).graph
    >>> [op.kind for op in g.ops], [op.kind for op in g.ops[-1].regions[0].ops]
    (['constant', 'fused_elementwise'], ['neg', 'exp', 'mul'])
    """

    name = "fuse_elementwise"

    def run(self, graph: Graph) -> PassResult:
        """Fuse in place.

        >>> import tracer, numpy as np
        >>> g = tracer.trace(lambda x: np.exp(-x), np.zeros(3, np.float32))
        >>> FuseElementwise().run(g).graph.outputs[0].producer.kind
        'fused_elementwise'
        """
        uses = _all_uses(graph, {})
        return PassResult(graph, fuse_region(graph, uses, Rewriter(uses)))
