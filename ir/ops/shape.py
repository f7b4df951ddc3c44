"""Shape and data-movement ops: reshape, transpose, broadcast, concat/split, slicing, gathers,
boolean masks, functional updates (what `__setitem__` lowers to), pad/tile/repeat, and creation.

Shape attributes are `dims` (ints or symbolic dims), so `x.reshape(x.shape[0], -1)` on a
symbolic batch stays `reshape[shape=(batch, 784)]` and runs at any batch.
"""

from __future__ import annotations

import numpy as np

from runtime import dims as D

from ..errors import TypeRuleError
from ..registry import register
from ..types import TensorType, as_dtype
from .rules import broadcast_shapes, norm_axis, require_kind, same_dtype


def _reshape(ts, attrs, regions):
    shape = attrs["shape"]
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise TypeRuleError(f"reshape target {shape} has a negative dim (resolve -1 when tracing)")
    before, after = D.product(ts[0].shape), D.product(shape)
    if isinstance(before, int) and isinstance(after, int) and before != after:
        raise TypeRuleError(f"cannot reshape {ts[0]} ({before} elements) to {shape} ({after} elements)")
    return [TensorType(ts[0].dtype, shape)]


def _transpose(ts, attrs, regions):
    perm = attrs["perm"]
    if sorted(perm) != list(range(ts[0].rank)):
        raise TypeRuleError(f"perm {perm} is not a permutation of rank {ts[0].rank}")
    return [TensorType(ts[0].dtype, tuple(ts[0].shape[p] for p in perm))]


def _broadcast_to(ts, attrs, regions):
    shape = attrs["shape"]
    if broadcast_shapes(ts[0].shape, shape) != tuple(D.parse_dim(d) for d in shape):
        raise TypeRuleError(f"cannot broadcast {ts[0]} to {shape}")
    return [TensorType(ts[0].dtype, shape)]


def _concat(ts, attrs, regions):
    dt = same_dtype(ts)
    rank = ts[0].rank
    axis = attrs["axis"]
    if not 0 <= axis < rank or any(t.rank != rank for t in ts):
        raise TypeRuleError(f"concat axis {axis} with ranks {[t.rank for t in ts]}")
    for t in ts[1:]:
        for i, (a, b) in enumerate(zip(ts[0].shape, t.shape)):
            if i != axis and a != b:
                raise TypeRuleError(f"concat: dim {i} differs: {ts[0]} vs {t}")
    size = 0
    for t in ts:
        size = D.add(size, t.shape[axis])
    return [TensorType(dt, ts[0].shape[:axis] + (size,) + ts[0].shape[axis + 1:])]


def _split(ts, attrs, regions):
    t, axis, sizes = ts[0], attrs["axis"], attrs["sizes"]
    norm_axis(axis, t.rank)
    if D.sub(t.shape[axis], _sum(sizes)) != 0:
        raise TypeRuleError(f"split sizes {sizes} do not add up to dim {t.shape[axis]} of {t}")
    return [TensorType(t.dtype, t.shape[:axis] + (s,) + t.shape[axis + 1:]) for s in sizes]


def _sum(ds):
    total = 0
    for d in ds:
        total = D.add(total, d)
    return total


def slice_length(start, stop, step: int):
    """Number of elements of `range(start, stop, step)` over (symbolic) dims; 0 when empty."""
    if step > 0:
        n = D.floordiv(D.add(D.sub(stop, start), step - 1), step)
    else:
        n = D.floordiv(D.add(D.sub(start, stop), -step - 1), -step)
    return max(n, 0) if isinstance(n, int) else n


def _slice_shape(t: TensorType, attrs) -> tuple:
    starts, stops, steps = attrs["starts"], attrs["stops"], attrs["steps"]
    if not len(starts) == len(stops) == len(steps) == t.rank:
        raise TypeRuleError(f"slice needs one start/stop/step per axis of {t}")
    if 0 in steps:
        raise TypeRuleError("slice step 0")
    return tuple(slice_length(a, b, s) for a, b, s in zip(starts, stops, steps))


def _slice(ts, attrs, regions):
    return [TensorType(ts[0].dtype, _slice_shape(ts[0], attrs))]


def _slice_update(ts, attrs, regions):
    x, upd = ts
    same_dtype(ts)
    target = _slice_shape(x, attrs)
    if broadcast_shapes(upd.shape, target) != target:
        raise TypeRuleError(f"update {upd} does not broadcast to the slice shape {target}")
    return [x]


def _gather(ts, attrs, regions):
    x, idx = ts
    require_kind(idx, "iu", "indices")
    axis = attrs["axis"]
    if not 0 <= axis < x.rank:
        raise TypeRuleError(f"gather axis {axis} out of range for {x}")
    return [TensorType(x.dtype, x.shape[:axis] + idx.shape + x.shape[axis + 1:])]


def _index_update(ts, attrs, regions):
    x, idx, upd = ts
    require_kind(idx, "iu", "indices")
    if upd.dtype != x.dtype:
        raise TypeRuleError(f"update dtype {upd.dtype} differs from {x.dtype}")
    target = _gather([x, idx], attrs, regions)[0].shape
    if broadcast_shapes(upd.shape, target) != target:
        raise TypeRuleError(f"update {upd} does not broadcast to {target}")
    return [x]


def _index_add(ts, attrs, regions):
    require_kind(ts[0], "fiu", "x")
    return _index_update(ts, attrs, regions)


