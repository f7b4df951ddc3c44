"""Op families; importing this package fills `ir.registry.REGISTRY`."""

from . import autodiff_ops, control, elementwise, fused, linalg, nn, random, reduce, shape  # noqa: F401
