"""Errors of the IR layer; all derive from `runtime.CastmlError`."""

from __future__ import annotations

from runtime.errors import CastmlError


class VerifyError(CastmlError, ValueError):
    """A graph breaks an IR invariant (SSA, types, arity, attributes, regions).

    The message names the op (printed) and the problem.
    """


class TypeRuleError(VerifyError):
    """An op's inputs or attributes do not satisfy its type rule."""


class ParseError(CastmlError, ValueError):
    """IR text could not be parsed; names the line and column."""


class InterpretError(CastmlError):
    """Executing an op failed; names the printed op and its source line."""
