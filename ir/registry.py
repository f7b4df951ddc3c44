"""The op registry: one `OpDef` per op kind collecting all of its facets.

Facets: the attribute schema, the type rule (run when an op is created and again by the
verifier), the kernel (by name, from `runtime.kernels`, shared with the runtime), the VJP rule
(filled in by `ir.autodiff`), and the ONNX lowering (filled in by `exporters`). Op properties
that passes query (`commutative`, `elementwise`, `differentiable`) are plain flags.
`tests/test_registry.py` fails when an op lacks a facet, so an op cannot be half added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import TypeRuleError

# Attribute kinds: "int", "float", "bool", "str", "dtype", "ints", "floats", "dims"
# (tuple of int or symbolic dims; strings inside tuples are always dims), "tensor" (np.ndarray).
ATTR_KINDS = frozenset({"int", "float", "bool", "str", "dtype", "ints", "floats", "dims", "tensor"})


@dataclass
class OpDef:
    """Everything castml knows about one op kind.

    >>> get_op("add").commutative
    True
    """

    name: str
    infer: Callable[..., list]  # (input_types, attrs, regions) -> [TensorType]
    arity: tuple[int, int | None] = (1, 1)  # min, max inputs (None: any number)
    attrs: dict[str, str] = field(default_factory=dict)  # name -> kind
    optional: frozenset = frozenset()  # attrs that may be absent
    kernel_name: str | None = None  # defaults to `name`
    commutative: bool = False
    elementwise: bool = False
    differentiable: bool = True  # False: integer/bool/shape ops, whose outputs carry no gradient
    vjp: Callable | None = None  # set by ir.autodiff
    onnx: Callable | None = None  # set by exporters.onnx
    num_regions: int = 0
    doc: str = ""

    @property
    def kernel(self) -> Callable:
        """The runtime kernel (shared by `ir.interpret`, constant folding and the runtime)."""
        from runtime.kernels import KERNELS

        return KERNELS[self.kernel_name or self.name]

    def infer_types(self, op) -> list:
        """Run the type rule for an op; raises `TypeRuleError` naming the op.

        >>> import numpy as np, tracer
        >>> op = tracer.trace(lambda x: x.sum(axis=0), np.zeros((2, 3), np.float32)).ops[0]
        >>> [str(t) for t in get_op(op.kind).infer_types(op)]
        ['f32[3]']
        """
        n = len(op.inputs)
        lo, hi = self.arity
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'n'}"
            raise TypeRuleError(f"{self.name}: expected {want} inputs, got {n}")
        if len(op.regions) != self.num_regions:
            raise TypeRuleError(f"{self.name}: expected {self.num_regions} regions, got {len(op.regions)}")
        check_attrs(self, op.attrs)
        try:
            return list(self.infer([v.type for v in op.inputs], op.attrs, op.regions))
        except (TypeError, ValueError, KeyError, IndexError) as e:  # TypeRuleError is a ValueError
            msg = str(e)
            raise TypeRuleError(msg if msg.startswith(self.name) else f"{self.name}: {msg}") from None


REGISTRY: dict[str, OpDef] = {}


def register(name: str, infer: Callable, **facets: Any) -> OpDef:
    """Add an op kind to the registry (once).

    >>> get_op("exp").elementwise
    True
    """
    if name in REGISTRY:
        raise ValueError(f"op {name!r} is registered twice")
    d = OpDef(name, infer, **facets)
    bad = {k: v for k, v in d.attrs.items() if v not in ATTR_KINDS}
    if bad:
        raise ValueError(f"op {name!r}: unknown attribute kinds {bad}")
    REGISTRY[name] = d
    return d


def get_op(name: str) -> OpDef:
    """The registry entry of an op kind; raises `TypeRuleError` for unknown kinds.

    >>> get_op("matmul").name
    'matmul'
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise TypeRuleError(f"unknown op kind {name!r}") from None


def _is_dim(x) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or isinstance(x, str)


_ATTR_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, float),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "dtype": lambda v: hasattr(v, "kind") and hasattr(v, "itemsize"),
    "ints": lambda v: isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
    "floats": lambda v: isinstance(v, tuple) and all(isinstance(x, float) for x in v),
    "dims": lambda v: isinstance(v, tuple) and all(_is_dim(x) for x in v),
    "tensor": lambda v: hasattr(v, "dtype") and hasattr(v, "shape") and hasattr(v, "tobytes"),
}


def check_attrs(d: OpDef, attrs: dict) -> None:
    """Check attribute names and kinds against an op's schema."""
    if not attrs and not d.attrs:  # most ops (tracing checks every op it records)
        return
    unknown = sorted(set(attrs) - set(d.attrs))
    if unknown:
        raise TypeRuleError(f"{d.name}: unknown attributes {unknown}; expected {sorted(d.attrs)}")
    for name, kind in d.attrs.items():
        if name not in attrs:
            if name not in d.optional:
                raise TypeRuleError(f"{d.name}: missing attribute {name!r} ({kind})")
            continue
        if not _ATTR_CHECKS[kind](attrs[name]):
            v = attrs[name]
            raise TypeRuleError(f"{d.name}: attribute {name!r} must be {kind}, got {type(v).__name__} {v!r:.60}")
