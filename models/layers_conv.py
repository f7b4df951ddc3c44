"""Convolutional layers over NCHW images: Conv2d, BatchNorm2d, MaxPool2d, GlobalAvgPool2d.

Why separate: these are the layers with spatial bookkeeping (kernel, stride, padding) and, for
BatchNorm2d, the only state that changes in training; they build on `models.layers_core.Module`
and `tracer.ops`, so each works eagerly and traced.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracer import ops

from .layers_core import ModelError, Module, Params, _rank


class Conv2d(Module):
    """2-D convolution, weight (out, in/groups, kh, kw), PyTorch's default init (uniform in
    ±1/sqrt(fan_in)).

    >>> Conv2d(1, 4, 3, padding=1)(np.ones((2, 1, 8, 8), np.float32)).shape
    (2, 4, 8, 8)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int = 0, groups: int = 1, bias: bool = True):
        k = (kernel_size, kernel_size) if isinstance(kernel_size, (int, np.integer)) else tuple(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ModelError(f"Conv2d: channels ({in_channels}, {out_channels}) must divide by groups={groups}")
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), k
        self.stride, self.padding, self.groups, self.bias = stride, padding, int(groups), bias

    def init_params(self, rng: np.random.Generator) -> Params:
        """weight (out, in/groups, kh, kw) and bias (out,), uniform in ±1/sqrt(fan_in).

        >>> {k: v.shape for k, v in Conv2d(2, 4, 3).init_params(np.random.default_rng(0)).items()}
        {'weight': (4, 2, 3, 3), 'bias': (4,)}
        """
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / np.sqrt(fan_in)
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        p = {"weight": rng.uniform(-bound, bound, shape)}
        if self.bias:
            p["bias"] = rng.uniform(-bound, bound, (self.out_channels,))
        return p

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """The convolution of an NCHW `x`; other ranks raise `ModelError`.

        >>> Conv2d(1, 1, 2, bias=False).apply({"weight": np.ones((1, 1, 2, 2))}, np.ones((1, 1, 3, 3))).tolist()
        [[[[4.0, 4.0], [4.0, 4.0]]]]
        """
        if _rank(x) != 4:
            raise ModelError(f"Conv2d: expected an NCHW input of rank 4, got rank {_rank(x)}")
        return ops.conv2d(x, params["weight"], params.get("bias"), stride=self.stride, padding=self.padding,
                          groups=self.groups)


class BatchNorm2d(Module):
    """Batch normalization over channel axis 1 of NCHW input.

    Evaluation uses the running statistics; training uses the batch's mean and (biased) variance
    and, when `updates` is given, records running_mean/var moved by `momentum` towards the batch
    statistics (PyTorch moves the variance towards the *unbiased* one; with a symbolic batch
    the count is not a constant, so the biased variance is used).

    >>> bn = BatchNorm2d(3); _ = bn.init(0)
    >>> bn(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3, 4, 4)
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)

    def init_params(self, rng: np.random.Generator) -> Params:
        """weight ones, bias zeros, and the buffers running_mean (zeros) and running_var (ones).

        >>> sorted(BatchNorm2d(3).init_params(np.random.default_rng(0)))
        ['bias', 'running_mean', 'running_var', 'weight']
        """
        c = self.num_features
        return {"weight": np.ones(c), "bias": np.zeros(c), "running_mean": np.zeros(c), "running_var": np.ones(c)}

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """Normalize `x` (see the class docstring); in training, record the new running stats in `updates`.

        >>> bn = BatchNorm2d(1); p = bn.init(0, np.float64); upd = {}
        >>> y = bn.apply(p, np.arange(4.0).reshape(4, 1, 1, 1), train=True, updates=upd)
        >>> y.ravel().round(3).tolist(), round(float(upd["running_mean"][0]), 6)
        ([-1.342, -0.447, 0.447, 1.342], 0.15)
        """
        if _rank(x) != 4:
            raise ModelError(f"BatchNorm2d: expected an NCHW input of rank 4, got rank {_rank(x)}")
        if not train:
            return ops.batch_norm(x, params["running_mean"], params["running_var"], params["weight"],
                                  params["bias"], self.eps)
        mean = np.mean(x, axis=(0, 2, 3))
        var = np.mean(np.square(x - mean.reshape(1, -1, 1, 1)), axis=(0, 2, 3))
        if updates is not None:
            m = self.momentum
            updates["running_mean"] = (1 - m) * params["running_mean"] + m * mean
            updates["running_var"] = (1 - m) * params["running_var"] + m * var
        scale = params["weight"] / np.sqrt(var + self.eps)
        shift = params["bias"] - mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class MaxPool2d(Module):
    """Max pooling (stride defaults to the kernel size).

    >>> MaxPool2d(2)(np.ones((1, 1, 4, 4))).shape
    (1, 1, 2, 2)
    """

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """The maximum of each window of an NCHW `x`.

        >>> MaxPool2d(2).apply({}, np.arange(16.0).reshape(1, 1, 4, 4)).tolist()
        [[[[5.0, 7.0], [13.0, 15.0]]]]
        """
        return ops.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2d(Module):
    """Mean over H and W: (N, C, H, W) -> (N, C).

    >>> GlobalAvgPool2d()(np.ones((2, 3, 4, 4))).shape
    (2, 3)
    """

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """The mean of each channel over axes 2 and 3.

        >>> GlobalAvgPool2d().apply({}, np.arange(8.0).reshape(1, 2, 2, 2)).tolist()
        [[1.5, 5.5]]
        """
        return np.mean(x, axis=(2, 3))
