"""`x[...]` and `x[...] = v` on tracers, with NumPy's basic and advanced indexing rules.

Basic indices (ints, slices, None, Ellipsis) become one `slice` plus a `reshape`; integer
arrays become a `gather` over the advanced axes merged into one; a boolean mask over leading
axes becomes `boolean_mask`, whose length is a fresh symbol. Assignment is functional:
`slice_update`, `index_update` or `where`, and the tracer is rebound to the new value.
"""

from __future__ import annotations

import numpy as np

from ir.ops.shape import slice_length
from runtime import dims as D

from .core import Tracer, astype, context_of, emit, lift, reshape_static
from .errors import trace_error
from .functions import raw_shape, sym


def _is_array_index(i) -> bool:
    return isinstance(i, (Tracer, np.ndarray, list)) and not isinstance(i, bool)


def _is_full(e) -> bool:
    return isinstance(e, slice) and e.start is None and e.stop is None and e.step is None


def _consumed(i) -> int:
    """How many axes of the indexed array one index entry uses up."""
    if i is None or i is Ellipsis:
        return 0
    if _is_array_index(i) and _as_tracer_dtype(i).kind == "b":
        return max(int(np.ndim(i)), 1)
    return 1


def _expand(x: Tracer, index) -> list:
    """The index as one entry per axis of `x` (Ellipsis expanded), plus None entries."""
    if not isinstance(index, tuple):
        index = (index,)
    if sum(1 for i in index if i is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    n_real = sum(_consumed(i) for i in index)
    if n_real > x.ndim:
        raise IndexError(f"too many indices for array: array is {x.ndim}-dimensional, but {n_real} were indexed")
    fill = [slice(None)] * (x.ndim - n_real)
    out = []
    for i in index:
        out.extend(fill if i is Ellipsis else [i])
    return out if any(i is Ellipsis for i in index) else out + fill


def _as_tracer_dtype(i) -> np.dtype:
    return i.dtype if isinstance(i, Tracer) else np.asarray(i).dtype


def _norm_slice(s: slice, n):
    """(start, stop, step) of `s` on an axis of size n as `slice` attributes: positions, never
    counted from the end. On a static axis they are NumPy's (slice.indices: a negative step's
    stop of -1 is before index 0) and an empty slice is (0, 0), so ONNX Slice, which counts
    negative values from the end, reads them the same. On a symbolic axis a bound counted from
    the end is n + bound: the axis is taken to be long enough for it (x[:-3] is n-3 long, and a
    run with n < 3 is refused by the runtimes' shape checks); a sentinel of 2**62 or more (in size)
    is that end of the axis.
    """
    step = 1 if s.step is None else int(s.step)
    if step == 0:
        raise ValueError("slice step cannot be zero")
    start, stop = (None if b is None else sym(b) for b in (s.start, s.stop))
    if isinstance(n, int) and all(b is None or isinstance(b, int) for b in (start, stop)):
        a, b, _ = slice(start, stop, step).indices(n)
        return (a, b, step) if len(range(a, b, step)) else (0, 0, step)

    def bound(b, default):
        if b is None:
            return default
        if isinstance(b, int) and abs(b) >= 2**62:  # a sentinel (sys.maxsize...): past that end
            return (n if step > 0 else D.sub(n, 1)) if b > 0 else (0 if step > 0 else -1)
        if isinstance(b, int):
            if b < 0:
                b = D.add(n, b)
                if isinstance(b, int):
                    b = max(b, -1 if step < 0 else 0)
            elif isinstance(n, int):
                b = min(b, n - 1 if step < 0 else n)
        return b

    if step > 0:
        return bound(start, 0), bound(stop, n), step
    return bound(start, D.sub(n, 1)), bound(stop, -1), step


def _basic_entry(e, n, axis: int) -> tuple:
    """(start, stop, step, result dim or None when the axis is dropped, leftover array index)."""
    if isinstance(e, slice):
        a, b, step = _norm_slice(e, n)
        return a, b, step, slice_length(a, b, step), slice(None)
    if _is_array_index(e):
        return 0, n, 1, n, e  # index arrays (traced scalars too) are gathered afterwards
    i = sym(e)
    if isinstance(i, int) and isinstance(n, int) and not -n <= i < n:
        raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n}")
    if isinstance(i, int) and i < 0:
        i = D.add(n, i)
    return i, D.add(i, 1), 1, None, None


def _basic(x: Tracer, entries: list) -> tuple[Tracer, list]:
    """Apply slices/ints/None; return the result and the remaining (array) index per output axis."""
    shape = raw_shape(x)
    starts, stops, steps, out_shape, rest = [], [], [], [], []
    axis = 0
    for e in entries:
        if e is None:
            out_shape.append(1)
            rest.append(slice(None))
            continue
        a, b, step, dim, leftover = _basic_entry(e, shape[axis], axis)
        starts.append(a)
        stops.append(b)
        steps.append(step)
        if dim is not None:
            out_shape.append(dim)
            rest.append(leftover)
        axis += 1
    y = x
    if not all(a == 0 and b == n and s == 1 for a, b, s, n in zip(starts, stops, steps, shape)):
        y = emit("slice", [x], {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)})
    return reshape_static(y, tuple(out_shape)), rest


def getitem(x: Tracer, index) -> Tracer:
    entries = _expand(x, index)
    arrays = [i for i, e in enumerate(entries) if _is_array_index(e)]
    if arrays and _as_tracer_dtype(entries[arrays[0]]).kind != "b":
        # with index arrays present, integer scalars are advanced indices too (NumPy's rule),
        # which matters for where the indexed dims land
        entries = [np.asarray(e) if isinstance(e, (int, np.integer)) else e for e in entries]
        arrays = [i for i, e in enumerate(entries) if _is_array_index(e)]
    if len(arrays) == 1 and _as_tracer_dtype(entries[arrays[0]]).kind == "b":
        return _mask(x, entries, arrays[0])
    y, rest = _basic(x, entries)
    if arrays:
        y = _advanced(y, rest)
    if y is not x:
        y._base = x
    return y


