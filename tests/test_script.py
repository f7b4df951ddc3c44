"""tracer.script: data-dependent control flow recorded as `if`/`loop` ops, checked against the
same function run eagerly with NumPy (the specification), through print/parse/verify/interpret."""

from __future__ import annotations

import numpy as np
import pytest

import ir
import tracer
from tests.helpers import assert_agree
from tracer import TensorSpec, TraceError


def roundtrip(g: ir.Graph) -> ir.Graph:
    """Verify, print and parse back; the parsed graph must be equal and verify too."""
    ir.verify(g)
    h = ir.parse(g.to_text())
    assert h == g
    ir.verify(h)
    return h


def kinds(g: ir.Graph) -> list[str]:
    return [op.kind for op in g.walk()]


# --- the functions under test --------------------------------------------------------------------
@tracer.script
def halve_or_grow(x, n):
    y = x
    for _ in range(n):
        if y.sum() > 0:
            y = y * 0.5
        else:
            y = y + 1.0
    return y


@tracer.script
def branch_elif(x):
    s = x.sum()
    if s > 10.0:
        y = x * 2.0
        tag = 2
    elif s > 0.0:
        y = x + 1.0
        tag = 1
    else:
        y = -x
        tag = 0
    return y, tag


@tracer.script
def collatz_steps(n):
    steps = 0
    while n != 1:
        if n % 2 == 0:
            n = n // 2
        else:
            n = 3 * n + 1
        steps += 1
    return steps


@tracer.script
def nested_sum(a, b):
    total = 0.0
    for i in range(a):
        for j in range(b):
            total = total + i * 10.0 + j
    return total


@tracer.script
def first_over(x, limit):
    found = -1
    for i in range(x.shape[0]):
        if x[i] > limit:
            found = i
            break
    return found


@tracer.script
def sum_skipping_negatives(x):
    total = np.zeros((), x.dtype)
    for i in range(x.shape[0]):
        if x[i] < 0:
            continue
        total = total + x[i]
    return total


@tracer.script
def early_return(x):
    if x.sum() < 0:
        return x * 0.0
    y = x * 2.0
    return y + 1.0


@tracer.script
def find_in_loop(x, target):
    for i in range(x.shape[0]):
        if x[i] == target:
            return i * 1
    return -1


@tracer.script
def rnn(xs, w, u, h0):
    h = h0
    for t in range(xs.shape[0]):
        h = np.tanh(xs[t] @ w + h @ u)
    return h


@tracer.script
def grow(x, n):
    y = x
    for _ in range(n):
        y = np.concatenate([y, x])
    return y


def test_eager_calls_run_python_control_flow():
    x = np.array([1.0, -3.0])
    assert_agree(halve_or_grow(x, 3), np.array([1.5, -0.5]))
    assert collatz_steps(6) == 8
    assert first_over(np.array([0.0, 5.0, 9.0]), 4.0) == 1


@pytest.mark.parametrize("x", [np.array([20.0, 1.0]), np.array([1.0, 2.0]), np.array([-1.0, -2.0])])
def test_if_elif_else_both_ways(x):
    g = roundtrip(tracer.trace(branch_elif, TensorSpec((2,), np.float64)))
    assert kinds(g).count("if") == 2
    got = ir.interpret(g, x)
    ref_y, ref_tag = branch_elif(x)
    assert_agree(got, (ref_y, np.asarray(ref_tag, np.int64)))


@pytest.mark.parametrize("n", [0, 1, 3, 7])
def test_loop_with_if_inside_and_zero_trips(n):
    x = np.array([1.0, -3.0], np.float32)
    g = roundtrip(tracer.trace(halve_or_grow, x, np.int64(3)))
    assert "loop" in kinds(g) and "if" in kinds(g)
    assert_agree(ir.interpret(g, x, np.int64(n)), halve_or_grow(x, n))


@pytest.mark.parametrize("n", [1, 6, 7, 27])
def test_while_with_data_dependent_trip_count(n):
    g = roundtrip(tracer.trace(collatz_steps, np.int64(5)))
    assert "loop" in kinds(g)
    assert_agree(ir.interpret(g, np.int64(n)), np.asarray(collatz_steps(n), np.int64))


@pytest.mark.parametrize("a,b", [(0, 3), (3, 0), (2, 3), (4, 1)])
def test_nested_loops(a, b):
    g = roundtrip(tracer.trace(nested_sum, np.int64(1), np.int64(1)))
    assert kinds(g).count("loop") == 2
    assert_agree(ir.interpret(g, np.int64(a), np.int64(b)), np.asarray(nested_sum(a, b), np.float64))


@pytest.mark.parametrize("limit", [-1.0, 2.5, 6.0, 100.0])
def test_break(limit):
    x = np.array([1.0, 3.0, 5.0, 7.0])
    g = roundtrip(tracer.trace(first_over, TensorSpec(("n",), np.float64), 0.0))
    assert_agree(ir.interpret(g, x, limit), np.asarray(first_over(x, limit), np.int64))
    assert_agree(ir.interpret(g, x[:1], limit), np.asarray(first_over(x[:1], limit), np.int64))


