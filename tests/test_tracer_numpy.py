"""Tracing vs eager NumPy: every supported ufunc and function, over random shapes, broadcasting
and dtypes. Results and result dtypes must agree (DESIGN.md's rule; the same kernels run, so
most agree exactly)."""

from __future__ import annotations

import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
import runtime
import tracer
from exporters.castml_format import to_bytes
from tests.helpers import assert_agree
from tracer.numpy_api import UFUNC_TO_OP

DTYPES = [np.bool_, np.int32, np.int64, np.float16, np.float32, np.float64]
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


def arrays(dtype, shape):
    if np.dtype(dtype).kind == "f":
        elements = st.floats(-3, 3, width=np.dtype(dtype).itemsize * 8)
    elif np.dtype(dtype).kind == "b":
        elements = st.booleans()
    else:
        elements = st.integers(-5, 5)
    return hnp.arrays(dtype, shape, elements=elements)


def eager(fn, *args):
    """Run `fn` eagerly; None when NumPy itself rejects the inputs."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return fn(*args)
        except (TypeError, ValueError, np.exceptions.AxisError, OverflowError, IndexError):
            return None


def check(fn, *args):
    """Trace `fn` at `args`, check text round trip and verifier, and compare with eager NumPy."""
    ref = eager(fn, *args)
    if ref is None:
        with pytest.raises((tracer.TraceError, TypeError, ValueError, IndexError)):
            tracer.trace(fn, *args)
        return None
    g = tracer.trace(fn, *args)
    ir.verify(g)
    assert ir.parse(g.to_text()) == g
    got = ir.interpret(g, *args)
    assert_agree(got, _as_arrays(ref))
    return g


def _as_arrays(tree):
    from runtime import pytree

    leaves, td = pytree.flatten(tree)
    return pytree.unflatten(td, [np.asarray(x) for x in leaves])


UNARY = sorted((uf for uf in UFUNC_TO_OP if uf.nin == 1), key=lambda u: u.__name__) + [
    np.square, np.positive, np.fabs]
BINARY = sorted((uf for uf in UFUNC_TO_OP if uf.nin == 2), key=lambda u: u.__name__) + [np.float_power]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("ufunc", UNARY, ids=lambda u: u.__name__)
@SETTINGS
@given(data=st.data())
def test_unary_ufuncs(ufunc, dtype, data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    x = data.draw(arrays(dtype, shape))
    check(lambda a: ufunc(a), x)


@pytest.mark.parametrize("dtypes", [(a, b) for a in DTYPES for b in DTYPES if DTYPES.index(a) <= DTYPES.index(b)],
                         ids=lambda p: f"{np.dtype(p[0]).name}-{np.dtype(p[1]).name}")
@pytest.mark.parametrize("ufunc", BINARY, ids=lambda u: u.__name__)
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_binary_ufuncs(ufunc, dtypes, data):
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4)).input_shapes
    a = data.draw(arrays(dtypes[0], shapes[0]))
    b = data.draw(arrays(dtypes[1], shapes[1]))
    if ufunc in (np.left_shift, np.right_shift, np.power):
        b = np.abs(b) if b.dtype.kind in "iu" else b
    check(lambda x, y: ufunc(x, y), a, b)


@pytest.mark.parametrize("scalar", [2, 2.5, True, -3])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", ["add", "mul", "truediv", "sub", "pow", "maximum", "less"])
def test_weak_python_scalars(op, dtype, scalar):
    """NEP 50: Python scalars (closed over or passed as arguments) do not upcast arrays."""
    fns = {"add": lambda x, s: x + s, "mul": lambda x, s: s * x, "truediv": lambda x, s: x / s,
           "sub": lambda x, s: x - s, "pow": lambda x, s: np.power(x, s), "maximum": np.maximum,
           "less": lambda x, s: x < s}
    x = np.arange(6).reshape(2, 3).astype(dtype)
    fn = fns[op]
    if op == "pow" and scalar == -3:
        scalar = 3  # integer ** negative integer is a value-dependent error in NumPy
    check(lambda a: fn(a, scalar), x)   # closed over
    check(fn, x, scalar)               # traced Python scalar argument


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("exponent", [2, 1, 0, 3, 2.0, 0.5])
def test_pow_operator_fast_paths(dtype, exponent):
    """`x ** 2` is np.square for ndarrays (bool ** 2 is int8); traced code follows suit."""
    check(lambda x: x ** exponent, np.arange(4).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name, fn", [
    ("sum", lambda x: np.sum(x)), ("sum_axis", lambda x: x.sum(axis=-1, keepdims=True)),
    ("sum_axes", lambda x: np.sum(x, axis=(0, 1))), ("mean", lambda x: np.mean(x, axis=0)),
    ("mean_all", lambda x: x.mean()), ("max", lambda x: np.max(x, axis=1)), ("min", lambda x: x.min()),
    ("amax", lambda x: np.amax(x, axis=0, keepdims=True)),
    ("prod", lambda x: np.prod(x, axis=1)), ("argmax", lambda x: np.argmax(x, axis=1)),
    ("argmax_flat", lambda x: np.argmax(x)), ("argmin", lambda x: x.argmin(axis=0)),
    ("argmax_flat_keepdims", lambda x: np.argmax(x, keepdims=True)),
    ("argmin_keepdims", lambda x: x.argmin(axis=-1, keepdims=True)),
    ("var", lambda x: np.var(x, axis=1)), ("std", lambda x: x.std(ddof=1)),
    ("cumsum", lambda x: np.cumsum(x, axis=1)), ("cumsum_flat", lambda x: x.cumsum()),
    ("any", lambda x: np.any(x, axis=0)), ("all", lambda x: np.all(x)),
    ("add_reduce", lambda x: np.add.reduce(x, axis=1)),
])
@SETTINGS
@given(data=st.data())
def test_reductions(name, fn, dtype, data):
    x = data.draw(arrays(dtype, data.draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4))))
    check(fn, x)


SHAPE_FNS = [
    ("reshape", lambda x: x.reshape(-1)), ("reshape2", lambda x: np.reshape(x, (x.shape[0], -1))),
    ("transpose", lambda x: x.T), ("transpose_axes", lambda x: np.transpose(x, (1, 0, 2))),
    ("swapaxes", lambda x: np.swapaxes(x, 0, 2)), ("moveaxis", lambda x: np.moveaxis(x, 0, -1)),
    ("expand_dims", lambda x: np.expand_dims(x, 1)), ("squeeze", lambda x: np.squeeze(x[:, :1], 1)),
    ("broadcast_to", lambda x: np.broadcast_to(x[:1], (3,) + x.shape[1:])),
    ("concatenate", lambda x: np.concatenate([x, x[:1]], axis=0)), ("stack", lambda x: np.stack([x, x], -1)),
    ("split", lambda x: np.split(x, [1], axis=1)), ("pad", lambda x: np.pad(x, ((1, 0), (0, 2), (1, 1)))),
    ("pad_edge", lambda x: np.pad(x, 1, mode="edge")), ("tile", lambda x: np.tile(x, (2, 1, 1))),
    ("repeat", lambda x: np.repeat(x, 2, axis=1)), ("repeat_flat", lambda x: np.repeat(x, 3)),
    ("astype", lambda x: x.astype(np.float32)), ("astype_int", lambda x: x.astype(np.int32)),
    ("zeros_like", lambda x: np.zeros_like(x)), ("ones_like", lambda x: np.ones_like(x, dtype=np.float32)),
    ("full_like", lambda x: np.full_like(x, 3)), ("flip", lambda x: np.flip(x, 1)),
    ("ravel", lambda x: x.ravel()), ("hstack", lambda x: np.hstack([x, x])),
    ("where", lambda x: np.where(x > 1, x, 0)), ("clip", lambda x: np.clip(x, 0, 2)),
    ("take", lambda x: np.take(x, [0, -1], axis=1)), ("round", lambda x: np.round(x)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name, fn", SHAPE_FNS, ids=[n for n, _ in SHAPE_FNS])
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_shape_functions(name, fn, dtype, data):
    x = data.draw(arrays(dtype, data.draw(hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=4))))
    check(fn, x)


INDEXING = [
    ("int", lambda x: x[1]), ("neg_int", lambda x: x[-1, 0]), ("slice", lambda x: x[1:, ::2]),
    ("neg_step", lambda x: x[::-1, 1::-1]), ("ellipsis", lambda x: x[..., 0]),
    ("newaxis", lambda x: x[:, None, 1]), ("int_array", lambda x: x[[0, 2, 0]]),
    ("int_array_axis1", lambda x: x[:, np.array([1, 0])]), ("two_arrays", lambda x: x[[0, 1], [1, 0]]),
    ("array_and_int", lambda x: x[0, :, [1, 0]]), ("bool_mask", lambda x: x[x > 0]),
    ("bool_rows", lambda x: x[x.sum(axis=(1, 2)) > 0]), ("array_2d", lambda x: x[np.array([[0, 1], [2, 0]])]),
]


@pytest.mark.parametrize("name, fn", INDEXING, ids=[n for n, _ in INDEXING])
def test_indexing(name, fn):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 2))
    check(fn, x)


def _setitem_cases():
    def basic(x):
        y = x.copy()
        y[0] = 1.0
        y[:, 1:3] = y[:, :2] * 2
        y[-1, -1, -1] = 7.0
        return y

    def array(x):
        y = x.copy()
        y[[2, 0]] = 0.5
        return y

    def mask(x):
        y = x.copy()
        y[y > 0] = 0.0
        return y

    def inplace(x):
        y = x * 1.0
        y += 2
        y *= x
        return y

    return [("basic", basic), ("array", array), ("mask", mask), ("inplace", inplace)]


@pytest.mark.parametrize("name, fn", _setitem_cases(), ids=[n for n, _ in _setitem_cases()])
def test_setitem(name, fn):
    x = np.random.default_rng(1).normal(size=(3, 4, 2))
    check(fn, x)


@pytest.mark.parametrize("name, fn", [
    ("matmul", lambda a, b: a @ b), ("dot", lambda a, b: np.dot(a, b)),
    ("einsum", lambda a, b: np.einsum("ij,jk->ik", a, b)), ("einsum_implicit", lambda a, b: np.einsum("ij,jk", a, b)),
    ("matmul_vec", lambda a, b: a @ b[:, 0]), ("outer", lambda a, b: np.outer(a[0], b[:, 0])),
    ("tensordot", lambda a, b: np.tensordot(a, b, axes=1)),
])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_linalg(name, fn, dtype):
    rng = np.random.default_rng(2)
    a = (rng.normal(size=(3, 4)) * 3).astype(dtype)
    b = (rng.normal(size=(4, 5)) * 3).astype(dtype)
    check(fn, a, b)


def test_batched_matmul_broadcast():
    rng = np.random.default_rng(3)
    check(lambda a, b: a @ b, rng.normal(size=(2, 1, 3, 4)), rng.normal(size=(5, 4, 2)))


@pytest.mark.parametrize("equal_nan", [False, True])
def test_isclose_matches_numpy_on_infinities_and_nan(equal_nan):
    """NumPy: within tolerance of a finite b, or equal: inf is close to inf, not to -inf or 1."""
    a = np.array([np.inf, -np.inf, np.inf, 1.0, np.nan, 1.0, 1e-9, np.inf, 0.0, 5.0])
    b = np.array([np.inf, -np.inf, -np.inf, 1.0 + 1e-6, np.nan, np.inf, 0.0, 1.0, np.nan, 5.0])
    g = check(lambda x, y: np.isclose(x, y, equal_nan=equal_nan), a, b)
    assert np.isclose(a, b, equal_nan=equal_nan)[[0, 1, 4]].tolist() == [True, True, equal_nan]
    sess = runtime.load(to_bytes(g))  # the default (native) backend too
    assert np.array_equal(sess.run(a, b), np.isclose(a, b, equal_nan=equal_nan))


@pytest.mark.parametrize("name, fn", [
    ("any", lambda a: np.any(a > 0, axis=0)), ("all", lambda a: np.all(a > 0, axis=0)),
    ("any_flat", lambda a: np.any(a)), ("all_keepdims", lambda a: a.all(1, keepdims=True)),
])
def test_any_all_over_empty_axes_are_false_and_true(name, fn):
    """any() of nothing is False, all() of nothing True: statically empty, and a symbolic batch run
    at 0 on every engine (the max / min of bools has no identity)."""
    import onnxruntime as ort

    import exporters

    empty, full = np.zeros((0, 3)), np.array([[1.0, -1.0, 0.0], [2.0, 3.0, -1.0]])
    check(fn, empty)
    g = tracer.trace(fn, tracer.TensorSpec(("batch", 3), np.float64))
    onnx_sess = ort.InferenceSession(exporters.to_onnx(g).SerializeToString(), providers=["CPUExecutionProvider"])
    for x in (empty, full):
        want = fn(x)
        got = {"interpret": ir.interpret(g, x), "onnxruntime": onnx_sess.run(None, {"a": x})[0],
               **{b: runtime.load(to_bytes(g), backend=b).run(x) for b in ("numpy", "native")}}
        for engine, y in got.items():
            assert np.array_equal(y, want) and y.shape == want.shape, (engine, x.shape, y, want)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_power_of_a_half_is_numpys_sqrt(dtype):
    """x ** 0.5 takes NumPy's sqrt fast path: NaN for -inf and -0.0 for -0.0 (C pow: inf, +0.0),
    on every engine."""
    x = np.array([-np.inf, -1.0, -0.0, 0.0, 4.0, np.inf], dtype)
    with np.errstate(invalid="ignore"):
        want = x ** 0.5
    g = tracer.trace(lambda a: a ** 0.5, x)
    assert [op.kind for op in g.ops] == ["sqrt"]
    with np.errstate(invalid="ignore"):
        for got in [ir.interpret(g, x)] + [runtime.load(to_bytes(g), backend=b).run(x) for b in ("numpy", "native")]:
            assert np.array_equal(got, want, equal_nan=True) and np.array_equal(np.signbit(got), np.signbit(want))
