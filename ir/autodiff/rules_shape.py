"""VJP rules of the shape and data-movement ops.

Each rule is the adjoint data movement, built from existing ops so gradient graphs need no
new kernels or ONNX lowerings: a slice's adjoint is a `slice_update` into zeros, a gather's is
a scatter-add written as a one-hot `einsum` (duplicate indices accumulate), a boolean mask's is
a gather from the cotangent with a zero row prepended, padding's is a slice (constant mode) or
per-axis scatter-adds (reflect/edge/wrap).
"""

from __future__ import annotations

import numpy as np

from runtime import dims as D

from ..graph import Op, Value
from ..types import TensorType
from .rules_common import AutodiffError, Builder, is_float, register_rules, unbroadcast


def _reshape(b: Builder, op: Op, cts: list) -> list:
    return [b.reshape(cts[0], op.inputs[0].shape)]


def _transpose(b: Builder, op: Op, cts: list) -> list:
    perm = op.attrs["perm"]
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return [b.transpose(cts[0], inverse)]


def _broadcast_to(b: Builder, op: Op, cts: list) -> list:
    return [unbroadcast(b, cts[0], op.inputs[0].type)]


def _concat(b: Builder, op: Op, cts: list) -> list:
    axis = op.attrs["axis"]
    if len(op.inputs) == 1:
        return [cts[0]]
    parts = b.multi("split", cts[0], axis=axis, sizes=tuple(v.shape[axis] for v in op.inputs))
    return [p if is_float(v) else None for p, v in zip(parts, op.inputs)]


def _split(b: Builder, op: Op, cts: list) -> list:
    parts = [ct if ct is not None else b.zeros(v.type) for ct, v in zip(cts, op.outputs)]
    return [parts[0] if len(parts) == 1 else b.op("concat", *parts, axis=op.attrs["axis"])]


def _slice_attrs(op: Op) -> dict:
    return {k: op.attrs[k] for k in ("starts", "stops", "steps")}


def _slice(b: Builder, op: Op, cts: list) -> list:
    x = op.inputs[0]
    return [b.op("slice_update", b.zeros(x.type), cts[0], **_slice_attrs(op))]


def _slice_update(b: Builder, op: Op, cts: list) -> list:
    x, upd = op.inputs
    ct = cts[0]
    dx = b.op("slice_update", ct, b.const(0, ct.dtype), **_slice_attrs(op))
    dupd = unbroadcast(b, b.op("slice", ct, **_slice_attrs(op)), upd.type)
    return [dx, dupd]


def scatter_add(b: Builder, like: TensorType, idx: Value, ct: Value, axis: int) -> Value:
    """Zeros of type `like` plus `ct` added at `idx` along `axis` (the adjoint of a gather):
    one `index_add`, so repeated indices accumulate, in time and memory linear in `ct`."""
    return b.op("index_add", b.zeros(like), idx, ct, axis=axis)


def _gather(b: Builder, op: Op, cts: list) -> list:
    x, idx = op.inputs
    return [scatter_add(b, x.type, idx, cts[0], op.attrs["axis"]), None]


def _index_update(b: Builder, op: Op, cts: list) -> list:
    x, idx, upd = op.inputs
    ct = cts[0]
    axis = op.attrs["axis"]
    dx = b.op("index_update", ct, idx, b.const(0, ct.dtype), axis=axis)
    dupd = unbroadcast(b, b.op("gather", ct, idx, axis=axis), upd.type) if is_float(upd) else None
    return [dx, None, dupd]


def _index_add(b: Builder, op: Op, cts: list) -> list:
    x, idx, upd = op.inputs
    ct = cts[0]
    dupd = unbroadcast(b, b.op("gather", ct, idx, axis=op.attrs["axis"]), upd.type) if is_float(upd) else None
    return [ct, None, dupd]


def _boolean_mask(b: Builder, op: Op, cts: list) -> list:
    # the k-th selected element (k = 1, 2, ...) is row k of [0; ct]; unselected ones read row 0
    x, mask = op.inputs
    ct = cts[0]
    lead, rest = x.shape[:len(mask.shape)], x.shape[len(mask.shape):]
    flat = b.cast(b.reshape(mask, (D.product(lead),)), np.int64)
    rows = b.mul(b.op("cumsum", flat, axis=0), flat)
    padded = b.op("concat", b.zeros(TensorType(ct.dtype, (1,) + rest)), ct, axis=0)
    return [b.reshape(b.op("gather", padded, rows, axis=0), x.shape), None]


