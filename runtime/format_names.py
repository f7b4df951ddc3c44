"""Short dtype names shared by the runtime's messages and the IR text (`f32`, `i64`, `b1`)."""

from __future__ import annotations

import numpy as np

SHORT_NAMES: dict[np.dtype, str] = {
    np.dtype(np.bool_): "b1", np.dtype(np.int8): "i8", np.dtype(np.int16): "i16",
    np.dtype(np.int32): "i32", np.dtype(np.int64): "i64", np.dtype(np.uint8): "u8",
    np.dtype(np.uint16): "u16", np.dtype(np.uint32): "u32", np.dtype(np.uint64): "u64",
    np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64",
}


def short_dtype(dtype) -> str:
    """Short name of a dtype.

    >>> short_dtype(np.float32)
    'f32'
    """
    return SHORT_NAMES.get(np.dtype(dtype), str(np.dtype(dtype)))
