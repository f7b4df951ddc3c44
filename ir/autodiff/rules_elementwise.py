"""VJP rules of the elementwise ops: unary math, activations, binary arithmetic, where, cast.

One table row per op, written as the derivative (tinygrad's gradient table, JAX's `defjvp`
helpers): unary rows give f'(x) from x and y = f(x); binary rows give ct times each partial
derivative at the broadcast shape, which `elementwise_binary` sums back to the operand's shape.
Ties of maximum/minimum split the gradient equally between the operands, as JAX does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..graph import Op, Value
from .rules_common import Builder, elementwise_binary, elementwise_unary, is_float, register_rules, unbroadcast


def _sq(b: Builder, v: Value) -> Value:
    return b.mul(v, v)


def _gt0(b: Builder, x: Value) -> Value:
    return b.op("greater", x, b.const(0, x.dtype))


def _step(b: Builder, cond: Value, yes, no, like: Value) -> Value:
    """where(cond, yes, no) in `like`'s dtype."""
    return b.where(cond, b.const(yes, like.dtype) if not isinstance(yes, Value) else yes,
                   b.const(no, like.dtype) if not isinstance(no, Value) else no)


def _gelu(b: Builder, x: Value, y: Value, op: Op) -> Value:
    if op.attrs["approximate"] == "tanh":
        c = math.sqrt(2.0 / math.pi)
        x2 = _sq(b, x)
        t = b.op("tanh", b.mul(b.mul(x, c), b.add(b.mul(x2, 0.044715), 1.0)))
        dt = b.mul(b.sub(1.0, _sq(b, t)), b.mul(b.add(b.mul(x2, 3 * 0.044715), 1.0), c))
        return b.mul(b.add(b.add(t, 1.0), b.mul(x, dt)), 0.5)
    return exact_gelu_derivative(b, x, b.op("normal_cdf", x))


def exact_gelu_derivative(b: Builder, x: Value, phi: Value) -> Value:
    """Append gelu'(x) = Phi(x) + x * pdf(x) for exact GELU, given `phi` = Phi(x), and return it.

    >>> import numpy as np, ir
    >>> from ir.graph import Graph
    >>> g = Graph.from_inputs([("x", ir.TensorType(np.float64, (1,)))])
    >>> b = Builder(g); phi = b.op("normal_cdf", g.inputs[0])
    >>> str(exact_gelu_derivative(b, g.inputs[0], phi).type)
    'f64[1]'
    """
    return b.add(phi, b.mul(x, normal_pdf(b, x)))


def normal_pdf(b: Builder, x: Value) -> Value:
    """Append exp(-x*x/2) / sqrt(2 pi), the derivative of normal_cdf, and return it.

    >>> import numpy as np, ir
    >>> from ir.graph import Graph
    >>> g = Graph.from_inputs([("x", ir.TensorType(np.float64, (1,)))])
    >>> str(normal_pdf(Builder(g), g.inputs[0]).type), [op.kind for op in g.ops][-3:]
    ('f64[1]', ['exp', 'constant', 'mul'])
    """
    return b.mul(b.op("exp", b.mul(_sq(b, x), -0.5)), 1.0 / math.sqrt(2.0 * math.pi))


def _exp_linear(scale_name: str | None, inner: Callable | None = None):
    """Derivative of elu/celu/selu: 1 for x > 0, alpha * inner * exp(inner * x) otherwise."""
    def deriv(b: Builder, x: Value, y: Value, op: Op) -> Value:
        alpha = op.attrs["alpha"]
        k = inner(alpha) if inner else 1.0
        neg = b.mul(b.op("exp", b.mul(x, k)), alpha * k)
        d = b.where(_gt0(b, x), b.const(1.0, x.dtype), neg)
        return b.mul(d, op.attrs[scale_name]) if scale_name else d
    return deriv


def _hard_sigmoid(b: Builder, x: Value, y: Value, op: Op) -> Value:
    z = b.add(b.mul(x, op.attrs["alpha"]), op.attrs["beta"])
    inside = b.op("logical_and", b.op("greater", z, b.const(0, x.dtype)), b.op("less", z, b.const(1, x.dtype)))
    return _step(b, inside, op.attrs["alpha"], 0.0, x)


