"""Losses as plain NumPy functions of (prediction, target), so they run eagerly and traced.

`cross_entropy` works from logits through `log_softmax` (stable for large logits) and takes
integer class labels, one-hot encoded by `tracer.ops.one_hot` inside the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracer import ops

__all__ = ["cross_entropy", "mse", "accuracy", "LOSSES"]


def cross_entropy(logits: Any, labels: Any) -> Any:
    """Mean over the batch of -log softmax(logits)[label]; logits (N, C), labels int (N,).

    >>> round(float(cross_entropy(np.array([[0.0, 0.0]]), np.array([1]))), 6)
    0.693147
    >>> abs(float(cross_entropy(np.array([[1000.0, 0.0]]), np.array([0]))))
    0.0
    """
    logp = ops.log_softmax(logits, axis=-1)
    target = ops.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return -np.mean(np.sum(logp * target, axis=-1))


def mse(pred: Any, target: Any) -> Any:
    """Mean squared error over all elements.

    >>> float(mse(np.array([1.0, 3.0]), np.array([1.0, 1.0])))
    2.0
    """
    return np.mean(np.square(pred - target))


def accuracy(logits: Any, labels: Any) -> Any:
    """Fraction of rows whose argmax is the label (a metric; not differentiable).

    >>> float(accuracy(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1, 1])))
    0.5
    """
    return np.mean((np.argmax(logits, axis=-1) == labels).astype(logits.dtype))


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}