def test_continue():
    g = roundtrip(tracer.trace(sum_skipping_negatives, TensorSpec(("n",), np.float32)))
    for x in (np.array([1.0, -2.0, 3.0], np.float32), np.zeros(0, np.float32), -np.ones(4, np.float32)):
        assert_agree(ir.interpret(g, x), sum_skipping_negatives(x))


@pytest.mark.parametrize("x", [np.array([1.0, 2.0]), np.array([-5.0, 2.0])])
def test_early_return(x):
    g = roundtrip(tracer.trace(early_return, TensorSpec((2,), np.float64)))
    assert_agree(ir.interpret(g, x), early_return(x))


@pytest.mark.parametrize("target", [0.0, 2.0, 9.0])
def test_return_inside_loop(target):
    x = np.array([4.0, 2.0, 0.0])
    g = roundtrip(tracer.trace(find_in_loop, TensorSpec(("n",), np.float64), 1.0))
    assert_agree(ir.interpret(g, x, target), np.asarray(find_in_loop(x, target), np.int64))


def test_rnn_over_symbolic_length_traced_once():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    u = rng.standard_normal((4, 4)).astype(np.float32) * 0.5
    h0 = np.zeros(4, np.float32)
    g = roundtrip(tracer.trace(rnn, TensorSpec(("seq", 3), np.float32), w, u, h0))
    assert kinds(g).count("loop") == 1
    for n in (1, 5, 50):
        xs = rng.standard_normal((n, 3)).astype(np.float32)
        assert_agree(ir.interpret(g, xs, w, u, h0), rnn(xs, w, u, h0))


def test_loop_carried_value_that_grows_gets_a_fresh_symbol():
    x = np.array([1.0, 2.0], np.float32)
    g = roundtrip(tracer.trace(grow, x, np.int64(2)))
    (out,) = g.outputs
    assert isinstance(out.type.shape[0], str)
    for n in (0, 1, 4):
        assert_agree(ir.interpret(g, x, np.int64(n)), grow(x, n))


def test_branches_with_different_shapes_give_a_fresh_symbol():
    @tracer.script
    def f(x):
        if x.sum() > 0:
            y = np.concatenate([x, x])
        else:
            y = x
        return y

    g = roundtrip(tracer.trace(f, np.zeros(3)))
    assert isinstance(g.outputs[0].type.shape[0], str)
    for x in (np.ones(3), -np.ones(3)):
        assert_agree(ir.interpret(g, x), f(x))


def test_python_conditions_stay_python():
    @tracer.script
    def f(x, flag):
        for _ in range(3):  # a Python range: unrolled
            x = x + 1.0
        if flag:
            x = x * 2.0
        return x

    g = tracer.trace(f, np.zeros(2), True, static_argnums=1)
    assert "if" not in kinds(g) and "loop" not in kinds(g)
    assert_agree(ir.interpret(g, np.ones(2)), np.full(2, 8.0))


def test_and_or_not_and_conditional_expression():
    @tracer.script
    def f(x):
        s = x.sum()
        y = x * 2.0 if (s > 0 and not s > 10) or s < -100 else x
        return y

    g = roundtrip(tracer.trace(f, np.zeros(2)))
    for x in (np.ones(2), np.full(2, 20.0), np.full(2, -60.0), np.full(2, -1.0)):
        assert_agree(ir.interpret(g, x), f(x))


def test_calls_other_scripted_and_plain_functions():
    def plain(v):
        return v * 3.0

    @tracer.script
    def inner(v):
        if v.sum() > 0:
            v = plain(v)
        return v

    @tracer.script
    def outer(x, n):
        for _ in range(n):
            x = inner(x) - 1.0
        return x

    g = roundtrip(tracer.trace(outer, np.zeros(2), np.int64(1)))
    x = np.array([1.0, 0.2])
    for n in (0, 1, 3):
        assert_agree(ir.interpret(g, x, np.int64(n)), outer(x, n))


def test_in_place_update_inside_a_branch():
    @tracer.script
    def f(x):
        y = x.copy()
        if x[0] > 0:
            y[1] = 5.0
        return y

    g = roundtrip(tracer.trace(f, np.zeros(3)))
    for x in (np.ones(3), -np.ones(3)):
        assert_agree(ir.interpret(g, x), f(x))


def test_grad_follows_concrete_values():
    @tracer.script
    def f(x):
        if x.sum() > 0:
            return (x * x).sum()
        return (3.0 * x).sum()

    assert_agree(tracer.grad(f)(np.array([1.0, 2.0])), np.array([2.0, 4.0]))
    assert_agree(tracer.grad(f)(np.array([-1.0, -2.0])), np.array([3.0, 3.0]))


