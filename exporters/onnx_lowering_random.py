"""ONNX lowerings of `random_bits`, `random_uniform` and `random_normal` from integer ops.

Why not ONNX's RandomUniformLike/RandomNormalLike: their `seed` is a static attribute (a graph
traced once would draw one fixed mask forever) and their generator is engine-defined, so
onnxruntime and castml could never agree. Instead the counter-based hash of
`runtime.kernels.random` is spelled out in uint32 ONNX ops (Cast, BitShift, BitwiseXor, Mul,
Add, Range, Reshape): the bits and the uniform floats are identical to the runtime's, bit for
bit; normal floats go through Log/Cos/Sqrt, which agree within the tolerance rule. Before
opset 18 (no BitwiseXor) the xors are spelled bit by bit (`onnx_lowering_bits`), still exact.
"""

from __future__ import annotations

import numpy as np

from runtime import dims as D
from runtime.kernels import random as R

from .onnx_export import Emitter, onnx_dtype
from .onnx_lowering_shape import reshape_to

U32 = np.dtype(np.uint32)


def _u32(cx: Emitter, value: int) -> str:
    return cx.const(np.array(value & R.MASK32, U32))


def _xor(cx: Emitter, a: str, b: str) -> str:
    if cx.opset >= 18:
        return cx.node("BitwiseXor", [a, b])
    from .onnx_lowering_bits import bitwise_by_bits

    return bitwise_by_bits(cx, "bitwise_xor", [a, b], cx.fresh("xor"))


def _shr(cx: Emitter, x: str, n: int) -> str:
    return cx.node("BitShift", [x, _u32(cx, n)], direction="RIGHT")


def mix32(cx: Emitter, x: str) -> str:
    """Emit `runtime.kernels.random.mix32` on a uint32 tensor.

    >>> R.MIX_SHIFTS
    (16, 15, 16)
    """
    s0, s1, s2 = R.MIX_SHIFTS
    m0, m1 = R.MIX_MULTIPLIERS
    x = _xor(cx, x, _shr(cx, x, s0))
    x = cx.node("Mul", [x, _u32(cx, m0)])
    x = _xor(cx, x, _shr(cx, x, s1))
    x = cx.node("Mul", [x, _u32(cx, m1)])
    return _xor(cx, x, _shr(cx, x, s2))


def _key(cx: Emitter, seed: str, stream: int) -> str:
    """`seed_key`: the seed wrapped to uint64, its halves mixed with the stream constant."""
    if hasattr(cx.caps, "check_random_opset"):  # onnxruntime-web: no bit-by-bit xors (exporters/target_web.py)
        cx.caps.check_random_opset(cx.opset, cx.op.kind, cx.op.loc)
    s = cx.cast(seed, np.uint64)
    lo = cx.cast(s, U32)
    hi = cx.cast(cx.node("BitShift", [s, cx.const(np.array(32, np.uint64))], direction="RIGHT"), U32)
    inner = mix32(cx, _xor(cx, hi, _u32(cx, int(R.stream_constant(stream)))))
    return mix32(cx, _xor(cx, lo, inner))


def _counter_bits(cx: Emitter, key: str, shape: tuple) -> str:
    """`counter_bits`: flat element indices (Range, then Reshape) hashed with the key."""
    total = 1
    for d in shape:
        total = D.mul(total, d)
    if isinstance(D.parse_dim(total), int):
        n = cx.const(np.array(D.parse_dim(total), np.int64))
    else:
        n = cx.node("Reshape", [cx.dim(total), cx.const(np.zeros(0, np.int64))])
    flat = cx.node("Range", [cx.const(np.array(0, np.int64)), n, cx.const(np.array(1, np.int64))])
    index = reshape_to(cx, cx.cast(flat, U32), shape)  # (a dim may be 0, at run time too)
    return mix32(cx, cx.node("Add", [mix32(cx, _xor(cx, index, key)), key]))


def _unit(cx: Emitter, bits: str, dtype: np.dtype, plus_one: bool) -> str:
    """`_unit`: top mantissa bits as exact floats in the work dtype."""
    m = R.MANTISSA_BITS[dtype]
    work = R.work_dtype(dtype)
    u = cx.cast(_shr(cx, bits, 32 - m), work)
    if plus_one:
        u = cx.node("Add", [u, cx.const(np.array(1, work))])
    return cx.node("Mul", [u, cx.const(np.array(2.0 ** -m, work))])


def random_bits(cx, op, ins, outs):
    a = op.attrs
    cx.node("Identity", [_counter_bits(cx, _key(cx, ins[0], a["stream"]), a["shape"])], outs[0])


def random_uniform(cx, op, ins, outs):
    a = op.attrs
    dt = np.dtype(a["dtype"])
    bits = _counter_bits(cx, _key(cx, ins[0], a["stream"]), a["shape"])
    cx.cast(_unit(cx, bits, dt, plus_one=False), dt, outs[0])


def random_normal(cx, op, ins, outs):
    a = op.attrs
    dt = np.dtype(a["dtype"])
    work = R.work_dtype(dt)
    key = _key(cx, ins[0], a["stream"])
    u1 = _unit(cx, _counter_bits(cx, key, a["shape"]), dt, plus_one=True)
    key2 = mix32(cx, _xor(cx, key, _u32(cx, R.NORMAL_SALT)))
    u2 = _unit(cx, _counter_bits(cx, key2, a["shape"]), dt, plus_one=False)
    radius = cx.node("Sqrt", [cx.node("Mul", [cx.const(np.array(-2, work)), cx.node("Log", [u1])])])
    angle = cx.node("Cos", [cx.node("Mul", [cx.const(np.array(2 * np.pi, work)), u2])])
    z = cx.node("Mul", [radius, angle])
    cx.node("Cast", [z], outs[0], dtype=dt, to=onnx_dtype(dt))


LOWERINGS = {"random_bits": random_bits, "random_uniform": random_uniform, "random_normal": random_normal}
