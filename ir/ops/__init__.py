"""Op families; importing this package fills `ir.registry.REGISTRY`."""

from . import control, elementwise, linalg, nn, reduce, shape  # noqa: F401
from . import autodiff_ops  # noqa: F401,E402  (stop_gradient)
from . import fused  # noqa: F401,E402  (gemm, fused_conv: made by ir.passes)
