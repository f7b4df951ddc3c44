"""Ops that only automatic differentiation needs: `stop_gradient`, an identity through which no
gradient flows (JAX's `lax.stop_gradient`). Its kernel is `runtime.kernels.autodiff_ops`; it
lowers to ONNX `Identity`.
"""

from __future__ import annotations

from ..registry import register


def _identity(ts, attrs, regions):
    return [ts[0]]


register("stop_gradient", _identity, elementwise=True, differentiable=False,
         doc="The input unchanged; its output carries no gradient.")
