"""Counter-based random numbers: `random_bits`, `random_uniform`, `random_normal`.

Why counter-based: a traced training step must draw new values every step, so randomness takes
an explicit seed *input* (incremented by the caller) instead of hidden generator state, and the
same (seed, stream, element index) must give the same bits in every engine. Each element is a
pure hash of its flat index and a key derived from the seed, using only 32-bit unsigned
multiply, add, xor and right shift (Chris Wellons' `lowbias32` mixer, twice). Those exist as
ONNX integer ops (Mul, Add, BitwiseXor, BitShift on uint32), so `exporters.onnx_lowering_random`
reproduces the bits exactly.

Floats are made exactly from the bits: uniform `[0, 1)` takes the top `m` bits times 2**-m
(m = 11, 24, 32 for float16/32/64, so float64 draws have 32 random bits); normal uses
Box-Muller on two uniforms from two keys, computed in float32 for float16/float32 and in float64
otherwise (log/cos/sqrt differ by an ulp between engines, so normals agree within tolerance,
uniform floats and bits bit for bit).

>>> random_bits(np.int64(0), shape=(3,), stream=0).dtype
dtype('uint32')
>>> bool((random_uniform(np.int64(7), shape=(1000,), stream=0, dtype=np.dtype(np.float32)) < 1).all())
True
"""

from __future__ import annotations

import numpy as np

from ..errors import RuntimeInputError

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9  # 2**32 / golden ratio: spreads stream numbers apart
NORMAL_SALT = 0x68E31DA4  # derives the second Box-Muller key from the first
MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
MIX_SHIFTS = (16, 15, 16)
MANTISSA_BITS = {np.dtype(np.float16): 11, np.dtype(np.float32): 24, np.dtype(np.float64): 32}


def mix32(x: np.ndarray) -> np.ndarray:
    """The `lowbias32` integer hash on uint32 arrays (wrapping arithmetic).

    >>> int(mix32(np.array(1, np.uint32)))
    1753845952
    """
    x = np.asarray(x, np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(MIX_SHIFTS[0]))
        x = x * np.uint32(MIX_MULTIPLIERS[0])
        x = x ^ (x >> np.uint32(MIX_SHIFTS[1]))
        x = x * np.uint32(MIX_MULTIPLIERS[1])
        x = x ^ (x >> np.uint32(MIX_SHIFTS[2]))
    return x


def stream_constant(stream: int) -> np.uint32:
    """The per-stream constant mixed into the key (static: computed when building, not per call).

    >>> bool(stream_constant(0) != stream_constant(1))
    True
    """
    return np.uint32(mix32(np.array((int(stream) * GOLDEN) & MASK32, np.uint32)))


def seed_key(seed: np.ndarray, stream: int) -> np.ndarray:
    """The 0-d uint32 key of (seed, stream); any integer seed, wrapped to 64 bits.

    >>> bool(seed_key(np.int64(1), 0) != seed_key(np.int64(2), 0))
    True
    """
    s = np.asarray(seed).astype(np.uint64)
    lo = s.astype(np.uint32)
    hi = (s >> np.uint64(32)).astype(np.uint32)
    return mix32(lo ^ mix32(hi ^ stream_constant(stream)))


def counter_bits(key: np.ndarray, shape: tuple) -> np.ndarray:
    """uint32 bits for every element of `shape`: mix32(mix32(index ^ key) + key).

    >>> counter_bits(np.uint32(5), (2, 2)).shape
    (2, 2)
    """
    n = int(np.prod(shape, dtype=np.int64))
    index = np.arange(n, dtype=np.uint32).reshape(shape)
    with np.errstate(over="ignore"):
        return mix32(mix32(index ^ key) + key)


def _check(seed: np.ndarray) -> None:
    if np.asarray(seed).dtype.kind not in "iu" or np.ndim(seed) != 0:
        got = f"{np.asarray(seed).dtype} of shape {np.shape(seed)}"
        raise RuntimeInputError(f"random ops take a 0-d integer seed, got {got}")


def random_bits(seed: np.ndarray, *, shape: tuple, stream: int) -> np.ndarray:
    """Uniform uint32 bits of `shape` for (seed, stream).

    >>> a = random_bits(np.int64(3), shape=(4,), stream=0)
    >>> bool((a == random_bits(np.int64(3), shape=(4,), stream=0)).all())
    True
    """
    _check(seed)
    return counter_bits(seed_key(seed, stream), tuple(shape))


def work_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the float math runs in: float32 for float16 (too coarse for log/cos), else `dtype`.

    >>> work_dtype(np.dtype(np.float16))
    dtype('float32')
    """
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def _unit(bits: np.ndarray, dtype: np.dtype, plus_one: bool) -> np.ndarray:
    """The top mantissa bits of `dtype` as exact floats (in its work dtype): [0, 1), or (0, 1]
    with `plus_one`."""
    m = MANTISSA_BITS[dtype]
    work = work_dtype(dtype)
    u = (bits >> np.uint32(32 - m)).astype(work)
    if plus_one:
        u = u + work.type(1)
    return u * work.type(2.0 ** -m)


def random_uniform(seed: np.ndarray, *, shape: tuple, stream: int, dtype: np.dtype) -> np.ndarray:
    """Uniform floats in [0, 1) of `shape` and `dtype` (float16/32/64), exact from the bits.

    >>> random_uniform(np.int64(0), shape=(2,), stream=0, dtype=np.dtype(np.float64)).dtype
    dtype('float64')
    """
    dtype = np.dtype(dtype)
    return _unit(random_bits(seed, shape=shape, stream=stream), dtype, plus_one=False).astype(dtype)


def random_normal(seed: np.ndarray, *, shape: tuple, stream: int, dtype: np.dtype) -> np.ndarray:
    """Standard normal floats by Box-Muller: sqrt(-2 log u1) cos(2 pi u2), u1 in (0, 1].

    >>> z = random_normal(np.int64(0), shape=(20000,), stream=0, dtype=np.dtype(np.float64))
    >>> abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05
    True
    """
    _check(seed)
    dtype = np.dtype(dtype)
    work = work_dtype(dtype)
    key = seed_key(seed, stream)
    u1 = _unit(counter_bits(key, tuple(shape)), dtype, plus_one=True)
    u2 = _unit(counter_bits(mix32(key ^ np.uint32(NORMAL_SALT)), tuple(shape)), dtype, plus_one=False)
    radius = np.sqrt(work.type(-2) * np.log(u1))
    z = radius * np.cos(work.type(2 * np.pi) * u2)
    return z.astype(dtype)


KERNELS = {"random_bits": random_bits, "random_uniform": random_uniform, "random_normal": random_normal}
