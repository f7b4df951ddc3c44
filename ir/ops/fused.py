"""Fused ops made by `ir.passes` (never by the tracer): `gemm` is `act(a @ b + c)` and
`fused_conv` is `act(conv(x, w, b))`. One op instead of three saves a pass over memory per
fusion in any runtime, and maps to ONNX `Gemm`/`Conv` followed by the activation.

`activation` is one of `ACTIVATIONS`; `gelu` is the exact (erf) GELU, `gelu_tanh` the tanh
approximation. Kernels: `runtime.kernels.fused`.

`fused_elementwise` owns a chain of elementwise ops as a region (`ir.passes.fuse_elementwise`);
its kernel (`runtime.kernels.fused_elementwise`) runs the chain into reused buffers.
"""

from __future__ import annotations

from ..errors import TypeRuleError
from ..registry import register
from ..types import TensorType
from .nn import WINDOW, _conv
from .rules import broadcast_shapes, require_kind, same_dtype

ACTIVATIONS = ("none", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh")


def _check_activation(attrs, t: TensorType) -> None:
    act = attrs["activation"]
    if act not in ACTIVATIONS:
        raise TypeRuleError(f"activation must be one of {ACTIVATIONS}, got {act!r}")
    if act != "none":
        require_kind(t, "f", f"input of activation {act!r}")


def _gemm(ts, attrs, regions):
    a, b = ts[0], ts[1]
    dt = same_dtype(ts)
    require_kind(a, "fiu")
    if a.rank < 2 or b.rank != 2:
        raise TypeRuleError(f"gemm needs a of rank >= 2 and b of rank 2, got {a} and {b}")
    if a.shape[-1] != b.shape[0]:
        raise TypeRuleError(f"gemm: contracted dims differ: {a} @ {b}")
    out = a.shape[:-1] + (b.shape[1],)
    if len(ts) == 3 and broadcast_shapes(out, ts[2].shape) != out:
        raise TypeRuleError(f"gemm bias {ts[2]} must broadcast to the product's shape {out}")
    _check_activation(attrs, a)
    return [TensorType(dt, out)]


def _fused_conv(ts, attrs, regions):
    conv_attrs = {k: v for k, v in attrs.items() if k != "activation"}
    (t,) = _conv(ts, conv_attrs, regions)
    _check_activation(attrs, t)
    return [t]


register("gemm", _gemm, arity=(2, 3), attrs={"activation": "str"})
register("fused_conv", _fused_conv, arity=(2, 3), attrs={**WINDOW, "group": "int", "activation": "str"})


def _fused_elementwise(ts, attrs, regions):
    """`fused_elementwise(*xs) regions { (%p0, ...) { elementwise ops; yield %y } }`: the region's
    parameters take the op's inputs (same types); its ops are elementwise (or constants); the
    op's outputs are what the region yields."""
    from ..registry import get_op

    (body,) = regions
    if len(body.inputs) != len(ts):
        raise TypeRuleError(f"fused_elementwise: the region takes {len(body.inputs)} parameters "
                            f"but the op has {len(ts)} inputs")
    for k, (p, t) in enumerate(zip(body.inputs, ts)):
        if p.type != t:
            raise TypeRuleError(f"fused_elementwise: parameter {k} is {p.type} but input {k} is {t}")
    for op in body.ops:
        if op.regions or not (op.kind == "constant" or get_op(op.kind).elementwise):
            raise TypeRuleError(f"fused_elementwise: the region may hold only elementwise ops and constants, "
                                f"got {op.kind!r}")
    if not body.outputs:
        raise TypeRuleError("fused_elementwise: the region yields no values")
    return [v.type for v in body.outputs]


register("fused_elementwise", _fused_elementwise, arity=(1, None), num_regions=1,
         doc="fused_elementwise(*xs) regions {body}: a chain of elementwise ops run as one op")
