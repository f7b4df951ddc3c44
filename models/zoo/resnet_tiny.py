"""A tiny ResNet for 3x32x32 images: a conv stem and three residual blocks (16, 32, 64 channels)
with BatchNorm, global average pooling, a Linear head. `build` uses BatchNorm in evaluation mode
with non-trivial running statistics, so the normalization is really exercised."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tracer import ops

from ..layers import BatchNorm2d, Conv2d, GlobalAvgPool2d, Linear, Module, ReLU, Sequential
from ..layers_core import Params, _sub


class BasicBlock(Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is a strided 1x1 conv + BN
    when the shape changes.

    >>> b = BasicBlock(4, 8, 2); p = b.init(0)
    >>> b.apply(p, np.ones((1, 4, 8, 8), np.float32)).shape
    (1, 8, 4, 4)
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        self.conv1 = Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(cout)
        self.conv2 = Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(cout)
        self.shortcut = (Sequential([Conv2d(cin, cout, 1, stride=stride, bias=False), BatchNorm2d(cout)])
                         if stride != 1 or cin != cout else None)

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        def run(name: str, y: Any) -> Any:
            return getattr(self, name).apply(params[name], y, train, _sub(updates, name))

        y = ops.relu(run("bn1", run("conv1", x)))
        y = run("bn2", run("conv2", y))
        return ops.relu(y + (run("shortcut", x) if self.shortcut is not None else x))


def model(classes: int = 10) -> Module:
    """Stem conv(3->16) + BN + ReLU, blocks 16->16, 16->32 (stride 2), 32->64 (stride 2), pool, Linear.

    >>> len(model().layers)
    8
    """
    return Sequential([
        Conv2d(3, 16, 3, padding=1, bias=False), BatchNorm2d(16), ReLU(),
        BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2),
        GlobalAvgPool2d(), Linear(64, classes),
    ])


def _randomize_batchnorm(params: Any, rng: np.random.Generator) -> Any:
    """Give every BatchNorm non-trivial statistics and affine parameters (as after training)."""
    if not isinstance(params, dict):
        return params
    if "running_var" in params:
        c = params["running_var"].shape[0]
        return {"weight": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, 0.1, c),
                "running_mean": rng.normal(0, 0.1, c), "running_var": rng.uniform(0.5, 1.5, c)}
    return {k: _randomize_batchnorm(v, rng) for k, v in params.items()}


def build(seed: int = 0, batch: int = 2) -> tuple[Callable, tuple]:
    """`(fn, (x, params))`: x float32 (batch, 3, 32, 32), fn(x, params) -> logits (batch, 10),
    BatchNorm in evaluation mode.

    >>> fn, args = build()
    >>> fn(*args).shape
    (2, 10)
    """
    m = model()
    params = m.init(seed)
    rng = np.random.default_rng(seed + 1)
    params = m.params = _as_float32(_randomize_batchnorm(params, rng))
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)

    def fn(x, params):
        return m.apply(params, x)

    return fn, (x, params)


def _as_float32(params: Any) -> Any:
    if isinstance(params, dict):
        return {k: _as_float32(v) for k, v in params.items()}
    return np.asarray(params, np.float32)
