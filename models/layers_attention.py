"""Attention layers: MultiHeadAttention (self-attention) and TransformerEncoderLayer.

Why separate: the head split/merge reshapes are the subtle part; they keep the batch as -1 so a
symbolic batch traces, and need only the sequence length and width to be static.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracer import ops

from .layers_core import Dropout, LayerNorm, Linear, ModelError, Module, Params, _rank, _sub


class MultiHeadAttention(Module):
    """Scaled dot-product self-attention with `num_heads` heads over (N, S, D) input.

    Parameters: q, k, v, o projections, each a `Linear(D, D)`.

    >>> mha = MultiHeadAttention(8, 2); _ = mha.init(0)
    >>> mha(np.ones((3, 5, 8), np.float32)).shape
    (3, 5, 8)
    """

    def __init__(self, d_model: int, num_heads: int):
        if d_model % num_heads:
            raise ModelError(f"MultiHeadAttention: d_model={d_model} must divide by num_heads={num_heads}")
        self.d_model, self.num_heads = int(d_model), int(num_heads)
        self.q, self.k, self.v, self.o = (Linear(d_model, d_model) for _ in range(4))

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """Self-attention over an (N, S, D) `x`; S and D must be static, N may be symbolic.

        >>> import tracer
        >>> mha = MultiHeadAttention(4, 2); p = mha.init(0)
        >>> print(tracer.trace(lambda x: mha.apply(p, x), tracer.TensorSpec(("n", 3, 4))).outputs[0].type)
        f32[n,3,4]
        """
        if _rank(x) != 3 or x.shape[2] != self.d_model:
            raise ModelError(f"MultiHeadAttention: expected (N, S, {self.d_model}), got shape {x.shape}")
        s, h = x.shape[1], self.num_heads
        if not isinstance(s, (int, np.integer)):
            raise ModelError(f"MultiHeadAttention: the sequence length must be static, got {s!r}")
        dh = self.d_model // h

        def heads(name: str) -> Any:  # (N, S, D) -> (N, H, S, Dh)
            y = getattr(self, name).apply(params[name], x)
            return y.reshape(-1, s, h, dh).transpose(0, 2, 1, 3)

        q, k, v = heads("q"), heads("k"), heads("v")
        scores = (q @ k.transpose(0, 1, 3, 2)) * float(1.0 / np.sqrt(dh))
        attn = ops.softmax(scores, axis=-1)
        out = (attn @ v).transpose(0, 2, 1, 3).reshape(-1, s, self.d_model)
        return self.o.apply(params["o"], out)


class TransformerEncoderLayer(Module):
    """Post-norm encoder layer as PyTorch's default: x = norm1(x + attn(x)); x = norm2(x + ff(x)),
    ff = linear2(gelu(linear1(x))).

    >>> layer = TransformerEncoderLayer(8, 2, 16); _ = layer.init(0)
    >>> layer(np.ones((2, 4, 8), np.float32)).shape
    (2, 4, 8)
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float = 0.0,
                 eps: float = 1e-5):
        self.attn = MultiHeadAttention(d_model, num_heads)
        self.linear1 = Linear(d_model, dim_feedforward)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.norm1 = LayerNorm(d_model, eps)
        self.norm2 = LayerNorm(d_model, eps)
        self.dropout = Dropout(dropout)

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """The layer on an (N, S, D) `x`; dropout is applied only when `train`.

        >>> layer = TransformerEncoderLayer(8, 2, 16); p = layer.init(0, np.float64)
        >>> y = layer.apply(p, np.random.default_rng(0).standard_normal((2, 3, 8)))
        >>> y.shape, bool(np.abs(y.mean(axis=-1)).max() < 1e-9)  # ends with a LayerNorm
        ((2, 3, 8), True)
        """
        def drop(y: Any) -> Any:
            return self.dropout.apply({}, y, train=train)

        a = self.attn.apply(params["attn"], x, train, _sub(updates, "attn"))
        x = self.norm1.apply(params["norm1"], x + drop(a))
        f = self.linear2.apply(params["linear2"], ops.gelu(self.linear1.apply(params["linear1"], x)))
        return self.norm2.apply(params["norm2"], x + drop(f))
