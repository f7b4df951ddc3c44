"""The memory plan used for real: planned peak vs the liveness bound on the zoo models, arena
buffers that never leak into results, views that keep their base's buffer alive, in-place
reuse, and one session shared by threads. Deterministic properties only (no timing)."""

from __future__ import annotations

import numpy as np
import pytest

import ir
import runtime
import tracer
from exporters.castml_format import to_bytes
from models import zoo
from runtime.executor import Program, ProgramSpec, StepSpec, TypeSpec
from runtime.memory import BufferPlanner, plan_memory, use_memory_plan
from tests.helpers import assert_agree, run_in_threads
from tracer import TensorSpec


def _session(g):
    return runtime.load(to_bytes(g), backend="numpy")  # the NumPy backend's memory plan


def _zoo_graph(name: str, optimize: bool):
    fn, (x, params) = zoo.MODELS[name].build(0, batch=2)
    g = tracer.trace(lambda x: fn(x, params), TensorSpec(("batch",) + x.shape[1:], x.dtype))
    return (ir.optimize(g) if optimize else g), x


@pytest.fixture(scope="module", params=[(n, o) for n in sorted(zoo.MODELS) for o in (False, True)],
                ids=lambda p: f"{p[0]}-{'opt' if p[1] else 'raw'}")
def zoo_case(request):
    name, optimize = request.param
    g, x = _zoo_graph(name, optimize)
    return g, x, _session(g)


@pytest.mark.parametrize("batch", [1, 7])
def test_zoo_peak_within_1_2_of_liveness_bound(zoo_case, batch):
    _, _, sess = zoo_case
    plan = sess.memory_plan(batch=batch)
    assert plan.lower_bound_bytes > 0
    assert plan.sizes, "no value is written into the arena"
    assert plan.peak_bytes <= 1.2 * plan.lower_bound_bytes, str(plan)
    assert plan.lower_bound_bytes <= plan.peak_bytes
    assert plan.arena_bytes <= plan.peak_bytes


def test_zoo_results_agree_and_never_alias_the_arena(zoo_case):
    g, x, sess = zoo_case
    ref = ir.interpret(g, x)
    y1 = sess.run(x)
    kept = y1.copy()
    y2 = sess.run(x * 0.5)
    assert_agree(y1, ref)
    assert np.array_equal(y1, kept), "a later call overwrote an earlier result"
    assert not np.may_share_memory(y1, y2)
    assert y1.flags.writeable


def test_zoo_threads_get_their_own_buffers(zoo_case):
    _, x, sess = zoo_case
    xs = [np.random.default_rng(i).standard_normal(x.shape).astype(x.dtype) for i in range(4)]
    want = [sess.run(a) for a in xs]
    got: list = [None] * len(xs)

    def work(k: int) -> None:
        for _ in range(3):
            y = sess.run(xs[k])
            assert np.array_equal(y, want[k]), k
        got[k] = y

    errors = run_in_threads(work, len(xs))
    assert not errors, errors[0]
    for a, b in zip(got, want):
        assert np.array_equal(a, b)


def test_views_keep_their_base_buffer_alive():
    # a = x*2 is viewed by a.T; exp(x) must not take a's buffer while the view is still read
    def f(x):
        a = x * 2.0
        t = a.T
        c = np.exp(x)
        d = c * 3.0
        return t + d.T

    x = np.random.default_rng(0).standard_normal((8, 8))
    g = tracer.trace(f, TensorSpec((8, 8), np.float64))
    sess = _session(g)
    assert_agree(sess.run(x), f(x))
    plan = sess.memory_plan()
    spec, program = sess._entry.spec, sess._entry.program
    transpose_step = next(i for i, s in enumerate(spec.steps) if s.kind == "transpose")
    a = spec.steps[transpose_step].inputs[0]
    assert a in plan.offsets and plan.intervals[a][1] > transpose_step
    for v, (first, last) in plan.intervals.items():  # no two live buffers overlap in the arena
        for w, (f2, l2) in plan.intervals.items():
            if v < w and first <= l2 and f2 <= last and plan.offsets[v] != plan.offsets[w]:
                assert (plan.offsets[v] + plan.sizes[v] <= plan.offsets[w]
                        or plan.offsets[w] + plan.sizes[w] <= plan.offsets[v])
    assert program.planner is not None


def test_output_that_views_the_arena_is_copied():
    g = tracer.trace(lambda x: np.exp(x).reshape(4, 4).T, TensorSpec((16,), np.float32))
    sess = _session(g)
    x = np.arange(16, dtype=np.float32) / 16
    y = sess.run(x)
    assert_agree(y, np.exp(x).reshape(4, 4).T)
    y2 = sess.run(x + 1)
    assert not np.may_share_memory(y, y2)
    y[...] = 0  # writable, and writing it does not disturb the session
    assert_agree(sess.run(x), np.exp(x).reshape(4, 4).T)


