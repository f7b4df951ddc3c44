"""Reverse-mode AD as a graph transformation: `ir.vjp` and `ir.grad` return new `ir.Graph`s.

The result holds a copy of the forward ops followed by the backward ops (the chain rule, op by
op in reverse, each op's `vjp` rule from the registry), so it is an ordinary graph: it prints,
verifies, interprets, exports, and can be differentiated again. Only values that depend on a
differentiated input take part (`active`), cotangents of values used several times are added,
inputs nothing depends on get zeros, and dead forward ops are pruned at the end.

    >>> import tracer, ir
    >>> gg = ir.grad(tracer.trace(lambda x: x ** 2, 2.0))
    >>> float(ir.interpret(gg, 3.0))
    6.0
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime import pytree

from ..graph import Graph, Op, Value
from ..passes.dce import eliminate_dead_code
from ..printer import format_op
from ..registry import get_op
from .rules_common import AutodiffError, Builder, Rule, is_float
from .shared_forward import share_gelu_cdf


def captured_values(op: Op) -> list[Value]:
    """Values used inside `op`'s regions (at any depth) but defined outside them, in first-use
    order: they are operands of `op` as much as its inputs are, so they receive cotangents too.

    >>> import numpy as np, tracer
    >>> @tracer.script
    ... def f(x, w):
    ...     if x.sum() > 0.0:
    ...         x = x * w
    ...     return x
    >>> g = tracer.trace(f, np.ones(2), np.ones(2))
    >>> [v.name for v in captured_values(next(op for op in g.ops if op.kind == "if"))]
    ['x', 'w']
    """
    seen: set[int] = set()
    out: list[Value] = []

    def visit(region, defined: set[int]) -> None:
        defined = defined | {id(v) for v in region.inputs}
        for inner in region.ops:
            for v in inner.inputs:
                if id(v) not in defined and id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
            for r in inner.regions:
                visit(r, defined)
            defined.update(id(v) for v in inner.outputs)
        for v in region.outputs:
            if id(v) not in defined and id(v) not in seen:
                seen.add(id(v))
                out.append(v)

    for r in op.regions:
        visit(r, set())
    return out


def operands(op: Op) -> list[Value]:
    """What a VJP rule returns cotangents for: `op`'s inputs, then (ops with regions) the values
    its regions capture from enclosing scopes (`captured_values`).

    >>> import tracer
    >>> operands(tracer.trace(lambda x: x * x, 2.0).ops[0])
    [Value(%x: f64[]), Value(%x: f64[])]
    """
    return list(op.inputs) + captured_values(op) if op.regions else list(op.inputs)


def _active_values(ops: Sequence[Op], wanted: Sequence[Value]) -> set[int]:
    """Ids of float values that depend on any of `wanted` (forward reachability)."""
    active = {id(v) for v in wanted}
    for op in ops:
        if get_op(op.kind).differentiable and any(id(v) in active for v in operands(op)):
            active.update(id(v) for v in op.outputs if is_float(v))
    return active


def backpropagate(b: Builder, ops: Sequence[Op], seeds: Sequence[tuple[Value, Value]],
                  wanted: Sequence[Value], overrides: dict[int, Rule] | None = None) -> dict[int, Value]:
    """Run the rules of `ops` in reverse from `seeds` ((value, cotangent) pairs); returns the
    accumulated cotangent of every active value by id (those of `wanted` among them).
    `overrides` maps the id of an op to the rule to use for it instead of its kind's (see
    `shared_forward`)."""
    active = _active_values(ops, wanted)
    cts: dict[int, Value] = {}

    def accumulate(v: Value, ct: Value) -> None:
        if ct.type != v.type:
            raise AutodiffError(f"internal: cotangent {ct.type} for a value of type {v.type}"
                                + (f" (from the rule of `{format_op(v.producer)}`)" if v.producer else ""))
        prev = cts.get(id(v))
        cts[id(v)] = ct if prev is None else b.add(prev, ct)

    for v, ct in seeds:
        if id(v) in active:
            accumulate(v, ct)
    for op in reversed(ops):
        out_cts = [cts.get(id(v)) for v in op.outputs]
        args = operands(op)
        if all(c is None for c in out_cts) or not any(id(v) in active for v in args):
            continue
        d = get_op(op.kind)
        if not d.differentiable:
            continue
        rule = overrides.get(id(op)) if overrides else None
        if rule is None and d.vjp is None:
            raise AutodiffError(f"no gradient rule for op {op.kind!r} in `{format_op(op)}`"
                                + (f" ({op.loc})" if op.loc else ""))
        b.loc = op.loc
        b.active = active  # rules of ops with regions skip captured values nothing wanted depends on
        in_cts = (rule or d.vjp)(b, op, out_cts)
        for v, ct in zip(args, in_cts):
            if ct is not None and id(v) in active:
                accumulate(v, ct)
    b.loc = None
    return cts


def _mask_tree(tree: pytree.TreeDef, keep: Sequence[bool]) -> pytree.TreeDef:
    """`tree` with the leaves whose flag is False replaced by None nodes."""
    it = iter(keep)

    def walk(t):
        kind = t[0]
        if kind == "*":
            return t if next(it) else ("none",)
        if kind == "none":
            return t
        if kind == "dict":
            return ("dict", t[1], tuple(walk(c) for c in t[2]))
        return (kind, tuple(walk(c) for c in t[1]))
    return walk(tree)


def _arg_trees(g: Graph) -> tuple:
    return g.in_tree[1] if g.in_tree[0] == "tuple" else (g.in_tree,)


def _unique_name(g: Graph, base: str) -> str:
    taken = set(g.arg_names) | {v.name for v in g.inputs}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def vjp(g: Graph) -> Graph:
    """The vector-Jacobian product of `g` as a graph.

    Arguments: `g`'s arguments, then one more, `cotangent`, shaped like `g`'s result (None in
    place of integer/bool leaves). Results: `(outputs, cotangents)`, where `cotangents` mirrors
    the arguments (None for integer/bool leaves). Flattened, that is g's outputs followed by one
    cotangent per floating argument leaf.

    >>> import numpy as np, tracer, ir
    >>> dg = vjp(tracer.trace(lambda x, w: x * w, 2.0, 3.0))
    >>> out, (dx, dw) = ir.interpret(dg, 2.0, 3.0, 1.0)
    >>> float(out), float(dx), float(dw)
    (6.0, 3.0, 2.0)
    """
    fg = g.copy()
    args = [v for v in fg.inputs if is_float(v)]
    overrides = share_gelu_cdf(fg, _active_values(fg.ops, args))
    forward = list(fg.ops)
    outs = list(fg.outputs)
    ct_name = _unique_name(fg, "cotangent")
    ct_tree = _mask_tree(g.out_tree, [is_float(v) for v in outs])
    float_outs = [v for v in outs if is_float(v)]
    ct_inputs = [Value(v.type, path) for v, path in zip(float_outs, pytree.leaf_paths(ct_tree, ct_name))]
    b = Builder(fg)
    cts = backpropagate(b, forward, list(zip(float_outs, ct_inputs)), args, overrides)
    grads = [cts[id(v)] if id(v) in cts else b.zeros(v.type) for v in args]
    in_tree = ("tuple", _arg_trees(g) + (ct_tree,))
    grad_tree = ("tuple", tuple(_mask_tree(t, [is_float(v) for v in leaves])
                                for t, leaves in _split_inputs(fg, _arg_trees(g))))
    fg.inputs = fg.inputs + ct_inputs
    fg.outputs = outs + grads
    fg.in_tree, fg.out_tree = in_tree, ("tuple", (g.out_tree, grad_tree))
    fg.arg_names = list(g.arg_names) + [ct_name]
    eliminate_dead_code(fg)
    return fg


def _split_inputs(g: Graph, trees: Sequence[pytree.TreeDef]) -> list[tuple[pytree.TreeDef, list[Value]]]:
    """Pair each argument's tree with its input leaves."""
    out, start = [], 0
    for t in trees:
        n = pytree.num_leaves(t)
        out.append((t, g.inputs[start:start + n]))
        start += n
    return out