def _pad(b: Builder, op: Op, cts: list) -> list:
    x = op.inputs[0]
    ct = cts[0]
    rank = len(x.shape)
    pads = op.attrs["pads"]
    begin, end = pads[:rank], pads[rank:]
    if op.attrs["mode"] == "constant":
        starts = tuple(max(p, 0) for p in begin)
        stops = tuple(D.sub(d, max(p, 0)) for d, p in zip(ct.shape, end))
        ct = b.op("slice", ct, starts=starts, stops=stops, steps=(1,) * rank)
        if any(p < 0 for p in pads):  # negative pads cropped x: put zeros back
            back = tuple(max(-p, 0) for p in begin) + tuple(max(-p, 0) for p in end)
            ct = b.op("pad", ct, pads=back, mode="constant", value=0.0)
        return [ct]
    # reflect/edge/wrap: negative pads crop first, then each axis is a gather with a fixed index map
    mode = op.attrs["mode"]
    for axis in reversed(range(rank)):
        grow = (max(begin[axis], 0), max(end[axis], 0))
        if grow == (0, 0):
            continue
        n = D.sub(ct.shape[axis], grow[0] + grow[1])
        if not isinstance(n, int):
            raise AutodiffError(f"pad[mode={mode}]: no gradient along symbolic axis {axis} ({n}) of {x.type}")
        index_map = np.pad(np.arange(n, dtype=np.int64), grow, mode=mode)
        shape = ct.shape[:axis] + (n,) + ct.shape[axis + 1:]
        ct = scatter_add(b, TensorType(ct.dtype, shape), b.op("constant", value=index_map), ct, axis)
    if any(p < 0 for p in pads):
        back = tuple(max(-p, 0) for p in begin) + tuple(max(-p, 0) for p in end)
        ct = b.op("pad", ct, pads=back, mode="constant", value=0.0)
    return [ct]


def _tile(b: Builder, op: Op, cts: list) -> list:
    x = op.inputs[0]
    reps = op.attrs["reps"]
    split_shape = tuple(d for r, n in zip(reps, x.shape) for d in (r, n))
    summed = b.reduce_sum(b.reshape(cts[0], split_shape), [2 * i for i in range(len(reps))])
    return [b.reshape(summed, x.shape)]


def _repeat(b: Builder, op: Op, cts: list) -> list:
    x = op.inputs[0]
    axis, r = op.attrs["axis"], op.attrs["repeats"]
    split_shape = x.shape[:axis + 1] + (r,) + x.shape[axis + 1:]
    return [b.reduce_sum(b.reshape(cts[0], split_shape), [axis + 1])]


def _space_depth_layout(op: Op) -> tuple[tuple, tuple]:
    """(shape after the first reshape, perm) of ONNX's DepthToSpace/SpaceToDepth definitions."""
    n, c, h, w = op.inputs[0].shape
    bs = op.attrs["blocksize"]
    if op.kind == "space_to_depth":
        return (n, c, D.floordiv(h, bs), bs, D.floordiv(w, bs), bs), (0, 3, 5, 1, 2, 4)
    c2 = D.floordiv(c, bs * bs)
    if op.attrs.get("mode", "DCR") == "CRD":
        return (n, c2, bs, bs, h, w), (0, 1, 4, 2, 5, 3)
    return (n, bs, bs, c2, h, w), (0, 3, 4, 1, 5, 2)


def _space_depth(b: Builder, op: Op, cts: list) -> list:
    # forward: reshape(x, s1) -> transpose(perm) -> reshape(out); backward runs it in reverse
    s1, perm = _space_depth_layout(op)
    moved = tuple(s1[p] for p in perm)
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    ct = b.transpose(b.reshape(cts[0], moved), inverse)
    return [b.reshape(ct, op.inputs[0].shape)]


RULES = {
    "reshape": _reshape, "transpose": _transpose, "broadcast_to": _broadcast_to, "concat": _concat,
    "split": _split, "slice": _slice, "slice_update": _slice_update, "gather": _gather,
    "index_update": _index_update, "index_add": _index_add, "boolean_mask": _boolean_mask, "pad": _pad, "tile": _tile,
    "repeat": _repeat, "depth_to_space": _space_depth, "space_to_depth": _space_depth,
}
register_rules(RULES)
