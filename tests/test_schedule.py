"""Bound schedules (runtime/schedule.py): from an arena's second call on, its bound steps give the
bits of the usual path, results never alias the schedule's arrays, and the limits still hold."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
import runtime
import tracer
from exporters.castml_format import to_bytes
from runtime.executor import BOUND
from runtime.limits import limits
from tests.helpers import assert_agree, run_in_threads
from tests.test_runtime import CASES
from tracer import TensorSpec
from tracer import ops as nn

RNG = np.random.default_rng(3)
F32 = np.float32


def _w(*shape):
    return RNG.standard_normal(shape).astype(F32)


def _sessions(g):
    """(a session that binds, one that always runs the usual way: profiling keeps every step)."""
    data = to_bytes(g)
    return runtime.load(data, backend="numpy"), runtime.load(data, backend="numpy", profile=True)


def _schedules(sess) -> list:
    planner = sess._entry.program.planner
    return [a.bound for entry in planner._plans.values() for a in entry[1] if a.bound]


def _same_bits(got, ref) -> None:
    assert_agree(got, ref)
    for a, b in zip(*(runtime.pytree.flatten(t)[0] for t in (got, ref))):
        assert np.array_equal(a, b, equal_nan=True), "a bound step must give the bits of the usual path"


@pytest.mark.parametrize("optimize", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_bound_calls_give_the_bits_of_the_usual_path(name, optimize):
    fn, specs, inputs = CASES[name]
    g = tracer.trace(fn, *specs(1))
    g = ir.optimize(g) if optimize else g
    sess, usual = _sessions(g)
    for batch in (1, 7):
        for _ in range(3):  # the first call in an arena binds it, the next ones run bound
            args = inputs(batch)
            got = sess.run(*args)
            _same_bits(got, usual.run(*args))
            assert_agree(got, ir.interpret(g, *args))
    if name in ("mlp", "cnn") or (name == "elementwise" and not optimize):  # (optimized: one fused region)
        assert sum(s.bound for s in _schedules(sess)) > 0, "nothing was bound"


def _lenet(x, c1, c2, f1, f2):
    h = nn.max_pool2d(np.maximum(nn.conv2d(x, c1[0], c1[1], padding=1), 0.0), 2)
    h = nn.max_pool2d(np.maximum(nn.conv2d(h, c2[0], c2[1], stride=2), 0.0), 2)
    h = h.reshape(h.shape[0], -1)
    return np.maximum(h @ f1[0] + f1[1], 0.0) @ f2[0] + f2[1]


def test_a_small_cnn_runs_entirely_bound():
    params = ((_w(4, 1, 3, 3), _w(4)), (_w(6, 4, 3, 3), _w(6)), (_w(6, 8), _w(8)), (_w(8, 3), _w(3)))
    g = ir.optimize(tracer.trace(lambda x: _lenet(x, *params), TensorSpec(("batch", 1, 16, 16))))
    sess, usual = _sessions(g)
    for _ in range(3):
        x = _w(2, 1, 16, 16)
        _same_bits(sess.run(x), usual.run(x))
        assert_agree(sess.run(x), _lenet(x, *params))
    (sched,) = _schedules(sess)
    kinds = [s[0].kind for s in sched.steps]
    assert kinds == ["fused_conv", "max_pool", "fused_conv", "max_pool", "gemm", "gemm"]  # the reshape: a view
    assert sched.bound == len(kinds) and len(sched.staged) == 1


@settings(max_examples=25, deadline=None, database=None)
@given(nd=st.integers(1, 2), c=st.integers(1, 3), m=st.integers(1, 4), k=st.integers(1, 3),
       stride=st.integers(1, 2), dil=st.integers(1, 2), pad=st.integers(0, 2),
       depthwise=st.booleans(), relu=st.booleans(), pool=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_bound_convs_and_pools_match_the_usual_path(nd, c, m, k, stride, dil, pad, depthwise, relu, pool, seed):
    rng = np.random.default_rng(seed)
    size = 9
    group = c if depthwise else 1
    m = c * m if depthwise else m
    w = rng.standard_normal((m, c // group) + (k,) * nd).astype(F32)
    b = rng.standard_normal(m).astype(F32)

    def f(x):
        y = nn.conv(x, w, b, stride=stride, padding=pad, dilation=dil, groups=group)
        y = np.maximum(y, 0.0) if relu else y
        return nn.max_pool(y * 2.0, pool)

    g = ir.optimize(tracer.trace(f, TensorSpec((2, c) + (size,) * nd)))
    sess, usual = _sessions(g)
    for _ in range(3):
        x = rng.standard_normal((2, c) + (size,) * nd).astype(F32)
        _same_bits(sess.run(x), usual.run(x))
        assert_agree(sess.run(x), ir.interpret(g, x))
    bound = {s[0].kind for sched in _schedules(sess) for s in sched.steps if s[2] == BOUND}
    assert "max_pool" in bound and (group > 1 or bound & {"conv", "fused_conv"}), bound


def test_results_never_alias_the_schedule():
    g = tracer.trace(lambda x: (x.reshape(-1), x * 2.0, np.maximum(x @ np.eye(3, dtype=F32), 0.0)),
                     TensorSpec((2, 3)))
    sess = runtime.load(to_bytes(g), backend="numpy")
    xs = [_w(2, 3) for _ in range(4)]
    results = [sess.run(x) for x in xs]
    assert _schedules(sess), "nothing was bound"
    for x, (flat, twice, relu) in zip(xs, results):  # later calls changed none of the earlier results
        assert_agree(flat, x.reshape(-1))
        assert_agree(twice, x * 2.0)
        assert_agree(relu, np.maximum(x, 0.0))
        assert flat.flags.writeable and twice.flags.writeable


def test_threads_share_a_session_with_bound_arenas():
    fn, specs, inputs = CASES["cnn"]
    sess, usual = _sessions(ir.optimize(tracer.trace(fn, *specs(1))))
    xs = [inputs(b) for b in (1, 2, 3, 1, 2, 3)]
    refs = [usual.run(*x) for x in xs]

    def work(k: int) -> None:
        for i in range(300):
            j = (k + i) % len(xs)
            assert np.array_equal(sess.run(*xs[j]), refs[j]), (k, i)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads between any two bound calls
    try:
        errors = run_in_threads(work, 6)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
    assert len(_schedules(sess)) >= 3  # an arena per batch size at least, each bound once


def test_limits_still_hold_once_bound():
    fn, specs, inputs = CASES["cnn"]
    g = tracer.trace(fn, *specs(1))
    sess, usual = _sessions(g)
    x = inputs(2)
    sess.run(*x)
    sess.run(*x)
    (sched,) = _schedules(sess)
    with limits(max_tensor_bytes=sched.need_bytes - 1):
        with pytest.raises(runtime.RuntimeInputError) as bound_error:
            sess.run(*x)
        with pytest.raises(runtime.RuntimeInputError) as usual_error:
            usual.run(*x)
    assert str(bound_error.value) == str(usual_error.value)
    assert_agree(sess.run(*x), usual.run(*x))  # and under the old limits it runs bound again


@tracer.script
def _grows(x):
    if x.sum() > 0.0:
        y = x[1:] * 2.0  # a size found in the data: fresh on every call
    else:
        y = np.exp(x)
    return y * y + 1.0


def test_sizes_found_in_the_data_are_not_bound():
    g = tracer.trace(_grows, TensorSpec((4,)))
    sess, _ = _sessions(g)
    for sign in (1.0, -1.0, 1.0, -1.0, -1.0, 1.0):
        x = np.abs(_w(4)) * sign
        assert_agree(sess.run(x), ir.interpret(g, x))
