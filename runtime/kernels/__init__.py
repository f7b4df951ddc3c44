"""NumPy kernels, one per IR op kind, shared by `ir.interpret`, constant folding and `Session`.

A kernel is `fn(*inputs, **attrs) -> array | tuple[array, ...]`; it never mutates its inputs.
"""

from __future__ import annotations

from . import control, elementwise, nn, reduce, shape, special

KERNELS: dict = {}
# Ops with regions (If/Loop) run through the executor instead:
#   fn(step, inputs, env, slots, **attrs) -> outputs, where step.regions are executor Programs.
REGION_KERNELS: dict = dict(control.REGION_KERNELS)
for _module in (elementwise, reduce, shape):
    KERNELS.update(_module.KERNELS)

KERNELS.update({
    name: getattr(special, name)
    for name in ("erf", "normal_cdf", "gelu", "sigmoid", "softplus", "softsign", "selu", "elu", "celu", "leaky_relu",
                 "prelu", "hard_sigmoid", "hard_swish", "relu", "thresholded_relu")
})
KERNELS.update({
    name: getattr(nn, name)
    for name in ("conv", "conv_transpose", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool",
                 "softmax", "log_softmax", "layer_norm", "batch_norm", "instance_norm", "lrn", "pad",
                 "depth_to_space", "space_to_depth", "one_hot")
})

from . import autodiff_ops  # noqa: E402

KERNELS.update(autodiff_ops.KERNELS)

from . import fused  # noqa: E402

KERNELS.update(fused.KERNELS)

from . import fused_elementwise  # noqa: E402

REGION_KERNELS.update(fused_elementwise.REGION_KERNELS)

from . import random  # noqa: E402

KERNELS.update(random.KERNELS)
