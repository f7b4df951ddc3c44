"""Optimizers as pure functions over parameter pytrees: `state = opt.init(params)` and
`params, state = opt.update(params, grads, state)`. Both are plain NumPy, so a whole training
step (forward, gradient, update) can be traced into one graph and the state carried as ordinary
inputs and outputs. Hyperparameters are Python floats and become constants of the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from runtime import pytree

__all__ = ["SGD", "Adam", "OPTIMIZERS", "tree_map"]


def tree_map(fn: Callable, tree: Any, *rest: Any) -> Any:
    """Apply `fn` leafwise to pytrees of the same structure.

    >>> tree_map(lambda a, b: a + b, {"w": 1, "b": (2,)}, {"w": 10, "b": (20,)})
    {'w': 11, 'b': (22,)}
    """
    leaves, td = pytree.flatten(tree)
    others = [pytree.flatten(r)[0] for r in rest]
    return pytree.unflatten(td, [fn(*xs) for xs in zip(leaves, *others)])


def _zeros_like(x: Any) -> Any:
    return np.zeros_like(x)


class SGD:
    """Stochastic gradient descent with momentum and (L2) weight decay, as `torch.optim.SGD`
    (dampening 0): g += wd*p; buf = momentum*buf + g; p -= lr*buf (nesterov: p -= lr*(g + momentum*buf)).

    >>> opt = SGD(lr=0.1)
    >>> p, s = opt.update({"w": np.array(1.0)}, {"w": np.array(2.0)}, opt.init({"w": np.array(1.0)}))
    >>> float(p["w"])
    0.8
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.nesterov = bool(nesterov)

    def init(self, params: Any) -> dict:
        """Optimizer state: the momentum buffers (zeros like params), or {} without momentum.

        >>> SGD().init({"w": np.ones(2)}), SGD(momentum=0.9).init({"w": np.ones(2)})["momentum"]["w"].tolist()
        ({}, [0.0, 0.0])
        """
        return {"momentum": tree_map(_zeros_like, params)} if self.momentum else {}

    def update(self, params: Any, grads: Any, state: dict) -> tuple[Any, dict]:
        """One step; returns (new params, new state).

        >>> opt = SGD(lr=0.1, momentum=0.9); p = {"w": np.array(1.0)}; s = opt.init(p)
        >>> for _ in range(2): p, s = opt.update(p, {"w": np.array(1.0)}, s)
        >>> round(float(p["w"]), 6), float(s["momentum"]["w"])
        (0.71, 1.9)
        """
        if self.weight_decay:
            grads = tree_map(lambda g, p: g + self.weight_decay * p, grads, params)
        if not self.momentum:
            return tree_map(lambda p, g: p - self.lr * g, params, grads), state
        buf = tree_map(lambda b, g: self.momentum * b + g, state["momentum"], grads)
        step = tree_map(lambda g, b: g + self.momentum * b, grads, buf) if self.nesterov else buf
        return tree_map(lambda p, d: p - self.lr * d, params, step), {"momentum": buf}


class Adam:
    """Adam (Kingma & Ba) with bias correction and optional L2 weight decay, as `torch.optim.Adam`.
    The step count is a float scalar in the state, so the traced step can be run repeatedly.

    >>> opt = Adam(lr=0.1)
    >>> p, s = opt.update({"w": np.array(1.0)}, {"w": np.array(2.0)}, opt.init({"w": np.array(1.0)}))
    >>> round(float(p["w"]), 6)
    0.9
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.b1, self.b2 = float(betas[0]), float(betas[1])

    def init(self, params: Any) -> dict:
        """State: step (a 0-d array of the parameters' float dtype), first and second moments.

        >>> s = Adam().init({"w": np.ones(2, np.float32)})
        >>> s["step"].dtype, s["m"]["w"].tolist(), s["v"]["w"].tolist()
        (dtype('float32'), [0.0, 0.0], [0.0, 0.0])
        """
        leaves = pytree.flatten(params)[0]
        dtype = np.asarray(leaves[0]).dtype if leaves else np.float32
        return {"step": np.zeros((), dtype), "m": tree_map(_zeros_like, params), "v": tree_map(_zeros_like, params)}

    def update(self, params: Any, grads: Any, state: dict) -> tuple[Any, dict]:
        """One step; returns (new params, new state).

        >>> opt = Adam(lr=0.1); p = {"w": np.array(1.0)}
        >>> p, s = opt.update(p, {"w": np.array(2.0)}, opt.init(p))
        >>> float(s["step"]), round(float(s["m"]["w"]), 6), round(float(p["w"]), 6)
        (1.0, 0.2, 0.9)
        """
        if self.weight_decay:
            grads = tree_map(lambda g, p: g + self.weight_decay * p, grads, params)
        t = state["step"] + 1.0
        m = tree_map(lambda m, g: self.b1 * m + (1.0 - self.b1) * g, state["m"], grads)
        v = tree_map(lambda v, g: self.b2 * v + (1.0 - self.b2) * (g * g), state["v"], grads)
        c1 = 1.0 - np.power(np.asarray(self.b1, t.dtype), t)
        c2 = 1.0 - np.power(np.asarray(self.b2, t.dtype), t)
        new = tree_map(lambda p, m, v: p - self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps), params, m, v)
        return new, {"step": t, "m": m, "v": v}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
