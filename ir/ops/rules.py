"""Helpers shared by the type rules: broadcasting, dtype checks, axis normalization."""

from __future__ import annotations

import numpy as np

from runtime import dims as D

from ..errors import TypeRuleError
from ..types import TensorType, dtype_name


def broadcast_shapes(*shapes: tuple) -> tuple:
    """NumPy broadcasting over symbolic dims (equal symbols match; 1 stretches).

    >>> broadcast_shapes(("batch", 1), (3,))
    ('batch', 3)
    """
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dim = 1
        for s in shapes:
            j = i - (rank - len(s))
            if j < 0:
                continue
            d = s[j]
            if d == 1 or d == dim:
                continue
            if dim == 1:
                dim = d
            else:
                shown = " and ".join(str(tuple(x)) for x in shapes)
                raise TypeRuleError(f"shapes {shown} do not broadcast: dim {dim} vs {d}")
        out.append(dim)
    return tuple(out)


def same_dtype(types: list[TensorType], what: str = "inputs") -> np.dtype:
    """The common dtype of several values; they must all agree (the tracer inserts casts)."""
    dts = {t.dtype for t in types}
    if len(dts) != 1:
        names = ", ".join(dtype_name(t.dtype) for t in types)
        raise TypeRuleError(f"{what} must have one dtype, got {names}")
    return types[0].dtype


def require_kind(t: TensorType, kinds: str, what: str = "input") -> None:
    """Check a dtype kind: 'f' float, 'i' signed, 'u' unsigned, 'b' bool."""
    if t.dtype.kind not in kinds:
        raise TypeRuleError(f"{what} must be of kind {kinds!r} ({_KIND_WORDS[kinds]}), got {dtype_name(t.dtype)}")


_KIND_WORDS = {"f": "float", "iu": "integer", "fiu": "number", "b": "bool", "biu": "bool or integer",
               "bfiu": "any"}


def norm_axis(axis: int, rank: int) -> int:
    """Normalize a possibly negative axis; raises for out-of-range axes."""
    if not -rank <= axis < max(rank, 1):
        raise TypeRuleError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def conv_out_dim(size, k: int, stride: int, pad_begin: int, pad_end: int, dilation: int,
                 ceil_mode: bool = False):
    """Output length of a convolution/pooling window along one axis (symbolic-aware)."""
    span = dilation * (k - 1) + 1
    num = D.sub(D.add(size, pad_begin + pad_end), span)
    if ceil_mode:
        num = D.add(num, stride - 1)
    out = D.add(D.floordiv(num, stride), 1)
    if ceil_mode and isinstance(out, int) and isinstance(size, int) and (out - 1) * stride >= size + pad_begin:
        out -= 1  # ONNX/PyTorch drop a last window that would start inside the right padding
    return out
