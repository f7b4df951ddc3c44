"""ONNX → IR translations of the data-dependent indexing ops: NonZero, Compress, GatherND,
ScatterND, ScatterElements (and its opset-9 name Scatter).

Why flat element numbers: the IR has one read (`gather`), two writes (`index_update`, and
`index_add` for reduction='add') and one data-dependent selection (`boolean_mask`). Every ONNX op
here becomes one of them on a flattened view of the data, with the flat element number computed
from the index tensors by Horner's rule over the data's dims (`((i0*d1 + i1)*d2 + i2)...`). Dims
come from `Builder.dim_value`, so symbolic shapes work; negative indices are normalized by adding
the dim, as ONNX specifies. Reductions other than `none` and `add`, and `batch_dims` other than 0,
raise `UnsupportedOpError`.
"""

from __future__ import annotations

import numpy as np

from runtime import dims as D

from .errors import UnsupportedOpError
from .onnx_import import Builder, dtype_of, shape_of

I64 = np.dtype(np.int64)


def _as_int64(b: Builder, idx):
    return idx if dtype_of(idx) == I64 else b.op("cast", [idx], dtype=I64)


def _normalized(b: Builder, idx, dim):
    """`idx` (int64) with negative entries counted from the end of an axis of length `dim`."""
    d = b.dim_value(dim)
    return b.op("where", [b.op("less", [idx, np.asarray(0, np.int64)]), b.op("add", [idx, d]), idx])


def _take_last(b: Builder, idx, j: int):
    """`idx[..., j]` (the j-th coordinate of an index tuple)."""
    return b.op("gather", [idx, np.asarray(j, np.int64)], axis=len(shape_of(idx)) - 1)


def _flat_numbers(b: Builder, coords: list, dims: list):
    """Horner's rule: the flat element number of coordinates `coords` in an array of shape `dims`."""
    flat = coords[0]
    for c, d in zip(coords[1:], dims[1:]):
        flat = b.op("add", [b.op("mul", [flat, b.dim_value(d)]), c])
    return flat


def _nd_numbers(b: Builder, data, indices, op_type: str, attrs: dict):
    """For GatherND/ScatterND: (flat numbers of shape indices.shape[:-1], k, data's shape)."""
    if attrs.get("batch_dims", 0):
        raise UnsupportedOpError(f"{b.where()}: {op_type} with batch_dims={attrs['batch_dims']} is not supported")
    shape = shape_of(data)
    k = shape_of(indices)[-1] if shape_of(indices) else None
    if not isinstance(k, int) or not 1 <= k <= len(shape):
        raise UnsupportedOpError(f"{b.where()}: {op_type} needs a static last index dim in 1..{len(shape)}, "
                                 f"got indices of shape {shape_of(indices)}")
    idx = _as_int64(b, indices)
    coords = [_normalized(b, _take_last(b, idx, j), shape[j]) for j in range(k)]
    return _flat_numbers(b, coords, list(shape[:k])), k, shape


def _write_op(b: Builder, op_type: str, attrs: dict) -> str:
    """The IR op of a scatter's `reduction`: index_update for 'none', index_add for 'add'."""
    red = attrs.get("reduction", b"none")
    red = red.decode() if isinstance(red, bytes) else red
    if red not in ("none", "add"):
        raise UnsupportedOpError(f"{b.where()}: {op_type} with reduction={red!r} is not supported "
                                 f"(only 'none' and 'add')")
    return "index_update" if red == "none" else "index_add"


def gather_nd(b: Builder, ins: list, attrs: dict, n_out: int) -> list:
    """`GatherND(data, indices)`: data[i0, ..., ik-1] for every index tuple.

    >>> from exporters.onnx_import_ops import IMPORTERS
    >>> IMPORTERS["GatherND"] is gather_nd
    True
    """
    data, indices = ins
    flat, k, shape = _nd_numbers(b, data, indices, "GatherND", attrs)
    rows = b.reshape(data, (D.product(shape[:k]),) + tuple(shape[k:]))
    return [b.op("gather", [rows, flat], axis=0)]


def scatter_nd(b: Builder, ins: list, attrs: dict, n_out: int) -> list:
    """`ScatterND(data, indices, updates)`: a copy of data with data[i0, ..., ik-1] = update.

    >>> from exporters.onnx_import_ops import IMPORTERS
    >>> IMPORTERS["ScatterND"] is scatter_nd
    True
    """
    kind = _write_op(b, "ScatterND", attrs)
    data, indices, updates = ins
    flat, k, shape = _nd_numbers(b, data, indices, "ScatterND", attrs)
    rows = b.reshape(data, (D.product(shape[:k]),) + tuple(shape[k:]))
    return [b.reshape(b.op(kind, [rows, flat, updates], axis=0), shape)]