def _hard_swish(b: Builder, x: Value, y: Value, op: Op) -> Value:
    mid = b.add(b.div(x, 3.0), 0.5)
    d = b.where(b.op("greater", x, b.const(3, x.dtype)), b.const(1, x.dtype), mid)
    return b.where(b.op("less", x, b.const(-3, x.dtype)), b.const(0, x.dtype), d)


UNARY = {
    "neg": lambda b, x, y, op: b.const(-1, x.dtype),
    "abs": lambda b, x, y, op: b.op("sign", x),
    "exp": lambda b, x, y, op: y,
    "exp2": lambda b, x, y, op: b.mul(y, math.log(2.0)),
    "expm1": lambda b, x, y, op: b.add(y, 1.0),
    "log": lambda b, x, y, op: b.op("reciprocal", x),
    "log2": lambda b, x, y, op: b.op("reciprocal", b.mul(x, math.log(2.0))),
    "log10": lambda b, x, y, op: b.op("reciprocal", b.mul(x, math.log(10.0))),
    "log1p": lambda b, x, y, op: b.op("reciprocal", b.add(x, 1.0)),
    "sqrt": lambda b, x, y, op: b.div(0.5, y),
    "cbrt": lambda b, x, y, op: b.div(1.0 / 3.0, _sq(b, y)),
    "reciprocal": lambda b, x, y, op: b.neg(_sq(b, y)),
    "sin": lambda b, x, y, op: b.op("cos", x),
    "cos": lambda b, x, y, op: b.neg(b.op("sin", x)),
    "tan": lambda b, x, y, op: b.add(_sq(b, y), 1.0),
    "asin": lambda b, x, y, op: b.op("reciprocal", b.op("sqrt", b.sub(1.0, _sq(b, x)))),
    "acos": lambda b, x, y, op: b.neg(b.op("reciprocal", b.op("sqrt", b.sub(1.0, _sq(b, x))))),
    "atan": lambda b, x, y, op: b.op("reciprocal", b.add(_sq(b, x), 1.0)),
    "sinh": lambda b, x, y, op: b.op("cosh", x),
    "cosh": lambda b, x, y, op: b.op("sinh", x),
    "tanh": lambda b, x, y, op: b.sub(1.0, _sq(b, y)),
    "asinh": lambda b, x, y, op: b.op("reciprocal", b.op("sqrt", b.add(_sq(b, x), 1.0))),
    "acosh": lambda b, x, y, op: b.op("reciprocal", b.op("sqrt", b.sub(_sq(b, x), 1.0))),
    "atanh": lambda b, x, y, op: b.op("reciprocal", b.sub(1.0, _sq(b, x))),
    "erf": lambda b, x, y, op: b.mul(b.op("exp", b.neg(_sq(b, x))), 2.0 / math.sqrt(math.pi)),
    "normal_cdf": lambda b, x, y, op: normal_pdf(b, x),
    "sigmoid": lambda b, x, y, op: b.mul(y, b.sub(1.0, y)),
    "relu": lambda b, x, y, op: _step(b, _gt0(b, x), 1.0, 0.0, x),
    "softplus": lambda b, x, y, op: b.op("sigmoid", x),
    "softsign": lambda b, x, y, op: b.op("reciprocal", _sq(b, b.add(b.op("abs", x), 1.0))),
    "hard_swish": _hard_swish,
    "gelu": _gelu,
    "selu": _exp_linear("gamma"),
    "elu": _exp_linear(None),
    "celu": _exp_linear(None, lambda alpha: 1.0 / alpha),
    "leaky_relu": lambda b, x, y, op: _step(b, b.op("greater_equal", x, b.const(0, x.dtype)), 1.0,
                                            op.attrs["alpha"], x),
    "hard_sigmoid": _hard_sigmoid,
    "thresholded_relu": lambda b, x, y, op: _step(b, b.op("greater", x, b.const(op.attrs["alpha"], x.dtype)),
                                                  1.0, 0.0, x),
}


