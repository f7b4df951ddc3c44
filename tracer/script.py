"""`tracer.script`: data-dependent control flow recorded as `if`/`loop` ops.

Tracing records one path through Python control flow. `script` reads the function's source,
rewrites `if`/`elif`/`else`, `for ... in range(...)`, `while`, `break`, `continue` and early
`return` into calls that decide at run time (`tracer.script_rewrite`, `tracer.script_runtime`):
on Python values they run Python control flow, on traced values they record `if` and `loop`
ops with regions, as TensorFlow's AutoGraph does. The result is still a plain callable: on
NumPy arrays it runs the original function eagerly; under `tracer.trace`, `tracer.grad` or
`tracer.jit` it records the control flow (`tracer.grad` follows the concrete values instead).
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import types
from collections.abc import Callable
from typing import Any

from runtime import pytree

from . import script_runtime
from .core import Tracer, current
from .errors import TraceError
from .script_rewrite import RT, rewrite_function

_FACTORY = "_cs_factory"


def script(fn: Callable) -> Callable:
    """Make `fn`'s control flow traceable; returns a callable (never a graph).

    >>> import numpy as np, tracer
    >>> @tracer.script
    ... def relu_sum(x):
    ...     if x.sum() > 0:
    ...         y = x
    ...     else:
    ...         y = -x
    ...     return y
    >>> relu_sum(np.array([-1.0, -2.0]))
    array([1., 2.])
    >>> g = tracer.trace(relu_sum, np.zeros(2))
    >>> [op.kind for op in g.ops][-1]
    'if'
    """
    if getattr(fn, "__castml_script__", False):
        return fn
    converted = convert(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = current()
        if ctx is None and not any(isinstance(x, Tracer) for x in pytree.flatten((args, kwargs))[0]):
            return fn(*args, **kwargs)
        if ctx is None or ctx.concrete:
            return converted(*args, **kwargs)
        region = ctx.region
        start = len(region.ops)
        result = converted(*args, **kwargs)
        _check_no_escape(region.ops[start:], result, fn)
        return result

    wrapper.__castml_script__ = True
    wrapper.__castml_converted__ = converted
    return wrapper


def _source_of(fn: Callable) -> tuple[ast.FunctionDef, str]:
    name = getattr(fn, "__qualname__", repr(fn))
    if not isinstance(fn, types.FunctionType):
        raise TraceError(f"tracer.script needs a Python function defined with `def`, got {type(fn).__name__} {name}")
    filename = fn.__code__.co_filename
    if fn.__name__ == "<lambda>":
        raise TraceError(f"{filename}:{fn.__code__.co_firstlineno}: tracer.script needs a function defined with "
                         "`def`, not a lambda (a lambda has no statements to convert; trace it directly)")
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError) as e:
        raise TraceError(f"tracer.script cannot read the source of {name} ({filename}): {e}; define it in a file"
                         ) from None
    tree = ast.parse(textwrap.dedent("".join(lines)))
    fdef = tree.body[0]
    if not isinstance(fdef, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise TraceError(f"{filename}:{first}: tracer.script expected a function definition for {name}")
    ast.increment_lineno(tree, first - 1)
    return fdef, filename


def convert(fn: Callable) -> Callable:
    """The rewritten function (same globals, closure cells, defaults); see the module docstring.

    Unsupported constructs raise `TraceError` naming file:line.
    """
    fdef, filename = _source_of(fn)
    rewrite_function(fdef, filename)
    freevars = list(fn.__code__.co_freevars)
    factory = ast.FunctionDef(name=_FACTORY, args=ast.arguments(
        posonlyargs=[], args=[ast.arg(arg=n) for n in [RT] + freevars], vararg=None, kwonlyargs=[],
        kw_defaults=[], kwarg=None, defaults=[]), body=[fdef, ast.Return(value=ast.Name(fdef.name, ast.Load()))],
        decorator_list=[], returns=None, type_comment=None)
    ast.copy_location(factory, fdef)
    module = ast.Module(body=[factory], type_ignores=[])
    ast.fix_missing_locations(module)
    _strip_annotations(fdef)
    code = compile(module, filename, "exec", dont_inherit=True)
    factory_code = next(c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == _FACTORY)
    inner = next(c for c in factory_code.co_consts if isinstance(c, types.CodeType) and c.co_name == fdef.name)
    cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
    cells[RT] = types.CellType(script_runtime)
    closure = tuple(cells[n] for n in inner.co_freevars)
    out = types.FunctionType(inner, fn.__globals__, fn.__name__, fn.__defaults__, closure)
    out.__kwdefaults__ = fn.__kwdefaults__
    out.__qualname__ = fn.__qualname__
    out.__doc__ = fn.__doc__
    return out


def _strip_annotations(fdef: ast.FunctionDef) -> None:
    """Annotations are never evaluated in the rewritten copy (they may name local classes)."""
    a = fdef.args
    for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x is not None]:
        arg.annotation = None
    fdef.returns = None


def _check_no_escape(ops: list, result: Any, fn: Callable) -> None:
    """Refuse values recorded inside a branch or loop body that reach code outside it through a
    side channel (a list appended to, an attribute set) rather than a variable: the graph would
    be wrong."""
    inner: dict[int, Any] = {}
    for op in ops:
        for r in op.regions:
            for sub in [r, *(x for o in r.walk() for x in o.regions)]:
                for v in sub.inputs:
                    inner[id(v)] = op
                for o in sub.ops:
                    for v in o.outputs:
                        inner[id(v)] = op

    def check(values, where: str, visible: set[int]) -> None:
        for v in values:
            if id(v) in inner and id(v) not in visible:
                owner = inner[id(v)]
                raise TraceError(
                    f"{owner.loc or fn.__qualname__}: a value computed inside this `{owner.kind}` escapes it through "
                    f"a side channel (used by {where}); keep it in a variable assigned in the branch or loop "
                    "body (lists appended to inside traced control flow are not carried)")

    def walk(region_ops: list, visible: set[int]) -> None:
        for op in region_ops:
            check(op.inputs, f"`{op.kind}`", visible)
            for r in op.regions:
                inside = visible | {id(v) for v in r.inputs}
                walk(r.ops, inside)
                check(r.outputs, f"the `{op.kind}` region's yield", inside | {id(v) for o in r.ops for v in o.outputs})
            visible |= {id(v) for v in op.outputs}

    walk(ops, set())
    leaves = [x._value for x in pytree.flatten(result)[0] if isinstance(x, Tracer)] if _flattenable(result) else []
    check(leaves, "the function's result", {id(v) for op in ops for v in op.outputs})


def _flattenable(x: Any) -> bool:
    try:
        pytree.flatten(x)
    except (TypeError, ValueError):
        return False
    return True
