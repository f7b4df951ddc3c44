"""Symbolic dims: canonical forms and evaluation agree with integer arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import dims as D


def test_canonical_forms():
    assert D.parse_dim("4*batch") == D.parse_dim("batch*4") == "batch*4"
    assert D.add("seq", 1) == "seq+1"
    assert D.sub(D.add("seq", 1), 1) == "seq"
    assert D.mul(D.floordiv("batch*4", 4), 1) == "batch"
    assert D.floordiv("batch*seq*4", "seq") == "batch*4"
    assert D.product(["batch", 3, "heads"]) == "batch*heads*3"
    assert D.parse_dim("2+3") == 5


def test_errors():
    with pytest.raises(D.DimError):
        D.parse_dim("batch +")
    with pytest.raises(D.DimError):
        D.evaluate("batch*2", {})
    with pytest.raises(D.DimError):
        D.floordiv("batch", 0)


ops = st.sampled_from(["add", "sub", "mul", "floordiv", "mod"])


@st.composite
def expressions(draw, depth=3):
    if depth == 0 or draw(st.booleans()):
        return draw(st.one_of(st.sampled_from(["a", "b", "c"]), st.integers(0, 7)))
    op = draw(ops)
    left = draw(expressions(depth - 1))
    right = draw(expressions(depth - 1))
    if op in ("floordiv", "mod"):
        right = draw(st.integers(1, 5))
    return (op, left, right)


def build(e):
    if not isinstance(e, tuple):
        return e
    op, a, b = e
    return getattr(D, op)(build(a), build(b))


def value(e, env):
    if isinstance(e, str):
        return env[e]
    if isinstance(e, int):
        return e
    op, a, b = e
    x, y = value(a, env), value(b, env)
    return {"add": x + y, "sub": x - y, "mul": x * y, "floordiv": x // y if y else 0, "mod": x % y if y else 0}[op]


@settings(max_examples=300, deadline=None)
@given(expressions(), st.fixed_dictionaries({k: st.integers(1, 9) for k in "abc"}))
def test_symbolic_arithmetic_matches_integers(e, env):
    d = build(e)
    assert D.evaluate(d, env) == value(e, env)
    assert D.parse_dim(d) == d  # canonical text parses to itself
