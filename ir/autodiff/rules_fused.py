"""VJP rules of the fused ops that `ir.passes` create (`gemm`, `fused_conv`).

A fused op is re-expressed as the primitive ops it stands for (matmul + add + activation,
conv + activation) right in the backward pass, and those ops' own rules run on it, so the
fused rules can never drift from the primitive ones. Rules are attached only when the fused
ops are registered.
"""

from __future__ import annotations

from collections.abc import Callable

from ..graph import Op, Value
from ..registry import REGISTRY
from .rules_common import Builder, register_rules
from .vjp import backpropagate

_ACTIVATIONS: dict[str, tuple[str, dict] | None] = {
    "none": None, "relu": ("relu", {}), "sigmoid": ("sigmoid", {}), "tanh": ("tanh", {}),
    "gelu": ("gelu", {"approximate": "none"}), "gelu_tanh": ("gelu", {"approximate": "tanh"}),
}


def _activate(b: Builder, z: Value, name: str) -> Value:
    act = _ACTIVATIONS[name]
    return z if act is None else b.op(act[0], z, **act[1])


def _gemm(b: Builder, op: Op) -> Value:
    z = b.op("matmul", op.inputs[0], op.inputs[1])
    if len(op.inputs) == 3:
        z = b.add(z, op.inputs[2])
    return _activate(b, z, op.attrs["activation"])


def _fused_conv(b: Builder, op: Op) -> Value:
    attrs = {k: v for k, v in op.attrs.items() if k != "activation"}
    return _activate(b, b.op("conv", *op.inputs, **attrs), op.attrs["activation"])


def decomposed(expand: Callable[[Builder, Op], Value]) -> Callable:
    """A rule that rebuilds the op from primitives with `expand` and backpropagates through them."""
    def rule(b: Builder, op: Op, cts: list) -> list:
        start = len(b.region.ops)
        y = expand(b, op)
        cts_in = backpropagate(b, b.region.ops[start:], [(y, cts[0])], op.inputs)
        return [cts_in.get(id(v)) for v in op.inputs]
    return rule


def _fused_elementwise(b: Builder, op: Op, cts: list) -> list:
    """The region's ops re-emitted on the op's inputs, then backpropagated through; returns
    cotangents for the inputs and then for the values the region captures (see `operands`)."""
    from .vjp import captured_values

    body = op.regions[0]
    local = {id(p): x for p, x in zip(body.inputs, op.inputs)}
    start = len(b.region.ops)
    for o in body.ops:
        new = b.region.add_op(o.kind, [local.get(id(v), v) for v in o.inputs], o.attrs, loc=b.loc)
        local.update({id(a): c for a, c in zip(o.outputs, new.outputs)})
    seeds = [(local.get(id(y), y), ct) for y, ct in zip(body.outputs, cts) if ct is not None]
    wanted = list(op.inputs) + captured_values(op)
    cts_in = backpropagate(b, b.region.ops[start:], seeds, wanted)
    first = {}  # a value passed twice gets its whole cotangent once
    for k, v in enumerate(wanted):
        first.setdefault(id(v), k)
    return [cts_in.get(id(v)) if first[id(v)] == k else None for k, v in enumerate(wanted)]


register_rules({kind: decomposed(fn) for kind, fn in (("gemm", _gemm), ("fused_conv", _fused_conv))
                if kind in REGISTRY})
if "fused_elementwise" in REGISTRY:
    register_rules({"fused_elementwise": _fused_elementwise})
