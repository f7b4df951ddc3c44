"""Native `if` and `loop` (runtime/native/src/control.cpp) against the NumPy runtime.

The scripted functions of tests/test_script.py and the gradient graphs of
tests/test_autodiff_control.py (gradients through `if`/`loop`, including loop-carried values
that grow and branches that yield different shapes), the fuzz corpus's loop seed, the GRU zoo
model over a symbolic sequence length, nested regions and the `max_loop_iterations` limit: each
graph loaded natively must agree with the NumPy runtime under the one tolerance rule.
"""

from __future__ import annotations

import numpy as np
import pytest

import ir
import runtime
import tracer
from exporters.castml_format import to_bytes
from runtime import native_backend as nb
from tests import test_autodiff_control as ad
from tests import test_script as sc
from tests.helpers import assert_agree, build_native
from tests.test_native import _both
from tracer import TensorSpec


@pytest.fixture(scope="module", autouse=True)
def native_lib():
    return build_native()


def _agree(g, arg_sets):
    native, ref = _both(g)
    for args in arg_sets:
        assert_agree(native.run(*args), ref.run(*args))
    return native


def _kinds(g) -> list[str]:
    return [op.kind for op in g.walk()]


# ---- the scripted functions of tests/test_script.py -----------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 3, 7])
def test_loop_with_if_inside_and_zero_trips(n):
    x = np.array([1.0, -3.0], np.float32)
    g = tracer.trace(sc.halve_or_grow, x, np.int64(3))
    assert {"loop", "if"} <= set(_kinds(g))
    _agree(g, [(x, np.int64(n)), (-x, np.int64(n))])


def test_if_elif_else():
    g = tracer.trace(sc.branch_elif, TensorSpec((2,), np.float64))
    _agree(g, [(x,) for x in (np.array([20.0, 1.0]), np.array([1.0, 2.0]), np.array([-1.0, -2.0]))])


def test_while_with_data_dependent_trip_count():
    g = tracer.trace(sc.collatz_steps, np.int64(5))
    _agree(g, [(np.int64(n),) for n in (1, 6, 7, 27)])


def test_nested_loops():
    g = tracer.trace(sc.nested_sum, np.int64(1), np.int64(1))
    assert _kinds(g).count("loop") == 2
    _agree(g, [(np.int64(a), np.int64(b)) for a, b in ((0, 3), (3, 0), (2, 3), (4, 1))])


def test_break_continue_and_returns_inside_loops():
    x = np.array([1.0, 3.0, 5.0, 7.0])
    g = tracer.trace(sc.first_over, TensorSpec(("n",), np.float64), 0.0)
    _agree(g, [(x, limit) for limit in (-1.0, 2.5, 6.0, 100.0)] + [(x[:1], 2.5), (x[:0], 0.0)])
    g = tracer.trace(sc.sum_skipping_negatives, TensorSpec(("n",), np.float32))
    _agree(g, [(np.array([1.0, -2.0, 3.0], np.float32),), (np.zeros(0, np.float32),), (-np.ones(4, np.float32),)])
    g = tracer.trace(sc.early_return, TensorSpec((2,), np.float64))
    _agree(g, [(np.array([1.0, 2.0]),), (np.array([-5.0, 2.0]),)])
    g = tracer.trace(sc.find_in_loop, TensorSpec(("n",), np.float64), 1.0)
    _agree(g, [(np.array([4.0, 2.0, 0.0]), t) for t in (0.0, 2.0, 9.0)])


def test_rnn_over_symbolic_length():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    u = rng.standard_normal((4, 4)).astype(np.float32) * 0.5
    h0 = np.zeros(4, np.float32)
    g = tracer.trace(sc.rnn, TensorSpec(("seq", 3), np.float32), w, u, h0)
    _agree(g, [(rng.standard_normal((n, 3)).astype(np.float32), w, u, h0) for n in (0, 1, 5, 50)])