# --- errors ----------------------------------------------------------------------------------------
def test_variable_defined_in_one_branch_and_used_after():
    @tracer.script
    def f(x):
        if x.sum() > 0:
            z = x + 1.0
        return z * 2.0

    with pytest.raises(TraceError, match=r"test_script.py:\d+: variable 'z' is assigned in only one branch"):
        tracer.trace(f, np.zeros(2))
    assert_agree(f(np.ones(2)), np.full(2, 4.0))  # eager: Python semantics


def test_variable_first_assigned_in_a_traced_loop_and_used_after():
    @tracer.script
    def f(x, n):
        for _ in range(n):
            last = x * 2.0
        return last

    with pytest.raises(TraceError, match="variable 'last' is first assigned inside this loop"):
        tracer.trace(f, np.zeros(2), np.int64(2))


def _try(x):
    try:
        y = x + 1.0
    except ValueError:
        y = x
    return y


def _generator(x):
    yield x


def _uses_global(x):
    global _G
    _G = x
    return x


def _closure_mutation(x):
    acc = x

    def add(v):
        nonlocal acc
        acc = acc + v

    add(x)
    return acc


@pytest.mark.parametrize("fn,what", [(_try, "try/except"), (_generator, "generator"), (_uses_global, "`global`"),
                                     (_closure_mutation, "nonlocal")])
def test_unsupported_constructs_name_file_and_line(fn, what):
    with pytest.raises(TraceError, match=rf"test_script.py:\d+: .*{what}"):
        tracer.script(fn)


def test_side_channel_escape_is_refused():
    @tracer.script
    def f(x, n):
        outs = []
        for _ in range(n):
            x = x + 1.0
            outs.append(x)
        return np.stack(outs)

    with pytest.raises(TraceError, match="escapes"):
        tracer.trace(f, np.zeros(2), np.int64(3))


def test_branch_dtype_mismatch_is_an_error():
    @tracer.script
    def f(x):
        if x.sum() > 0:
            y = x.astype(np.float32)
        else:
            y = x
        return y

    with pytest.raises(TraceError, match="variable 'y' is float32 on one path and float64"):
        tracer.trace(f, np.zeros(2))


def test_lambda_is_refused():
    with pytest.raises(TraceError, match="lambda"):
        tracer.script(lambda x: x)


# --- beyond the tracer -------------------------------------------------------------------------------
def test_save_load_castml_and_run_in_the_runtime(tmp_path):
    import exporters
    import runtime

    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    u = rng.standard_normal((4, 4)).astype(np.float32) * 0.5
    h0 = np.zeros(4, np.float32)
    g = tracer.trace(rnn, TensorSpec(("seq", 3), np.float32), w, u, h0)
    path = str(tmp_path / "rnn.castml")
    exporters.save(g, path)
    assert exporters.load(path) == g
    session = runtime.load(path)
    for n in (1, 5, 50):
        xs = rng.standard_normal((n, 3)).astype(np.float32)
        assert_agree(session.run(xs, w, u, h0), rnn(xs, w, u, h0))


def test_jit_runs_scripted_control_flow():
    f = tracer.jit(halve_or_grow)
    x = np.array([1.0, -3.0], np.float32)
    for n in (0, 2, 5):
        assert_agree(f(x, np.int64(n)), halve_or_grow(x, n))


def test_python_range_with_traced_break_switches_to_a_loop_op():
    @tracer.script
    def f(x):
        acc = x * 0.0
        for _ in range(6):
            acc = acc + x
            if acc.sum() > 4.0:
                break
        return acc

    g = roundtrip(tracer.trace(f, np.zeros(2)))
    for x in (np.array([0.5, 0.5]), np.array([3.0, 2.0]), np.array([-1.0, 0.0])):
        assert_agree(ir.interpret(g, x), f(x))


def test_iterating_over_rows_of_a_symbolic_dim():
    @tracer.script
    def f(xs):
        best = np.full((), -np.inf, xs.dtype)
        for row in xs:
            best = np.maximum(best, row.sum())
        return best

    g = roundtrip(tracer.trace(f, TensorSpec(("n", 2), np.float64)))
    assert "loop" in kinds(g)
    for n in (1, 4):
        xs = np.arange(2.0 * n).reshape(n, 2) * (-1.0) ** np.arange(n)[:, None]
        assert_agree(ir.interpret(g, xs), f(xs))


def test_while_on_a_python_counter_then_a_traced_condition():
    @tracer.script
    def f(x):
        k = 0
        while k < 2 or x.sum() < 10.0:
            x = x * 2.0
            k += 1
        return x, k

    g = roundtrip(tracer.trace(f, np.ones(2)))
    for x in (np.ones(2), np.full(2, 0.1), np.full(2, 8.0)):
        y, k = f(x)
        assert_agree(ir.interpret(g, x), (y, np.asarray(k, np.int64)))
