"""Op families; importing this package fills `ir.registry.REGISTRY`."""

from . import elementwise, linalg, nn, reduce, shape  # noqa: F401