def _boolean_mask(ts, attrs, regions):
    x, mask = ts
    require_kind(mask, "b", "mask")
    if mask.shape != x.shape[:mask.rank]:
        raise TypeRuleError(f"mask {mask} must match the leading dims of {x}")
    (size,) = attrs["size"]
    return [TensorType(x.dtype, (size,) + x.shape[mask.rank:])]


def _pad(ts, attrs, regions):
    t, pads = ts[0], attrs["pads"]
    if len(pads) != 2 * t.rank:
        raise TypeRuleError(f"pad needs {2 * t.rank} pads for {t}, got {len(pads)}")
    if attrs["mode"] not in ("constant", "reflect", "edge", "wrap"):
        raise TypeRuleError(f"unknown pad mode {attrs['mode']!r}")
    return [TensorType(t.dtype, tuple(D.add(d, pads[i] + pads[i + t.rank]) for i, d in enumerate(t.shape)))]


def _tile(ts, attrs, regions):
    t, reps = ts[0], attrs["reps"]
    if len(reps) != t.rank or any(r < 0 for r in reps):
        raise TypeRuleError(f"tile needs one non-negative rep per axis of {t}, got {reps}")
    return [TensorType(t.dtype, tuple(D.mul(d, r) for d, r in zip(t.shape, reps)))]


def _repeat(ts, attrs, regions):
    t, axis, r = ts[0], attrs["axis"], attrs["repeats"]
    if not 0 <= axis < t.rank or r < 0:
        raise TypeRuleError(f"repeat axis {axis} / repeats {r} invalid for {t}")
    return [TensorType(t.dtype, t.shape[:axis] + (D.mul(t.shape[axis], r),) + t.shape[axis + 1:])]


def _shape_dim(ts, attrs, regions):
    if not 0 <= attrs["axis"] < ts[0].rank:
        raise TypeRuleError(f"axis {attrs['axis']} out of range for {ts[0]}")
    return [TensorType(np.int64, ())]


def _constant(ts, attrs, regions):
    v = attrs["value"]
    return [TensorType(as_dtype(v.dtype), v.shape)]


def _full(ts, attrs, regions):
    v = attrs["value"]
    if v.shape != ():
        raise TypeRuleError(f"full value must be 0-d, got shape {v.shape}")
    return [TensorType(as_dtype(v.dtype), attrs["shape"])]


def _arange(ts, attrs, regions):
    if len(attrs["n"]) != 1:
        raise TypeRuleError("arange takes n=(length,)")
    return [TensorType(attrs["dtype"], attrs["n"])]


def _one_hot(ts, attrs, regions):
    t = ts[0]
    require_kind(t, "iu", "indices")
    axis = attrs["axis"]
    axis = norm_axis(axis, t.rank + 1)
    return [TensorType(attrs["dtype"], t.shape[:axis] + (attrs["depth"],) + t.shape[axis:])]


def _depth_to_space(ts, attrs, regions):
    t, b = ts[0], attrs["blocksize"]
    if t.rank != 4:
        raise TypeRuleError(f"depth_to_space needs rank 4, got {t}")
    n, c, h, w = t.shape
    return [TensorType(t.dtype, (n, D.floordiv(c, b * b), D.mul(h, b), D.mul(w, b)))]


def _space_to_depth(ts, attrs, regions):
    t, b = ts[0], attrs["blocksize"]
    if t.rank != 4:
        raise TypeRuleError(f"space_to_depth needs rank 4, got {t}")
    n, c, h, w = t.shape
    return [TensorType(t.dtype, (n, D.mul(c, b * b), D.floordiv(h, b), D.floordiv(w, b)))]


SLICE_ATTRS = {"starts": "dims", "stops": "dims", "steps": "ints"}

register("reshape", _reshape, attrs={"shape": "dims"})
register("transpose", _transpose, attrs={"perm": "ints"})
register("broadcast_to", _broadcast_to, attrs={"shape": "dims"})
register("concat", _concat, arity=(1, None), attrs={"axis": "int"})
register("split", _split, attrs={"axis": "int", "sizes": "dims"})
register("slice", _slice, attrs=SLICE_ATTRS)
register("slice_update", _slice_update, arity=(2, 2), attrs=SLICE_ATTRS)
register("gather", _gather, arity=(2, 2), attrs={"axis": "int"})
register("index_update", _index_update, arity=(3, 3), attrs={"axis": "int"})
register("index_add", _index_add, arity=(3, 3), attrs={"axis": "int"})
register("boolean_mask", _boolean_mask, arity=(2, 2), attrs={"size": "dims"})
register("pad", _pad, attrs={"pads": "ints", "mode": "str", "value": "float"})
register("tile", _tile, attrs={"reps": "ints"})
register("repeat", _repeat, attrs={"repeats": "int", "axis": "int"})
register("shape_dim", _shape_dim, attrs={"axis": "int"}, differentiable=False)
register("constant", _constant, arity=(0, 0), attrs={"value": "tensor"}, differentiable=False)
register("full", _full, arity=(0, 0), attrs={"shape": "dims", "value": "tensor"}, differentiable=False)
register("arange", _arange, arity=(0, 0), attrs={"n": "dims", "dtype": "dtype"}, differentiable=False)
register("one_hot", _one_hot, attrs={"depth": "int", "axis": "int", "dtype": "dtype"}, differentiable=False)
register("depth_to_space", _depth_to_space, attrs={"blocksize": "int", "mode": "str"})
register("space_to_depth", _space_to_depth, attrs={"blocksize": "int"})
