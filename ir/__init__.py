"""castml's SSA intermediate representation: graphs, types, the op registry, text form,
verifier and reference interpreter.

>>> import numpy as np, tracer, ir
>>> g = tracer.trace(lambda x: np.exp(x) + 1.0, np.float32(0.0))
>>> float(ir.interpret(g, np.float32(0.0)))
2.0
"""

from . import ops as _ops  # noqa: F401  (fills the registry first: the modules below read it)
from . import passes
from .autodiff import grad, vjp
from .errors import InterpretError, ParseError, TypeRuleError, VerifyError
from .graph import Graph, Op, Region, Value
from .interpret import interpret
from .optimize import optimize
from .parser import parse
from .printer import to_text
from .registry import REGISTRY, OpDef, get_op, register
from .types import TensorType
from .verify import verify

__all__ = [
    "Graph", "Op", "Region", "Value", "TensorType", "OpDef", "REGISTRY", "get_op", "register",
    "parse", "to_text", "verify", "interpret", "VerifyError", "TypeRuleError", "ParseError",
    "InterpretError", "grad", "vjp", "optimize", "passes",
]
