"""Tensor types: a NumPy dtype and a shape of dims (int, symbol or symbolic expression).

Short dtype names (`f32`, `i64`, `b1`) are the IR's spelling in text and error messages.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from runtime import dims as D
from runtime.format_names import SHORT_NAMES

Dim = D.Dim

DTYPE_NAMES: dict[np.dtype, str] = SHORT_NAMES
DTYPES_BY_NAME: dict[str, np.dtype] = {v: k for k, v in DTYPE_NAMES.items()}
SUPPORTED_DTYPES = tuple(DTYPE_NAMES)


def as_dtype(dtype) -> np.dtype:
    """Normalize a dtype spelled any NumPy way, or as a short IR name, to a supported `np.dtype`.

    >>> as_dtype("f32"), as_dtype(float)
    (dtype('float32'), dtype('float64'))
    """
    if isinstance(dtype, str) and dtype in DTYPES_BY_NAME:
        return DTYPES_BY_NAME[dtype]
    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        dt = dt.newbyteorder("=")
    if dt not in DTYPE_NAMES:
        supported = ", ".join(np.dtype(d).name for d in DTYPE_NAMES)
        raise TypeError(f"unsupported dtype {dt}; castml supports {supported}")
    return dt


def dtype_name(dtype) -> str:
    """Short IR name of a dtype.

    >>> dtype_name(np.float32)
    'f32'
    """
    return DTYPE_NAMES[np.dtype(dtype)]


@dataclass(frozen=True)
class TensorType:
    """The static type of a value: `TensorType(dtype, shape)`; prints as `f32[batch,784]`.

    >>> TensorType(np.float32, ("batch", 784))
    TensorType(f32[batch,784])
    """

    dtype: np.dtype
    shape: tuple[Dim, ...]

    def __post_init__(self):
        # fast path (tracing creates one type per op): a supported native dtype and plain dims
        dt = self.dtype
        if not (isinstance(dt, np.dtype) and dt.isnative and dt in DTYPE_NAMES):
            object.__setattr__(self, "dtype", as_dtype(dt))
        shape = self.shape
        if type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
            object.__setattr__(self, "shape", tuple(_canonical_dim(d) for d in shape))

    @property
    def rank(self) -> int:
        """Number of dims."""
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dim is an int."""
        return all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        return f"{dtype_name(self.dtype)}[{','.join(str(d) for d in self.shape)}]"

    def __repr__(self) -> str:
        return f"TensorType({self})"


def _canonical_dim(d) -> Dim:
    """A checked dim in canonical form; symbolic strings are parsed once and cached."""
    if type(d) is int and d >= 0:
        return d
    if type(d) is str:
        return _canonical_str_dim(d)
    return D.parse_dim(_check_dim(d))


@functools.lru_cache(maxsize=4096)
def _canonical_str_dim(d: str) -> Dim:
    return D.parse_dim(_check_dim(d))


def _check_dim(d) -> Dim:
    if isinstance(d, (bool, np.bool_)):
        raise TypeError(f"a dim must be an int or a symbol name, got {d!r}")
    if isinstance(d, (int, np.integer)):
        if d < 0:
            raise ValueError(f"a dim must be >= 0, got {d}")
        return int(d)
    if isinstance(d, str):
        if d in DTYPES_BY_NAME:
            raise ValueError(f"{d!r} names a dtype and cannot be used as a dim symbol")
        return d
    raise TypeError(f"a dim must be an int or a symbol name, got {type(d).__name__} {d!r}")


def type_of(x) -> TensorType:
    """Type of a concrete array or scalar.

    >>> type_of(np.zeros((2, 3), np.float32))
    TensorType(f32[2,3])
    """
    a = np.asarray(x)
    return TensorType(a.dtype, a.shape)
