"""Shape manipulation and array creation on tracers: reshape, transpose, concatenate, split,
pad, tile, repeat, `*_like` and `like=` creation functions."""

from __future__ import annotations

import numpy as np

from ir.types import as_dtype
from runtime import dims as D

from .core import Tracer, astype, context_of, emit, lift, reshape_static
from .errors import trace_error
from .functions import T, _result_type, implements, norm_axes, raw_shape, shape_arg


def resolve_reshape(x: Tracer, shape) -> tuple:
    """Target dims with a -1 resolved symbolically."""
    if isinstance(shape, (int, np.integer, Tracer)):
        shape = (shape,)
    dims = []
    unknown = None
    for i, d in enumerate(shape):
        if isinstance(d, (int, np.integer)) and not isinstance(d, Tracer) and int(d) == -1:
            if unknown is not None:
                raise trace_error("can only specify one unknown dimension (-1) in reshape")
            unknown = i
            dims.append(None)
        else:
            dims.append(shape_arg((d,))[0])
    if unknown is not None:
        known = D.product(d for d in dims if d is not None)
        total = D.product(raw_shape(x))
        if known == 0:
            raise trace_error(f"cannot reshape {x._value.type} into {tuple(shape)}")
        missing = D.floordiv(total, known)
        if isinstance(missing, int) and isinstance(total, int) and missing * known != total:
            raise trace_error(f"cannot reshape array of size {total} into shape {tuple(shape)}")
        dims[unknown] = missing
    return tuple(dims)


@implements(np.reshape)
def reshape(a, shape=None, order="C", *, newshape=None, copy=None):
    if order != "C":
        raise trace_error("reshape: only order='C' is supported when tracing")
    x = T(a)
    target = resolve_reshape(x, shape if shape is not None else newshape)
    total, new = D.product(raw_shape(x)), D.product(target)
    if isinstance(total, int) and isinstance(new, int) and total != new:
        raise trace_error(f"cannot reshape array of size {total} into shape {target}")
    out = reshape_static(x, target)
    if out is not x:
        out._base = x
    return out


@implements(np.ravel)
def ravel(a, order="C"):
    x = T(a)
    return reshape(x, (-1,))


@implements(np.transpose)
def transpose(a, axes=None):
    x = T(a)
    perm = tuple(reversed(range(x.ndim))) if axes is None else tuple(int(p) % max(x.ndim, 1) for p in axes)
    if sorted(perm) != list(range(x.ndim)):
        raise trace_error(f"axes {axes} don't match array of rank {x.ndim}")
    if perm == tuple(range(x.ndim)):
        return x
    out = emit("transpose", [x], {"perm": perm})
    out._base = x
    return out


@implements(np.swapaxes)
def swapaxes(a, axis1, axis2):
    x = T(a)
    perm = list(range(x.ndim))
    i, j = norm_axes(axis1, x.ndim)[0], norm_axes(axis2, x.ndim)[0]
    perm[i], perm[j] = perm[j], perm[i]
    return transpose(x, perm)


