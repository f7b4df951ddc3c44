"""`ir.verify`: SSA, scoping, arity, attributes and types, checked by re-running every op's
type rule on the stored input types (as `jax.core.check_jaxpr` and torch.fx `lint` do)."""

from __future__ import annotations

from .errors import TypeRuleError, VerifyError
from .graph import Graph, Region
from .registry import REGISTRY, get_op

MAX_REGION_DEPTH = 16


def verify(g: Graph) -> Graph:
    """Check every invariant of `g`; raise `ir.VerifyError` naming the op and the problem.

    >>> import tracer
    >>> verify(tracer.trace(lambda x: x + 1.0, 2.0)) is not None
    True
    """
    if len(g.inputs) != len({id(v) for v in g.inputs}):
        raise VerifyError("graph inputs repeat a value")
    _verify_region(g, set(), set(), 0, "graph")
    return g


def _verify_region(r: Region, visible: set[int], defined_anywhere: set[int], depth: int, where: str) -> None:
    from .printer import format_op

    if depth > MAX_REGION_DEPTH:
        raise VerifyError(f"{where}: regions nested deeper than {MAX_REGION_DEPTH}")
    scope = set(visible)
    for v in r.inputs:
        if id(v) in defined_anywhere:
            raise VerifyError(f"{where}: input {v} is defined twice")
        if v.producer is not None:
            raise VerifyError(f"{where}: input {v} is also the output of an op")
        defined_anywhere.add(id(v))
        scope.add(id(v))
    for op in r.ops:
        text = format_op(op)
        if op.kind not in REGISTRY:
            raise VerifyError(f"{where}: unknown op kind {op.kind!r} in: {text}")
        for i, v in enumerate(op.inputs):
            if id(v) not in scope:
                raise VerifyError(f"{where}: input {i} of `{text}` is used before it is defined "
                                  "(or is not visible in this region)")
        for j, inner in enumerate(op.regions):
            _verify_region(inner, scope, defined_anywhere, depth + 1, f"region {j} of {op.kind}")
        try:
            types = get_op(op.kind).infer_types(op)
        except TypeRuleError as e:
            raise VerifyError(f"{where}: `{text}`: {e}") from None
        if len(types) != len(op.outputs):
            raise VerifyError(f"{where}: `{text}` has {len(op.outputs)} outputs, its rule gives {len(types)}")
        for k, (v, t) in enumerate(zip(op.outputs, types)):
            if v.type != t:
                raise VerifyError(f"{where}: `{text}`: output {k} is typed {v.type} but the rule gives {t}")
            if v.producer is not op or v.index != k:
                raise VerifyError(f"{where}: `{text}`: output {k} does not point back to its op")
            if id(v) in defined_anywhere:
                raise VerifyError(f"{where}: `{text}`: output {k} is defined twice")
            defined_anywhere.add(id(v))
            scope.add(id(v))
    for i, v in enumerate(r.outputs):
        if id(v) not in scope:
            raise VerifyError(f"{where}: output {i} ({v}) is not defined in this region")
