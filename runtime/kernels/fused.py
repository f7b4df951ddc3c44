"""Kernels of the fused ops that `ir.passes` creates: `gemm` = act(a @ b + c) and
`fused_conv` = act(conv(x, w, b)). They call the very kernels of the unfused ops, so fusion
never changes results beyond what reusing one buffer does (nothing, for NumPy).
"""

from __future__ import annotations

import numpy as np

from . import nn, special

ACTIVATIONS = {
    "none": lambda y: y,
    "relu": special.relu,
    "sigmoid": special.sigmoid,
    "tanh": np.tanh,
    "gelu": lambda y: special.gelu(y, approximate="none"),
    "gelu_tanh": lambda y: special.gelu(y, approximate="tanh"),
}


def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, *, activation: str) -> np.ndarray:
    """`act(a @ b + c)`.

    >>> gemm(np.ones((1, 2)), np.ones((2, 2)), np.array([-3.0, 1.0]), activation="relu")
    array([[0., 3.]])
    """
    y = np.matmul(a, b)
    if c is not None:
        y = np.add(y, c)
    return ACTIVATIONS[activation](y)


def fused_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, strides: tuple, pads: tuple,
               dilations: tuple, group: int, activation: str) -> np.ndarray:
    """`act(conv(x, w, b))` with ONNX Conv semantics.

    >>> fused_conv(np.ones((1, 1, 3)), np.ones((1, 1, 2)), np.array([-2.5]), strides=(1,), pads=(0, 0),
    ...            dilations=(1,), group=1, activation="relu")
    array([[[0., 0.]]])
    """
    args = (x, w) if b is None else (x, w, b)
    return ACTIVATIONS[activation](nn.conv(*args, strides=strides, pads=pads, dilations=dilations, group=group))


KERNELS = {"gemm": gemm, "fused_conv": fused_conv}
