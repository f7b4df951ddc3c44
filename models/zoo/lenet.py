"""LeNet-5 style CNN for 1x28x28 images: two conv/ReLU/max-pool stages, then three Linear layers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..layers import Conv2d, Flatten, Linear, MaxPool2d, Module, ReLU, Sequential


def model(in_channels: int = 1, size: int = 28, classes: int = 10) -> Module:
    """The CNN for `in_channels`x`size`x`size` input (size divisible by 4, at least 12).

    >>> m = model(1, 16, 3)
    >>> m.apply(m.init(0), np.ones((2, 1, 16, 16), np.float32)).shape
    (2, 3)
    """
    flat = 16 * ((size // 2 - 4) // 2) ** 2
    return Sequential([
        Conv2d(in_channels, 6, 5, padding=2), ReLU(), MaxPool2d(2),
        Conv2d(6, 16, 5), ReLU(), MaxPool2d(2), Flatten(),
        Linear(flat, 120), ReLU(), Linear(120, 84), ReLU(), Linear(84, classes),
    ])


def build(seed: int = 0, batch: int = 2) -> tuple[Callable, tuple]:
    """`(fn, (x, params))`: x float32 (batch, 1, 28, 28), fn(x, params) -> logits (batch, 10).

    >>> fn, args = build()
    >>> fn(*args).shape
    (2, 10)
    """
    m = model()
    params = m.init(seed)
    x = np.random.default_rng(seed + 1).standard_normal((batch, 1, 28, 28)).astype(np.float32)

    def fn(x, params):
        return m.apply(params, x)

    return fn, (x, params)
