"""Integer bitwise and/or/xor for opsets before 18, which have no `Bitwise*` ops.

Why bit by bit: before opset 18 ONNX has bit shifts only for unsigned types and no bitwise
logic, so the operands are reinterpreted as unsigned (Cast wraps modulo 2**bits), split into
bits with shifts, combined with arithmetic on 0/1 values, and reassembled. Exact for every
input; it costs a few nodes per bit, which only old-opset exports of bitwise code pay.
"""

from __future__ import annotations

import numpy as np

from .onnx_export import Emitter, onnx_dtype

_BIT_OPS = {"bitwise_and": "and", "bitwise_or": "or", "bitwise_xor": "xor"}


def bitwise_by_bits(cx: Emitter, kind: str, ins: list[str], out: str) -> str:
    """Emit `out = a <kind> b` for integer tensors using shifts and arithmetic only.

    >>> sorted(_BIT_OPS)
    ['bitwise_and', 'bitwise_or', 'bitwise_xor']
    """
    dt = cx.dtypes[ins[0]]
    udt = np.dtype(f"uint{dt.itemsize * 8}")
    bits = dt.itemsize * 8
    a, b = (cx.cast(x, udt) for x in ins)
    top = cx.const(np.array(bits - 1, udt))
    total = None
    for i in range(bits):
        up = cx.const(np.array(bits - 1 - i, udt))
        bit_a = cx.node("BitShift", [cx.node("BitShift", [a, up], direction="LEFT"), top], direction="RIGHT")
        bit_b = cx.node("BitShift", [cx.node("BitShift", [b, up], direction="LEFT"), top], direction="RIGHT")
        both = cx.node("Mul", [bit_a, bit_b])
        if _BIT_OPS[kind] == "and":
            r = both
        else:
            either = cx.node("Sub", [cx.node("Add", [bit_a, bit_b]), both])
            r = either if _BIT_OPS[kind] == "or" else cx.node("Sub", [either, both])
        shifted = cx.node("BitShift", [r, cx.const(np.array(i, udt))], direction="LEFT")
        total = shifted if total is None else cx.node("Add", [total, shifted])
    return cx.node("Cast", [total], out, dtype=dt, to=onnx_dtype(dt))
