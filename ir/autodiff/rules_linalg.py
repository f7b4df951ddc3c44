"""VJP rules of the matrix products.

matmul: 1-D operands are promoted to matrices (as NumPy does), the products are formed with
swapped last axes, and batch broadcasting is summed back; the weight of a stack of rows times
one matrix gets one 2-D product over all rows. einsum: the cotangent of one operand
is another einsum of the output cotangent with the other operands; letters that only that
operand had are broadcast back, size-1 letters that broadcast are summed, and an operand that
repeats a letter (a diagonal, as in "ii->i" or a trace "ii->") gets its cotangent embedded on
that diagonal.
"""

from __future__ import annotations

import string

import numpy as np

from runtime import dims as D

from ..graph import Op, Value
from ..types import TensorType
from .rules_common import Builder, is_float, register_rules, unbroadcast


def _swap_last(b: Builder, v: Value) -> Value:
    r = len(v.shape)
    return b.transpose(v, tuple(range(r - 2)) + (r - 1, r - 2))


def _matmul(b: Builder, op: Op, cts: list) -> list:
    a, c = op.inputs
    ct = cts[0]
    a2 = a if len(a.shape) > 1 else b.reshape(a, (1,) + a.shape)
    c2 = c if len(c.shape) > 1 else b.reshape(c, c.shape + (1,))
    batch = ct.shape[:len(ct.shape) - (len(a.shape) > 1) - (len(c.shape) > 1)]
    ct2 = b.reshape(ct, batch + (a2.shape[-2], c2.shape[-1]))
    out = []
    if is_float(a):
        da = b.op("matmul", ct2, _swap_last(b, c2))
        out.append(b.reshape(unbroadcast(b, da, a2.type), a.shape))
    else:
        out.append(None)
    if not is_float(c):
        out.append(None)
    elif len(c.shape) == 2 and len(a.shape) > 2:
        # a stack of rows times one matrix (a Linear layer on (batch, seq, features)): the
        # stack folds into the rows of one 2-D product, instead of one product per matrix
        # of the stack followed by a sum over the stack
        rows = D.product(a.shape[:-1])
        a_rows = b.reshape(a, (rows, a.shape[-1]))
        ct_rows = b.reshape(ct2, (rows, ct2.shape[-1]))
        out.append(b.op("matmul", b.transpose(a_rows, (1, 0)), ct_rows))
    else:
        dc = b.op("matmul", _swap_last(b, a2), ct2)
        out.append(b.reshape(unbroadcast(b, dc, c2.type), c.shape))
    return out


def diagonal_embed(b: Builder, g: Value, spec: str, full: str) -> Value:
    """Zeros shaped by the subscripts `full` (which repeat letters) with `g` (subscripts
    `spec`: `full`'s letters, each once, in first-seen order) on their diagonals: the adjoint
    of einsum's diagonal read `full->spec`. It is one einsum of `g` with an identity matrix per
    repeat, so symbolic sizes work (`arange` takes them).

    >>> import numpy as np, ir
    >>> from ir.graph import Graph
    >>> from ir.types import TensorType
    >>> gr = Graph.from_inputs([("d", TensorType(np.float64, ("n",)))])
    >>> out = diagonal_embed(Builder(gr), gr.inputs[0], "i", "ii")
    >>> gr.outputs, gr.out_tree = [out], ("*",); str(out.type)
    'f64[n,n]'
    >>> ir.interpret(gr, np.array([1.0, 2.0])).tolist()
    [[1.0, 0.0], [0.0, 2.0]]
    """
    fresh = (ch for ch in string.ascii_letters if ch not in full)
    out, terms, eyes = [], [spec], []
    seen: set[str] = set()
    for ch in full:
        if ch not in seen:
            seen.add(ch)
            out.append(ch)
            continue
        new = next(fresh)
        out.append(new)
        terms.append(ch + new)
        eyes.append(_identity(b, g.shape[spec.index(ch)], g.dtype))
    return b.op("einsum", g, *eyes, equation=",".join(terms) + "->" + "".join(out))


def _identity(b: Builder, n, dtype) -> Value:
    """The n x n identity matrix of `dtype` (n may be symbolic)."""
    positions = b.op("arange", n=(n,), dtype=np.dtype(np.int64))
    return b.cast(b.op("equal", b.reshape(positions, (n, 1)), positions), dtype)


def _einsum(b: Builder, op: Op, cts: list) -> list:
    eq = op.attrs["equation"].replace(" ", "")
    lhs, out_spec = eq.split("->")
    specs = lhs.split(",")
    ct = cts[0]
    grads = []
    for i, (spec, v) in enumerate(zip(specs, op.inputs)):
        if not is_float(v):
            grads.append(None)
            continue
        # a letter repeated within the operand reads a diagonal: differentiate w.r.t. that
        # diagonal (`uniq`, each letter once) and put its cotangent back on the diagonal
        uniq = "".join(dict.fromkeys(spec))
        ushape = tuple(v.shape[spec.index(ch)] for ch in uniq)
        others = [(s, u) for j, (s, u) in enumerate(zip(specs, op.inputs)) if j != i]
        available = set(out_spec).union(*(set(s) for s, _ in others))
        # letters of this operand seen nowhere else were summed away: broadcast them back
        target = "".join(ch for ch in uniq if ch in available)
        terms = [out_spec] + [s for s, _ in others]
        g = b.op("einsum", ct, *(u for _, u in others), equation=",".join(terms) + "->" + target)
        got = dict(zip(target, g.shape))
        kept = tuple(got.get(ch, 1) for ch in uniq)
        g = b.reshape(g, kept)
        g = b.broadcast_to(g, tuple(ushape[k] if d == 1 else d for k, d in enumerate(kept)))
        g = unbroadcast(b, g, TensorType(v.dtype, ushape))
        grads.append(g if uniq == spec else diagonal_embed(b, g, uniq, spec))
    return grads


RULES = {"matmul": _matmul, "einsum": _einsum}
register_rules(RULES)