def scatter_elements(b: Builder, ins: list, attrs: dict, n_out: int) -> list:
    """`ScatterElements(data, indices, updates, axis)`: out[..., indices[i], ...] = updates[i]
    along `axis`, every other coordinate taken from the position in `indices`.

    >>> from exporters.onnx_import_ops import IMPORTERS
    >>> IMPORTERS["ScatterElements"] is scatter_elements
    True
    """
    kind = _write_op(b, "ScatterElements", attrs)
    data, indices, updates = ins
    shape, ishape = shape_of(data), shape_of(indices)
    rank = len(shape)
    if len(ishape) != rank or shape_of(updates) != ishape:
        raise UnsupportedOpError(f"{b.where()}: ScatterElements expects indices and updates of data's rank "
                                 f"{rank} and equal shapes; got data {shape}, indices {ishape}, "
                                 f"updates {shape_of(updates)}")
    axis = attrs.get("axis", 0)
    axis = axis + rank if axis < 0 else axis
    coords = []
    for j in range(rank):
        if j == axis:
            coords.append(_normalized(b, _as_int64(b, indices), shape[j]))
            continue
        along = b.op("arange", [], n=(ishape[j],), dtype=I64)
        coords.append(b.reshape(along, tuple(ishape[j] if i == j else 1 for i in range(rank))))
    flat = _flat_numbers(b, coords, list(shape))
    if shape_of(flat) != ishape:  # (rank 1, or every coordinate but one broadcast)
        flat = b.op("broadcast_to", [flat], shape=tuple(ishape))
    numbers = (D.product(shape),)
    out = b.op(kind, [b.reshape(data, numbers), b.reshape(flat, (D.product(ishape),)),
                      b.reshape(updates, (D.product(ishape),))], axis=0)
    return [b.reshape(out, shape)]


def _coordinate_grid(b: Builder, shape: tuple):
    """An int64 tensor of shape (*shape, rank) holding every element's coordinates."""
    rank = len(shape)
    parts = []
    for j, d in enumerate(shape):
        along = b.reshape(b.op("arange", [], n=(d,), dtype=I64), tuple(d if i == j else 1 for i in range(rank)) + (1,))
        parts.append(b.op("broadcast_to", [along], shape=tuple(shape) + (1,)))
    return parts[0] if rank == 1 else b.op("concat", parts, axis=rank)


def non_zero(b: Builder, ins: list, attrs: dict, n_out: int) -> list:
    """`NonZero(x)`: the (rank, n) coordinates of the non-zero elements, in row-major order.

    >>> from exporters.onnx_import_ops import IMPORTERS
    >>> IMPORTERS["NonZero"] is non_zero
    True
    """
    (x,) = ins
    shape = shape_of(x)
    if not shape:
        raise UnsupportedOpError(f"{b.where()}: NonZero of a 0-d tensor is not supported")
    mask = x if dtype_of(x) == np.bool_ else b.op("not_equal", [x, np.zeros((), dtype_of(x))])
    picked = b.op("boolean_mask", [_coordinate_grid(b, shape), mask], size=(b.fresh_symbol(),))
    return [b.op("transpose", [picked], perm=(1, 0))]


def compress(b: Builder, ins: list, attrs: dict, n_out: int) -> list:
    """`Compress(x, condition, axis)`: the slices of `x` along `axis` where `condition` holds
    (x flattened when `axis` is absent); the condition must be as long as that axis.

    >>> from exporters.onnx_import_ops import IMPORTERS
    >>> IMPORTERS["Compress"] is compress
    True
    """
    x, cond = ins
    axis = attrs.get("axis")
    if axis is None:
        x = b.reshape(x, (D.product(shape_of(x)),))
        axis = 0
    rank = len(shape_of(x))
    axis = axis + rank if axis < 0 else axis
    if tuple(shape_of(cond)) != (shape_of(x)[axis],):
        raise UnsupportedOpError(f"{b.where()}: Compress needs a condition as long as axis {axis} "
                                 f"({shape_of(x)[axis]}); got shape {shape_of(cond)}")
    if dtype_of(cond) != np.bool_:
        cond = b.op("cast", [cond], dtype=np.dtype(np.bool_))
    perm = (axis,) + tuple(i for i in range(rank) if i != axis)
    front = x if axis == 0 else b.op("transpose", [x], perm=perm)
    picked = b.op("boolean_mask", [front, cond], size=(b.fresh_symbol(),))
    if axis == 0:
        return [picked]
    return [b.op("transpose", [picked], perm=tuple(int(i) for i in np.argsort(perm)))]


IMPORTERS = {
    "GatherND": gather_nd, "ScatterND": scatter_nd, "ScatterElements": scatter_elements,
    "Scatter": scatter_elements, "NonZero": non_zero, "Compress": compress,
}
