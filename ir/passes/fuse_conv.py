"""Convolution fusions for inference: fold `batch_norm` into the preceding `conv` (new weights
`w * s` and bias `(b - mean) * s + beta`, with `s = gamma / sqrt(var + eps)`, computed in float64
and rounded once), absorb a per-channel `add` into the conv's bias, and fuse a following
relu/sigmoid/tanh/gelu into `fused_conv`. Each needs the conv's output to have no other use; batch
norm folding needs constant weights and statistics (as exported models have them).
"""

from __future__ import annotations

import numpy as np

from ..graph import Graph, Op, Value
from .base import PassResult
from .fuse_linear import activation_of
from .rewrite import Rewriter, const_value, rewrite_graph

CONV_ATTRS = ("strides", "pads", "dilations", "group")


def _single_conv(v: Value, rw: Rewriter) -> Op | None:
    p = v.producer
    if p is None or p.kind != "conv" or rw.n_uses(v) != 1:
        return None
    return p


def _fold_batch_norm(op: Op, rw: Rewriter):
    conv = _single_conv(op.inputs[0], rw)
    if conv is None:
        return None
    w = const_value(conv.inputs[1])
    params = [const_value(v) for v in op.inputs[1:]]
    bias = const_value(conv.inputs[2]) if len(conv.inputs) == 3 else np.zeros(1, w.dtype if w is not None else None)
    if w is None or bias is None or any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    s = gamma / np.sqrt(var + op.attrs["epsilon"])
    w2 = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    b2 = ((bias.astype(np.float64) - mean) * s + beta).astype(w.dtype)
    ins = [conv.inputs[0], rw.const(w2), rw.const(b2)]
    return [rw.add("conv", ins, {k: conv.attrs[k] for k in CONV_ATTRS})]


def _channel_bias(c: Value, out: Value, rw: Rewriter) -> Value | None:
    """`c` as a per-channel vector of shape (C,) when adding it to the NC... tensor `out` only
    adds along the channel axis; None otherwise."""
    r = out.type.rank
    if c.type.rank > r or c.dtype != out.dtype:
        return None
    full = (1,) * (r - c.type.rank) + c.type.shape
    if full[0] != 1 or any(d != 1 for d in full[2:]):
        return None
    channels = out.type.shape[1]
    if full[1] == channels:
        return rw.add("reshape", [c], {"shape": (channels,)}) if c.type.shape != (channels,) else c
    if full[1] == 1:
        flat = rw.add("reshape", [c], {"shape": (1,)}) if c.type.shape != (1,) else c
        return rw.add("broadcast_to", [flat], {"shape": (channels,)})
    return None


def _absorb_add(op: Op, rw: Rewriter):
    for y, c in ((op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0])):
        conv = _single_conv(y, rw)
        if conv is None or y.type != op.output.type:
            continue
        b = _channel_bias(c, y, rw)
        if b is None:
            continue
        if len(conv.inputs) == 3:
            b = rw.add("add", [conv.inputs[2], b])
        return [rw.add("conv", [conv.inputs[0], conv.inputs[1], b], {k: conv.attrs[k] for k in CONV_ATTRS})]
    return None


def _fuse_activation(op: Op, rw: Rewriter):
    found = activation_of(op)
    if found is None:
        return None
    act, x = found
    conv = _single_conv(x, rw)
    if conv is None:
        return None
    return [rw.add("fused_conv", list(conv.inputs), {**conv.attrs, "activation": act})]


RULES = {"batch_norm": _fold_batch_norm, "add": _absorb_add,
         **{k: _fuse_activation for k in ("relu", "sigmoid", "tanh", "gelu", "maximum")}}


def _rule(op: Op, rw: Rewriter):
    rule = RULES.get(op.kind)
    return rule(op, rw) if rule is not None and not op.regions else None


class FuseConv:
    """conv + batch_norm folding, conv + bias, conv + activation.

    >>> import tracer, numpy as np
    >>> from tracer import ops
    >>> w, b = np.ones((2, 1, 3)), np.array([[1.0], [2.0]])
    >>> g = tracer.trace(lambda x: ops.relu(ops.conv(x, w) + b), np.zeros((1, 1, 5)))
    >>> from ir.passes import DCE, PassManager
    >>> [op.kind for op in PassManager([FuseConv(), DCE()]).run(g).graph.ops]
    ['constant', 'constant', 'reshape', 'fused_conv']
    """

    name = "fuse_conv"

    def run(self, graph: Graph) -> PassResult:
        """Fuse in place (the unfused ops are left for DCE).

        >>> import tracer, numpy as np
        >>> g = tracer.trace(lambda x: tracer.ops.relu(tracer.ops.conv(x, np.ones((2, 1, 3)))), np.zeros((1, 1, 5)))
        >>> FuseConv().run(g).graph.outputs[0].producer.kind
        'fused_conv'
        """
        return PassResult(graph, rewrite_graph(graph, _rule))
