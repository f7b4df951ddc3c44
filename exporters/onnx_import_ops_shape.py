"""ONNX → IR translations of the shape and data-movement ops, with shape arithmetic folded.

Why SymInts flow through here: `Shape` of a symbolic-batch tensor yields a `SymInts`, and
`Gather`/`Slice`/`Concat`/`Unsqueeze`/`Squeeze` on it stay symbolic, so `Reshape`, `Expand`,
`ConstantOfShape` and `Range` receive dims and become IR ops with dims attributes. Version
differences (Reshape/Split/Slice/Squeeze/Unsqueeze/Pad arguments as attributes before opsets
5/13/10/13/13/11) are read in the entry of each op.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from runtime import dims as D

from .errors import UnsupportedOpError
from .onnx_import import SymInts, dtype_of, shape_of, static
from .onnx_import_ops import _sym_dims


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _ints(b, h, what: str) -> list:
    """A constant (or symbolic-dims) int list from an input, or UnsupportedOpError."""
    got = _sym_dims(h)
    if got is None:
        raise UnsupportedOpError(f"{b.where()}: {what} must be computable at import time (constant or "
                                 f"derived from shapes), got a tensor computed from data")
    return got[0]


def _arg_or_input(b, ins, attrs, name, index, since):
    if b.opset >= since:
        return _ints(b, ins[index], name) if len(ins) > index and ins[index] is not None else None
    v = attrs.get(name)
    return None if v is None else list(v)


def reshape(b, ins, attrs, n_out):
    x = ins[0]
    target = _arg_or_input(b, ins, attrs, "shape", 1, 5)
    in_shape = shape_of(x)
    allow_zero = attrs.get("allowzero", 0)
    dims = [in_shape[i] if (d == 0 and not allow_zero) else d for i, d in enumerate(target)]
    if -1 in dims:
        known = D.product([d for d in dims if d != -1])
        dims[dims.index(-1)] = D.floordiv(D.product(in_shape), known)
    return [b.op("reshape", [x], shape=tuple(dims))]


def flatten(b, ins, attrs, n_out):
    x = ins[0]
    shape = shape_of(x)
    axis = _norm(attrs.get("axis", 1), len(shape))
    return [b.op("reshape", [x], shape=(D.product(shape[:axis]), D.product(shape[axis:])))]


def transpose(b, ins, attrs, n_out):
    rank = len(shape_of(ins[0]))
    perm = tuple(attrs.get("perm", range(rank - 1, -1, -1)))
    return [b.op("transpose", ins[:1], perm=perm)]


def concat(b, ins, attrs, n_out):
    parts = [h for h in ins if h is not None]
    if any(isinstance(h, SymInts) for h in parts) and all(_sym_dims(h) is not None for h in parts):
        return [SymInts([d for h in parts for d in _sym_dims(h)[0]])]
    axis = _norm(attrs.get("axis", 1 if b.opset < 4 else 0), len(shape_of(parts[0])))
    return [b.op("concat", parts, axis=axis)]


def split(b, ins, attrs, n_out):
    x = ins[0]
    shape = shape_of(x)
    axis = _norm(attrs.get("axis", 0), len(shape))
    sizes = _arg_or_input(b, ins, attrs, "split", 1, 13)
    if sizes is None:
        n = attrs.get("num_outputs", n_out)
        total = shape[axis]
        if not isinstance(total, int):
            raise UnsupportedOpError(f"{b.where()}: equal Split of a symbolic dim {total!r}")
        chunk = -(-total // n)
        sizes = [min(chunk, total - i * chunk) for i in range(n)]
    out = b.op("split", [x], axis=axis, sizes=tuple(sizes))
    return list(out) if isinstance(out, tuple) else [out]


def slice_(b, ins, attrs, n_out):
    x = ins[0]
    shape = shape_of(x)
    rank = len(shape)
    if b.opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(b, ins[1], "Slice starts"), _ints(b, ins[2], "Slice ends")
        axes = _ints(b, ins[3], "Slice axes") if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = _ints(b, ins[4], "Slice steps") if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    if isinstance(x, SymInts):  # shape arithmetic: slice the dims themselves
        (s0, e0, k0), big = (starts[0], ends[0], steps[0]), 2**62
        return [SymInts(list(x.dims)[slice(s0 if abs(s0) < big else None, e0 if abs(e0) < big else None, k0)])]
    st, sp, se = [0] * rank, list(shape), [1] * rank
    for a, s, e, k in zip(axes, starts, ends, steps):
        a = _norm(a, rank)
        st[a], sp[a], se[a] = _clamp(b, s, e, k, shape[a])
    return [b.op("slice", [x], starts=tuple(st), stops=tuple(sp), steps=tuple(se))]


def _clamp(b, start, end, step, dim):
    """One ONNX slice against a (maybe symbolic) dim as the IR's positions (never counted from the
    end; a negative step's stop of -1 is before index 0; an empty slice is (0, 0)).

    A static dim follows ONNX's clamping, which differs from Python's: negative values count from
    the end once, then a positive step clamps both to [0, dim], a negative step its start to
    [0, dim-1] (so starts=-4 on 3 elements still takes index 0) and its end to [-1, dim-1].
    """
    if isinstance(dim, int):
        start, end = (v + dim if v < 0 else v for v in (start, end))
        if step > 0:
            lo, hi = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            lo, hi = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        return (lo, hi, step) if len(range(lo, hi, step)) else (0, 0, step)
    if step != 1:
        raise UnsupportedOpError(f"{b.where()}: Slice with step {step} on symbolic dim {dim!r}")
    # symbolic bounds (shape arithmetic folded to dims, e.g. `n-1` from x[-1:]) are already normalized
    if isinstance(start, str):
        lo = start
    else:
        lo = start if 0 <= start < 2**62 else (D.add(dim, start) if -(2**62) < start < 0 else 0)
    if isinstance(end, str):
        hi = end
    else:
        hi = dim if end >= 2**62 else (D.add(dim, end) if end < 0 else end)
    return lo, hi, step


def _axes(b, ins, attrs, since):
    axes = _arg_or_input(b, ins, attrs, "axes", 1, since)
    return axes


def squeeze(b, ins, attrs, n_out):
    x = ins[0]
    shape = shape_of(x)
    axes = _axes(b, ins, attrs, 13)
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else [_norm(a, len(shape)) for a in axes]
    if isinstance(x, SymInts):
        return [SymInts(x.dims, scalar=True)]
    return [b.op("reshape", [x], shape=tuple(d for i, d in enumerate(shape) if i not in axes))]


def unsqueeze(b, ins, attrs, n_out):
    x = ins[0]
    shape = list(shape_of(x))
    axes = _axes(b, ins, attrs, 13)
    rank = len(shape) + len(axes)
    if isinstance(x, SymInts) and x.scalar:
        return [SymInts(x.dims)]
    for a in sorted(_norm(a, rank) for a in axes):
        shape.insert(a, 1)
    return [b.op("reshape", [x], shape=tuple(shape))]


def tile(b, ins, attrs, n_out):
    return [b.op("tile", ins[:1], reps=tuple(int(r) for r in _ints(b, ins[1], "Tile repeats")))]


def expand(b, ins, attrs, n_out):
    x = ins[0]
    target = _ints(b, ins[1], "Expand shape")
    shape = shape_of(x)
    rank = max(len(shape), len(target))
    padded = [1] * (rank - len(shape)) + list(shape)
    tpad = [1] * (rank - len(target)) + list(target)
    out = tuple(t if p == 1 else p for p, t in zip(padded, tpad))
    if tuple(padded) != tuple(shape):
        x = b.op("reshape", [x], shape=tuple(padded))
    return [b.op("broadcast_to", [x], shape=out)]


def gather(b, ins, attrs, n_out):
    x, idx = ins
    rank = len(shape_of(x))
    axis = _norm(attrs.get("axis", 0), rank)
    sym = _sym_dims(x) if isinstance(x, SymInts) else None
    i = static(idx)
    if sym is not None and i is not None:
        dims = sym[0]
        picked = [dims[int(k)] for k in i.reshape(-1)]
        return [SymInts(picked, scalar=i.ndim == 0)]
    return [b.op("gather", [x, idx], axis=axis)]


def shape(b, ins, attrs, n_out):
    dims = list(shape_of(ins[0]))
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    dims = dims[slice(start, end)]
    if all(isinstance(d, int) for d in dims):
        return [np.asarray(dims, np.int64)]
    return [SymInts(dims)]


def size(b, ins, attrs, n_out):
    n = D.product(shape_of(ins[0]))
    return [np.asarray(n, np.int64) if isinstance(n, int) else SymInts([n], scalar=True)]


def constant(b, ins, attrs, n_out):
    if "value" in attrs:
        v = attrs["value"]
        return [(v if isinstance(v, np.ndarray) else numpy_helper.to_array(v)).copy(order="C")]
    for key, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                    ("value_ints", np.int64)):
        if key in attrs:
            return [np.asarray(attrs[key], dt)]
    raise UnsupportedOpError(f"{b.where()}: Constant with attributes {sorted(attrs)} is not supported")


def constant_of_shape(b, ins, attrs, n_out):
    dims = _ints(b, ins[0], "ConstantOfShape shape")
    value = attrs.get("value")
    value = np.zeros(1, np.float32) if value is None else numpy_helper.to_array(value)
    return [b.op("full", [], shape=tuple(dims), value=np.asarray(value.reshape(-1)[0]))]


def range_(b, ins, attrs, n_out):
    start, limit, delta = ins
    s, l_, d = static(start), static(limit), static(delta)
    if s is not None and l_ is not None and d is not None:
        return [np.arange(s, l_, d, dtype=s.dtype)]
    if s is not None and d is not None and int(s) == 0 and int(d) == 1 and _sym_dims(limit) is not None:
        n = _sym_dims(limit)[0][0]
        return [b.op("arange", [], n=(n,), dtype=dtype_of(start))]
    raise UnsupportedOpError(f"{b.where()}: Range needs constant start/delta (0, 1) and a shape-derived limit")


def pad(b, ins, attrs, n_out):
    x = ins[0]
    rank = len(shape_of(x))
    mode = attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if b.opset < 11:
        pads = list(attrs.get("pads", attrs.get("paddings", [])))
        value = float(attrs.get("value", 0.0))
    else:
        pads = _ints(b, ins[1], "Pad pads")
        cv = static(ins[2]) if len(ins) > 2 and ins[2] is not None else None
        value = float(cv.reshape(-1)[0]) if cv is not None and cv.size else 0.0
        if len(ins) > 3 and ins[3] is not None:
            axes = [_norm(a, rank) for a in _ints(b, ins[3], "Pad axes")]
            full = [0] * (2 * rank)
            for k, a in enumerate(axes):
                full[a], full[a + rank] = pads[k], pads[k + len(axes)]
            pads = full
    return [b.op("pad", [x], pads=tuple(int(p) for p in pads), mode=mode, value=value)]


def depth_to_space(b, ins, attrs, n_out):
    mode = attrs.get("mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    return [b.op("depth_to_space", ins[:1], blocksize=attrs["blocksize"], mode=mode)]


def space_to_depth(b, ins, attrs, n_out):
    return [b.op("space_to_depth", ins[:1], blocksize=attrs["blocksize"])]


def dropout(b, ins, attrs, n_out):
    x = ins[0]
    outs = [x]
    if n_out > 1:
        outs.append(b.op("full", [], shape=tuple(shape_of(x)), value=np.asarray(True)))
    return outs


IMPORTERS = {
    "Reshape": reshape, "Flatten": flatten, "Transpose": transpose, "Concat": concat, "Split": split,
    "Slice": slice_, "Squeeze": squeeze, "Unsqueeze": unsqueeze, "Tile": tile, "Expand": expand, "Gather": gather,
    "Shape": shape, "Size": size, "Constant": constant, "ConstantOfShape": constant_of_shape, "Range": range_,
    "Pad": pad, "DepthToSpace": depth_to_space, "SpaceToDepth": space_to_depth, "Dropout": dropout,
}
