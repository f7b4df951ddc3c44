"""VJP rules of the matrix products.

matmul: 1-D operands are promoted to matrices (as NumPy does), the products are formed with
swapped last axes, and batch broadcasting is summed back. einsum: the cotangent of one operand
is another einsum of the output cotangent with the other operands; letters that only that
operand had are broadcast back, size-1 letters that broadcast are summed.
"""

from __future__ import annotations

from ..graph import Op, Value
from .rules_common import AutodiffError, Builder, is_float, register_rules, unbroadcast


def _swap_last(b: Builder, v: Value) -> Value:
    r = len(v.shape)
    return b.transpose(v, tuple(range(r - 2)) + (r - 1, r - 2))


def _matmul(b: Builder, op: Op, cts: list) -> list:
    a, c = op.inputs
    ct = cts[0]
    a2 = a if len(a.shape) > 1 else b.reshape(a, (1,) + a.shape)
    c2 = c if len(c.shape) > 1 else b.reshape(c, c.shape + (1,))
    batch = ct.shape[:len(ct.shape) - (len(a.shape) > 1) - (len(c.shape) > 1)]
    ct2 = b.reshape(ct, batch + (a2.shape[-2], c2.shape[-1]))
    out = []
    if is_float(a):
        da = b.op("matmul", ct2, _swap_last(b, c2))
        out.append(b.reshape(unbroadcast(b, da, a2.type), a.shape))
    else:
        out.append(None)
    if is_float(c):
        dc = b.op("matmul", _swap_last(b, a2), ct2)
        out.append(b.reshape(unbroadcast(b, dc, c2.type), c.shape))
    else:
        out.append(None)
    return out


def _einsum(b: Builder, op: Op, cts: list) -> list:
    eq = op.attrs["equation"].replace(" ", "")
    lhs, out_spec = eq.split("->")
    specs = lhs.split(",")
    ct = cts[0]
    grads = []
    for i, (spec, v) in enumerate(zip(specs, op.inputs)):
        if not is_float(v):
            grads.append(None)
            continue
        if len(set(spec)) != len(spec):
            raise AutodiffError(f"einsum {eq!r}: no gradient for operand {i} with a repeated index "
                                f"({spec!r}, a diagonal); write it with an explicit mask instead")
        others = [(s, u) for j, (s, u) in enumerate(zip(specs, op.inputs)) if j != i]
        available = set(out_spec).union(*(set(s) for s, _ in others))
        # letters of this operand seen nowhere else were summed away: broadcast them back
        target = "".join(ch for ch in spec if ch in available)
        terms = [out_spec] + [s for s, _ in others]
        g = b.op("einsum", ct, *(u for _, u in others), equation=",".join(terms) + "->" + target)
        got = dict(zip(target, g.shape))
        kept = tuple(got.get(ch, 1) for ch in spec)
        g = b.reshape(g, kept)
        g = b.broadcast_to(g, tuple(v.shape[k] if d == 1 else d for k, d in enumerate(kept)))
        grads.append(unbroadcast(b, g, v.type))
    return grads


RULES = {"matmul": _matmul, "einsum": _einsum}
register_rules(RULES)