def _tie_weight(b: Builder, x: Value, y: Value, strict: str) -> Value:
    """1 where x wins, 1/2 on ties, 0 where y wins (JAX's rule for max/min)."""
    win = b.cast(b.op(strict, x, y), x.dtype)
    tie = b.cast(b.op("equal", x, y), x.dtype)
    return b.add(win, b.mul(tie, 0.5))


def _select_rule(strict: str):
    def dx(b, x, y, z, ct):
        return b.mul(ct, _tie_weight(b, x, y, strict))

    def dy(b, x, y, z, ct):
        return b.mul(ct, b.sub(1.0, _tie_weight(b, x, y, strict)))
    return elementwise_binary(dx, dy)


def _pow_dy(b: Builder, x: Value, y: Value, z: Value, ct: Value) -> Value:
    # d/dy x**y = log(x) * x**y, taken as 0 at x == 0 (where x**y is 0 or 1 and JAX uses 0)
    zero = b.op("equal", x, b.const(0, x.dtype))
    safe = b.where(zero, b.const(1, x.dtype), x)
    return b.mul(ct, b.where(zero, b.const(0, x.dtype), b.mul(b.op("log", safe), z)))


BINARY = {
    "add": elementwise_binary(lambda b, x, y, z, ct: ct, lambda b, x, y, z, ct: ct),
    "sub": elementwise_binary(lambda b, x, y, z, ct: ct, lambda b, x, y, z, ct: b.neg(ct)),
    "mul": elementwise_binary(lambda b, x, y, z, ct: b.mul(ct, y), lambda b, x, y, z, ct: b.mul(ct, x)),
    "div": elementwise_binary(lambda b, x, y, z, ct: b.div(ct, y),
                              lambda b, x, y, z, ct: b.neg(b.mul(b.div(ct, y), z))),
    "mod": elementwise_binary(lambda b, x, y, z, ct: ct,
                              lambda b, x, y, z, ct: b.neg(b.mul(ct, b.op("floordiv", x, y)))),
    "pow": elementwise_binary(lambda b, x, y, z, ct: b.mul(ct, b.mul(y, b.op("pow", x, b.sub(y, 1.0)))), _pow_dy),
    "maximum": _select_rule("greater"),
    "minimum": _select_rule("less"),
    "fmax": _select_rule("greater"),
    "fmin": _select_rule("less"),
    "atan2": elementwise_binary(  # atan2(x, y) = angle of the point (y, x): d/dx = y/r², d/dy = -x/r²
        lambda b, x, y, z, ct: b.mul(ct, b.div(y, b.add(_sq(b, x), _sq(b, y)))),
        lambda b, x, y, z, ct: b.mul(ct, b.div(b.neg(x), b.add(_sq(b, x), _sq(b, y))))),
    "hypot": elementwise_binary(lambda b, x, y, z, ct: b.mul(ct, b.div(x, z)),
                                lambda b, x, y, z, ct: b.mul(ct, b.div(y, z))),
}


def _where(b: Builder, op: Op, cts: list) -> list:
    cond, a, c = op.inputs
    ct = cts[0]
    zero = b.const(0, ct.dtype)
    return [None,
            unbroadcast(b, b.where(cond, ct, zero), a.type) if is_float(a) else None,
            unbroadcast(b, b.where(cond, zero, ct), c.type) if is_float(c) else None]


def _cast(b: Builder, op: Op, cts: list) -> list:
    x = op.inputs[0]
    return [b.cast(cts[0], x.dtype) if is_float(x) and is_float(op.outputs[0]) else None]


def _prelu(b: Builder, op: Op, cts: list) -> list:
    x, slope = op.inputs
    ct = cts[0]
    neg = b.op("less", x, b.const(0, x.dtype))
    zero = b.const(0, x.dtype)
    dx = b.where(neg, b.mul(ct, slope), ct)
    dslope = unbroadcast(b, b.where(neg, b.mul(ct, x), zero), slope.type)
    return [dx, dslope]


RULES = {name: elementwise_unary(d) for name, d in UNARY.items()}
RULES.update(BINARY)
RULES.update({"where": _where, "cast": _cast, "prelu": _prelu})
register_rules(RULES)
