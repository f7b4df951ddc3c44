"""The native C++ runtime (runtime/native, runtime.native_backend) against the NumPy runtime.

The library is built once per session by a module fixture (`runtime.native.build.build()`,
incremental); a machine without cmake or a C++ compiler FAILS here with the reason, since CI
has both. Every native op runs on traced graphs against the Python runtime under the one
tolerance rule; the zoo models run at batch 1 and 7; the malformed-file corpus must fail with
the same error category and message; `castml-run` runs end to end; sessions are shared by
threads.
"""

from __future__ import annotations

import importlib
import re
import subprocess

import numpy as np
import pytest

import runtime
import tracer
from exporters.castml_format import to_bytes
from runtime import native_backend as nb
from tests.helpers import assert_agree, build_native, run_in_threads
from tests.test_castml_format import _hand_model
from tracer import ops as T
from tracer.core import context_of, emit
from tracer.ops import _apply


@pytest.fixture(scope="module", autouse=True)
def native_lib():
    return build_native()


def _rng(seed=0):
    return np.random.default_rng(seed)


def _f(shape, dtype=np.float32, seed=0, lo=-2.0, hi=2.0):
    return _rng(seed).uniform(lo, hi, shape).astype(dtype)


def _both(g):
    data = to_bytes(g)
    native = runtime.load(data, backend="native")
    assert native.backend == "native"
    return native, runtime.load(data, backend="numpy")


def _check(fn, *args, run_args=None):
    """Trace fn on args, run both backends on run_args (default: args), compare."""
    native, ref = _both(tracer.trace(fn, *args))
    for a in run_args or [args]:
        assert_agree(native.run(*a), ref.run(*a))


X = _f((3, 4))
POS = _f((3, 4), lo=0.1, hi=3.0)
UNIT = _f((3, 4), lo=-0.9, hi=0.9)
I32 = _rng(1).integers(-20, 20, (3, 4)).astype(np.int32)
I64 = _rng(2).integers(1, 9, (3, 4)).astype(np.int64)
SPECIAL = X.copy()
SPECIAL[0, :3] = (np.nan, np.inf, -np.inf)

UNARY = {
    "exp": (np.exp, X), "exp2": (np.exp2, X), "expm1": (np.expm1, X), "log": (np.log, POS), "log2": (np.log2, POS),
    "log10": (np.log10, POS), "log1p": (np.log1p, POS), "sqrt": (np.sqrt, POS), "cbrt": (np.cbrt, X),
    "sin": (np.sin, X), "cos": (np.cos, X), "tan": (np.tan, UNIT), "asin": (np.arcsin, UNIT),
    "acos": (np.arccos, UNIT), "atan": (np.arctan, X), "sinh": (np.sinh, X), "cosh": (np.cosh, X),
    "tanh": (np.tanh, X), "asinh": (np.arcsinh, X), "acosh": (np.arccosh, POS + 1), "atanh": (np.arctanh, UNIT),
    "floor": (np.floor, X * 3), "ceil": (np.ceil, X * 3), "trunc": (np.trunc, X * 3), "round": (np.rint, X * 3),
    "neg": (np.negative, I32), "abs": (np.abs, I32), "sign": (np.sign, X), "reciprocal": (np.reciprocal, POS),
    "logical_not": (np.logical_not, X > 0), "bitwise_not": (np.invert, I32), "isnan": (np.isnan, SPECIAL),
    "isinf": (np.isinf, SPECIAL), "isfinite": (np.isfinite, SPECIAL), "relu_special": (lambda x: T.relu(x), SPECIAL),
    "exp_of_int": (np.exp, I32 // 4), "cast": (lambda x: x.astype(np.int16), X * 10),
    "cast_bool": (lambda x: x.astype(np.bool_), I32), "neg_f64": (np.negative, X.astype(np.float64)),
}

ACTIVATIONS = {
    "erf": {}, "normal_cdf": {}, "sigmoid": {}, "relu": {}, "softplus": {}, "softsign": {}, "hard_swish": {},
    "gelu": {"approximate": "none"}, "gelu_tanh": {"approximate": "tanh"}, "elu": {"alpha": 0.7},
    "celu": {"alpha": 1.3}, "selu": {"alpha": 1.67, "gamma": 1.05}, "leaky_relu": {"alpha": 0.1},
    "hard_sigmoid": {"alpha": 0.3, "beta": 0.4},
    "thresholded_relu": {"alpha": 0.5},
}

BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "floordiv": np.floor_divide,
    "mod": np.remainder, "pow": np.power, "maximum": np.maximum, "minimum": np.minimum, "fmax": np.fmax,
    "fmin": np.fmin, "atan2": np.arctan2, "hypot": np.hypot, "equal": np.equal, "not_equal": np.not_equal,
    "less": np.less, "less_equal": np.less_equal, "greater": np.greater, "greater_equal": np.greater_equal,
}
INT_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "floordiv": np.floor_divide, "mod": np.remainder,
    "maximum": np.maximum, "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or,
    "bitwise_xor": np.bitwise_xor, "left_shift": np.left_shift, "right_shift": np.right_shift,
    "logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name):
    fn, x = UNARY[name]
    _check(fn, x)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation(name, dtype):
    kind = name.split("_tanh")[0]
    _check(lambda x: _apply(kind, [x], ACTIVATIONS[name]), _f((5, 7), dtype, lo=-4, hi=4))


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_broadcasting(name, dtype):
    a, b = _f((2, 3, 4), dtype, 1, 0.5, 3), _f((3, 1), dtype, 2, 0.5, 3)
    _check(BINARY[name], a, b)
    _check(lambda x: BINARY[name](x, dtype(1.5)), a)


