"""Recognize decomposed softmax, log_softmax, layer_norm and gelu (as traced NumPy code and ONNX
importers spell them) and replace them by the single ops, whose kernels are faster and stabler.

    e = exp(x - max(x, a, keepdims)); e / sum(e, a, keepdims)           -> softmax[axis=a](x)
    t = x - max(x, a, keepdims); t - log(sum(exp(t), a, keepdims))      -> log_softmax[axis=a](x)
    d = x - mean(x, A); d / sqrt(var + eps)  (var = mean(d*d | d**2, A)
        or sum(d*d, A) / n; d * reciprocal(sqrt(...)) too)               -> layer_norm[axis](x, 1)
    layer_norm(x, 1) * g, layer_norm(x, g) + b                          -> layer_norm(x, g, b)
    0.5 * x * (1 + erf(x / sqrt(2)))  (any order and association)       -> gelu(x)
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))            -> gelu[approximate=tanh](x)

`A` must be the trailing axes (ONNX LayerNormalization). Constants must match to the precision
of their dtype. Intermediate values used elsewhere stay (DCE removes the rest).
"""

from __future__ import annotations

import math

import numpy as np

from ..graph import Graph, Op, Value
from .algebra import splat
from .base import PassResult
from .rewrite import Rewriter, rewrite_graph

REL_TOL = {"f2": 1e-3, "f4": 1e-6, "f8": 1e-12}


def _close(v: Value, target: float) -> bool:
    s = splat(v)
    if s is None or v.dtype.kind != "f":
        return False
    return abs(float(s) - target) <= REL_TOL.get(v.dtype.str[1:], 1e-6) * abs(target)


def _is(v: Value, kind: str) -> Op | None:
    p = v.producer
    return p if p is not None and p.kind == kind and not p.regions else None


def _reduce_of(v: Value, kind: str, keepdims: bool = True) -> Op | None:
    p = _is(v, kind)
    return p if p is not None and p.attrs["keepdims"] == keepdims else None


# --- softmax ------------------------------------------------------------------------------------
def _shifted(t: Value, axes: tuple) -> Value | None:
    """x when t = x - reduce_max(x, axes, keepdims)."""
    sub = _is(t, "sub")
    if sub is None:
        return None
    x, m = sub.inputs
    mx = _reduce_of(m, "reduce_max")
    if mx is None or mx.inputs[0] is not x or mx.attrs["axes"] != axes:
        return None
    return x


def _softmax(op: Op, rw: Rewriter):
    e, s = op.inputs
    rs = _reduce_of(s, "reduce_sum")
    ex = _is(e, "exp")
    if rs is None or ex is None or rs.inputs[0] is not e or len(rs.attrs["axes"]) != 1:
        return None
    axes = rs.attrs["axes"]
    x = _shifted(ex.inputs[0], axes)
    if x is None or x.type != op.output.type:
        return None
    return rw.add("softmax", [x], {"axis": axes[0]})


def _log_softmax(op: Op, rw: Rewriter):
    t, ls = op.inputs
    lg = _is(ls, "log")
    rs = _reduce_of(lg.inputs[0], "reduce_sum") if lg is not None else None
    ex = _is(rs.inputs[0], "exp") if rs is not None else None
    if ex is None or ex.inputs[0] is not t or len(rs.attrs["axes"]) != 1:
        return None
    x = _shifted(t, rs.attrs["axes"])
    if x is None or x.type != op.output.type:
        return None
    return rw.add("log_softmax", [x], {"axis": rs.attrs["axes"][0]})


# --- layer_norm ---------------------------------------------------------------------------------
def _trailing(axes: tuple, rank: int) -> bool:
    return bool(axes) and axes == tuple(range(axes[0], rank))


def _centered(d: Value) -> tuple[Value, tuple] | None:
    """(x, axes) when d = x - reduce_mean(x, axes, keepdims) over trailing axes."""
    sub = _is(d, "sub")
    if sub is None:
        return None
    x, m = sub.inputs
    mean = _reduce_of(m, "reduce_mean")
    if mean is None or mean.inputs[0] is not x or not _trailing(mean.attrs["axes"], x.type.rank):
        return None
    return x, mean.attrs["axes"]


def _square_of(v: Value) -> Value | None:
    p = v.producer
    if p is None:
        return None
    if p.kind == "mul" and p.inputs[0] is p.inputs[1]:
        return p.inputs[0]
    if p.kind == "pow" and _close(p.inputs[1], 2.0):
        return p.inputs[0]
    return None


