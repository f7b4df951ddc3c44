"""Helpers shared by the VJP rules: a small op builder and the recurring shapes of a rule.

A rule is `rule(b, op, cts) -> [cotangent or None per input of op]`: `b` is a `Builder` that
appends backward ops to the gradient graph, `op` the forward op (its inputs and outputs are
values of the gradient graph, so rules may reuse them), `cts` one cotangent per output of `op`
(None where no gradient flows into that output). Rules only build ops of the registry, so the
backward pass is itself differentiable (grad of grad) and exports like any other graph.

Shapes may hold symbolic dims; every helper decides from the static types (`1` or a missing
leading dim means "broadcast") and passes symbolic dims on as `dims` attributes, which the
executor evaluates at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from runtime import dims as D
from runtime.errors import CastmlError

from ..graph import Op, Region, Value
from ..registry import get_op
from ..types import TensorType

Rule = Callable[["Builder", Op, list], Sequence[Any]]


class AutodiffError(CastmlError, ValueError):
    """A gradient cannot be built: integer inputs, a non-scalar output, or an op form without a
    rule. The message names the argument or the printed op."""


class Builder:
    """Appends ops to a region; one method per op used often, `op()` for the rest.

    >>> from ir.graph import Graph
    >>> g = Graph.from_inputs([("x", TensorType(np.float32, (3,)))])
    >>> b = Builder(g)
    >>> str(b.mul(g.inputs[0], b.const(2.0, np.float32)).type)
    'f32[3]'
    """

    def __init__(self, region: Region):
        self.region = region
        self.loc: str | None = None  # source line of the forward op being differentiated
        self._consts: dict[tuple, Value] = {}

    def op(self, kind: str, *inputs: Value, **attrs: Any) -> Value:
        """Append a one-output op and return its output."""
        return self.region.add_op(kind, inputs, attrs, loc=self.loc).output

    def multi(self, kind: str, *inputs: Value, **attrs: Any) -> tuple[Value, ...]:
        """Append an op with several outputs and return them."""
        return self.region.add_op(kind, inputs, attrs, loc=self.loc).outputs

    def const(self, value: Any, dtype: Any) -> Value:
        """A 0-d constant of `dtype` (shared within one backward pass)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.op("constant", value=arr)
        return self._consts[key]

    def full(self, t: TensorType, value: float) -> Value:
        """An array of type `t` (symbolic shapes allowed) filled with `value`."""
        return self.op("full", shape=t.shape, value=np.asarray(value, dtype=t.dtype))

    def zeros(self, t: TensorType) -> Value:
        """Zeros of type `t`: the gradient of an input nothing depends on."""
        return self.full(t, 0)

    # arithmetic, with Python numbers turned into constants of the other operand's dtype
    def _pair(self, a, c) -> tuple[Value, Value]:
        if not isinstance(a, Value):
            a = self.const(a, c.dtype)
        if not isinstance(c, Value):
            c = self.const(c, a.dtype)
        return a, c

    def add(self, a, c) -> Value:
        return self.op("add", *self._pair(a, c))

    def sub(self, a, c) -> Value:
        return self.op("sub", *self._pair(a, c))

    def mul(self, a, c) -> Value:
        return self.op("mul", *self._pair(a, c))

    def div(self, a, c) -> Value:
        return self.op("div", *self._pair(a, c))

    def neg(self, a: Value) -> Value:
        return self.op("neg", a)

    def where(self, cond: Value, a, c) -> Value:
        return self.op("where", cond, *self._pair(a, c))

    def cast(self, a: Value, dtype: Any) -> Value:
        return a if a.dtype == np.dtype(dtype) else self.op("cast", a, dtype=np.dtype(dtype))

    def reshape(self, a: Value, shape: tuple) -> Value:
        shape = tuple(D.parse_dim(d) for d in shape)
        return a if a.shape == shape else self.op("reshape", a, shape=shape)

    def transpose(self, a: Value, perm: Sequence[int]) -> Value:
        perm = tuple(perm)
        return a if perm == tuple(range(len(perm))) else self.op("transpose", a, perm=perm)

    def reduce_sum(self, a: Value, axes: Sequence[int], keepdims: bool = False) -> Value:
        axes = tuple(sorted(set(axes)))
        if not axes:
            return a
        return self.op("reduce_sum", a, axes=axes, keepdims=keepdims)

    def broadcast_to(self, a: Value, shape: tuple) -> Value:
        return a if a.shape == tuple(shape) else self.op("broadcast_to", a, shape=tuple(shape))

    def dim(self, a: Value, axis: int, dtype: Any) -> Value:
        """Size of one axis of `a` as a 0-d value of `dtype` (a constant when static)."""
        d = a.shape[axis]
        if isinstance(d, int):
            return self.const(d, dtype)
        return self.cast(self.op("shape_dim", a, axis=axis), dtype)

    def count(self, a: Value, axes: Sequence[int], dtype: Any) -> Value:
        """Number of elements over `axes` of `a` (product of dims), as a 0-d value of `dtype`."""
        static = 1
        dynamic: list[Value] = []
        for ax in axes:
            d = a.shape[ax]
            if isinstance(d, int):
                static *= d
            else:
                dynamic.append(self.dim(a, ax, dtype))
        out = self.const(static, dtype)
        for v in dynamic:
            out = self.mul(out, v)
        return out


