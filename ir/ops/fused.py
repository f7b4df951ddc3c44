"""Fused ops made by `ir.passes` (never by the tracer): `gemm` is `act(a @ b + c)` and
`fused_conv` is `act(conv(x, w, b))`. One op instead of three saves a pass over memory per
fusion in any runtime, and maps to ONNX `Gemm`/`Conv` followed by the activation.

`activation` is one of `ACTIVATIONS`; `gelu` is the exact (erf) GELU, `gelu_tanh` the tanh
approximation. Kernels: `runtime.kernels.fused`.
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
