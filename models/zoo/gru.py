"""A GRU sequence classifier: GRU(16 -> 32) over batch-first sequences, then Linear(32 -> 5) on
the final hidden state. The time loop is scripted (`tracer.script`), so one export runs at any
batch *and* any sequence length: trace it with `TensorSpec(("batch", "seq", 16), np.float32)`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..layers import GRU, Linear, Module, Sequential

FEATURES, HIDDEN, CLASSES, SEQ = 16, 32, 5, 6


def model(features: int = FEATURES, hidden: int = HIDDEN, classes: int = CLASSES) -> Module:
    """GRU(features -> hidden), final state, then Linear(hidden -> classes).

    >>> m = model(3, 4, 2)
    >>> m.apply(m.init(0), np.ones((2, 5, 3), np.float32)).shape
    (2, 2)
    """
    return Sequential([GRU(features, hidden), Linear(hidden, classes)])


def build(seed: int = 0, batch: int = 2, seq: int = SEQ) -> tuple[Callable, tuple]:
    """`(fn, (x, params))`: x float32 (batch, seq, 16), fn(x, params) -> logits (batch, 5).

    >>> fn, (x, params) = build()
    >>> x.shape, fn(x, params).shape
    ((2, 6, 16), (2, 5))
    """
    m = model()
    params = m.init(seed)
    x = np.random.default_rng(seed + 1).standard_normal((batch, seq, FEATURES)).astype(np.float32)

    def fn(x, params):
        return m.apply(params, x)

    return fn, (x, params)
