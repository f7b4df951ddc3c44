"""Random-number ops with an explicit seed input: `random_bits`, `random_uniform`, `random_normal`.

Why a seed input and not an attribute: a traced training step is traced once and run many
times; a seed baked into the graph would draw the same dropout mask every step. Here the seed is
an ordinary 0-d integer value (a graph input the caller increments), and `stream` (a static
attribute) separates independent draws made from one seed in one graph (e.g. two Dropout
layers). The kernels (`runtime.kernels.random`) are counter-based hashes of (seed, stream,
element index), so the runtime and the ONNX export give the same bits.

    %m: f32[batch,10] = random_uniform(%seed) [dtype=f32, shape=(batch, 10), stream=1]
"""

from __future__ import annotations

import numpy as np

from ..errors import TypeRuleError
from ..registry import register
from ..types import TensorType, dtype_name

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _seed(ts) -> None:
    (seed,) = ts
    if seed.dtype.kind not in "iu" or seed.rank != 0:
        raise TypeRuleError(f"the seed must be a 0-d integer tensor, got {seed}")


def _shape(attrs) -> tuple:
    shape = attrs["shape"]
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise TypeRuleError(f"shape dims must be >= 0, got {shape}")
    if attrs["stream"] < 0:
        raise TypeRuleError(f"stream must be >= 0, got {attrs['stream']}")
    return shape


def _bits(ts, attrs, regions):
    _seed(ts)
    return [TensorType(np.dtype(np.uint32), _shape(attrs))]


def _floats(ts, attrs, regions):
    _seed(ts)
    dt = np.dtype(attrs["dtype"])
    if dt not in FLOAT_DTYPES:
        raise TypeRuleError(f"dtype must be float16, float32 or float64, got {dtype_name(dt)}")
    return [TensorType(dt, _shape(attrs))]


_ATTRS = {"shape": "dims", "stream": "int"}
register("random_bits", _bits, attrs=_ATTRS, differentiable=False,
         doc="uint32 bits, a counter-based hash of (seed, stream, element index)")
register("random_uniform", _floats, attrs={**_ATTRS, "dtype": "dtype"}, differentiable=False,
         doc="floats in [0, 1) made exactly from the top mantissa bits of random_bits")
register("random_normal", _floats, attrs={**_ATTRS, "dtype": "dtype"}, differentiable=False,
         doc="standard normal floats by Box-Muller from two random_bits draws")
