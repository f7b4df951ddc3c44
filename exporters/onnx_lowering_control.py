"""ONNX lowerings of the region ops `if` and `loop`: one `If` / `Loop` node each.

Why one-to-one: the IR's `if`/`loop` were given ONNX's semantics on purpose (ir/ops/control.py):
`if` has two input-less branches, `loop(max_trip, cond, *carried)` a body taking
(iteration, cond, *carried) and yielding (cond, *carried). So a lowering only turns each region
into a subgraph with `Emitter.subgraph`, which shares the enclosing name scope: a body refers to
outer values (weights, the sequence being scanned) by name, as ONNX allows, instead of
threading them through as loop-carried values.
"""

from __future__ import annotations

from .onnx_export import Emitter


def _set_dtypes(cx: Emitter, op, outs: list[str]) -> None:
    # `Emitter.node` gives every output one dtype; an If/Loop's outputs each have their own
    for v, n in zip(op.outputs, outs):
        cx.dtypes[n] = v.dtype


def if_(cx: Emitter, op, ins: list[str], outs: list[str]) -> None:
    """`if(cond) {then} {else}` → `If(cond)` with `then_branch`/`else_branch` subgraphs."""
    then = cx.subgraph(op.regions[0], "then")
    other = cx.subgraph(op.regions[1], "else")
    cx.node("If", ins, outs, then_branch=then, else_branch=other)
    _set_dtypes(cx, op, outs)


def loop(cx: Emitter, op, ins: list[str], outs: list[str]) -> None:
    """`loop(max_trip, cond, *carried) {body}` → `Loop(M, cond, *v_initial)` with the body subgraph."""
    body = cx.subgraph(op.regions[0], "body")
    cx.node("Loop", ins, outs, body=body, key_input=2 if len(ins) > 2 else 0)
    _set_dtypes(cx, op, outs)


LOWERINGS = {"if": if_, "loop": loop}
