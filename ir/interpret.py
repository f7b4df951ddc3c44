"""`ir.interpret`: run a graph on NumPy values with the runtime's kernels (the reference).

The graph is lowered to the runtime's `Program` (one execution loop shared with `Session`), so
every op runs exactly the kernel that a deployed model runs.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from runtime import pytree
from runtime.errors import RuntimeInputError
from runtime.executor import Program, ProgramSpec, StepSpec, TypeSpec

from .graph import Graph, Region, input_names
from .printer import _Namer, format_op


def to_program_spec(g: Graph) -> ProgramSpec:
    """Number every value of `g` (regions included) and describe its ops as executor steps."""
    ids: dict[int, int] = {}

    def vid(v) -> int:
        return ids.setdefault(id(v), len(ids))

    namer = _Namer()
    for v in g.inputs:
        namer.bind_input(v)

    def region(r: Region, names=()) -> ProgramSpec:
        inputs = [vid(v) for v in r.inputs]
        steps = []
        for op in r.ops:
            label = format_op(op, namer).split("\n")[0]  # the op as `print(graph)` shows it
            subs = [region(x) for x in op.regions]
            steps.append(StepSpec(op.kind, [vid(v) for v in op.inputs], [vid(v) for v in op.outputs],
                                  op.attrs, [TypeSpec(v.dtype, v.shape) for v in op.outputs], label, subs))
        return ProgramSpec(inputs, [TypeSpec(v.dtype, v.shape) for v in r.inputs], steps,
                           [vid(v) for v in r.outputs], names)

    return region(g, input_names(g))


def flatten_args(g: Graph, args: tuple, kwargs: dict) -> list:
    """Match positional/keyword arguments to the graph's signature and flatten the pytrees."""
    n = len(g.arg_names)
    if kwargs:
        params = [inspect.Parameter(a if a.isidentifier() else f"arg{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  for i, a in enumerate(g.arg_names)]
        try:
            bound = inspect.Signature(params).bind(*args, **kwargs)
        except TypeError as e:
            raise RuntimeInputError(f"arguments do not match ({', '.join(g.arg_names)}): {e}") from None
        args = tuple(bound.arguments[p.name] for p in params if p.name in bound.arguments)
    if len(args) != n:
        raise RuntimeInputError(f"expected {n} arguments ({', '.join(g.arg_names)}), got {len(args)}")
    leaves, tree = pytree.flatten(tuple(args))
    if tree != g.in_tree:
        raise RuntimeInputError(f"argument structure {tree} does not match the traced {g.in_tree}")
    return leaves


def interpret(g: Graph, *args: Any, **kwargs: Any) -> Any:
    """Run `g` on concrete arguments (positional, or keywords by parameter name).

    Returns the same pytree the traced function returned, with NumPy arrays as leaves.

    >>> import tracer
    >>> g = tracer.trace(lambda x: x * x, 2.0)
    >>> float(interpret(g, 3.0))
    9.0
    """
    leaves = flatten_args(g, args, kwargs)
    outs = Program(to_program_spec(g)).run(leaves)
    return pytree.unflatten(g.out_tree, [np.asarray(o) for o in outs])
