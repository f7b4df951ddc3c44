"""Eager-style gradients, as `jax.grad`: `grad`, `value_and_grad`, `stop_gradient`, `custom_vjp`.

`grad(f)(x)` traces `f` in *concrete* mode (each tracer carries its NumPy value, so Python
control flow follows the numbers), builds `ir.grad` of the graph and runs it with
`ir.interpret`. Called inside another trace (nested `grad`, or `grad` inside `tracer.trace`),
it does not run anything: the gradient graph's ops are replayed into the enclosing trace, so
`grad(lambda x: grad(f)(x).sum())` differentiates the gradient again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import ir
from ir.graph import Graph
from runtime import pytree

from .api import trace_into
from .core import Tracer, current, emit, lift
from .errors import TraceError


def _has_tracer(tree: Any) -> bool:
    return any(isinstance(leaf, Tracer) for leaf in pytree.flatten(tree)[0])


def replay(g: Graph, inputs: Sequence[Any]) -> Any:
    """Record `g`'s ops into the current trace on `inputs` (one per input leaf of `g`); returns
    the result pytree of tracers. This is how a graph built inside a trace is inlined there.

    >>> import tracer
    >>> sq = tracer.trace(lambda x: x * x, 2.0)
    >>> print(tracer.trace(lambda y: replay(sq, [y]) + 1.0, 3.0).ops[0].kind)
    mul
    """
    ctx = current()
    if ctx is None:
        raise TraceError("replay needs an active trace")
    env = {id(v): lift(x, ctx, v.dtype) for v, x in zip(g.inputs, inputs)}
    for op in g.ops:
        if op.regions:
            raise TraceError(f"cannot inline a gradient graph with control flow ({op.kind}) into a trace")
        outs = emit(op.kind, [env[id(v)] for v in op.inputs], op.attrs, ctx=ctx)
        for v, t in zip(op.outputs, outs if isinstance(outs, tuple) else (outs,)):
            env[id(v)] = t
    return pytree.unflatten(g.out_tree, [env[id(v)] for v in g.outputs])


def _value_and_grad(fn: Callable, argnums: int | Sequence[int], args: tuple) -> tuple[Any, Any]:
    outer = current()
    concrete = outer is None or outer.concrete
    g, outs, captured = trace_into(fn, args, concrete=concrete)
    if len(outs) != 1:
        raise TraceError(f"grad: the function must return one float scalar, it returned {len(outs)} arrays; "
                         "differentiate one output (or their sum)")
    gg = ir.grad(g, wrt=argnums, with_value=True)
    if outer is None and not captured:
        return ir.interpret(gg, *args)
    return replay(gg, pytree.flatten(args)[0] + list(captured))


def value_and_grad(fn: Callable, argnums: int | Sequence[int] = 0) -> Callable:
    """`fn` -> a function returning `(fn(*args), gradient)`, as `jax.value_and_grad`.

    `argnums` picks the argument(s): an int gives that argument's gradient (same pytree), a
    tuple a tuple of them. `fn` must return a float scalar.

    >>> value, (dx, dw) = value_and_grad(lambda x, w: x * w, argnums=(0, 1))(2.0, 3.0)
    >>> float(value), float(dx), float(dw)
    (6.0, 3.0, 2.0)
    """
    @functools.wraps(fn)
    def wrapped(*args: Any) -> tuple[Any, Any]:
        return _value_and_grad(fn, argnums, args)
    return wrapped


def grad(fn: Callable, argnums: int | Sequence[int] = 0) -> Callable:
    """`fn` -> a function returning the gradient of `fn` (a float scalar) at its arguments.

    Python control flow on traced values follows the concrete arguments, as in `jax.grad`.

    >>> float(grad(lambda x: x ** 2)(2.0))
    4.0
    >>> float(grad(lambda x: grad(lambda y: y ** 3)(x))(2.0))  # d²/dx² x³ = 6x
    12.0
    """
    @functools.wraps(fn)
    def wrapped(*args: Any) -> Any:
        return _value_and_grad(fn, argnums, args)[1]
    return wrapped


def stop_gradient(x: Any) -> Any:
    """`x` unchanged, but no gradient flows through it (a pytree of arrays or tracers).

    >>> float(grad(lambda x: x * stop_gradient(x))(3.0))
    3.0
    """
    leaves, tree = pytree.flatten(x)
    return pytree.unflatten(tree, [emit("stop_gradient", [v]) if isinstance(v, Tracer) else np.asarray(v)
                                   for v in leaves])


class custom_vjp:  # noqa: N801  (named like the JAX decorator it mirrors)
    """A function with a hand-written backward pass, as `jax.custom_vjp`.

    `fwd(*args) -> (output, residuals)`; `bwd(residuals, cotangent) -> tuple` with one
    cotangent per positional argument (None for non-float ones). Unlike JAX, `bwd` must be
    linear in the cotangent (a true VJP; gradient clipping inside `bwd` is not supported). In a trace the output is
    `stop_gradient(output) + L(x - stop_gradient(x))`, where `L` is the transpose of `bwd`
    (built by differentiating `bwd`'s graph w.r.t. the cotangent): its value is zero and its
    gradient is exactly `bwd`. Residuals carry no gradient, so higher derivatives see only `bwd`.

    >>> @custom_vjp
    ... def square(x):
    ...     return x * x
    >>> square.defvjp(lambda x: (x * x, x), lambda x, ct: (10.0 * ct,))
    >>> float(grad(square)(3.0))
    10.0
    """

    def __init__(self, fun: Callable):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.fwd: Callable | None = None
        self.bwd: Callable | None = None
        self._inside = False  # fwd may call the function itself (as in JAX's examples)

    def defvjp(self, fwd: Callable, bwd: Callable) -> None:
        """Set the forward (`-> (output, residuals)`) and backward (`(residuals, ct) -> tuple`).

        >>> double = custom_vjp(lambda x: 2.0 * x)
        >>> double.defvjp(lambda x: (2.0 * x, x), lambda res, ct: (3.0 * ct,))
        >>> float(grad(double)(1.0))  # bwd's 3, not the true derivative 2
        3.0
        """
        self.fwd, self.bwd = fwd, bwd

    def __call__(self, *args: Any) -> Any:
        if current() is None or not _has_tracer(args) or self.fwd is None or self._inside:
            return self.fun(*args)
        self._inside = True
        try:
            return self._traced_call(args)
        finally:
            self._inside = False

    def _traced_call(self, args: tuple) -> Any:
        ctx = current()
        out, residuals = self.fwd(*stop_gradient(args))
        out_leaves, out_tree = pytree.flatten(out)
        ct_example = [np.zeros(tuple(v.shape), v.dtype) if not isinstance(v, Tracer) else _zeros_like(v)
                      for v in out_leaves]
        ct_example = pytree.unflatten(out_tree, ct_example)
        bwd_graph, _, captured = trace_into(lambda res, ct: tuple(self.bwd(res, ct)), (residuals, ct_example),
                                            concrete=ctx.concrete)
        cts_tree = bwd_graph.out_tree
        if cts_tree[0] != "tuple" or len(cts_tree[1]) != len(args):
            raise TraceError(f"custom_vjp: bwd must return a tuple of {len(args)} cotangents (one per argument), "
                             f"got structure {cts_tree}")
        # the tangent direction: x - stop_gradient(x), zero in value, identity in gradient
        directions = []
        for v, t in zip(bwd_graph.outputs, _leaves_matching(cts_tree, args)):
            directions.append(None if t is None else lift(t, ctx, v.dtype) - stop_gradient(lift(t, ctx, v.dtype)))
        dg = ir.vjp(bwd_graph)
        inputs = (pytree.flatten(residuals)[0] + pytree.flatten(ct_example)[0] + list(captured)
                  + [d for d in directions if d is not None])
        _, (_, ct_part, *_) = replay(dg, inputs)
        tangent = pytree.flatten(ct_part)[0]
        result = [stop_gradient(o) + t for o, t in zip(out_leaves, tangent)]
        return pytree.unflatten(out_tree, result)


def _zeros_like(t: Tracer) -> Tracer:
    return emit("full", [], {"shape": t._value.type.shape, "value": np.zeros((), t.dtype)}, ctx=current())


def _leaves_matching(cts_tree: pytree.TreeDef, args: tuple) -> list:
    """For each leaf of bwd's result, the argument leaf it is the cotangent of (None for None)."""
    out = []
    for sub, arg in zip(cts_tree[1], args):
        arg_leaves, _ = pytree.flatten(arg)
        n = pytree.num_leaves(sub)
        if n == 0:
            continue
        if n != len(arg_leaves):
            raise TraceError(f"custom_vjp: a cotangent has {n} leaves but its argument has {len(arg_leaves)}")
        out.extend(arg_leaves)
    return out
