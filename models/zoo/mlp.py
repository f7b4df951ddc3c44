"""The MLP 784-512-512-10 with ReLU (the benchmarks' MLP): logits for flattened 28x28 images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..layers import Linear, Module, ReLU, Sequential


def model(sizes: tuple[int, ...] = (784, 512, 512, 10)) -> Module:
    """The layer stack: Linear/ReLU pairs, no activation after the last Linear.

    >>> len(model((4, 3, 2)).layers)
    3
    """
    layers: list[Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ReLU())
    return Sequential(layers)


def build(seed: int = 0, batch: int = 2) -> tuple[Callable, tuple]:
    """`(fn, (x, params))`: x float32 (batch, 784), fn(x, params) -> logits (batch, 10).

    >>> fn, (x, params) = build()
    >>> x.shape, fn(x, params).dtype
    ((2, 784), dtype('float32'))
    """
    m = model()
    params = m.init(seed)
    x = np.random.default_rng(seed + 1).standard_normal((batch, 784)).astype(np.float32)

    def fn(x, params):
        return m.apply(params, x)

    return fn, (x, params)
