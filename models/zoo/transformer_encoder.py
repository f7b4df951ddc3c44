"""The benchmarks' transformer encoder: 6 post-norm layers, d_model 256, 4 heads, feed-forward
1024, sequence length 128, over float input embeddings plus a learned positional embedding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..layers import Module, TransformerEncoderLayer
from ..layers_core import Params


class TransformerEncoder(Module):
    """x + pos, then `num_layers` encoder layers; input (N, seq_len, d_model).

    >>> m = TransformerEncoder(2, 8, 2, 16, 4); p = m.init(0)
    >>> m.apply(p, np.ones((3, 4, 8), np.float32)).shape
    (3, 4, 8)
    """

    def __init__(self, num_layers: int = 6, d_model: int = 256, num_heads: int = 4, dim_feedforward: int = 1024,
                 seq_len: int = 128):
        self.seq_len, self.d_model = int(seq_len), int(d_model)
        self.layers = [TransformerEncoderLayer(d_model, num_heads, dim_feedforward) for _ in range(num_layers)]

    def init_params(self, rng: np.random.Generator) -> Params:
        p: Params = {"pos": rng.normal(0.0, 0.02, (self.seq_len, self.d_model))}
        for i, layer in enumerate(self.layers):
            p[f"layer{i}"] = layer.init_params(rng)
        return p

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        x = x + params["pos"]
        for i, layer in enumerate(self.layers):
            x = layer.apply(params[f"layer{i}"], x, train)
        return x


def model() -> Module:
    """The benchmark configuration (6 layers, d=256, 4 heads, ff 1024, seq 128).

    >>> len(model().layers)
    6
    """
    return TransformerEncoder()


def build(seed: int = 0, batch: int = 2) -> tuple[Callable, tuple]:
    """`(fn, (x, params))`: x float32 (batch, 128, 256), fn(x, params) -> (batch, 128, 256).

    >>> fn, (x, params) = build()
    >>> fn(x, params).shape
    (2, 128, 256)
    """
    m = model()
    params = m.init(seed)
    x = np.random.default_rng(seed + 1).standard_normal((batch, 128, 256)).astype(np.float32)

    def fn(x, params):
        return m.apply(params, x)

    return fn, (x, params)