@pytest.mark.parametrize("name", sorted(INT_BINARY))
def test_integer_binary(name):
    a = _rng(3).integers(-9, 9, (4, 5)).astype(np.int64)
    b = _rng(4).integers(1, 5, (5,)).astype(np.int64)
    _check(INT_BINARY[name], a, b)


def test_mixed_dtypes_and_where():
    _check(lambda a, b: a + b, I32, I64)
    _check(lambda c, a, b: np.where(c, a, b), X > 0, X, _f((4,), seed=5))
    _check(lambda a: np.where(a > 0, a, 0.0), X.astype(np.float64))


SHAPES = {
    "reshape": (lambda x: x.reshape(4, 3), X),
    "transpose": (lambda x: x.transpose(2, 0, 1), _f((2, 3, 4))),
    "broadcast_to": (lambda x: np.broadcast_to(x, (2, 3, 4)), _f((3, 1))),
    "slice": (lambda x: x[1:3, ::-2], _f((4, 5))),
    "slice_negative": (lambda x: x[::-1, 1:-1], _f((4, 5))),
    "concat": (lambda x, y: np.concatenate([x, y, x], axis=1), X, _f((3, 2))),
    "split": (lambda x: tuple(np.split(x, [1, 3], axis=1)), X),
    "gather": (lambda x: np.take(x, np.array([2, 0, -1]), axis=1), X),
    "tile": (lambda x: np.tile(x, (2, 1)), X),
    "repeat": (lambda x: np.repeat(x, 2, axis=0), X),
    "pad": (lambda x: np.pad(x, ((1, 0), (2, 1))), X),
    "constant": (lambda x: x @ np.arange(8.0, dtype=np.float32).reshape(4, 2), X),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_ops(name):
    fn, *args = SHAPES[name]
    _check(fn, *args)


REDUCTIONS = {
    "sum": lambda x: x.sum(axis=(0, 2)), "mean": lambda x: x.mean(axis=-1, keepdims=True),
    "max": lambda x: x.max(axis=1), "min": lambda x: x.min(), "prod": lambda x: np.prod(x, axis=0),
    "argmax": lambda x: np.argmax(x, axis=1), "argmin": lambda x: np.argmin(x, axis=0),
    "cumsum": lambda x: np.cumsum(x, axis=2),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_reductions(name, dtype):
    _check(REDUCTIONS[name], (_f((3, 4, 5), np.float64) * 4).astype(dtype))


MATMULS = {
    "2d": ((5, 7), (7, 3)), "vec_mat": ((7,), (7, 3)), "mat_vec": ((5, 7), (7,)), "vec_vec": ((7,), (7,)),
    "batch_shared_b": ((2, 4, 5, 7), (7, 3)), "batch_both": ((2, 5, 7), (2, 7, 3)),
    "batch_broadcast": ((2, 1, 5, 7), (3, 7, 4)),
}


@pytest.mark.parametrize("name", sorted(MATMULS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_matmul(name, dtype):
    sa, sb = MATMULS[name]
    _check(np.matmul, (_f(sa, np.float64, 1) * 5).astype(dtype), (_f(sb, np.float64, 2) * 5).astype(dtype))


@pytest.mark.parametrize("activation", ["none", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh"])
def test_fused_gemm_and_conv(activation):
    x, w, b = _f((6, 8)), _f((8, 5), seed=1), _f((5,), seed=2)
    _check(lambda x, w, b: _apply("gemm", [x, w, b], {"activation": activation}), x, w, b)
    img, k, kb = _f((2, 3, 7, 7)), _f((4, 3, 3, 3), seed=3), _f((4,), seed=4)
    attrs = {"strides": (1, 2), "pads": (1, 0, 1, 1), "dilations": (1, 1), "group": 1, "activation": activation}
    _check(lambda x, w, b: _apply("fused_conv", [x, w, b], attrs), img, k, kb)


CONVS = {  # (x shape, w shape, kwargs of tracer.ops.conv)
    "3x3": ((2, 3, 9, 8), (4, 3, 3, 3), {"padding": 1}),
    "strided_dilated": ((1, 2, 11, 10), (3, 2, 3, 2), {"stride": 2, "dilation": 2}),
    "1x1": ((2, 6, 5, 5), (4, 6, 1, 1), {}),
    "grouped": ((1, 4, 6, 6), (6, 2, 3, 3), {"groups": 2, "padding": 1}),
    "depthwise": ((1, 4, 6, 6), (4, 1, 3, 3), {"groups": 4}),
    "1d": ((2, 3, 12), (5, 3, 4), {"stride": 2, "padding": 1}),
    # rows of the padded copy wider than 512 floats (its column masks come 512 at a time)
    "wide": ((1, 2, 3, 1030), (2, 2, 3, 3), {"padding": 1}),
    "wide_stride2": ((1, 2, 3, 1100), (2, 2, 3, 3), {"stride": 2, "padding": 2}),
    "wide_stride3": ((1, 2, 4, 1700), (2, 2, 3, 2), {"stride": 3, "padding": 1}),
}


@pytest.mark.parametrize("name", sorted(CONVS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv(name, dtype):
    sx, sw, kw = CONVS[name]
    _check(lambda x, w, b: T.conv(x, w, b, **kw), _f(sx, dtype), _f(sw, dtype, 1), _f(sw[:1], dtype, 2))


POOLS = {
    "max_2x2": lambda x: T.max_pool2d(x, 2),
    "max_3x3_s2_pad_ceil": lambda x: T.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True),
    "avg_2x2": lambda x: T.avg_pool2d(x, 2),
    "avg_3x3_pad": lambda x: T.avg_pool2d(x, 3, stride=2, padding=1),
    "avg_ceil_include_pad": lambda x: T.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True,
                                                   count_include_pad=True),
    "global_avg": lambda x: T.global_avg_pool2d(x),
    "global_max": lambda x: _apply("global_max_pool", [x], {}),
    "max_1d": lambda x: T.max_pool(x[:, :, 0], 3, stride=2),
}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_pooling(name):
    x = _f((2, 3, 7, 8))
    with_nan = x.copy()
    with_nan[0, 1, 2, 3] = np.nan
    _check(POOLS[name], x, run_args=[(x,), (with_nan,)])


def test_normalizations_and_softmax():
    x = _f((2, 3, 4, 5), np.float32)
    _check(lambda x: T.softmax(x, axis=1), x)
    _check(lambda x: T.log_softmax(x), x.astype(np.float64) * 30)
    _check(lambda x, w, b: T.layer_norm(x, w, b), x, _f((4, 5), seed=1), _f((4, 5), seed=2))
    _check(lambda x, w: T.layer_norm(x, w), x, _f((5,), seed=1))
    _check(lambda x, m, v, w, b: T.batch_norm(x, m, v, w, b), x, _f((3,), seed=1), _f((3,), seed=2, lo=0.5, hi=2),
           _f((3,), seed=3), _f((3,), seed=4))
    _check(lambda x, w, b: _apply("instance_norm", [x, w, b], {"epsilon": 1e-5}), x, _f((3,), seed=1),
           _f((3,), seed=2))


def test_every_native_kernel_is_exercised_above():
    # the op kinds these tests emit, found by tracing them
    kinds: set[str] = set()

    def collect(fn, *args):
        kinds.update(op.kind for op in tracer.trace(fn, *args).ops)

    for fn, x in UNARY.values():
        collect(fn, x)
    for name, attrs in ACTIVATIONS.items():
        collect(lambda x, name=name, attrs=attrs: _apply(name.split("_tanh")[0], [x], attrs), X)
    for fn in list(BINARY.values()) + list(INT_BINARY.values()):
        collect(fn, I64, I64)
    for fn, *args in SHAPES.values():
        collect(fn, *args)
    for fn in REDUCTIONS.values():
        collect(fn, _f((3, 4, 5)))
    for fn in POOLS.values():
        collect(fn, _f((2, 3, 7, 8)))
    kinds |= {"matmul", "gemm", "fused_conv", "conv", "where", "softmax", "log_softmax", "layer_norm",
              "batch_norm", "instance_norm", "cast", "arange", "full", "shape_dim", "stop_gradient"}  # below
    kinds |= {"boolean_mask", "conv_transpose", "depth_to_space", "space_to_depth", "index_update", "index_add",
              "slice_update", "one_hot", "prelu", "lrn"}  # tests/test_native_extra.py
    kinds |= {"einsum", "random_bits", "random_uniform", "random_normal"}  # tests/test_native_random.py
    missing = set(nb.kernel_names()) - kinds
    assert not missing, f"native kernels without a test: {sorted(missing)}"


def test_creation_ops_with_symbolic_dims():
    def fn(x):
        ctx = context_of([x])
        a = emit("arange", [], {"n": ("m",), "dtype": np.dtype(np.float64)}, ctx=ctx)
        full = emit("full", [], {"shape": ("n", 2), "value": np.array(3, np.int32)}, ctx=ctx)
        return x + a, full, emit("shape_dim", [x], {"axis": 0}), emit("stop_gradient", [x], {})

    native, ref = _both(tracer.trace(fn, tracer.TensorSpec(("n", "m"), np.float64)))
    for shape in ((2, 3), (5, 1), (0, 4)):
        x = _f(shape, np.float64)
        assert_agree(native.run(x), ref.run(x))


def test_symbolic_dims_and_shape_dim():
    g = tracer.trace(lambda x: (x.reshape(x.shape[0] * 2, -1) * 2.0, x.sum(axis=1)),
                     tracer.TensorSpec(("batch", 4), np.float64))
    native, ref = _both(g)
    for b in (1, 3, 8):
        x = _f((b, 4), np.float64)
        assert_agree(native.run(x), ref.run(x))
    g = tracer.trace(lambda x: (x[:, : x.shape[1] // 2] + 1.0, x[::-1, 1::-1], x.T[1:, ::-2]),
                     tracer.TensorSpec(("n", "m"), np.float32))
    native, ref = _both(g)
    for shape in ((3, 6), (4, 2), (1, 5)):
        assert_agree(native.run(_f(shape)), ref.run(_f(shape)))


# ---- models ---------------------------------------------------------------------------------------

ZOO = {"mlp": ("batch", 784), "lenet": ("batch", 1, 28, 28), "transformer_encoder": ("batch", 128, 256),
       "resnet_tiny": ("batch", 3, 32, 32)}


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    out = {}
    for name, spec in ZOO.items():
        fn, (x, params) = importlib.import_module(f"models.zoo.{name}").build(0)
        g = tracer.trace(fn, tracer.TensorSpec(spec, np.float32), params)
        path = tmp_path_factory.mktemp("zoo") / f"{name}.castml"
        path.write_bytes(to_bytes(g))
        out[name] = (path, params)
    return out


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_native_vs_numpy(name, zoo_files):
    path, params = zoo_files[name]
    native, ref = runtime.load(path, backend="native"), runtime.load(path, backend="numpy")
    for batch in (1, 7):
        x = _f((batch,) + ZOO[name][1:], seed=batch)
        assert_agree(native.run(x, params), ref.run(x, params))


@pytest.mark.parametrize("name", ["lenet", "resnet_tiny", "transformer_encoder"])
def test_optimized_zoo_model_native_vs_numpy(name, zoo_files):
    """ir.optimize's fused ops (gemm, fused_conv, fused_elementwise regions) run natively too."""
    import ir

    path, params = zoo_files[name]
    fn, _ = importlib.import_module(f"models.zoo.{name}").build(0)
    g = ir.optimize(tracer.trace(lambda x: fn(x, params), tracer.TensorSpec(ZOO[name], np.float32)))
    native, ref = _both(g)
    kinds = {op.kind for op in g.ops}
    assert kinds & {"gemm", "fused_conv", "fused_elementwise"}, kinds
    for batch in (1, 3):
        x = _f((batch,) + ZOO[name][1:], seed=batch)
        assert_agree(native.run(x), ref.run(x))


def test_sessions_are_thread_safe(zoo_files):
    path, params = zoo_files["lenet"]
    native, ref = runtime.load(path, backend="native"), runtime.load(path, backend="numpy")
    inputs = [_f((b, 1, 28, 28), seed=b) for b in (1, 2, 3, 5)]
    expected = [ref.run(x, params) for x in inputs]

    def worker(k: int) -> None:
        for i in range(12):
            j = (k + i) % len(inputs)
            assert_agree(native.run(inputs[j], params), expected[j])

    errors = run_in_threads(worker, 4)
    assert not errors, errors[0]


def test_castml_run_executable(zoo_files, tmp_path):
    from runtime.native.build import executable_path

    path, params = zoo_files["mlp"]
    ref = runtime.load(path, backend="numpy")
    x = _f((3, 784))
    info = ref.inputs
    flat = dict(zip([i.name for i in info], [x] + _param_leaves(params)))
    files = []
    for i in info:
        p = tmp_path / f"{i.name}.npy"
        np.save(p, flat[i.name])
        files.append(str(p))
    out = tmp_path / "out.npz"
    proc = subprocess.run([str(executable_path()), str(path), *files, "-o", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        assert list(z.files) == [o.name for o in ref.outputs]
        assert_agree(z[ref.outputs[0].name], ref.run(x, params))
    bad = subprocess.run([str(executable_path()), str(path), files[0], "-o", str(out)], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "takes" in bad.stderr
    np.save(tmp_path / "wrong.npy", x.astype(np.float64))
    wrong = subprocess.run([str(executable_path()), str(path), str(tmp_path / "wrong.npy"), *files[1:], "-o",
                            str(out)], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "expected dtype" in wrong.stderr


# ---- limits: the same typed errors and messages from both backends -----------------------------

def _errors_of_both(source, run_args=None) -> list[tuple[type, str]]:
    """(type, message) of the error each backend raises loading `source` (and running it on
    `run_args` when given)."""
    out = []
    for backend in ("numpy", "native"):
        try:
            sess = runtime.load(source, backend=backend)
            if run_args is not None:
                sess.run(*run_args)
        except runtime.CastmlError as e:
            out.append((type(e), str(e)))
        else:
            out.append((None, "no error"))
    return out


LOAD_LIMITS = {  # limit -> (a file that exceeds it once the limit is tiny, message pattern)
    "max_rank": (dict(values=(("x", 11, (1, 1, 1)), ("", 11, (1, 1, 1)))), r"rank 3 exceeds the maximum 2 \(raise it"),
    "max_ops": (dict(ops=(("neg", (0,), (1,), ()), ("neg", (1,), (2,), ())),
                     values=(("x", 11, (2,)), ("", 11, (2,)), ("", 11, (2,)))), r"more than 1 ops in the model"),
    "max_region_depth": (None, r"regions nest deeper than 2 \("),
    "max_file_bytes": (dict(), r"more than max_file_bytes = 100 \("),
}
LOAD_VALUES = {"max_rank": 2, "max_ops": 1, "max_region_depth": 2, "max_file_bytes": 100}


@pytest.mark.parametrize("name", sorted(LOAD_LIMITS))
def test_load_limits_refuse_alike(name):
    from tests.test_castml_format import _nested

    spec, pattern = LOAD_LIMITS[name]
    data = _hand_model(**(_nested(3) if spec is None else spec))
    for _, message in _errors_of_both(data):  # within the default limits (a regions-owning neg is refused)
        assert f"set_limits({name}=" not in message, message
    with runtime.limits.limits(**{name: LOAD_VALUES[name]}):
        (t1, m1), (t2, m2) = _errors_of_both(data)
    assert t1 is t2 is runtime.ModelFormatError, (t1, t2)
    assert m1 == m2, (m1, m2)
    assert re.search(pattern, m1) and f"set_limits({name}=...) or CASTML_{name.upper()}" in m1, m1


@pytest.mark.parametrize("name,value,pattern", [
    ("max_tensor_bytes", 64, r"entry 'main': a value of type float32\[n,4\] would take 80 bytes with \{'n': 5\}, "
                             r"more than max_tensor_bytes = 64 \(raise it"),
    ("max_intermediate_bytes", 100, r"entry 'main': 160 bytes of intermediate values alive at once \(at step \d\), "
                                    r"more than max_intermediate_bytes = 100 \(raise it"),
])
def test_run_limits_refuse_alike(name, value, pattern):
    g = tracer.trace(lambda x: np.exp(x) * 2.0 + x, tracer.TensorSpec(("n", 4), np.float32))
    data = to_bytes(g)
    small, big = _f((2, 4)), _f((5, 4))
    with runtime.limits.limits(**{name: value}):
        assert _errors_of_both(data, (small,)) == [(None, "no error")] * 2
        (t1, m1), (t2, m2) = _errors_of_both(data, (big,))
    assert t1 is t2 is runtime.RuntimeInputError, (t1, t2)
    assert m1 == m2, (m1, m2)
    assert re.search(pattern, m1), m1
    # a session loaded before the limit changes obeys the new one at its next run
    sess = runtime.load(data, backend="native")
    assert_agree(sess.run(big), np.exp(big) * 2.0 + big)
    with runtime.limits.limits(**{name: value}), pytest.raises(runtime.RuntimeInputError, match=pattern):
        sess.run(big)
    assert_agree(sess.run(big), np.exp(big) * 2.0 + big)


def test_native_limits_follow_python_and_environment(zoo_files, tmp_path):
    import os
    import sys

    from runtime.native.build import executable_path

    with runtime.limits.limits(max_ops=7, max_tensor_bytes=12345):
        runtime.load(to_bytes(tracer.trace(lambda x: -x, X)), backend="native")
        assert nb.native_limits() == runtime.limits.current()
    # castml-run has no Python: it reads the same CASTML_MAX_* variables
    path, params = zoo_files["mlp"]
    files = []
    for k, leaf in enumerate([_f((3, 784))] + _param_leaves(params)):
        files.append(str(tmp_path / f"{k}.npy"))
        np.save(files[-1], leaf)
    cmd = [str(executable_path()), str(path), *files, "-o", str(tmp_path / "out.npz")]
    for env, expected in ({"CASTML_MAX_TENSOR_BYTES": "1_000"}, "more than max_tensor_bytes = 1000"), (
            {"CASTML_MAX_OPS": "2"}, "ops in the model (raise it"), ({"CASTML_MAX_RANK": "many"},
            "CASTML_MAX_RANK: expected a non-negative integer, got 'many'"), (
            {"CASTML_MAX_OPS": "-3"}, "CASTML_MAX_OPS: expected a non-negative integer, got '-3'"):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ, **env))
        assert proc.returncode == 1 and expected in proc.stderr, (env, proc.stderr)
    # and the Python side reads them too, at import, with the same message
    code = "import runtime; print(runtime.limits.current().max_ops)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, CASTML_MAX_OPS="2"))
    assert proc.stdout.strip() == "2", proc.stderr
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, CASTML_MAX_OPS="-3"))
    assert "CastmlError: environment variable CASTML_MAX_OPS: expected a non-negative integer, got '-3'" in proc.stderr


def _param_leaves(params) -> list:
    from runtime import pytree

    return pytree.flatten(params)[0]


# ---- errors and backend selection ---------------------------------------------------------------

# (the malformed-file corpus runs on both loaders in tests/test_castml_format.py)

def test_op_without_inputs_is_refused_typed_not_internal():
    """libFuzzer found it: a max_pool with no inputs made a kernel check throw std::out_of_range;
    the load refuses it as unsupported and "auto" leaves it to the NumPy backend."""
    data = _hand_model(ops=(("max_pool", (), (1,), ()),))
    with pytest.raises(nb.NativeUnsupportedError, match="cannot lower this graph"):
        runtime.load(data, backend="native")
    assert runtime.load(data).backend == "numpy"


W_CNN = _f((2, 1, 3, 3))
CORRUPTION_GRAPHS = {  # small graphs covering the kernels whose attributes drive shape arithmetic
    "mlp": (lambda x, w: np.maximum(x @ w, 0.0).sum(axis=1), (tracer.TensorSpec(("batch", 3), np.float32), _f((3, 4)))),
    "cnn": (lambda x: T.max_pool2d(T.conv2d(x, W_CNN, padding=1), 2).reshape(x.shape[0], -1),
            (tracer.TensorSpec(("n", 1, 6, 6), np.float32),)),
    "shapes": (lambda x: T.softmax(np.pad(x.transpose(1, 0)[1:, ::-1], ((0, 1), (2, 0))) * 2.0),
               (tracer.TensorSpec((3, "m"), np.float32),)),
}


@pytest.mark.parametrize("name", sorted(CORRUPTION_GRAPHS))
def test_random_corruption_gives_errors_never_crashes(name):
    """Flipped bytes in the table region: the load fails with ModelFormatError, or the model
    loads and then runs or fails with a CastmlError (kernels check attribute-driven shapes)."""
    import math

    from runtime.format.castml_fb import Model

    fn, args = CORRUPTION_GRAPHS[name]
    good = to_bytes(tracer.trace(fn, *args))
    table_end = Model.Model.GetRootAs(good, 0).DataOffset()
    rng = np.random.default_rng(11)
    outcomes = {"ok": 0, "error": 0, "ran": 0, "run error": 0}
    for trial in range(300):
        data = bytearray(good)
        if trial % 4 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, table_end))] = int(rng.integers(0, 256))
        try:
            sess = nb.load(bytes(data))
        except runtime.ModelFormatError:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        try:
            shapes = [tuple(d if isinstance(d, int) else 2 for d in i.shape) for i in sess.inputs]
            if any(math.prod(s) > 10**5 or max(s, default=0) > 10**5 for s in shapes):
                continue
            sess._run_flat([np.ones(s, i.dtype) for s, i in zip(shapes, sess.inputs)])
            outcomes["ran"] += 1
        except runtime.CastmlError:
            outcomes["run error"] += 1
    assert outcomes["error"] > 100 and outcomes["ran"] > 0, outcomes


def test_input_errors_are_runtime_input_errors(zoo_files):
    path, params = zoo_files["mlp"]
    native = runtime.load(path, backend="native")
    with pytest.raises(runtime.RuntimeInputError, match="expected dtype"):
        native.run(np.zeros((2, 784)), params)
    with pytest.raises(runtime.RuntimeInputError, match="rank"):
        native.run(np.zeros((784,), np.float32), params)
    with pytest.raises(runtime.RuntimeInputError, match="takes 2 arguments"):
        native.run(np.zeros((2, 784), np.float32))
    g = tracer.trace(lambda a, b: a + b, tracer.TensorSpec(("n",), np.float32), tracer.TensorSpec(("n",), np.float32))
    with pytest.raises(runtime.RuntimeInputError, match="from an earlier input"):
        runtime.load(to_bytes(g), backend="native").run(np.zeros(2, np.float32), np.zeros(3, np.float32))


def test_backend_selection_and_fallback():
    data = to_bytes(tracer.trace(lambda x: np.exp(x) * 2.0, X))
    assert runtime.load(data, backend="numpy").backend == "numpy"
    assert runtime.load(data).backend == "native"  # "auto", the default, once the library is built
    assert runtime.load(data, backend="auto").backend == "native"
    # a boolean mask whose result length depends on the data has no native form (the native
    # runtime sizes every buffer before running): native names the op, auto falls back to NumPy
    g = tracer.trace(lambda a: a[a > 0], X)
    with pytest.raises(nb.NativeUnsupportedError, match="boolean_mask"):
        runtime.load(to_bytes(g), backend="native")
    sess = runtime.load(to_bytes(g), backend="auto")
    assert sess.backend == "numpy"
    assert_agree(sess.run(X), X[X > 0])
    with pytest.raises(ValueError, match="backend"):
        runtime.load(data, backend="gpu")
    i16 = tracer.trace(lambda a: a + a, I32.astype(np.int16))  # dtypes without a native kernel fall back too
    with pytest.raises(nb.NativeUnsupportedError, match="int16"):
        runtime.load(to_bytes(i16), backend="native")
    assert runtime.load(to_bytes(i16), backend="auto").backend == "numpy"


def test_auto_uses_numpy_when_the_library_is_missing(tmp_path):
    import os
    import sys

    path = tmp_path / "m.castml"
    path.write_bytes(to_bytes(tracer.trace(lambda x: x * 3.0, X)))
    code = ("import runtime, numpy as np, sys; s = runtime.load(sys.argv[1], backend='auto'); "
            "print(s.backend, float(s.run(np.ones((3, 4), np.float32)).sum()))")
    env = dict(os.environ, CASTML_NATIVE_LIB=str(tmp_path / "missing.so"))
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["numpy", "36.0"]
    code = ("import runtime, sys\nfrom runtime.native_backend import NativeUnavailableError\n"
            "try:\n    runtime.load(sys.argv[1], backend='native')\nexcept NativeUnavailableError as e:\n"
            "    print('unavailable:', e)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and "unavailable:" in proc.stdout and "runtime.native.build" in proc.stdout, (
        proc.stdout + proc.stderr)


def test_pytrees_entries_and_metadata_match_numpy(tmp_path):
    g = tracer.trace(lambda p, x: {"y": x @ p["w"] + p["b"], "n": [x.sum()]},
                     {"w": _f((4, 2)), "b": _f((2,))}, tracer.TensorSpec(("batch", 4), np.float32))
    data = to_bytes({"main": g, "double": tracer.trace(lambda v: v * 2, I32)})
    native, ref = runtime.load(data, backend="native"), runtime.load(data, backend="numpy")
    assert native.entries == ref.entries
    assert native.inputs == ref.inputs and native.outputs == ref.outputs
    args = ({"w": _f((4, 2), seed=3), "b": _f((2,), seed=4)}, _f((5, 4)))
    assert_agree(native.run(*args), ref.run(*args))
    assert_agree(native.run(x=args[1], p=args[0]), ref.run(*args))
    assert_agree(native["double"].run(I32), I32 * 2)


@pytest.mark.slow
def test_sanitized_build_replays_corpus_and_ops():
    """ASan + UBSan build of the library, this file's format, corruption and op tests run against it."""
    import os
    import sys

    from runtime.native.build import build, library_path

    build(sanitize=True)
    libs = [subprocess.run(["g++", f"-print-file-name={n}"], capture_output=True, text=True).stdout.strip()
            for n in ("libasan.so", "libstdc++.so")]
    env = dict(os.environ, LD_PRELOAD=" ".join(libs), ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="print_stacktrace=1", CASTML_NATIVE_LIB=str(library_path(sanitize=True)))
    corpus = os.path.join(os.path.dirname(__file__), "test_castml_format.py")  # its malformed files, both loaders
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, corpus, "-k",
                           "malformed or corruption or unary or binary or shape_ops or conv or pooling or zoo"],
                          capture_output=True, text=True, env=env, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "runtime error" not in out and "AddressSanitizer" not in out, out[-4000:]


# ---- the residual fusion (conv -> add -> relu as one step) and the packed conv paths ----------------
_W = _f((4, 4, 3, 3), seed=5)
_B = _f((4,), seed=6)
_W1 = _f((4, 4, 1, 1), seed=7)


def _conv(x, b=_B):
    return T.conv2d(x, _W, b, padding=1)


RESIDUAL_CASES = {  # what the fusion must match, and the shapes around it that it must leave alone
    "conv_add_relu": lambda x: np.maximum(_conv(x) + x, 0.0),
    "relu_op": lambda x: T.relu(x + _conv(x, None)),
    "two_convs": lambda x: np.maximum(T.conv2d(x, _W, padding=1) + T.conv2d(x, _W1), 0.0),
    "conv_also_returned": lambda x: (lambda y: (np.maximum(y + x, 0.0), y))(_conv(x)),
    "sum_also_returned": lambda x: (lambda u: (np.maximum(u, 0.0), u))(_conv(x) + x),
    "sum_used_twice": lambda x: (lambda u: np.maximum(u, 0.0) * u)(_conv(x) + x),
    "maximum_not_zero": lambda x: np.maximum(_conv(x) + x, 0.5),
    "no_relu": lambda x: (_conv(x) + x) * 2.0,
    "self_add": lambda x: (lambda y: np.maximum(y + y, 0.0))(_conv(x)),
}


@pytest.mark.parametrize("m, width", [(8, 37), (136, 9)])
def test_conv_constant_weights_over_several_k_blocks(m, width):
    """kdim = 40 * 9 = 360 spans two KC blocks of the packed GEMM: with few output channels the
    im2col is read in place (strips of one run) or packed per strip; with many, packed whole."""
    w, b = _f((m, 40, 3, 3), seed=3), _f((m,), seed=4)
    _check(lambda x: T.conv2d(x, w, b, padding=1), _f((2, 40, 5, width), seed=2))


@pytest.mark.parametrize("optimize", [False, True])
@pytest.mark.parametrize("name", sorted(RESIDUAL_CASES))
def test_conv_add_relu_chains_match_numpy(name, optimize):
    import ir

    for shape in ((1, 4, 9, 9), (3, 4, 5, 5), (2, 4, 3, 40)):
        g = tracer.trace(RESIDUAL_CASES[name], tracer.TensorSpec(("b", 4, shape[2], shape[3])))
        native, ref = _both(ir.optimize(g, elementwise=False) if optimize else g)
        x = _f(shape, seed=1)
        x[0, 0, 0, 0] = np.nan  # NaN must flow through the fused epilogue as through NumPy
        for xx in (x, _f(shape, seed=2)):
            assert_agree(native.run(xx), ref.run(xx))


def test_random_conv_and_max_pool_configurations_match_numpy():
    """Seeded random strides, pads, dilations, groups, kernel sizes, 1-D and 2-D, with activations:
    the packed im2col (stride-split padded copy) and the padded max-pool paths against NumPy. Every
    other conv has constant weights, which the GEMM keeps packed and pairs with the im2col read
    in place (gemm.h sgemm_gather); widths up to 70 give it strips of one contiguous run."""
    rng = np.random.default_rng(0)
    checked = 0
    while checked < 40:
        nd = 2 if rng.random() < 0.85 else 1
        group = int(rng.choice([1, 1, 1, 2, 3]))
        cg = int(rng.integers(1, 5))
        m = group * int(rng.integers(1, 6))
        ks = [int(rng.integers(1, 6)) for _ in range(nd)]
        st = [int(rng.integers(1, 4)) for _ in range(nd)]
        dl = [int(rng.integers(1, 3)) for _ in range(nd)]
        pads = [int(rng.integers(0, 3)) for _ in range(2 * nd)]
        sp = [int(rng.integers(1, 30 if rng.random() < 0.7 else 70)) for _ in range(nd)]
        if any(sp[i] + pads[i] + pads[nd + i] < (ks[i] - 1) * dl[i] + 1 for i in range(nd)):
            continue  # no output position: not a valid conv
        x = _f((int(rng.choice([1, 2, 5])), cg * group, *sp), seed=checked)
        if rng.random() < 0.1:
            x[0, 0] = np.nan
        w, b = _f((m, cg, *ks), seed=checked + 1), _f((m,), seed=checked + 2)
        attrs = {"strides": tuple(st), "pads": tuple(pads), "dilations": tuple(dl), "group": group,
                 "activation": str(rng.choice(["none", "relu", "gelu"]))}
        if checked % 2:
            _check(lambda x: _apply("fused_conv", [x, w, b], attrs), x)
        else:
            _check(lambda x, w, b: _apply("fused_conv", [x, w, b], attrs), x, w, b)
        if nd == 2:  # a pool window inside the padded input, pads smaller than the window
            k2 = [min(k, s) for k, s in zip(ks, sp)]
            pool = {"kernel_shape": tuple(k2), "strides": tuple(st), "dilations": (1, 1),
                    "pads": tuple(min(p, k - 1) for p, k in zip(pads, k2 + k2)), "ceil_mode": bool(rng.random() < 0.3)}
            _check(lambda x: _apply("max_pool", [x], pool), x)
        checked += 1


FUZZ_REGRESSIONS = {  # tests/fuzz_regressions/ (also seeds of scripts/fuzz_native.sh) -> expected error
    # a 5.1 GB value declared inside a fused_elementwise region, which the entry's check of
    # declared types does not see: the arena for it must be refused before malloc
    "native-fused-region-inner-type-5gb.castml": (runtime.RuntimeInputError,
                                                  "memory plan needs .* max_intermediate_bytes"),
    # group = 2**57 + 1 on a conv: its channel check multiplied cg * group (signed overflow under
    # UBSan); a file whose replay under the sanitized fuzz build is the real check
    "native-conv-group-overflow.castml": (runtime.KernelError, "do not fit group=144115188075856129"),
    # pads/strides of a max_pool whose declared output is small: its padded copy of one plane
    # would have taken 2.6 GB
    "native-max-pool-padded-plane-2.6gb.castml": (runtime.RuntimeInputError,
                                                  "padded input plane would take 2673869200 bytes"),
}


@pytest.mark.parametrize("name", sorted(FUZZ_REGRESSIONS))
def test_fuzz_regressions_fail_cleanly_under_tight_limits(name):
    """Files libFuzzer found, run as the fuzz target runs them: zero inputs, symbols bound to 2,
    tight limits."""
    import pathlib

    from runtime import pytree

    data = pathlib.Path(__file__).parent.joinpath("fuzz_regressions", name).read_bytes()
    error, pattern = FUZZ_REGRESSIONS[name]
    with runtime.limits.limits(max_tensor_bytes=1 << 24, max_intermediate_bytes=1 << 26):
        sess = runtime.load(data, backend="native")
        e = sess[sess.entries[0]]
        leaves = [np.zeros(tuple(d if isinstance(d, int) else 2 for d in t.shape), t.dtype) for t in e.inputs]
        with pytest.raises(error, match=pattern):
            e.run(*pytree.unflatten(e._entry.in_tree, leaves))


def test_every_fuzz_regression_file_is_listed():
    import pathlib

    names = {f.name for f in pathlib.Path(__file__).parent.joinpath("fuzz_regressions").glob("*")}
    assert names == set(FUZZ_REGRESSIONS)


# ---- the native memory plan ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gru", "lenet", "mlp", "resnet_tiny", "transformer_encoder"])
def test_memory_plan_of_the_zoo_is_near_the_liveness_bound(name):
    import ir
    from models import zoo

    fn, (x, params) = zoo.MODELS[name].build(0, batch=2)
    g = ir.optimize(tracer.trace(lambda x: fn(x, params), tracer.TensorSpec(("batch",) + x.shape[1:], x.dtype)))
    sess = runtime.load(to_bytes(g), backend="native")
    for batch in (1, 7):
        plan = sess.memory_plan(batch=batch)
        assert plan.sizes and not plan.unknown
        assert plan.lower_bound_bytes <= plan.peak_bytes <= 1.2 * plan.lower_bound_bytes, str(plan)
        assert plan.arena_bytes < plan.peak_bytes  # the returned logits are allocated apart
        # no two values alive at the same step overlap in the arena
        items = [(plan.offsets[v], plan.offsets[v] + plan.sizes[v], *plan.intervals[v]) for v in plan.sizes]
        for i, (a0, a1, f0, l0) in enumerate(items):
            assert a1 <= plan.arena_bytes
            for b0, b1, f1, l1 in items[i + 1:]:
                assert not (f0 <= l1 and f1 <= l0 and a0 < b1 and b0 < a1)
    assert sess.memory_plan(batch=7).lower_bound_bytes > sess.memory_plan(batch=1).lower_bound_bytes


def test_memory_plan_counts_what_a_call_holds():
    """exp(exp(x)) of n float64: the inner exp in the arena, the result apart, both alive at the
    last step."""
    g = tracer.trace(lambda x: np.exp(np.exp(x)), tracer.TensorSpec(("n",), np.float64))
    plan = runtime.load(to_bytes(g), backend="native").memory_plan(n=1000)
    assert list(plan.sizes.values()) == [8000]
    assert plan.lower_bound_bytes == 16000 and plan.peak_bytes == plan.arena_bytes + 8000
    with pytest.raises(runtime.RuntimeInputError, match=r"memory_plan\(n=1\)"):
        runtime.load(to_bytes(g), backend="native").memory_plan()
    for bad in (-1, 2**64):
        with pytest.raises(runtime.RuntimeInputError, match=f"n={bad} is not a dim size"):
            runtime.load(to_bytes(g), backend="native").memory_plan(n=bad)


def test_cumsum_keeps_the_sign_of_leading_negative_zeros():
    """NumPy's running sum starts from the first element, so -0.0, -0.0 stays -0.0 (atan2 sees it)."""
    x = np.array([[-0.0, -0.0, 1.0], [0.0, -0.0, -2.0]])
    g = tracer.trace(lambda a: np.cumsum(a, axis=1), x)
    got = runtime.load(to_bytes(g), backend="native").run(x)
    assert np.array_equal(np.signbit(got), np.signbit(np.cumsum(x, axis=1))) and np.array_equal(got, np.cumsum(x, 1))