def _variance_of(v: Value, x: Value, axes: tuple) -> bool:
    """True when v = mean((x - mean(x))**2) over `axes` (the square's centering may be a copy)."""
    p = v.producer
    if p is None:
        return False
    if p.kind == "reduce_mean" and p.attrs["keepdims"] and p.attrs["axes"] == axes:
        sq = p.inputs[0]
    elif p.kind == "div":
        rs = _reduce_of(p.inputs[0], "reduce_sum")
        if rs is None or rs.attrs["axes"] != axes:
            return False
        n = 1
        for a in axes:
            if not isinstance(x.type.shape[a], int):
                return False
            n *= x.type.shape[a]
        if not _close(p.inputs[1], float(n)):
            return False
        sq = rs.inputs[0]
    else:
        return False
    d = _square_of(sq)
    c = _centered(d) if d is not None else None
    return c is not None and c[0] is x and c[1] == axes


def _inv_std(v: Value, x: Value, axes: tuple, inverse: bool) -> float | None:
    """epsilon when v = sqrt(var + eps) (or its reciprocal when `inverse`)."""
    if inverse:
        r = _is(v, "reciprocal")
        if r is None:
            return None
        v = r.inputs[0]
    sq = _is(v, "sqrt")
    add = _is(sq.inputs[0], "add") if sq is not None else None
    if add is None:
        return None
    for var, eps in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        e = splat(eps)
        if e is not None and eps.type.rank <= 1 and float(e) >= 0 and _variance_of(var, x, axes):
            return float(e)
    return None


def _layer_norm(op: Op, rw: Rewriter):
    orders = [op.inputs] if op.kind == "div" else [op.inputs, op.inputs[::-1]]
    for d, den in orders:
        c = _centered(d)
        if c is None:
            continue
        x, axes = c
        eps = _inv_std(den, x, axes, inverse=op.kind == "mul")
        if eps is not None and x.type == op.output.type:
            return _make_layer_norm(x, axes, eps, rw)
    return None


def _make_layer_norm(x: Value, axes: tuple, eps: float, rw: Rewriter) -> Value:
    ones = rw.add("full", [], {"shape": x.type.shape[axes[0]:], "value": np.ones((), x.dtype)})
    return rw.add("layer_norm", [x, ones], {"axis": axes[0], "epsilon": eps})


def _param(p: Value, norm_shape: tuple, rw: Rewriter) -> Value | None:
    """p as a value of exactly `norm_shape`, when broadcasting p over the normalized axes only."""
    shape = p.type.shape
    lead = len(shape) - len(norm_shape)
    if lead > 0:
        if any(d != 1 for d in shape[:lead]):
            return None
        shape = shape[lead:]
    full = (1,) * (len(norm_shape) - len(shape)) + tuple(shape)
    if any(a != b and a != 1 for a, b in zip(full, norm_shape)):
        return None
    if p.type.shape == norm_shape:
        return p
    q = rw.add("reshape", [p], {"shape": full}) if tuple(p.type.shape) != full else p
    return q if full == norm_shape else rw.add("broadcast_to", [q], {"shape": norm_shape})


def _affine(op: Op, rw: Rewriter):
    """layer_norm(x, ones) * g -> layer_norm(x, g); layer_norm(x, g) + b -> layer_norm(x, g, b)."""
    for y, p in ((op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0])):
        ln = _is(y, "layer_norm")
        if ln is None or rw.n_uses(y) != 1 or y.type != op.output.type or p.dtype != y.dtype:
            continue
        x, axis = ln.inputs[0], ln.attrs["axis"]
        norm_shape = x.type.shape[axis:]
        if op.kind == "mul" and len(ln.inputs) == 2 and splat(ln.inputs[1]) == 1:
            g = _param(p, norm_shape, rw)
            if g is not None:
                return rw.add("layer_norm", [x, g], dict(ln.attrs))
        if op.kind == "add" and len(ln.inputs) == 2:
            b = _param(p, norm_shape, rw)
            if b is not None:
                return rw.add("layer_norm", [x, ln.inputs[1], b], dict(ln.attrs))
    return None


# --- gelu ---------------------------------------------------------------------------------------
def _factors(v: Value, out: list, depth: int = 0) -> list:
    """The factors of a product tree (mul, and pow by a small integer constant)."""
    p = v.producer
    if p is not None and depth < 16:
        if p.kind == "mul":
            _factors(p.inputs[0], out, depth + 1)
            _factors(p.inputs[1], out, depth + 1)
            return out
        if p.kind == "pow":
            k = splat(p.inputs[1])
            if k is not None and float(k) in (2.0, 3.0):
                out.extend([p.inputs[0]] * int(k))
                return out
    out.append(v)
    return out


