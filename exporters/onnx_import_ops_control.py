"""ONNX → IR translations of the control-flow ops `If` and `Loop` (into IR `if`/`loop`).

Why the fixed point for Loop: ONNX declares a body's input shapes loosely (often not at all),
while an IR loop parameter's type must admit both the initial value and what the body yields.
The body is imported with the initial values' types; every dim that the yielded value changes
(a value that grows across iterations) becomes a fresh symbol and the body is imported again,
until the types are stable. Each round turns at least one dim into a symbol, so it ends.
Subgraphs see the enclosing scopes by name (`import_region`), as in ONNX.
"""

from __future__ import annotations

import numpy as np

from ir.graph import Value
from ir.types import TensorType
from runtime import dims as D

from .errors import UnsupportedOpError
from .onnx_import import Builder, import_region, shape_of

INT64_MAX = np.iinfo(np.int64).max


def _scalar(b: Builder, h, dtype, what: str) -> Value:
    """`h` as a 0-d IR value of `dtype` (ONNX also allows a 1-element 1-d tensor)."""
    shape = tuple(shape_of(h))
    if shape not in ((), (1,)):
        raise UnsupportedOpError(f"node {b.where()}: {what} must hold one element, got shape {shape}")
    v = b.value(b.reshape(h, ()) if shape else h)
    if v.dtype != np.dtype(dtype):
        raise UnsupportedOpError(f"node {b.where()}: {what} must be {np.dtype(dtype).name}, got {v.dtype.name}")
    return v


def _loc(b: Builder) -> str:
    return f"onnx:{b.node.name or b.node.op_type}"


def if_(b: Builder, ins: list, attrs: dict, n_out: int) -> list:
    """`If(cond)` with then/else subgraphs → IR `if`; dims the branches disagree on get fresh symbols."""
    cond = _scalar(b, ins[0], np.bool_, "If's condition")
    then = import_region(b, attrs["then_branch"], [])
    other = import_region(b, attrs["else_branch"], [])
    fresh = []
    for x, y in zip(then.outputs, other.outputs):
        if x.type.rank == y.type.rank:
            fresh.extend(b.fresh_symbol() for dx, dy in zip(x.shape, y.shape) if dx != dy)
    op = b.g.add_op("if", [cond], {"fresh": tuple(fresh)} if fresh else {}, regions=[then, other], loc=_loc(b))
    return list(op.outputs)


def loop(b: Builder, ins: list, attrs: dict, n_out: int) -> list:
    """`Loop(M, cond, *v_initial)` without scan outputs → IR `loop`.

    An absent M means no limit; an absent cond means `true` to start with. The body's condition
    output is honored either way, as onnxruntime does (the ONNX text calls it "ignored" for
    for-loops, but no runtime ignores it).
    """
    body = attrs["body"]
    ins = list(ins) + [None] * (2 - len(ins))
    m, cond, init = ins[0], ins[1], ins[2:]
    n = len(init)
    if len(body.output) != 1 + n:
        raise UnsupportedOpError(f"node {b.where()}: Loop with scan outputs ({len(body.output) - 1 - n} of them) "
                                 f"is not supported; the IR loop yields only (cond, *carried)")
    m = np.asarray(INT64_MAX, np.int64) if m is None else m
    max_trip = _scalar(b, m, np.int64, "Loop's max trip count M")
    start = _scalar(b, np.asarray(True) if cond is None else cond, np.bool_, "Loop's condition")
    carried = [b.value(h) for h in init]
    params = [v.type for v in carried]
    mine: set = set()  # the symbols this loop introduced
    for _ in range(1 + sum(t.rank for t in params)):
        inputs = [Value(TensorType(np.int64, ())), Value(TensorType(np.bool_, ()))] + [Value(t) for t in params]
        region = import_region(b, body, inputs)
        widened = [_widen(b, p, y.type, mine, _declared(vi)) for p, y, vi in
                   zip(params, region.outputs[1:], body.input[2:])]
        if widened == params:
            break
        params = widened
    op = b.g.add_op("loop", [max_trip, start, *carried], regions=[region], loc=_loc(b))
    return list(op.outputs)


def _declared(vi) -> list:
    """The dims a subgraph input declares (ints, dim_param strings, None where unknown)."""
    t = vi.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _widen(b: Builder, param: TensorType, yielded: TensorType, mine: set, declared: list) -> TensorType:
    """`param` with every dim that `yielded` changes replaced by a symbol: the body input's
    declared `dim_param` when it is a free symbol (so names survive a round trip), else a fresh one."""
    if param.dtype != yielded.dtype or param.rank != yielded.rank:
        raise UnsupportedOpError(f"node {b.where()}: a loop-carried value starts as {param} but the body yields "
                                 f"{yielded} (dtype and rank must stay the same)")
    dims = []
    for p, y in zip(param.shape, yielded.shape):
        if p != y and p not in mine:
            axis = len(dims)
            want = declared[axis] if axis < len(declared) else None
            p = want if _free_symbol(b, want, mine) else b.fresh_symbol()
            mine.add(p)
        dims.append(D.parse_dim(p) if isinstance(p, str) else p)
    return TensorType(param.dtype, tuple(dims))


def _free_symbol(b: Builder, sym, mine: set) -> bool:
    if not isinstance(sym, str) or sym in mine:
        return False
    try:
        if not D.is_symbol(D.parse_dim(sym)):
            return False
    except D.DimError:
        return False
    return sym not in b.symbols_in_use()


IMPORTERS = {"If": if_, "Loop": loop}
