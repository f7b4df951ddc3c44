"""Basic slices at the edges: bounds past either end, negative steps, empty results, on static and
symbolic axes, read (x[s]) and written (x[s] = v).

Every engine must give NumPy's result: eager NumPy is the reference for ir.interpret, the NumPy
and native runtimes, and onnxruntime on the exported model. On a static axis that holds for any
bound. On a symbolic axis a bound is taken to lie inside the axis (x[:-3] is n-3 long): checked at
sizes where it does; below them the runtimes refuse the negative length, and ir.interpret still
gives NumPy's result.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import exporters
import ir
import runtime
import tracer
from exporters.castml_format import to_bytes
from tests.helpers import assert_agree, build_native

BIG = 2**62

# (start, stop, step) triples: inside, past either end, negative, empty, huge
BOUNDS = (None, 0, 1, 2, 3, 5, 9, -1, -2, -3, -4, -6, -9, BIG, -BIG)
STEPS = (None, 1, 2, 3, -1, -2, -3)
ALL_SLICES = [slice(a, b, s) for a in BOUNDS for b in BOUNDS for s in STEPS]

# a smaller set for the engines, each kind of edge at least once
SLICES = [
    slice(-4, 1, -1), slice(-4, None, -1), slice(-9, -9, -1), slice(None, -3), slice(None, -2, 2),
    slice(1, -1), slice(-5, None), slice(None, 5), slice(5, None), slice(-5, 5), slice(2, -9),
    slice(None, None, -1), slice(None, None, -2), slice(-1, 0, -1), slice(5, -9, -1), slice(5, 0, -2),
    slice(None, -3, -1), slice(-2, -5, -1), slice(1, -3, -2), slice(-5, 2, -1), slice(2, -5, -1),
    slice(-BIG, BIG, 3), slice(BIG, -BIG, -1), slice(3, 1), slice(-1, -3), slice(None, -1, -1),
]
BATCHES = (0, 1, 2, 3, 7)
IDS = [f"{s.start}:{s.stop}:{s.step}".replace(str(BIG), "BIG") for s in SLICES]


def _inside(s: slice, n: int) -> bool:
    """Whether `s` fits an axis of n elements as the tracer takes a symbolic one to: its bounds lie
    inside the axis and do not cross (so the declared length, e.g. n-3, is not negative)."""
    step = s.step or 1

    def pos(b, default):
        if b is not None and abs(b) >= BIG:  # a sentinel: that end of the axis
            return (n if step > 0 else n - 1) if b > 0 else (0 if step > 0 else -1)
        return default if b is None else (b if b >= 0 else n + b)

    if not all(b is None or -n <= b <= n or abs(b) >= BIG for b in (s.start, s.stop)):
        return False
    if step > 0:
        return pos(s.start, 0) <= pos(s.stop, n)
    return pos(s.start, n - 1) < n and pos(s.start, n - 1) >= pos(s.stop, -1)


@pytest.fixture(scope="module")
def native_lib():
    return build_native()


def _engines(g: ir.Graph) -> dict:
    data = to_bytes(g)
    model = exporters.to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    numpy_rt, native_rt = runtime.load(data, backend="numpy"), runtime.load(data, backend="native")
    assert native_rt.backend == "native"
    return {
        "interpret": lambda x: ir.interpret(g, x),
        "numpy": numpy_rt.run,
        "native": native_rt.run,
        "onnxruntime": lambda x: sess.run(None, {name: x})[0],
    }


def _check(fn, g: ir.Graph, inputs) -> None:
    engines = _engines(g)
    for x in inputs:
        ref = fn(x.copy())
        for engine, run in engines.items():
            try:
                got = run(x)
            except Exception as e:  # noqa: BLE001 - the report names the engine and size
                raise AssertionError(f"{engine} at shape {x.shape}: {type(e).__name__}: {e}") from None
            assert np.shape(got) == ref.shape, f"{engine} at shape {x.shape}: {np.shape(got)} != {ref.shape}"
            assert_agree(np.asarray(got), ref)


def _x(n: int, cols: int | None = None) -> np.ndarray:
    shape = (n,) if cols is None else (n, cols)
    return np.arange(1.0, 1.0 + np.prod(shape)).reshape(shape)


def test_static_attributes_are_in_range_and_mean_numpys_slice():
    """Every traced slice of a static axis has attributes in range: positive steps within [0, n],
    negative steps within [0, n-1] with -1 only for "before index 0", (0, 0) when empty, so ONNX
    Slice (which counts negative values from the end) reads them as NumPy does."""
    for n in (0, 1, 3, 5):
        x = _x(n)
        for s in ALL_SLICES:
            g = tracer.trace(lambda a, s=s: a[s], x)
            ops = [op for op in g.ops if op.kind == "slice"]
            want = x[s]
            if not ops:
                assert want.shape == x.shape
                continue
            (a,), (b,), (k,) = (ops[0].attrs[key] for key in ("starts", "stops", "steps"))
            if want.size == 0:
                assert (a, b) == (0, 0), f"x[{s}] on n={n}: {(a, b, k)}"
            elif k > 0:
                assert 0 <= a <= n and 0 <= b <= n, f"x[{s}] on n={n}: {(a, b, k)}"
            else:
                assert 0 <= a < n and -1 <= b < n, f"x[{s}] on n={n}: {(a, b, k)}"
            assert_agree(ir.interpret(g, x), want)


@pytest.mark.parametrize("s", SLICES, ids=IDS)
def test_read_on_a_static_axis(s, native_lib):
    for n in (0, 1, 3, 5):
        fn = lambda a: a[s]  # noqa: E731
        _check(fn, tracer.trace(fn, _x(n)), [_x(n)])


@pytest.mark.parametrize("s", SLICES, ids=IDS)
def test_read_on_a_symbolic_axis(s, native_lib):
    fn = lambda a: a[s]  # noqa: E731
    g = tracer.trace(fn, tracer.TensorSpec(("batch",), np.float64))
    _check(fn, g, [_x(b) for b in BATCHES if _inside(s, b)])


@pytest.mark.parametrize("s", SLICES, ids=IDS)
def test_assignment_on_a_static_axis(s, native_lib):
    for n in (0, 1, 3, 5):
        x = _x(n)
        values = -np.arange(1.0, 1.0 + x[s].size)

        def fn(a):
            b = a.copy()
            b[s] = values
            return b

        _check(fn, tracer.trace(fn, x), [x])


@pytest.mark.parametrize("s", SLICES, ids=IDS)
def test_assignment_on_a_symbolic_axis(s, native_lib):
    def fn(a):
        b = a.copy()
        b[s] = -5.0
        return b

    g = tracer.trace(fn, tracer.TensorSpec(("batch",), np.float64))
    _check(fn, g, [_x(b) for b in BATCHES if _inside(s, b)])


@pytest.mark.parametrize("s", [slice(-4, 1, -1), slice(None, -3, -1), slice(1, -1), slice(-2, -5, -1)],
                         ids=["-4:1:-1", ":-3:-1", "1:-1", "-2:-5:-1"])
def test_two_axes_one_symbolic_read_and_write(s, native_lib):
    def read(a):
        return a[s, ::-1] + a[s, 1:2]

    def write(a):
        b = a.copy()
        b[s, -4::-1] = np.array([7.0, 8.0, 9.0])[: len(range(*slice(-4, None, -1).indices(3)))]
        return b

    for fn in (read, write):
        g = tracer.trace(fn, tracer.TensorSpec(("batch", 3), np.float64))
        _check(fn, g, [_x(b, 3) for b in BATCHES if _inside(s, b)])


def test_repro_negative_step_from_before_the_start():
    """x[-4:1:-1] on 3 elements is empty; assigning to it changes nothing."""
    x = np.array([10.0, 20.0, 30.0])
    g = tracer.trace(lambda a: a[-4:1:-1], x)
    assert g.outputs[0].type.shape == (0,)
    assert ir.interpret(g, x).shape == (0,)

    def assign(a):
        b = a.copy()
        b[-4:1:-1] = 5.0
        return b

    assert_agree(ir.interpret(tracer.trace(assign, x), x), x)


def test_negative_stop_on_a_symbolic_axis_too_short_for_it():
    """x[:-3] is declared n-3 long: at batch < 3 the runtimes refuse the negative length (a typed
    error, never a wrong result) and ir.interpret gives NumPy's empty array."""
    g = tracer.trace(lambda a: a[:-3], tracer.TensorSpec(("batch",), np.float64))
    assert g.outputs[0].type.shape == ("batch-3",)
    for b in BATCHES:
        x = _x(b)
        assert_agree(ir.interpret(g, x), x[:-3])
        for backend in ("numpy", "native"):
            sess = runtime.load(to_bytes(g), backend=backend)
            if b >= 3:
                assert_agree(sess.run(x), x[:-3])
            else:
                with pytest.raises(runtime.RuntimeInputError, match="-"):
                    sess.run(x)


def test_gradient_of_an_edge_slice_on_a_symbolic_axis():
    def f(a):
        return (a[-2:-5:-1] ** 2).sum() + (a[:-3] * 3.0).sum() + (a[-4::-2] * 5.0).sum()

    g = ir.grad(tracer.trace(f, tracer.TensorSpec(("batch",), np.float64)))
    for b in (5, 7):
        x = _x(b)
        want = np.zeros_like(x)
        want[-2:-5:-1] += 2 * x[-2:-5:-1]
        want[:-3] += 3.0
        want[-4::-2] += 5.0
        got = ir.interpret(g, x)
        got = got[-1] if isinstance(got, tuple) else got
        assert_agree(np.asarray(got), want)
