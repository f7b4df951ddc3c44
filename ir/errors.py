"""Errors of the IR layer; all derive from `runtime.CastmlError`."""

from __future__ import annotations

from runtime.errors import CastmlError


class VerifyError(CastmlError, ValueError):
    """A graph breaks an IR invariant (SSA, types, arity, attributes, regions).

    The message names the op (printed) and the problem.

    >>> import numpy as np, ir
    >>> g = ir.Graph.from_inputs([("x", ir.TensorType(np.float32, (2,)))])
    >>> g.outputs = [ir.Value(ir.TensorType(np.float32, (2,)), "y")]
    >>> ir.verify(g)
    Traceback (most recent call last):
        ...
    ir.errors.VerifyError: graph: output 0 (Value(%y: f32[2])) is not defined in this region
    """


class TypeRuleError(VerifyError):
    """An op's inputs or attributes do not satisfy its type rule (or its kind is not registered).

    >>> import ir
    >>> ir.get_op("no_such_op")
    Traceback (most recent call last):
        ...
    ir.errors.TypeRuleError: unknown op kind 'no_such_op'
    """


class ParseError(CastmlError, ValueError):
    """IR text could not be parsed; names the line and column.

    >>> import ir
    >>> ir.parse("graph(")
    Traceback (most recent call last):
        ...
    ir.errors.ParseError: line 1, column 7: expected a value name like %3 (at '')
    """


class InterpretError(CastmlError):
    """Executing an op failed; names the printed op and its source line."""
