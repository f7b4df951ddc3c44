"""ONNX lowerings of the shape and data-movement ops.

Why flat indices for updates: ONNX has no "assign into a slice" op, so `slice_update` and
`index_update` number the elements of `x` (Range reshaped to x's shape), pick the numbers the
slice or index selects with the same Slice/Gather the read path uses, and write with one
ScatterElements on the flattened tensor. That works for any rank, step and symbolic shape.
Shape attributes with symbolic dims are computed from `Shape` at run time (`Emitter.shape`).
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from runtime import dims as D

from .errors import ExportError
from .onnx_export import Emitter, onnx_dtype
from .onnx_lowering_reduce import reduce_node

INT64_MIN = -(2**63)


def reshape(cx, op, ins, outs):
    shape = op.attrs["shape"]
    zero = any(d == 0 for d in shape)
    if zero and cx.opset < 14:  # Reshape would copy input dims for the 0s; the result is empty anyway
        fill = numpy_helper.from_array(np.zeros(1, cx.dtypes[ins[0]]))
        cx.node("ConstantOfShape", [cx.shape(shape)], outs[0], dtype=cx.dtypes[ins[0]], value=fill)
        return
    if not zero:
        # a symbolic dim equal to the input's dim on the same axis is Reshape's 0 ("copy"), so
        # `x.reshape(x.shape[0], -1)` needs no Shape/Slice/Concat at run time; a copied dim may
        # be 0 at run time and still be right
        in_shape = op.inputs[0].shape
        copied = tuple(0 if not isinstance(d, int) and i < len(in_shape) and d == in_shape[i] else d
                       for i, d in enumerate(shape))
        if all(isinstance(d, int) for d in copied):
            cx.node("Reshape", [ins[0], cx.ints(copied)], outs[0])
            return
    reshape_to(cx, ins[0], shape, outs[0])


def reshape_to(cx: Emitter, x: str, dims, out: str | None = None, shape: str | None = None) -> str:
    """`x` reshaped to `dims` (ints and symbols), right when a dim is 0 at run time.

    Why not a plain Reshape: ONNX reads a 0 in Reshape's shape as "copy the input's dim" unless
    allowzero=1 (opset 14), and a symbolic dim (a batch) may well be 0 at run time. `shape`, when
    given, is a tensor already holding `dims` at run time. Before opset 14 a single symbolic dim
    becomes -1 (inferred, 0 included, when all other dims are nonzero constants); otherwise the
    input is padded to the shape with its 0s raised to 1 and sliced back (`_reshape_padded`).

    >>> cx = Emitter(18, None); cx.dtypes["x"] = np.dtype(np.float32); cx.note_symbols("x", ("n", 3))
    >>> _ = reshape_to(cx, "x", (3, "n"))  # n may be 0
    >>> [n.op_type for n in cx.nodes], cx.nodes[-1].attribute[0].name
    (['Shape', 'Slice', 'Concat', 'Reshape'], 'allowzero')
    """
    dims = tuple(D.parse_dim(d) for d in dims)
    if all(isinstance(d, int) and d != 0 for d in dims):
        return cx.node("Reshape", [x, cx.ints(dims)], out)
    if cx.opset >= 14:
        return cx.node("Reshape", [x, shape or cx.shape(dims)], out, allowzero=1)
    if all(isinstance(d, int) for d in dims):  # a static 0: the result is empty
        fill = numpy_helper.from_array(np.zeros(1, cx.dtypes[x]))
        return cx.node("ConstantOfShape", [cx.ints(dims)], out, dtype=cx.dtypes[x], value=fill)
    symbolic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    if len(symbolic) == 1 and 0 not in dims:
        return cx.node("Reshape", [x, cx.ints([-1 if i in symbolic else d for i, d in enumerate(dims)])], out)
    return _reshape_padded(cx, x, shape or cx.shape(dims), len(dims), out)


def _reshape_padded(cx: Emitter, x: str, shape: str, rank: int, out: str | None) -> str:
    """Reshape without 0s in the shape (opset 13): reshape to max(shape, 1), after padding `x`
    with zeros to that many elements (none unless x is empty), then slice to `shape`."""
    raised = cx.node("Max", [shape, cx.ints([1])])
    total = reduce_node(cx, "ReduceProd", raised, [0], True)
    flat = cx.node("Reshape", [x, cx.ints([-1])])
    missing = cx.node("Sub", [total, cx.node("Shape", [flat], dtype=np.int64)])
    filler = cx.node("Expand", [cx.const(np.zeros(1, cx.dtypes[x])), missing])
    full_ = cx.node("Reshape", [cx.node("Concat", [flat, filler], axis=0), raised])
    return cx.node("Slice", [full_, cx.ints([0] * rank), shape, cx.ints(range(rank))], out)


def transpose(cx, op, ins, outs):
    cx.node("Transpose", ins, outs[0], perm=list(op.attrs["perm"]))


def broadcast_to(cx, op, ins, outs):
    cx.node("Expand", [ins[0], cx.shape(op.attrs["shape"])], outs[0])


def concat(cx, op, ins, outs):
    cx.node("Concat", ins, outs[0], axis=op.attrs["axis"])


def split(cx, op, ins, outs):
    cx.node("Split", [ins[0], cx.shape(op.attrs["sizes"])], outs, axis=op.attrs["axis"])


def emit_slice(cx: Emitter, x: str, shape, starts, stops, steps, out: str | None = None) -> str:
    """`x[start:stop:step, ...]` for IR-normalized triples (a stop of -1 with a negative step
    means "through index 0"); axes that keep everything are left out."""
    axes, b, e, s = [], [], [], []
    for i, (a, z, st) in enumerate(zip(starts, stops, steps)):
        if a == 0 and z == shape[i] and st == 1:
            continue
        axes.append(i)
        b.append(a)
        e.append(INT64_MIN if (st < 0 and z == -1) else z)
        s.append(st)
    if not axes:
        return cx.node("Identity", [x], out)
    return cx.node("Slice", [x, cx.shape(b), cx.shape(e), cx.ints(axes), cx.ints(s)], out)


def slice_(cx, op, ins, outs):
    a = op.attrs
    emit_slice(cx, ins[0], op.inputs[0].shape, a["starts"], a["stops"], a["steps"], outs[0])


def _element_numbers(cx: Emitter, x: str, dims) -> tuple[str, str]:
    """(the tensor of flat element numbers shaped like x, x's shape); `dims` is x's IR shape."""
    shp = cx.node("Shape", [x], dtype=np.int64)
    n = reduce_node(cx, "ReduceProd", shp, [0], False)
    numbers = cx.node("Range", [cx.const(np.array(0, np.int64)), n, cx.const(np.array(1, np.int64))])
    return _reshape_like(cx, numbers, dims, shp), shp


def _reshape_like(cx: Emitter, x: str, dims, shp: str, out: str | None = None) -> str:
    """`x` reshaped to the shape `shp` (a tensor) that holds the IR shape `dims` at run time."""
    if all(isinstance(d, int) and d != 0 for d in dims):
        return cx.node("Reshape", [x, shp], out)
    return reshape_to(cx, x, dims, out, shape=shp)


def _scatter_flat(cx: Emitter, x: str, dims, shp: str, picked: str, update: str, out: str,
                  **reduction: str) -> None:
    flat = cx.ints([-1])  # (-1 alone is right for an empty tensor too)
    upd = cx.node("Expand", [update, cx.node("Shape", [picked], dtype=np.int64)])
    scattered = cx.node("ScatterElements", [cx.node("Reshape", [x, flat]), cx.node("Reshape", [picked, flat]),
                                            cx.node("Reshape", [upd, flat])], axis=0, **reduction)
    _reshape_like(cx, scattered, dims, shp, out)


def slice_update(cx, op, ins, outs):
    x, update = ins
    a = op.attrs
    dims = op.inputs[0].shape
    numbers, shp = _element_numbers(cx, x, dims)
    picked = emit_slice(cx, numbers, dims, a["starts"], a["stops"], a["steps"])
    _scatter_flat(cx, x, dims, shp, picked, update, outs[0])


def _index(cx: Emitter, idx: str) -> str:
    return idx if cx.dtypes[idx] in (np.dtype(np.int64), np.dtype(np.int32)) else cx.cast(idx, np.int64)


def gather(cx, op, ins, outs):
    cx.node("Gather", [ins[0], _index(cx, ins[1])], outs[0], axis=op.attrs["axis"])


def index_update(cx, op, ins, outs, **reduction: str):
    x, idx, update = ins
    dims = op.inputs[0].shape
    numbers, shp = _element_numbers(cx, x, dims)
    picked = cx.node("Gather", [numbers, _index(cx, idx)], axis=op.attrs["axis"])
    _scatter_flat(cx, x, dims, shp, picked, update, outs[0], **reduction)


def index_add(cx, op, ins, outs):
    if cx.opset < 16:
        at = f" (at {op.loc})" if op.loc else ""
        raise ExportError(f"index_add{at} (an accumulating scatter, e.g. the gradient of an indexing read) needs "
                          f"ScatterElements with reduction='add', from opset 16; got opset {cx.opset}")
    index_update(cx, op, ins, outs, reduction="add")


def boolean_mask(cx, op, ins, outs):
    x, mask = ins
    where = cx.node("Transpose", [cx.node("NonZero", [mask], dtype=np.int64)], perm=[1, 0])
    cx.node("GatherND", [x, where], outs[0])


def pad(cx, op, ins, outs):
    (x,) = ins
    pads, mode = list(op.attrs["pads"]), op.attrs["mode"]
    if mode == "wrap" and cx.opset < 19:
        _wrap_by_concat(cx, op, x, pads, outs[0])
        return
    inputs = [x, cx.ints(pads)]
    if mode == "constant":
        inputs.append(cx.const(np.array(op.attrs["value"]).astype(cx.dtypes[x])))
    cx.node("Pad", inputs, outs[0], key=f"Pad.{mode}", mode=mode)


def _wrap_by_concat(cx, op, x, pads, out):
    shape = list(op.inputs[0].shape)
    rank = len(shape)
    for i in range(rank):
        b, e = pads[i], pads[i + rank]
        if not (b or e):
            continue
        if not isinstance(shape[i], int) or b > shape[i] or e > shape[i]:
            raise ExportError(f"pad mode 'wrap' before opset 19 needs static pads no larger than the dim; "
                              f"got pads {pads} for shape {tuple(shape)}")
        parts = []
        if b:
            parts.append(cx.node("Slice", [x, cx.ints([shape[i] - b]), cx.ints([shape[i]]), cx.ints([i])]))
        parts.append(x)
        if e:
            parts.append(cx.node("Slice", [x, cx.ints([0]), cx.ints([e]), cx.ints([i])]))
        x = cx.node("Concat", parts, axis=i)
        shape[i] += b + e
    cx.node("Identity", [x], out)


def tile(cx, op, ins, outs):
    cx.node("Tile", [ins[0], cx.ints(op.attrs["reps"])], outs[0])


def repeat(cx, op, ins, outs):
    shape, axis, r = op.inputs[0].shape, op.attrs["axis"], op.attrs["repeats"]
    up = cx.node("Unsqueeze", [ins[0], cx.ints([axis + 1])])
    wide = cx.node("Expand", [up, cx.shape(shape[:axis + 1] + (r,) + shape[axis + 1:])])
    reshape_to(cx, wide, op.outputs[0].shape, outs[0])


def shape_dim(cx, op, ins, outs):
    axis = op.attrs["axis"]
    shp = cx.node("Shape", ins, dtype=np.int64)
    one = cx.node("Slice", [shp, cx.ints([axis]), cx.ints([axis + 1])])
    cx.node("Reshape", [one, cx.const(np.zeros(0, np.int64))], outs[0])


def constant(cx, op, ins, outs):
    return [cx.const(op.attrs["value"])]


def full(cx, op, ins, outs):
    value = np.asarray(op.attrs["value"])
    cx.node("Expand", [cx.const(value), cx.shape(op.attrs["shape"])], outs[0])


def _scalar_dim(cx: Emitter, d) -> str:
    if isinstance(D.parse_dim(d), int):
        return cx.const(np.array(D.parse_dim(d), np.int64))
    return cx.node("Reshape", [cx.dim(d), cx.const(np.zeros(0, np.int64))])


def arange(cx, op, ins, outs):
    (n,) = op.attrs["n"]
    r = cx.node("Range", [cx.const(np.array(0, np.int64)), _scalar_dim(cx, n), cx.const(np.array(1, np.int64))])
    cx.cast(r, op.attrs["dtype"], outs[0])


def one_hot(cx, op, ins, outs):
    depth, dt = op.attrs["depth"], op.attrs["dtype"]
    rank_out = op.outputs[0].type.rank
    axis = op.attrs["axis"] % rank_out
    idx = cx.cast(ins[0], np.int64)
    zero = cx.const(np.array(0, np.int64))
    idx = cx.node("Where", [cx.node("Less", [idx, zero], dtype=np.bool_),
                            cx.node("Add", [idx, cx.const(np.array(depth, np.int64))]), idx], key_input=1)
    classes = cx.const(np.arange(depth, dtype=np.int64).reshape((depth,) + (1,) * (rank_out - 1 - axis)))
    hot = cx.node("Equal", [cx.node("Unsqueeze", [idx, cx.ints([axis])]), classes], dtype=np.bool_)
    cx.node("Cast", [hot], outs[0], dtype=dt, to=onnx_dtype(dt))


def depth_to_space(cx, op, ins, outs):
    cx.node("DepthToSpace", ins, outs[0], blocksize=op.attrs["blocksize"], mode=op.attrs["mode"].upper())


def space_to_depth(cx, op, ins, outs):
    cx.node("SpaceToDepth", ins, outs[0], blocksize=op.attrs["blocksize"])


LOWERINGS = {
    "reshape": reshape, "transpose": transpose, "broadcast_to": broadcast_to, "concat": concat, "split": split,
    "slice": slice_, "slice_update": slice_update, "gather": gather, "index_update": index_update,
    "index_add": index_add,
    "boolean_mask": boolean_mask, "pad": pad, "tile": tile, "repeat": repeat, "shape_dim": shape_dim,
    "constant": constant, "full": full, "arange": arange, "one_hot": one_hot, "depth_to_space": depth_to_space,
    "space_to_depth": space_to_depth,
}
