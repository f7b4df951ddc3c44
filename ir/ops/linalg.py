"""Matrix products: `matmul` with NumPy's semantics (1-D operands, batch broadcasting), `einsum`."""

from __future__ import annotations

import re

from ..errors import TypeRuleError
from ..registry import register
from ..types import TensorType
from .rules import broadcast_shapes, require_kind, same_dtype


def _matmul(ts, attrs, regions):
    a, b = ts
    dt = same_dtype(ts)
    require_kind(a, "fiu")
    if a.rank == 0 or b.rank == 0:
        raise TypeRuleError("matmul operands must have rank >= 1")
    sa = a.shape if a.rank > 1 else (1,) + a.shape
    sb = b.shape if b.rank > 1 else b.shape + (1,)
    if sa[-1] != sb[-2]:
        raise TypeRuleError(f"matmul: contracted dims differ: {a} @ {b}")
    batch = broadcast_shapes(sa[:-2], sb[:-2])
    out = batch + (sa[-2] if a.rank > 1 else None, sb[-1] if b.rank > 1 else None)
    return [TensorType(dt, tuple(d for d in out if d is not None))]


_EINSUM = re.compile(r"^([a-zA-Z]*(?:,[a-zA-Z]*)*)->([a-zA-Z]*)$")


def _einsum(ts, attrs, regions):
    eq = attrs["equation"].replace(" ", "")
    m = _EINSUM.match(eq)
    if not m:
        raise TypeRuleError(f"einsum equation {eq!r} must be explicit ('ij,jk->ik'), without '...'")
    specs = m.group(1).split(",")
    if len(specs) != len(ts):
        raise TypeRuleError(f"einsum {eq!r} names {len(specs)} operands, got {len(ts)}")
    dt = same_dtype(ts)
    sizes: dict[str, object] = {}
    for spec, t in zip(specs, ts):
        if len(spec) != t.rank:
            raise TypeRuleError(f"einsum {eq!r}: operand {spec!r} has rank {t.rank}")
        for ch, d in zip(spec, t.shape):
            prev = sizes.get(ch, 1)
            if d != 1 and prev != 1 and prev != d:
                raise TypeRuleError(f"einsum {eq!r}: index {ch!r} is {prev} and {d}")
            if d != 1 or ch not in sizes:
                sizes[ch] = d
    out = m.group(2)
    if len(set(out)) != len(out) or any(ch not in sizes for ch in out):
        raise TypeRuleError(f"einsum {eq!r}: bad output subscripts")
    return [TensorType(dt, tuple(sizes[ch] for ch in out))]


register("matmul", _matmul, arity=(2, 2))
register("einsum", _einsum, arity=(1, None), attrs={"equation": "str"})