def test_carried_value_that_grows_and_branches_of_different_shapes():
    x = np.array([1.0, 2.0], np.float32)
    g = tracer.trace(sc.grow, x, np.int64(2))
    assert isinstance(g.outputs[0].type.shape[0], str)  # a dynamic size
    _agree(g, [(x, np.int64(n)) for n in (0, 1, 4)])
    assert runtime.load(to_bytes(g), backend="native").memory_plan().unknown  # reported, not planned

    @tracer.script
    def f(x):
        if x.sum() > 0:
            y = np.concatenate([x, x])
        else:
            y = x
        return y * 2.0, y.sum()

    g = tracer.trace(f, np.zeros(3))
    _agree(g, [(np.ones(3),), (-np.ones(3),)])


def test_other_scripted_forms():
    @tracer.script
    def cond_expr(x):
        s = x.sum()
        return x * 2.0 if (s > 0 and not s > 10) or s < -100 else x

    @tracer.script
    def in_place(x):
        y = x.copy()
        if x[0] > 0:
            y[1] = 5.0
        return y

    @tracer.script
    def python_range_break(x):
        acc = x * 0.0
        for _ in range(6):
            acc = acc + x
            if acc.sum() > 4.0:
                break
        return acc

    @tracer.script
    def counter_then_traced(x):
        k = 0
        while k < 2 or x.sum() < 10.0:
            x = x * 2.0
            k += 1
        return x, k

    for fn in (cond_expr, in_place, python_range_break):
        g = tracer.trace(fn, np.zeros(2))
        _agree(g, [(x,) for x in (np.ones(2), np.full(2, 20.0), np.full(2, -60.0), np.array([3.0, 2.0]))])
    g = tracer.trace(counter_then_traced, np.zeros(2))
    _agree(g, [(x,) for x in (np.ones(2), np.full(2, 0.1), np.full(2, 8.0))])

    @tracer.script
    def rows(xs):
        best = np.full((), -np.inf, xs.dtype)
        for row in xs:
            best = np.maximum(best, row.sum())
        return best

    g = tracer.trace(rows, TensorSpec(("n", 2), np.float64))
    _agree(g, [(np.arange(2.0 * n).reshape(n, 2) * (-1.0) ** np.arange(n)[:, None],) for n in (1, 4)])


def test_scripted_calls_and_several_carried_values():
    @tracer.script
    def two(a, b, n):
        for _i in range(n):
            a, b = b * 0.5, np.sin(a) + b  # a yielded value is another carried parameter
        return a, b

    g = tracer.trace(two, np.ones(2), np.ones(2), np.int64(3))
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(2), rng.standard_normal(2)
    _agree(g, [(a, b, np.int64(n)) for n in (0, 1, 2, 5)])


# ---- gradients through if / loop (tests/test_autodiff_control.py) --------------------------------