@implements(np.moveaxis)
def moveaxis(a, source, destination):
    x = T(a)
    src = [norm_axes(s, x.ndim)[0] for s in np.atleast_1d(source)]
    dst = [norm_axes(d, x.ndim)[0] for d in np.atleast_1d(destination)]
    order = [n for n in range(x.ndim) if n not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return transpose(x, order)


@implements(np.expand_dims)
def expand_dims(a, axis):
    x = T(a)
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    rank = x.ndim + len(axes)
    axes = norm_axes(axes, rank)
    shape = list(raw_shape(x))
    for ax in axes:
        shape.insert(ax, 1)
    return reshape(x, tuple(shape))


@implements(np.squeeze)
def squeeze(a, axis=None):
    x = T(a)
    shape = raw_shape(x)
    if axis is None:
        symbolic = [f"{i} ({d})" for i, d in enumerate(shape) if not isinstance(d, int)]
        if symbolic:  # NumPy drops such a dim exactly when it is 1: the traced shape would depend on it
            raise trace_error(f"np.squeeze with no axis on symbolic dims: axis {', '.join(symbolic)} may be 1 "
                              f"at run time; pass axis= with the static size-1 axes to remove")
        axes = [i for i, d in enumerate(shape) if d == 1]
    else:
        axes = norm_axes(axis, x.ndim)
    for ax in axes:
        if shape[ax] != 1:
            raise trace_error(f"cannot select an axis to squeeze out which has size not equal to one ({shape[ax]})")
    return reshape(x, tuple(d for i, d in enumerate(shape) if i not in axes))


@implements(np.broadcast_to)
def broadcast_to(array, shape, subok=False):
    x = T(array)
    target = shape_arg(shape)
    if raw_shape(x) == tuple(D.parse_dim(d) for d in target):
        return x
    return emit("broadcast_to", [x], {"shape": target})


@implements(np.atleast_1d)
def atleast_1d(*arys):
    outs = [T(a) if T(a).ndim >= 1 else reshape(T(a), (1,)) for a in arys]
    return outs[0] if len(outs) == 1 else outs


@implements(np.atleast_2d)
def atleast_2d(*arys):
    outs = []
    for a in arys:
        x = T(a)
        outs.append(x if x.ndim >= 2 else reshape(x, (1,) * (2 - x.ndim) + raw_shape(x)))
    return outs[0] if len(outs) == 1 else outs


@implements(np.concatenate)
def concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    if out is not None:
        raise trace_error("np.concatenate: out= is not supported when tracing")
    arrays = list(arrays)
    ctx = context_of(arrays)
    dt = as_dtype(dtype) if dtype is not None else _result_type(*arrays)
    ts = [lift(a, ctx, dt) for a in arrays]
    if axis is None:
        ts = [reshape(t, (-1,)) for t in ts]
        axis = 0
    (axis,) = norm_axes(axis, ts[0].ndim)
    if len(ts) == 1:
        return ts[0]
    return emit("concat", ts, {"axis": axis})


@implements(np.stack)
def stack(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    arrays = list(arrays)
    ctx = context_of(arrays)
    ts = [lift(a, ctx) for a in arrays]
    (axis,) = norm_axes(axis, ts[0].ndim + 1)
    return concatenate([expand_dims(t, axis) for t in ts], axis=axis, out=out, dtype=dtype)


@implements(np.hstack)
def hstack(tup, dtype=None, casting="same_kind"):
    ts = [atleast_1d(t) for t in tup]
    return concatenate(ts, axis=0 if ts[0].ndim == 1 else 1, dtype=dtype)


@implements(np.vstack)
def vstack(tup, dtype=None, casting="same_kind"):
    return concatenate([atleast_2d(t) for t in tup], axis=0, dtype=dtype)


@implements(np.split, np.array_split)
def split(ary, indices_or_sections, axis=0):
    x = T(ary)
    (axis,) = norm_axes(axis, x.ndim)
    n = raw_shape(x)[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        k = int(indices_or_sections)
        if isinstance(n, int):
            if n % k:
                raise trace_error(f"array split does not result in an equal division ({n} into {k})")
            sizes = (n // k,) * k
        else:
            part = D.floordiv(n, k)
            if D.mul(part, k) != n:
                raise trace_error(f"cannot split symbolic dim {n} into {k} equal parts")
            sizes = (part,) * k
    else:
        bounds = [0] + [int(i) for i in indices_or_sections] + [n]
        sizes = tuple(D.sub(b, a) for a, b in zip(bounds, bounds[1:]))
    if len(sizes) == 1:
        return [x]
    return list(emit("split", [x], {"axis": axis, "sizes": sizes}))


@implements(np.pad)
def pad(array, pad_width, mode="constant", **kwargs):
    x = T(array)
    modes = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}
    if mode not in modes or set(kwargs) - {"constant_values"}:
        raise trace_error(f"np.pad: mode {mode!r} / options {sorted(kwargs)} are not supported when tracing")
    pw = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (x.ndim, 2))
    value = kwargs.get("constant_values", 0)
    if np.ndim(value) != 0:
        raise trace_error("np.pad: only a scalar constant_values is supported when tracing")
    pads = tuple(int(p) for p in pw[:, 0]) + tuple(int(p) for p in pw[:, 1])
    return emit("pad", [x], {"pads": pads, "mode": modes[mode], "value": float(value)})


@implements(np.tile)
def tile(A, reps):
    x = T(A)
    reps = tuple(int(r) for r in np.atleast_1d(reps))
    if len(reps) < x.ndim:
        reps = (1,) * (x.ndim - len(reps)) + reps
    elif len(reps) > x.ndim:
        x = reshape(x, (1,) * (len(reps) - x.ndim) + raw_shape(x))
    return emit("tile", [x], {"reps": reps})


@implements(np.repeat)
def repeat(a, repeats, axis=None):
    x = T(a)
    if np.ndim(repeats) != 0 or isinstance(repeats, Tracer):
        raise trace_error("np.repeat: only a constant scalar repeats is supported when tracing")
    if axis is None:
        x = reshape(x, (-1,))
        axis = 0
    (axis,) = norm_axes(axis, x.ndim)
    return emit("repeat", [x], {"repeats": int(repeats), "axis": axis})


@implements(np.flip)
def flip(m, axis=None):
    x = T(m)
    axes = norm_axes(axis, x.ndim)
    idx = tuple(slice(None, None, -1) if i in axes else slice(None) for i in range(x.ndim))
    return x[idx]


@implements(np.take)
def take(a, indices, axis=None, out=None, mode="raise"):
    x = T(a)
    if out is not None or mode != "raise":
        raise trace_error("np.take: out=/mode= are not supported when tracing")
    if axis is None:
        x = reshape(x, (-1,))
        axis = 0
    (axis,) = norm_axes(axis, x.ndim)
    idx = T(indices, x._ctx)
    if idx.dtype.kind not in "iu":
        raise trace_error(f"np.take: indices must be integers, got {idx.dtype}")
    return emit("gather", [x, idx], {"axis": axis})


@implements(np.shape)
def shape(a):
    return T(a).shape


@implements(np.ndim)
def ndim(a):
    return T(a).ndim


@implements(np.size)
def size(a, axis=None):
    x = T(a)
    return x.size if axis is None else x.shape[axis]


@implements(np.copy)
def copy(a, order="K", subok=False):
    """A copy is the same SSA value, but not a view: it may be written to."""
    x = T(a)
    return Tracer(x._ctx, x._value, x._concrete, x._weak, x._sym)


@implements(np.astype)
def astype_(x, dtype, /, *, copy=True, device=None):
    return astype(T(x), dtype)


# --- creation ---------------------------------------------------------------------------------

def _fill(shape, value, dtype, like):
    ctx = context_of([like])
    dims = shape_arg(shape)
    dt = as_dtype(dtype) if dtype is not None else as_dtype(np.asarray(value).dtype)
    if isinstance(value, Tracer):
        return broadcast_to(astype(lift(value, ctx), dt), dims)
    return emit("full", [], {"shape": dims, "value": np.asarray(value, dt)}, ctx=ctx)


@implements(np.zeros_like)
def zeros_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    x = T(a)
    return _fill(raw_shape(x) if shape is None else shape, 0, dtype or x.dtype, x)


@implements(np.ones_like)
def ones_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    x = T(a)
    return _fill(raw_shape(x) if shape is None else shape, 1, dtype or x.dtype, x)


@implements(np.empty_like)
def empty_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    return zeros_like(a, dtype, order, subok, shape)


@implements(np.full_like)
def full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None, *, device=None):
    x = T(a)
    return _fill(raw_shape(x) if shape is None else shape, fill_value, dtype or x.dtype, x)


def _like_target(like):
    """NumPy strips `like=` before dispatching; the active trace stands in for it."""
    return like if isinstance(like, Tracer) else None


@implements(np.full)
def full(shape, fill_value, dtype=None, order="C", *, like=None, device=None):
    like = _like_target(like)
    if dtype is None and not isinstance(fill_value, Tracer):
        dtype = np.asarray(fill_value).dtype
    return _fill(shape, fill_value, dtype or fill_value.dtype, like)


@implements(np.ones)
def ones(shape, dtype=None, order="C", *, like=None, device=None):
    return _fill(shape, 1, dtype or np.float64, _like_target(like))


@implements(np.zeros)
def zeros(shape, dtype=None, order="C", *, like=None, device=None):
    return _fill(shape, 0, dtype or np.float64, _like_target(like))


@implements(np.empty)
def empty(shape, dtype=None, order="C", *, like=None, device=None):
    return _fill(shape, 0, dtype or np.float64, _like_target(like))


@implements(np.arange)
def arange(*args, dtype=None, like=None, device=None, **kw):
    like = _like_target(like if like is not None else next((a for a in args if isinstance(a, Tracer)), None))
    if kw:
        raise trace_error(f"np.arange: keywords {sorted(kw)} are not supported when tracing")
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (args + (1,))[:3]
    if isinstance(step, Tracer) or isinstance(start, Tracer) and start._sym is None:
        raise trace_error("np.arange: start and step must be constants when tracing")
    n = D.sub(shape_arg((stop,))[0], shape_arg((start,))[0]) if step == 1 else None
    if n is None:
        if isinstance(stop, Tracer):
            raise trace_error("np.arange with a symbolic stop needs step 1")
        n = max(0, -(-(stop - start) // step))
    if dtype is None:
        dtype = np.result_type(*[np.asarray(v._sym if isinstance(v, Tracer) else v).dtype
                                 for v in (start, stop, step)])
    dt = as_dtype(dtype)
    out = emit("arange", [], {"n": (n,), "dtype": dt if dt.kind in "iu" else np.dtype(np.int64)},
               ctx=context_of([like]))
    out = astype(out, dt)
    if step != 1:
        out = out * np.asarray(step, dt)
    if not (isinstance(start, int) and start == 0):
        out = out + (astype(start, dt) if isinstance(start, Tracer) else np.asarray(start, dt))
    return out


@implements(np.eye)
def eye(N, M=None, k=0, dtype=float, order="C", *, like=None, device=None):
    like = _like_target(like)
    rows = arange(N, like=like)
    cols = arange(N if M is None else M, like=like)
    return astype(np.equal(np.expand_dims(rows, 1) + k, np.expand_dims(cols, 0)), dtype)
