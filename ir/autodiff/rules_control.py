"""VJP rules of the ops that own regions: `if` and `loop`.

Why these shapes. A region may read values of enclosing scopes, so besides its inputs an op
with regions has *captured* operands (`vjp.captured_values`), and its rule returns cotangents
for `op.inputs` followed by those. Backward regions cannot see values defined inside the
forward regions (scoping), so each backward region first *recomputes* the forward region
(a clone of its ops) and then runs the ordinary reverse pass (`backpropagate`) over the clone;
rules of nested `if`/`loop` ops recurse the same way.

- `if(c)`: the backward is `if(c)` again; each branch recomputes its forward branch and yields
  the cotangent of every captured value (zeros where that branch does not use it).
- `loop(T, c, *h)`: the forward loop is extended to also stack the state entering each
  iteration (`stack_k: [n, *shape_k]`, grown by `concat`, so data-dependent trip counts, `while`
  and `break` need no bound); then a reverse loop runs `n` times, reads the state of iteration
  `n-1-j`, recomputes the body from it and applies the body's VJP, carrying the cotangents of
  the state and the sums of the captured values' cotangents. Memory is the states (not every
  intermediate), compute about twice the forward. A carried value the body only appends to
  (`hs = concat([hs, piece])`: outputs collected step by step, and the stacks themselves, so
  gradients of gradients work) is not stacked: each piece's cotangent is a block of rows of the
  final cotangent. Any other carried value that changes shape across iterations cannot be
  stacked and raises `AutodiffError`.

    >>> import numpy as np, tracer, ir
    >>> @tracer.script
    ... def f(x, n):
    ...     for i in range(n):
    ...         x = x * x
    ...     return x
    >>> float(ir.interpret(ir.grad(tracer.trace(f, 1.5, np.int64(2))), 1.5, np.int64(2)))  # 4 x**3
    13.5
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np

from runtime import dims as D

from ..graph import Op, Region, Value
from ..printer import format_op
from ..registry import get_op
from ..types import TensorType
from .rules_common import AutodiffError, Builder, is_float, register_rules
from .vjp import backpropagate, captured_values

_SYMBOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Builder -> symbols in use


def clone_region(region: Region, mapping: dict[int, Value]) -> Region:
    """A copy of `region` (new inputs, ops and nested regions); values of enclosing scopes stay
    shared unless `mapping` (id -> Value, extended in place) replaces them.

    >>> import tracer
    >>> c = clone_region(tracer.trace(lambda x: x * 2.0, 1.0), {})
    >>> len(c.inputs), [op.kind for op in c.ops]
    (1, ['constant', 'mul'])
    """
    out = Region([Value(v.type) for v in region.inputs])
    mapping.update((id(v), n) for v, n in zip(region.inputs, out.inputs))
    clone_ops(region.ops, out, mapping)
    out.outputs = [mapping.get(id(v), v) for v in region.outputs]
    return out


def clone_ops(ops: Sequence[Op], dest: Region, mapping: dict[int, Value]) -> list[Op]:
    """Append copies of `ops` to `dest`, inputs renamed through `mapping` (extended in place with
    the copies' outputs); returns the copies (types kept, so fresh symbols keep their names).

    >>> import tracer
    >>> g = tracer.trace(lambda x: x * 2.0, 1.0)
    >>> copies = clone_ops(g.ops, Region(), {})
    >>> copies[1].inputs[0] is g.inputs[0], copies[1].inputs[1] is copies[0].output
    (True, True)
    """
    copies = []
    for op in ops:
        regions = [clone_region(r, mapping) for r in op.regions]
        new = Op(op.kind, [mapping.get(id(v), v) for v in op.inputs], op.attrs, regions, op.loc,
                 output_types=[v.type for v in op.outputs])
        dest.ops.append(new)
        mapping.update((id(v), n) for v, n in zip(op.outputs, new.outputs))
        copies.append(new)
    return copies


def _nested(b: Builder, region: Region) -> Builder:
    """A builder for a region nested in `b`'s, sharing `b`'s record of symbols in use."""
    child = Builder(region)
    child.loc = b.loc
    _SYMBOLS[child] = _symbols_in_use(b)
    return child


def _symbols_in_use(b: Builder) -> set[str]:
    """Every symbol of the graph `b` builds into (found once, then kept up to date by us)."""
    if b not in _SYMBOLS:
        names: set[str] = set()
        values = list(b.region.inputs) + list(b.region.outputs)
        for op in b.region.walk():
            values += list(op.outputs)
            for r in op.regions:
                values += r.inputs
        for v in values:
            for d in v.shape:
                names |= D.symbols(d)
        _SYMBOLS[b] = names
    return _SYMBOLS[b]


def _fresh_symbol(b: Builder) -> str:
    taken = _symbols_in_use(b)
    k = 0
    while f"_ad{k}" in taken:
        k += 1
    taken.add(f"_ad{k}")
    return f"_ad{k}"


def _needing_gradients(b: Builder, captured: list[Value]) -> list[Value]:
    """The captured values worth a cotangent: floats that depend on what is differentiated
    (`b.active`, set by `backpropagate`), or, without that, those not made by a constant-like op."""
    active = getattr(b, "active", None)
    if active is not None:
        return [v for v in captured if id(v) in active]
    return [v for v in captured if is_float(v) and (v.producer is None or get_op(v.producer.kind).differentiable)]


def _as_type(b: Builder, ct: Value, like: Value) -> Value:
    """`ct` retyped as `like` where they differ only in how a dim is named (a fresh symbol of the
    op vs the dim inside the region); `reshape` checks the sizes at run time."""
    return ct if ct.type == like.type else b.reshape(ct, like.shape)


def _add_op(b: Builder, kind: str, inputs: Sequence[Value], regions: Sequence[Region], **attrs) -> Op:
    return b.region.add_op(kind, inputs, attrs, regions, loc=b.loc)


def _branch_vjp(b: Builder, branch: Region, cts: list, wanted: list[Value]) -> Region:
    """A backward branch: recompute `branch`, backpropagate `cts` of its outputs, yield the
    cotangent of each of `wanted` (zeros where the branch does not use it)."""
    out = Region()
    rb = _nested(b, out)
    mapping: dict[int, Value] = {}
    ops = clone_ops(branch.ops, out, mapping)
    seeds = []
    for v, ct in zip(branch.outputs, cts):
        if ct is not None and is_float(v):
            mine = mapping.get(id(v), v)
            seeds.append((mine, _as_type(rb, ct, mine)))
    got = backpropagate(rb, ops, seeds, wanted)
    out.outputs = [got[id(w)] if id(w) in got else rb.zeros(w.type) for w in wanted]
    return out


def _if(b: Builder, op: Op, cts: list) -> list:
    captured = captured_values(op)
    wanted = _needing_gradients(b, captured)
    if not wanted:
        return [None] * (1 + len(captured))
    then, other = (_branch_vjp(b, r, cts, wanted) for r in op.regions)
    grads = dict(zip(map(id, wanted), _add_op(b, "if", [op.inputs[0]], [then, other]).outputs))
    return [None] + [grads.get(id(v)) for v in captured]


def _appended(op: Op) -> dict[int, Value]:
    """Carried values the body only appends to (`h = concat([h, piece], axis=0)`, `h` used
    nowhere else): carried index -> the appended `piece`. Such a value is never read, so its
    states need no stacking, and the cotangent of each piece is a block of rows of the final
    cotangent; this covers outputs collected step by step, and the stacks of a loop gradient
    (so gradients of loop gradients work)."""
    body = op.regions[0]
    uses: dict[int, int] = {}
    for v in [u for o in body.ops for u in o.inputs] + body.outputs + [u for o in body.ops if o.regions
                                                                        for u in captured_values(o)]:
        uses[id(v)] = uses.get(id(v), 0) + 1
    out = {}
    for k, (init, param, y) in enumerate(zip(op.inputs[2:], body.inputs[2:], body.outputs[1:])):
        cat = y.producer
        if (cat is None or cat.kind != "concat" or cat.attrs["axis"] != 0 or len(cat.inputs) != 2
                or cat.inputs[0] is not param or uses.get(id(param)) != 1 or uses.get(id(y)) != 1
                or not any(o is cat for o in body.ops)):
            continue
        piece = cat.inputs[1]
        if isinstance(piece.shape[0], int) and piece.shape[0] > 0 and piece.shape[1:] == init.shape[1:]:
            out[k] = piece
    return out


def _check_stackable(op: Op, appended: dict[int, Value]) -> None:
    body = op.regions[0]
    for k, (init, param) in enumerate(zip(op.inputs[2:], body.inputs[2:])):
        if init.type == param.type or k in appended:
            continue
        raise AutodiffError(
            f"cannot differentiate `{format_op(op)}`" + (f" ({op.loc})" if op.loc else "")
            + f": loop-carried value {k} enters as {init.type} but the body takes {param.type}, so it may "
            "change shape across iterations and its per-iteration values cannot be stacked; keep the shapes "
            "of carried values fixed (preallocate and write with an index update), or only append to them")


def _forward_with_stacks(b: Builder, op: Op, which: list[int]) -> list[Value]:
    """Make `op`'s loop also stack the state entering each iteration, for the carried values
    `which`; returns one stack `[n, *shape]` each (`n` the number of iterations run).

    `op` itself is extended when it is an op of `b`'s region (a copy the gradient owns), so the
    forward runs once; otherwise a copy of the loop that stacks runs after it."""
    if not which:
        return []
    carried = [op.inputs[2 + k] for k in which]
    stack_types = [TensorType(v.dtype, (_fresh_symbol(b), *v.shape)) for v in carried]
    inits = [Op("full", [], {"shape": (0, *v.shape), "value": np.asarray(0, v.dtype)}, loc=b.loc) for v in carried]
    ops = b.region.ops
    pos = next((k for k, other in enumerate(ops) if other is op), None)
    if pos is not None:
        ops[pos:pos] = inits
        body = op.regions[0]
    else:
        ops.extend(inits)
        body = clone_region(op.regions[0], {})
    rb = _nested(b, body)
    state = [body.inputs[2 + k] for k in which]
    params = [Value(t) for t in stack_types]
    grown = [rb.op("concat", s, rb.reshape(h, (1, *h.shape)), axis=0) for s, h in zip(params, state)]
    body.inputs += params
    body.outputs += grown
    stack_inits = tuple(init.output for init in inits)
    if pos is None:
        loop = _add_op(b, "loop", [*op.inputs, *stack_inits], [body])
        return list(loop.outputs[len(op.outputs):])
    n = len(op.outputs)
    op.inputs += stack_inits
    op.outputs += tuple(Value(t, None, op, n + k) for k, t in enumerate(stack_types))
    return list(op.outputs[n:])


def _trip_count(b: Builder, op: Op, stacks: list[Value], appended: dict[int, Value]) -> Value:
    """The number of iterations the forward ran: a stack's length, or rows appended / rows per step."""
    if stacks:
        return b.dim(stacks[0], 0, np.int64)
    k, piece = next(iter(appended.items()))
    rows = b.sub(b.dim(op.outputs[k], 0, np.int64), b.dim(op.inputs[2 + k], 0, np.int64))
    return b.op("floordiv", rows, b.const(piece.shape[0], np.int64))


def _rows(b: Builder, ct: Value, start: Value, count: int) -> Value:
    """Rows `start .. start+count` of `ct` (start a run-time i64 scalar)."""
    idx = b.add(b.op("arange", n=(count,), dtype=np.dtype(np.int64)), start)
    return b.op("gather", ct, idx, axis=0)


def _loop(b: Builder, op: Op, cts: list) -> list:
    appended = _appended(op)
    _check_stackable(op, appended)
    body = op.regions[0]
    body = Region(list(body.inputs), list(body.ops), list(body.outputs))  # as it is before stacking
    captured = captured_values(op)
    carried = list(op.inputs[2:])
    stacked = [k for k in range(len(carried)) if k not in appended]
    grads_of = [k for k in stacked if is_float(carried[k])]
    wanted = _needing_gradients(b, captured)
    stacks = _forward_with_stacks(b, op, stacked)
    trip = _trip_count(b, op, stacks, appended)
    last = b.sub(trip, 1)
    ct_inits = [cts[k] if cts[k] is not None else b.zeros(carried[k].type) for k in grads_of]
    acc_inits = [b.zeros(v.type) for v in wanted]

    rev = Region([Value(TensorType(np.int64, ())), Value(TensorType(np.bool_, ()))]
                 + [Value(carried[k].type) for k in grads_of] + [Value(v.type) for v in wanted])
    rb = _nested(b, rev)
    ct_state = rev.inputs[2:2 + len(grads_of)]
    accs = rev.inputs[2 + len(grads_of):]
    i = rb.sub(last, rev.inputs[0])
    state = {k: rb.op("gather", s, i, axis=0) for k, s in zip(stacked, stacks)}
    mapping = {id(body.inputs[0]): i, id(body.inputs[1]): rb.const(True, np.bool_)}
    mapping.update((id(body.inputs[2 + k]), h) for k, h in state.items())
    appends = {id(body.outputs[1 + k].producer) for k in appended}
    ops = clone_ops([o for o in body.ops if id(o) not in appends], rev, mapping)
    seeds = []
    for k, ct in zip(grads_of, ct_state):
        y = mapping.get(id(body.outputs[1 + k]), body.outputs[1 + k])
        seeds.append((y, _as_type(rb, ct, y)))
    for k, piece in appended.items():
        if cts[k] is not None and is_float(piece):
            m = piece.shape[0]  # rows appended per iteration, after the initial ones
            start = rb.add(rb.mul(i, m), rb.dim(carried[k], 0, np.int64))
            y = mapping.get(id(piece), piece)
            seeds.append((y, _as_type(rb, _rows(rb, cts[k], start, m), y)))
    got = backpropagate(rb, ops, seeds, [state[k] for k in grads_of] + wanted)
    new_cts = [got[id(state[k])] if id(state[k]) in got else rb.zeros(carried[k].type) for k in grads_of]
    new_accs = [rb.add(a, got[id(v)]) if id(v) in got else a for a, v in zip(accs, wanted)]
    rev.outputs = [rb.const(True, np.bool_), *new_cts, *new_accs]
    outs = _add_op(b, "loop", [trip, b.const(True, np.bool_), *ct_inits, *acc_inits], [rev]).outputs
    by_input = dict(zip(grads_of, outs[:len(grads_of)]))
    for k in appended:  # the initial rows pass through unchanged
        if cts[k] is not None and is_float(carried[k]):
            init = carried[k]
            by_input[k] = b.op("slice", cts[k], starts=(0,) * init.type.rank, stops=init.shape,
                               steps=(1,) * init.type.rank)
    by_capture = dict(zip(map(id, wanted), outs[len(grads_of):]))
    return [None, None] + [by_input.get(k) for k in range(len(carried))] + [by_capture.get(id(v)) for v in captured]


register_rules({"if": _if, "loop": _loop})