def grad(g: Graph, wrt: int | Sequence[int] = 0, output: int = 0, with_value: bool = False) -> Graph:
    """The gradient of one scalar output leaf of `g` w.r.t. some arguments, as a graph.

    `wrt` follows `argnums`: an int gives that argument's gradient (a pytree like the argument),
    a tuple gives a tuple of them. `output` picks the result leaf (a float scalar).
    `with_value=True` returns `(value, gradients)`. The graph takes `g`'s arguments.

    >>> import tracer, ir
    >>> gg = grad(tracer.trace(lambda x, y: x * y + y, 2.0, 5.0), wrt=(0, 1))
    >>> [float(v) for v in ir.interpret(gg, 2.0, 5.0)]
    [5.0, 3.0]
    """
    fg = g.copy()
    leaves = list(fg.outputs)
    if not 0 <= output < len(leaves):
        raise AutodiffError(f"grad: output={output} is out of range; the graph has {len(leaves)} output leaves "
                            f"({', '.join(g.output_names)})")
    y = leaves[output]
    if not is_float(y) or len(y.shape) != 0:
        raise AutodiffError(f"grad: output {g.output_names[output]!r} must be a float scalar, got {y.type}; "
                            "reduce it (e.g. .sum()) or use ir.vjp")
    argnums = (wrt,) if isinstance(wrt, int) else tuple(wrt)
    per_arg = _split_inputs(fg, _arg_trees(g))
    chosen = []
    for a in argnums:
        if not isinstance(a, int) or not -len(per_arg) <= a < len(per_arg):
            raise AutodiffError(f"grad: wrt={wrt!r} names argument {a!r}, but the graph has {len(per_arg)} "
                                f"arguments ({', '.join(g.arg_names)})")
        tree, vals = per_arg[a]
        paths = pytree.leaf_paths(tree, g.arg_names[a])
        for v, path in zip(vals, paths):
            if not is_float(v):
                raise AutodiffError(f"grad: argument {path!r} has type {v.type}; gradients are only defined "
                                    "for floating-point inputs (leave it out of wrt, or cast it to float)")
        chosen.append((tree, vals))
    wanted = [v for _, vals in chosen for v in vals]
    overrides = share_gelu_cdf(fg, _active_values(fg.ops, wanted))
    forward = list(fg.ops)
    y = fg.outputs[output]
    b = Builder(fg)
    cts = backpropagate(b, forward, [(y, b.const(1.0, y.dtype))], wanted, overrides)
    grad_leaves = [cts[id(v)] if id(v) in cts else b.zeros(v.type) for v in wanted]
    trees = tuple(t for t, _ in chosen)
    grad_tree = trees[0] if isinstance(wrt, int) else ("tuple", trees)
    if with_value:
        fg.outputs = [y] + grad_leaves
        fg.out_tree = ("tuple", (pytree.LEAF, grad_tree))
    else:
        fg.outputs = grad_leaves
        fg.out_tree = grad_tree
    eliminate_dead_code(fg)
    return fg