def test_elementwise_chain_reuses_one_buffer_in_place():
    t = TypeSpec(np.dtype(np.float64), ("n",))
    steps = [StepSpec("exp", [0], [1], {}, [t]), StepSpec("neg", [1], [2], {}, [t]),
             StepSpec("exp", [2], [3], {}, [t]), StepSpec("sqrt", [3], [4], {}, [t])]
    spec = ProgramSpec([0], [t], steps, [4])
    program = Program(spec)
    planner = use_memory_plan(spec, program)
    plan = planner.plan({"n": 1000})
    assert plan.offsets == {1: 0} and plan.shared == {2: 1, 3: 1}
    assert plan.arena_bytes == 8000 and plan.lower_bound_bytes == 16000  # the output is not in the arena
    x = np.linspace(-1, 1, 1000)
    (y,) = program.run([x])
    assert_agree(y, np.sqrt(np.exp(-np.exp(x))))
    assert not np.may_share_memory(y, x)


def test_mixed_dtypes_and_data_dependent_sizes_are_not_planned():
    f32, f64 = TypeSpec(np.dtype(np.float32), (4,)), TypeSpec(np.dtype(np.float64), (4,))
    spec = ProgramSpec([0, 1], [f32, f64], [StepSpec("add", [0, 1], [2], {}, [f64]),
                                            StepSpec("exp", [2], [3], {}, [f64]),
                                            StepSpec("neg", [3], [4], {}, [f64])], [4])
    planner = BufferPlanner(spec, Program(spec))
    assert sorted(planner.out_kernels) == [1]  # f32 + f64: NumPy's own loop and allocation
    g = tracer.trace(lambda x: np.exp(x[x > 0]) + 1.0, TensorSpec((6,), np.float64))
    sess = _session(g)
    x = np.array([-1.0, 2.0, 0.5, -3.0, 1.0, 4.0])
    assert_agree(sess.run(x), np.exp(x[x > 0]) + 1.0)
    assert sess.memory_plan().unknown


def test_plan_needs_every_input_symbol():
    t = TypeSpec(np.dtype(np.float64), ("n",))
    spec = ProgramSpec([0], [t], [StepSpec("exp", [0], [1], {}, [t])], [1])
    with pytest.raises(runtime.RuntimeInputError, match="n=1"):
        plan_memory(spec, Program(spec), {})


# --- the out= kernels and the Winograd path the planned runtime runs ---------------------------

def _direct_conv(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """Independent reference: every output pixel as an einsum over its 3x3 window, in float64."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # N, C, H, W, 3, 3
    return np.einsum("nchwij,mcij->nmhw", win, w.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 64, 16, 16, 64, 1), (2, 65, 9, 11, 70, 1), (1, 64, 15, 14, 64, 0)])
def test_winograd_conv_agrees_with_direct_convolution(shape, dtype):
    from runtime.kernels import conv as C
    from runtime.kernels.fused import fused_conv_out

    n, c, h, wd, m, pad = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((m, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    pads = (pad,) * 4
    assert C._conv_plan(x, w, (1, 1), pads, (1, 1), 1).mode == "winograd"
    ref = (_direct_conv(x, w, pad) + b[:, None, None]).astype(dtype)
    assert_agree(C.conv(x, w, b, pads=pads), ref)
    dst = np.full(ref.shape, np.nan, dtype)
    assert C.conv_into(dst, x, w, b, pads=pads) is dst
    assert_agree(dst, ref)
    w.flags.writeable = False  # a model constant: the filter transform is cached
    for _ in range(2):
        y = fused_conv_out(x, w, b, out=np.empty_like(ref), strides=(1, 1), pads=pads, dilations=(1, 1), group=1,
                           activation="relu")
        assert_agree(y, np.maximum(ref, 0))
    w2 = w.copy()  # writable weights are transformed on every call, so changing them is seen
    assert_agree(C.conv(x, w2, b, pads=pads), ref)
    w2 *= 2
    assert_agree(C.conv(x, w2, b, pads=pads), (2 * _direct_conv(x, w, pad) + b[:, None, None]).astype(dtype))


def test_gemm_out_matches_gemm_for_stacked_inputs():
    from runtime.kernels.fused import gemm, gemm_out

    rng = np.random.default_rng(1)
    a, b, c = rng.standard_normal((3, 5, 8)), rng.standard_normal((8, 4)), rng.standard_normal(4)
    for act in ("none", "relu", "tanh", "sigmoid", "gelu"):
        assert_agree(gemm_out(a, b, c, activation=act, out=np.empty((3, 5, 4))), gemm(a, b, c, activation=act))


@pytest.mark.parametrize("shape", [(1, 3, 0), (2, 0, 4)])
def test_planned_stacked_matmul_with_an_empty_dim(shape):
    """A stack of matrices times one matrix runs as one 2-D GEMM into the planned buffer; with a
    dim of 0 that reshape must not lean on -1 (size 0 leaves it undetermined)."""
    w = np.ones((shape[-1], 2))
    g = tracer.trace(lambda a: np.tanh((a * 2.0) @ w), TensorSpec(shape, np.float64))  # (planned: not a result)
    sess, x = _session(g), np.ones(shape)
    for _ in range(2):  # the first call and the bound schedule
        got = sess.run(x)
        assert got.shape == shape[:-1] + (2,) and not got.any()
