"""Attach every ONNX lowering to its op's registry entry (`ir.get_op(kind).onnx`).

Why here: the IR must not import ONNX, so the lowering facet is filled in when `exporters` is
imported; `tests/test_onnx_export.py` fails when a registered op has none.
"""

from __future__ import annotations

from ir.registry import REGISTRY

from . import (
    onnx_lowering_control,
    onnx_lowering_elementwise,
    onnx_lowering_nn,
    onnx_lowering_random,
    onnx_lowering_reduce,
    onnx_lowering_shape,
)

LOWERINGS = {**onnx_lowering_elementwise.LOWERINGS, **onnx_lowering_reduce.LOWERINGS,
             **onnx_lowering_shape.LOWERINGS, **onnx_lowering_nn.LOWERINGS, **onnx_lowering_control.LOWERINGS,
             **onnx_lowering_random.LOWERINGS}

# `gemm`/`fused_conv` may also get lowerings from `ir.passes.fused_facets`; whichever is attached
# first is kept, so importing the two in either order gives one lowering per op.
for _kind, _fn in sorted(LOWERINGS.items()):
    if _kind in REGISTRY and REGISTRY[_kind].onnx is None:
        REGISTRY[_kind].onnx = _fn