def _split_consts(factors: list) -> tuple[float, list]:
    c, rest = 1.0, []
    for f in factors:
        s = splat(f)
        if s is not None and f.type.rank == 0 or s is not None and f.type.shape and all(d == 1 for d in f.type.shape):
            c *= float(s)
        else:
            rest.append(f)
    return c, rest


def _one_plus(v: Value, kind: str) -> Value | None:
    """z when v = 1 + kind(z)."""
    add = _is(v, "add")
    if add is None:
        return None
    for one, f in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        fn = _is(f, kind)
        if fn is not None and _close(one, 1.0) and one.type.rank == 0:
            return fn.inputs[0]
    return None


def _scaled(v: Value, x: Value, target: float) -> bool:
    """v == x * target (as x / (1/target), x * target or target * x)."""
    p = v.producer
    if p is not None and p.kind == "div" and p.inputs[0] is x and p.inputs[1].type.rank == 0:
        s = splat(p.inputs[1])
        return s is not None and _close_value(1.0 / float(s), target, v)
    c, rest = _split_consts(_factors(v, []))
    return rest == [x] and _close_value(c, target, v)


def _close_value(c: float, target: float, v: Value) -> bool:
    return abs(c - target) <= REL_TOL.get(v.dtype.str[1:], 1e-6) * abs(target)


def _tanh_inner(v: Value, x: Value) -> bool:
    """v == x + 0.044715 * x**3."""
    add = _is(v, "add")
    if add is None:
        return False
    for a, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        if a is x:
            c, rest = _split_consts(_factors(b, []))
            if rest == [x, x, x] and _close_value(c, 0.044715, v):
                return True
    return False


def _gelu(op: Op, rw: Rewriter):
    if op.output.dtype.kind != "f":
        return None
    for x, y in ((op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0])):
        # x * normal_cdf(x), Phi used nowhere else (gradient graphs share it with the backward)
        p = y.producer
        if p is not None and p.kind == "normal_cdf" and p.inputs[0] is x and x.type == op.output.type \
                and rw.n_uses(y) == 1:
            return rw.add("gelu", [x], {"approximate": "none"})
    c, rest = _split_consts(_factors(op.output, []))
    if len(rest) != 2 or not _close_value(c, 0.5, op.output):
        return None
    for x, y in ((rest[0], rest[1]), (rest[1], rest[0])):
        if x.type != op.output.type:
            continue
        z = _one_plus(y, "erf")
        if z is not None and _scaled(z, x, 1 / math.sqrt(2.0)):
            return rw.add("gelu", [x], {"approximate": "none"})
        z = _one_plus(y, "tanh")
        if z is None:
            continue
        zc, zrest = _split_consts(_factors(z, []))
        if len(zrest) == 1 and _close_value(zc, math.sqrt(2 / math.pi), z) and _tanh_inner(zrest[0], x):
            return rw.add("gelu", [x], {"approximate": "tanh"})
    return None


def _rule(op: Op, rw: Rewriter):
    if op.regions:
        return None
    out = None
    if op.kind == "div":
        out = _softmax(op, rw) or _layer_norm(op, rw)
    elif op.kind == "sub":
        out = _log_softmax(op, rw)
    elif op.kind == "mul":
        out = _layer_norm(op, rw) or _affine(op, rw) or _gelu(op, rw)
    elif op.kind == "add":
        out = _affine(op, rw)
    return None if out is None else [out]


class RecognizePatterns:
    """Decomposed softmax / log_softmax / layer_norm / gelu -> single ops.

    >>> import tracer, numpy as np
    >>> def f(x):
    ...     e = np.exp(x - x.max(-1, keepdims=True))
    ...     return e / e.sum(-1, keepdims=True)
    >>> g = RecognizePatterns().run(tracer.trace(f, np.zeros((2, 3)))).graph
    >>> g.outputs[0].producer.kind
    'softmax'
    """

    name = "patterns"

    def run(self, graph: Graph) -> PassResult:
        """Rewrite in place (the decomposed ops are left for DCE).

        >>> import tracer, numpy as np
        >>> g = tracer.trace(lambda x: 0.5 * x * (1.0 + tracer.ops.erf(x / np.sqrt(2.0))), np.zeros(3))
        >>> RecognizePatterns().run(g).graph.outputs[0].producer.kind
        'gelu'
        """
        return PassResult(graph, rewrite_graph(graph, _rule))