def is_float(v: Value) -> bool:
    """Whether a value carries a gradient (floating dtype)."""
    return v.dtype.kind == "f"


def unbroadcast(b: Builder, ct: Value, target: TensorType) -> Value:
    """Sum `ct` over the axes along which `target` was broadcast, then reshape to `target`.

    An axis is a broadcast axis when `target` lacks it (leading) or has size 1 where `ct` does
    not, decided from the static types, so symbolic dims stay symbolic.
    """
    if ct.shape == target.shape:
        return b.cast(ct, target.dtype)
    lead = len(ct.shape) - len(target.shape)
    axes = list(range(lead))
    axes += [lead + i for i, d in enumerate(target.shape) if d == 1 and ct.shape[lead + i] != 1]
    out = b.reduce_sum(ct, axes, keepdims=False)
    return b.cast(b.reshape(out, target.shape), target.dtype)


def expand_reduced(b: Builder, ct: Value, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
    """Broadcast a reduction's cotangent back over the reduced `axes` to `x`'s shape."""
    if not keepdims:
        kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        ct = b.reshape(ct, kept)
    return b.broadcast_to(ct, x.shape)


def keepdims_shape(x: Value, axes: Sequence[int]) -> tuple:
    """`x`'s shape with `axes` set to 1."""
    return tuple(1 if i in axes else d for i, d in enumerate(x.shape))


def register_rules(rules: dict[str, Rule]) -> None:
    """Attach each rule to its op's registry entry (`get_op(kind).vjp`)."""
    for kind, rule in rules.items():
        get_op(kind).vjp = rule


def linear_unary(fn: Callable[[Builder, Value, Op], Value]) -> Rule:
    """A rule for a one-input op whose cotangent is `fn(b, ct, op)`."""
    def rule(b: Builder, op: Op, cts: list) -> list:
        return [fn(b, cts[0], op)]
    rule.__doc__ = fn.__doc__
    return rule


def elementwise_unary(deriv: Callable[[Builder, Value, Value, Op], Value]) -> Rule:
    """A rule for y = f(x) elementwise: ct * f'(x), with `deriv(b, x, y, op)` giving f'(x)."""
    def rule(b: Builder, op: Op, cts: list) -> list:
        x, y = op.inputs[0], op.outputs[0]
        return [b.mul(cts[0], deriv(b, x, y, op))]
    rule.__doc__ = deriv.__doc__
    return rule


def elementwise_binary(dx: Callable | None, dy: Callable | None) -> Rule:
    """A rule for z = f(x, y) with broadcasting: `dx(b, x, y, z, ct)` is ct times ∂f/∂x at
    full (broadcast) shape; it is summed back to x's shape. None: no gradient for that input."""
    def rule(b: Builder, op: Op, cts: list) -> list:
        x, y = op.inputs
        z, ct = op.outputs[0], cts[0]
        out = []
        for v, fn in ((x, dx), (y, dy)):
            out.append(unbroadcast(b, fn(b, x, y, z, ct), v.type) if fn is not None and is_float(v) else None)
        return out
    return rule