def _mask(x: Tracer, entries, pos):
    if any(not _is_full(e) for i, e in enumerate(entries) if i != pos) \
            or pos != 0:
        raise trace_error("boolean indexing is supported as x[mask] with a mask over the leading axes",
                          "use np.where(mask, x, other) to keep the shape static")
    ctx = context_of([x])
    mask = astype(lift(entries[pos], ctx), np.bool_)
    if raw_shape(mask) != raw_shape(x)[:mask.ndim]:
        raise IndexError(f"boolean index of shape {raw_shape(mask)} does not match array {raw_shape(x)}")
    return emit("boolean_mask", [x, mask], {"size": (ctx.fresh_symbol(),)})


def _advanced(y: Tracer, rest: list) -> Tracer:
    ctx = context_of([y])
    axes = [i for i, e in enumerate(rest) if not isinstance(e, slice)]
    idx = []
    for i in axes:
        t = lift(rest[i], ctx)
        if t.dtype.kind not in "iu":
            raise IndexError("arrays used as indices must be of integer (or boolean) type")
        idx.append(astype(t, np.int64))
    shape = raw_shape(y)
    if len(axes) == 1:
        return emit("gather", [y, idx[0]], {"axis": axes[0]})
    # several index arrays: move their axes to the front, merge them, gather a linear index
    adjacent = axes == list(range(axes[0], axes[0] + len(axes)))
    perm = axes + [i for i in range(y.ndim) if i not in axes]
    moved = emit("transpose", [y], {"perm": tuple(perm)}) if perm != list(range(y.ndim)) else y
    merged_n = D.product(shape[i] for i in axes)
    moved = reshape_static(moved, (merged_n,) + tuple(shape[i] for i in perm[len(axes):]))
    linear = None
    for i, t in zip(axes, idx):
        n = shape[i]
        nt = n if isinstance(n, int) else _dim(y, i)
        t = np.where(t < 0, t + nt, t)
        linear = t if linear is None else linear * nt + t
    out = emit("gather", [moved, linear], {"axis": 0})
    if adjacent and axes[0] != 0:
        k = linear.ndim
        r = out.ndim
        front = list(range(k, k + axes[0]))
        perm2 = front + list(range(k)) + list(range(k + axes[0], r))
        out = emit("transpose", [out], {"perm": tuple(perm2)})
    return out


def _dim(y: Tracer, axis: int) -> Tracer:
    return y.shape[axis]


def setitem(x: Tracer, index, value) -> None:
    """`x[index] = value`, recorded functionally; rebinds `x` to the updated value."""
    if x._base is not None:
        raise trace_error("assignment into a view (a slice, reshape or transpose of another array) "
                          "cannot be traced: NumPy would also change the array it views",
                          "assign into the original array, or make a copy first with x = x.copy()")
    ctx = context_of([x, value])
    v = lift(value, ctx, x.dtype)
    entries = _expand(x, index)
    arrays = [i for i, e in enumerate(entries) if _is_array_index(e)]
    if any(e is None for e in entries):
        raise trace_error("assignment with np.newaxis in the index is not supported when tracing")
    if not arrays:
        new = _slice_update(x, entries, v)
    elif len(arrays) == 1 and _as_tracer_dtype(entries[arrays[0]]).kind == "b":
        mask = astype(lift(entries[arrays[0]], ctx), np.bool_)
        if arrays[0] != 0 or mask.ndim == 0 or any(not _is_full(e) for e in entries[1:]):
            raise trace_error("masked assignment is supported as x[mask] = scalar or broadcastable value")
        if v.ndim > x.ndim - mask.ndim:
            raise trace_error("x[mask] = values with one value per selected element is not supported "
                              "when tracing", "use x = np.where(mask, values, x)")
        m = reshape_static(mask, raw_shape(mask) + (1,) * (x.ndim - mask.ndim))
        new = emit("where", [m, v, x])
    elif len(arrays) == 1 and all(_is_full(e) for i, e in enumerate(entries) if i != arrays[0]):
        idx = astype(lift(entries[arrays[0]], ctx), np.int64)
        new = emit("index_update", [x, idx, v], {"axis": arrays[0]})
    else:
        raise trace_error("this combination of array indices in an assignment is not supported when tracing")
    x._value, x._concrete, x._weak = new._value, new._concrete, False


def _slice_update(x: Tracer, entries: list, v: Tracer) -> Tracer:
    starts, stops, steps, sliced = [], [], [], []
    for axis, (e, n) in enumerate(zip(entries, raw_shape(x))):
        a, b, step, dim, _ = _basic_entry(e, n, axis)
        starts.append(a)
        stops.append(b)
        steps.append(step)
        sliced.append(dim)
    squeezed = tuple(d for d in sliced if d is not None)
    target = tuple(1 if d is None else d for d in sliced)
    if raw_shape(v) != target:
        from ir.ops.rules import broadcast_shapes

        try:
            broadcast_shapes(raw_shape(v), squeezed)
        except ValueError:
            raise ValueError(f"could not broadcast input array from shape {raw_shape(v)} into shape "
                             f"{squeezed}") from None
        if raw_shape(v) != squeezed:
            v = emit("broadcast_to", [v], {"shape": squeezed})
        v = reshape_static(v, target)
    return emit("slice_update", [x, v], {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)})
