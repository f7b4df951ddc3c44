"""The `.castml` file format: constants shared by the writer (`exporters.castml_format`) and the
loader (`runtime.loader`). The schema is `castml.fbs`; `castml_fb/` is its flatc-generated code.

Limits are part of the format: a loader rejects anything beyond them with `ModelFormatError`, so
a hostile file cannot make loading slow, deep or large beyond what its size justifies.
"""

from __future__ import annotations

import numpy as np

from .castml_fb.AttrKind import AttrKind
from .castml_fb.DType import DType

FORMAT_VERSION = 1  # the version this code writes; it reads every version in READABLE_VERSIONS
READABLE_VERSIONS = frozenset({1})
FILE_IDENTIFIER = b"CSML"
ALIGNMENT = 64  # every tensor buffer and the data region start at a multiple of this
PRODUCER = "castml"

MAX_RANK = 8
MAX_REGION_DEPTH = 16
MAX_OPS = 1_000_000
INT64_MAX = 2**63 - 1

DTYPE_CODES: dict[np.dtype, int] = {
    np.dtype(np.bool_): DType.BOOL, np.dtype(np.int8): DType.INT8, np.dtype(np.int16): DType.INT16,
    np.dtype(np.int32): DType.INT32, np.dtype(np.int64): DType.INT64, np.dtype(np.uint8): DType.UINT8,
    np.dtype(np.uint16): DType.UINT16, np.dtype(np.uint32): DType.UINT32, np.dtype(np.uint64): DType.UINT64,
    np.dtype(np.float16): DType.FLOAT16, np.dtype(np.float32): DType.FLOAT32,
    np.dtype(np.float64): DType.FLOAT64,
}
DTYPES_BY_CODE: dict[int, np.dtype] = {code: dt for dt, code in DTYPE_CODES.items()}
# tensor data is little-endian in the file (the same as native dtypes on the usual hosts)
FILE_DTYPES_BY_CODE: dict[int, np.dtype] = {code: dt.newbyteorder("<") for dt, code in DTYPE_CODES.items()}

ATTR_KIND_NAMES: dict[int, str] = {
    AttrKind.INT: "int", AttrKind.FLOAT: "float", AttrKind.BOOL: "bool", AttrKind.STR: "str",
    AttrKind.DTYPE: "dtype", AttrKind.INTS: "ints", AttrKind.FLOATS: "floats", AttrKind.DIMS: "dims",
    AttrKind.TENSOR: "tensor",
}


def align(n: int, to: int = ALIGNMENT) -> int:
    """`n` rounded up to a multiple of `to`.

    >>> align(65), align(64), align(0)
    (128, 64, 0)
    """
    return -(-n // to) * to


__all__ = ["FORMAT_VERSION", "READABLE_VERSIONS", "FILE_IDENTIFIER", "ALIGNMENT", "MAX_RANK", "MAX_REGION_DEPTH",
           "MAX_OPS", "DTYPE_CODES", "DTYPES_BY_CODE", "FILE_DTYPES_BY_CODE", "ATTR_KIND_NAMES", "align", "AttrKind",
           "DType"]
