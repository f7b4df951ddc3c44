"""ONNX lowerings of reductions, arg-reductions, cumsum and the matrix products.

Why the extra nodes: ONNX moved `axes` from attribute to input at opset 13 (ReduceSum) or 18
(the rest), has no bool reductions (a bool sum or max is "any", a min "all"), and does not
promise NaN propagation for ReduceMax/ReduceMin, which `np.max` has.
"""

from __future__ import annotations

import numpy as np

from .onnx_export import Emitter

REDUCE = {"reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax",
          "reduce_min": "ReduceMin", "reduce_prod": "ReduceProd"}


def reduce_node(cx: Emitter, onnx_op: str, x: str, axes, keepdims: bool, out: str | None = None) -> str:
    """Emit a reduction over `axes` with the attribute or input form the opset wants."""
    axes = [int(a) for a in axes]
    if not axes:
        return cx.node("Identity", [x], out)
    if onnx_op == "ReduceSum" or cx.opset >= 18:
        return cx.node(onnx_op, [x, cx.ints(axes)], out, keepdims=int(keepdims))
    return cx.node(onnx_op, [x], out, axes=axes, keepdims=int(keepdims))


def _reduce(cx, op, ins, outs):
    (x,) = ins
    axes, keep = op.attrs["axes"], op.attrs["keepdims"]
    dt = cx.dtypes[x]
    onnx_op = REDUCE[op.kind]
    if dt == np.bool_:  # sum/max: any; min: all
        as_int = cx.cast(x, np.int32)
        r = reduce_node(cx, "ReduceMin" if op.kind == "reduce_min" else "ReduceMax", as_int, axes, keep)
        cx.cast(r, np.bool_, outs[0])
        return
    if dt.kind == "f" and op.kind in ("reduce_max", "reduce_min") and axes:
        r = reduce_node(cx, onnx_op, x, axes, keep)
        nan = reduce_node(cx, "ReduceMax", cx.cast(cx.node("IsNaN", [x], dtype=np.bool_), np.int32), axes, keep)
        has_nan = cx.cast(nan, np.bool_)
        cx.node("Where", [has_nan, cx.const(np.array(np.nan, dt)), r], outs[0], key_input=1)
        return
    reduce_node(cx, onnx_op, x, axes, keep, outs[0])


def _arg(onnx_op):
    def lower(cx, op, ins, outs):
        cx.node(onnx_op, ins, outs[0], dtype=np.int64, axis=op.attrs["axis"], keepdims=int(op.attrs["keepdims"]))
    return lower


def cumsum(cx, op, ins, outs):
    cx.node("CumSum", [ins[0], cx.const(np.array(op.attrs["axis"], np.int64))], outs[0])


def matmul(cx, op, ins, outs):
    cx.node("MatMul", ins, outs[0])


def einsum(cx, op, ins, outs):
    cx.node("Einsum", ins, outs[0], equation=op.attrs["equation"].replace(" ", ""))


LOWERINGS = {**{k: _reduce for k in REDUCE}, "argmax": _arg("ArgMax"), "argmin": _arg("ArgMin"),
             "cumsum": cumsum, "matmul": matmul, "einsum": einsum}
