"""Every registered op has its facets; a new op cannot be half added.

This file checks the facets of the core (type rule, kernel, attribute schema). The autodiff and
ONNX test modules check `.vjp` and `.onnx` the same way.
"""

from __future__ import annotations

import ir
from ir.registry import ATTR_KINDS
from runtime.kernels import KERNELS, REGION_KERNELS


def test_every_op_has_a_type_rule_and_a_kernel():
    missing = [name for name, d in ir.REGISTRY.items()
               if not callable(d.infer) or (d.kernel_name or name) not in {**KERNELS, **REGION_KERNELS}]
    assert not missing, f"ops without a kernel: {missing}"


def test_every_kernel_belongs_to_an_op():
    orphans = sorted(set(KERNELS) - {d.kernel_name or n for n, d in ir.REGISTRY.items()})
    assert not orphans, f"kernels without an op: {orphans}"


def test_attribute_schemas_use_known_kinds():
    for name, d in ir.REGISTRY.items():
        assert set(d.attrs.values()) <= ATTR_KINDS, name
        assert d.optional <= set(d.attrs), name
