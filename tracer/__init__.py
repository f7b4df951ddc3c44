"""Trace NumPy functions into castml's IR.

>>> import numpy as np, tracer
>>> g = tracer.trace(lambda x: np.maximum(x, 0.0), tracer.TensorSpec(("batch", 3), np.float32))
>>> print(g, end="")
graph(%x: f32[batch,3]) {
  %0: f32[] = constant[value=tensor<f32[]: [0.0]>]()
  %1: f32[batch,3] = maximum(%x, %0)
  return %1
}
"""

from . import functions, methods, ops, shape_functions  # noqa: F401  (fill the dispatch tables)
from .api import TensorSpec, trace
from .core import Tracer
from .errors import TraceError
from .grad import custom_vjp, grad, stop_gradient, value_and_grad
from .jit import jit
from .script import script

__all__ = ["trace", "jit", "TensorSpec", "Tracer", "TraceError", "ops", "grad", "value_and_grad", "stop_gradient",
           "custom_vjp", "script"]