def _grad_cases():
    rng = np.random.default_rng(0)
    w4 = rng.standard_normal(4)
    pos, neg = np.abs(rng.standard_normal(4)), -np.abs(rng.standard_normal(4))
    x5, w5 = np.abs(rng.standard_normal(5)), np.abs(rng.standard_normal(5))
    xr, wr, hr = rng.standard_normal((6, 3)), rng.standard_normal((3, 3)) * 0.6, rng.standard_normal(3)
    xl, wl = rng.standard_normal((5, 3)), rng.standard_normal((3, 3)) * 0.8
    wd = np.array([1.3, 1.1, 1.2])
    xn, wn = rng.standard_normal(3), rng.standard_normal(3) * 0.5
    xb, wb = np.array([0.1, 0.2, 0.3]), np.array([0.9, 1.1, 1.3])
    return {
        "branchy": (ad.branchy, [np.zeros(4), w4], [[pos, w4], [neg, w4], [neg, -w4]], (0, 1)),
        "branch_shapes": (ad.branch_shapes, [x5, w5], [[x5, w5], [-x5, w5]], (0, 1)),
        "rnn_loss": (ad.rnn_loss, [TensorSpec(("T", 3), np.float64), wr, hr, np.int64(0)],
                     [[xr, wr, hr, np.int64(n)] for n in (0, 1, 4)] + [[xr[:2], wr, hr, np.int64(2)]], (0, 1, 2)),
        "loop_with_if": (ad.loop_with_if, [TensorSpec(("T", 3), np.float64), wl, np.int64(0)],
                         [[xl, wl, np.int64(5)], [-xl, wl, np.int64(3)], [xl, -wl, np.int64(5)]], (0, 1)),
        "while_data_dependent": (ad.while_data_dependent, [np.ones(3), wd],
                                 [[np.array([0.5, 0.2, 0.1]), wd], [np.array([5.0, 0.0, 0.0]), wd]], (0, 1)),
        "nested_loops": (ad.nested_loops, [xn, wn, np.int64(0)], [[xn, wn, np.int64(n)] for n in (0, 1, 3)], (0, 1)),
        "with_break": (ad.with_break, [xb, wb, np.int64(0)], [[xb, wb, np.int64(n)] for n in (0, 2, 8)], (0, 1)),
    }


@pytest.mark.parametrize("name", sorted(_grad_cases()))
def test_gradient_graphs(name):
    fn, specs, arg_sets, wrt = _grad_cases()[name]
    gg = ir.grad(tracer.trace(fn, *specs), wrt=wrt)
    assert {"if", "loop"} & set(_kinds(gg))
    _agree(gg, arg_sets)


# ---- the fuzz corpus's loop seed, the GRU zoo model -----------------------------------------------

def test_fuzz_corpus_loop_seed():
    from bench.fuzz_loaders import _halve_or_grow

    x = np.array([1.0, -3.0, 0.5], np.float32)
    g = tracer.trace(tracer.script(_halve_or_grow), np.ones(3, np.float32), np.int64(3))
    _agree(g, [(x, np.int64(n)) for n in (0, 1, 3, 9)])


def test_gru_zoo_model_over_symbolic_sequence_length():
    from models.zoo import gru

    fn, (x, params) = gru.build(0)
    g = tracer.trace(fn, TensorSpec(("batch", "seq", gru.FEATURES), np.float32), params)
    assert "loop" in _kinds(g)
    rng = np.random.default_rng(3)
    _agree(g, [(rng.standard_normal((b, n, gru.FEATURES)).astype(np.float32), params)
               for b, n in ((2, 1), (3, 5), (1, 50))])
    assert runtime.load(to_bytes(g)).backend == "native"


# ---- limits and refusals ---------------------------------------------------------------------------

def test_loop_limit_raises_the_same_error_as_numpy():
    g = tracer.trace(sc.collatz_steps, np.int64(5))
    data = to_bytes(g)
    errors = []
    for backend in ("numpy", "native"):
        sess = runtime.load(data, backend=backend)
        assert_agree(sess.run(np.int64(6)), np.asarray(8, np.int64))
        with runtime.limits.limits(max_loop_iterations=5), pytest.raises(runtime.RuntimeInputError) as e:
            sess.run(np.int64(27))
        errors.append(str(e.value))
        assert_agree(sess.run(np.int64(27)), np.asarray(sc.collatz_steps(27), np.int64))
    assert errors[0] == errors[1], errors
    assert "the loop ran 5 iterations, max_loop_iterations (raise it with" in errors[1]


def test_native_kernel_names_and_malformed_control_ops_are_refused_at_load():
    assert not {"if", "loop"} & set(nb.kernel_names())  # steps of the program, not kernels
    from tests.test_castml_format import _hand_model

    # an `if` whose condition is not a bool scalar: left to the NumPy runtime
    data = _hand_model(values=(("x", 11, (2,)), ("", 11, (2,))), ops=(("if", (0,), (1,), ()),))
    with pytest.raises(nb.NativeUnsupportedError):
        runtime.load(data, backend="native")
