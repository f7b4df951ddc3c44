"""VJP rules of the reductions: sum, mean, max/min (ties share the gradient equally, as in
JAX), prod (exact with zeros: no division by a zero factor), and cumsum (a reversed cumsum).
"""

from __future__ import annotations

from runtime import dims as D

from ..graph import Op, Value
from .rules_common import Builder, expand_reduced, keepdims_shape, register_rules


def _sum(b: Builder, op: Op, cts: list) -> list:
    x = op.inputs[0]
    return [expand_reduced(b, cts[0], x, op.attrs["axes"], op.attrs["keepdims"])]


def _mean(b: Builder, op: Op, cts: list) -> list:
    x = op.inputs[0]
    ct = b.div(cts[0], b.count(x, op.attrs["axes"], x.dtype))
    return [expand_reduced(b, ct, x, op.attrs["axes"], op.attrs["keepdims"])]


def extremum_grad(b: Builder, x: Value, y: Value, ct: Value, axes: tuple, keepdims: bool) -> Value:
    """Gradient of y = max or min of x over `axes`: ct shared equally among the tied extrema."""
    hit = b.cast(b.op("equal", x, expand_reduced(b, y, x, axes, keepdims)), x.dtype)
    count = b.op("reduce_sum", hit, axes=tuple(axes), keepdims=True)
    share = b.div(b.reshape(ct, keepdims_shape(x, axes)), count)
    return b.mul(hit, b.broadcast_to(share, x.shape))


def _extremum(b: Builder, op: Op, cts: list) -> list:
    return [extremum_grad(b, op.inputs[0], op.outputs[0], cts[0], op.attrs["axes"], op.attrs["keepdims"])]


def _prod(b: Builder, op: Op, cts: list) -> list:
    # ∂prod/∂x_i is the product of the other factors. Dividing prod by x_i fails at zeros, so use
    # the product p of the nonzero factors and the number z of zeros in each reduced group:
    # z == 0 -> p / x_i;  z == 1 -> p at the zero, 0 elsewhere;  z >= 2 -> 0.
    x = op.inputs[0]
    axes, keepdims = op.attrs["axes"], op.attrs["keepdims"]
    zero = b.const(0, x.dtype)
    one = b.const(1, x.dtype)
    is_zero = b.op("equal", x, zero)
    p = b.op("reduce_prod", b.where(is_zero, one, x), axes=tuple(axes), keepdims=True)
    z = b.op("reduce_sum", b.cast(is_zero, x.dtype), axes=tuple(axes), keepdims=True)
    p, z = b.broadcast_to(p, x.shape), b.broadcast_to(z, x.shape)
    safe_x = b.where(is_zero, one, x)
    none_zero = b.div(p, safe_x)
    one_zero = b.where(is_zero, p, zero)
    others = b.where(b.op("equal", z, zero), none_zero,
                     b.where(b.op("equal", z, one), one_zero, zero))
    return [b.mul(expand_reduced(b, cts[0], x, axes, keepdims), others)]


def reverse(b: Builder, v: Value, axis: int) -> Value:
    """`v` reversed along `axis` (a slice with step -1; symbolic lengths allowed)."""
    rank = len(v.shape)
    starts = tuple(D.sub(d, 1) if i == axis else 0 for i, d in enumerate(v.shape))
    stops = tuple(-1 if i == axis else d for i, d in enumerate(v.shape))
    steps = tuple(-1 if i == axis else 1 for i in range(rank))
    return b.op("slice", v, starts=starts, stops=stops, steps=steps)


def _cumsum(b: Builder, op: Op, cts: list) -> list:
    axis = op.attrs["axis"] % len(op.inputs[0].shape)
    rev = reverse(b, cts[0], axis)
    return [reverse(b, b.op("cumsum", rev, axis=axis), axis)]


RULES = {"reduce_sum": _sum, "reduce_mean": _mean, "reduce_max": _extremum, "reduce_min": _extremum,
         "reduce_prod": _prod, "cumsum": _cumsum}
register_rules(RULES)
