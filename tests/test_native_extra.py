"""Native kernels of runtime/native/src/kernels_extra.cpp against the NumPy runtime.

depth_to_space, space_to_depth, slice_update, index_update, boolean_mask (a length known before
the step runs; a data-dependent one is refused at load), one_hot, prelu, lrn and conv_transpose:
several shapes and dtypes, empty tensors, negative indices and axes, broadcasting, and load-time
refusals (`backend="auto"` then runs NumPy). Comparisons follow DESIGN.md's tolerance rule
(`assert_agree`).
"""

from __future__ import annotations

import numpy as np
import pytest

import runtime
import tracer
from exporters.castml_format import to_bytes
from runtime import native_backend as nb
from tests.helpers import assert_agree
from tests.test_castml_format import _hand_model
from tests.test_native import _both, _check, _f, _rng, native_lib  # noqa: F401  (native_lib: the module fixture)
from tracer.core import emit
from tracer.ops import _apply

EXTRA_KINDS = {"boolean_mask", "conv_transpose", "depth_to_space", "space_to_depth", "index_update",
               "index_add", "slice_update", "one_hot", "prelu", "lrn"}


def _ints(shape, dtype=np.int64, seed=0, lo=-9, hi=9):
    return _rng(seed).integers(lo, hi, shape).astype(dtype)


def _refused(g, pattern):
    """Native refuses the graph at load naming the op; auto falls back to NumPy."""
    data = to_bytes(g)
    with pytest.raises(nb.NativeUnsupportedError, match=pattern):
        runtime.load(data, backend="native")
    assert runtime.load(data, backend="auto").backend == "numpy"


def test_every_extra_kernel_is_registered():
    assert EXTRA_KINDS <= set(nb.kernel_names())


# ---- depth_to_space / space_to_depth ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int8, np.bool_])
def test_depth_to_space(mode, dtype):
    for shape, b in (((2, 8, 3, 2), 2), ((1, 18, 2, 3), 3), ((1, 3, 2, 2), 1), ((0, 4, 2, 2), 2), ((2, 4, 0, 3), 2)):
        x = _ints(shape, seed=len(shape) + b).astype(dtype)
        _check(lambda x, b=b: _apply("depth_to_space", [x], {"blocksize": b, "mode": mode}), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint8, np.bool_])
def test_space_to_depth(dtype):
    for shape, b in (((2, 3, 4, 6), 2), ((1, 2, 6, 3), 3), ((1, 3, 2, 2), 1), ((0, 2, 4, 4), 2)):
        x = _ints(shape, seed=b).astype(dtype)
        _check(lambda x, b=b: _apply("space_to_depth", [x], {"blocksize": b}), x)
    # the round trip with DCR is the identity
    x = _f((2, 12, 3, 5))
    _check(lambda x: _apply("space_to_depth", [_apply("depth_to_space", [x], {"blocksize": 2, "mode": "DCR"})],
                            {"blocksize": 2}), x)


def test_block_ops_with_symbolic_batch_and_float16_copies():
    g = tracer.trace(lambda x: _apply("depth_to_space", [x], {"blocksize": 2, "mode": "CRD"}),
                     tracer.TensorSpec(("n", 8, 2, 3), np.float32))
    native, ref = _both(g)
    for n in (1, 3, 0):
        x = _f((n, 8, 2, 3), seed=n)
        assert_agree(native.run(x), ref.run(x))
    # pure byte moves run float16 too (nothing is computed)
    _check(lambda x: _apply("space_to_depth", [x], {"blocksize": 2}), _f((1, 2, 4, 4), np.float16))


def test_block_ops_refuse_unknown_modes_and_bad_shapes():
    g = tracer.trace(lambda x: _apply("depth_to_space", [x], {"blocksize": 2, "mode": "XYZ"}), _f((1, 4, 2, 2)))
    _refused(g, "depth_to_space supports modes 'DCR' and 'CRD'")
    # channels not divisible by blocksize^2 are a kernel error on both backends
    g = tracer.trace(lambda x: _apply("depth_to_space", [x], {"blocksize": 2, "mode": "DCR"}),
                     tracer.TensorSpec((1, "c", 2, 2), np.float32))
    for backend in ("native", "numpy"):
        with pytest.raises(runtime.KernelError, match="not divisible"):
            runtime.load(to_bytes(g), backend=backend).run(_f((1, 6, 2, 2)))


# ---- slice_update ------------------------------------------------------------------------------------

def _set(index, value):
    def fn(x, v=None):
        x = x.copy()
        x[index] = value if v is None else v
        return x

    return fn


SLICE_UPDATES = {  # (index, x shape, update shape or None for a scalar)
    "rows": ((slice(1, 3),), (4, 5), (2, 5)),
    "strided_negative": ((slice(None, None, -2), slice(1, -1)), (5, 4), (3, 2)),
    "broadcast_row": ((slice(0, 4, 3), slice(None)), (4, 5), (5,)),
    "broadcast_column": ((Ellipsis, slice(1, 3)), (2, 3, 4), (2, 3, 1)),
    "scalar": ((slice(1, None), 2), (3, 4), None),
    "int_axis": ((1,), (3, 4), (4,)),
    "empty_slice": ((slice(3, 1),), (4, 5), (0, 5)),
    "whole_0d": ((), (), None),
}


@pytest.mark.parametrize("name", sorted(SLICE_UPDATES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.bool_])
def test_slice_update(name, dtype):
    index, sx, su = SLICE_UPDATES[name]
    x = _ints(sx, seed=1).astype(dtype)
    if su is None:
        _check(_set(index, dtype(1)), x)
    else:
        _check(_set(index, None), x, _ints(su, seed=2).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_slice_update_broadcasts_its_update(dtype):
    # the tracer broadcasts updates itself; a file may leave it to the op (the type rule allows it)
    slices = {"starts": (3, 0), "stops": (-1, 5), "steps": (-2, 2)}  # rows 3, 1; columns 0, 2, 4
    x = _ints((4, 5), seed=8).astype(dtype)
    for shape in ((3,), (1, 3), (2, 1), (), (1,)):
        _check(lambda x, v: emit("slice_update", [x, v], slices), x, _ints(shape, seed=9, lo=20, hi=40).astype(dtype))


def test_slice_update_with_symbolic_dims():
    def fn(x, v):
        x = x.copy()
        x[1::2, :2] = v
        return x

    g = tracer.trace(fn, tracer.TensorSpec(("n", 4), np.float64), tracer.TensorSpec((1, 2), np.float64))
    native, ref = _both(g)
    for n in (5, 2, 1, 0):
        args = (_f((n, 4), np.float64, seed=n), _f((1, 2), np.float64, seed=9))
        assert_agree(native.run(*args), ref.run(*args))


# ---- index_update --------------------------------------------------------------------------------------

def _index_set(axis):
    def fn(x, idx, v):
        x = x.copy()
        x[(slice(None),) * axis + (idx,)] = v
        return x

    return fn


INDEX_UPDATES = {  # (axis, x shape, idx, update shape)
    "axis0": (0, (5, 3), [4, 0, -2], (3, 3)),
    "axis1_broadcast": (1, (2, 5, 3), [1, -1], (1, 3)),
    "last_axis_scalar_update": (2, (2, 3, 4), [3, 0], ()),
    "duplicates_last_wins": (1, (2, 5), [1, 1, 3, 1], (4,)),
    "index_matrix": (0, (6, 2), [[0, 5], [-1, 2]], (2, 2, 2)),
    "index_0d": (1, (3, 4), 2, (3,)),
    "no_indices": (0, (3, 2), np.zeros(0, np.int64), (0, 2)),
    "empty_x": (1, (0, 4), [3, -4], (0, 2)),
}


@pytest.mark.parametrize("name", sorted(INDEX_UPDATES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
def test_index_update(name, dtype):
    axis, sx, idx, su = INDEX_UPDATES[name]
    x = _ints(sx, seed=3).astype(dtype)
    v = _ints(su, seed=4, lo=10, hi=90).astype(dtype)
    _check(_index_set(axis), x, np.asarray(idx, np.int64), v)


def _index_add(axis):
    def fn(x, idx, v):
        return emit("index_add", [x, idx, v], {"axis": axis})

    return fn


@pytest.mark.parametrize("name", sorted(INDEX_UPDATES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int8, np.uint8])
def test_index_add(name, dtype):
    axis, sx, idx, su = INDEX_UPDATES[name]
    x = _ints(sx, seed=3).astype(dtype)
    v = _ints(su, seed=4, lo=10, hi=90).astype(dtype)
    idx = np.asarray(idx, np.int64)
    g = tracer.trace(_index_add(axis), x, idx, v)
    native, ref = _both(g)
    want = x.copy()  # duplicates accumulate; int8 wraps
    np.add.at(want, (slice(None),) * axis + (idx,), v)
    for sess in (native, ref):
        assert_agree(sess.run(x, idx, v), want)


def test_index_update_index_dtypes_and_errors():
    x, v = _f((4, 3)), _f((2, 3), seed=1)
    for idt in (np.int32, np.uint16, np.int8):
        g = tracer.trace(lambda x, i, v: emit("index_update", [x, i, v], {"axis": 0}), x, np.array([3, 1], idt), v)
        native, ref = _both(g)
        args = (x, np.array([3, 1], idt), v)
        assert_agree(native.run(*args), ref.run(*args))
    g = tracer.trace(_index_set(0), x, np.array([0, 1]), v)
    for backend in ("native", "numpy"):
        with pytest.raises(runtime.KernelError, match="out of bounds"):
            runtime.load(to_bytes(g), backend=backend).run(x, np.array([0, 4]), v)
        with pytest.raises(runtime.KernelError, match="out of bounds"):
            runtime.load(to_bytes(g), backend=backend).run(x, np.array([-5, 0]), v)


# ---- boolean_mask ------------------------------------------------------------------------------------

def test_boolean_mask_with_data_dependent_length_is_refused_at_load():
    g = tracer.trace(lambda x: x[x[:, 0] > 0], _f((5, 3)))
    _refused(g, r"boolean_mask: the result length .* depends on the mask's values")
    sess = runtime.load(to_bytes(g), backend="auto")
    x = _f((5, 3), seed=2)
    assert_agree(sess.run(x), x[x[:, 0] > 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.bool_])
def test_boolean_mask_with_a_known_length(dtype):
    # a length the graph knows before the step runs: static, or bound by an input's dim
    def static(x, m):
        return emit("boolean_mask", [x, m], {"size": (2,)})

    def bound(x, m, k):
        return emit("boolean_mask", [x, m], {"size": ("k",)}), k * 2

    x = _ints((4, 3, 2), seed=5).astype(dtype)
    m = np.array([False, True, False, True])
    native, ref = _both(tracer.trace(static, x, m))
    for mm in (m, np.array([True, False, False, True])):
        assert_agree(native.run(x, mm), ref.run(x, mm))
    with pytest.raises(runtime.KernelError, match=r"computed output shape \(3, 3, 2\)"):
        native.run(x, np.array([True, True, False, True]))
    g = tracer.trace(bound, tracer.TensorSpec(("n", 3, 2), dtype), tracer.TensorSpec(("n", 3), np.bool_),
                     tracer.TensorSpec(("k",), np.int64))
    native, ref = _both(g)
    mask = _rng(6).random((5, 3)) > 0.5
    args = (_ints((5, 3, 2), seed=7).astype(dtype), mask, np.arange(int(mask.sum()), dtype=np.int64))
    assert_agree(native.run(*args), ref.run(*args))
    none = (args[0][:0], mask[:0], np.zeros(0, np.int64))  # empty input, empty result
    assert_agree(native.run(*none), ref.run(*none))


# ---- one_hot -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("out_dtype", [np.float32, np.float64, np.int64, np.int32, np.bool_])
@pytest.mark.parametrize("axis", [-1, 0, 1, -2])
def test_one_hot(out_dtype, axis):
    idx = np.array([[0, 3, -1], [5, -5, 2]])  # negatives count from depth, out of range: all off
    _check(lambda i: _apply("one_hot", [i], {"depth": 4, "axis": axis, "dtype": np.dtype(out_dtype)}), idx)


def test_one_hot_index_dtypes_and_edge_shapes():
    for idt in (np.int8, np.int32, np.uint8, np.uint64):
        _check(lambda i: _apply("one_hot", [i], {"depth": 6, "axis": -1, "dtype": np.dtype(np.float32)}),
               np.array([0, 5, 2, 7], idt))
    for idx, depth, axis in ((np.array(2), 3, 0), (np.zeros((0, 2), np.int64), 3, 1), (np.array([1, 0]), 0, -1)):
        _check(lambda i, d=depth, a=axis: _apply("one_hot", [i], {"depth": d, "axis": a, "dtype": np.dtype(np.int64)}),
               idx)
    g = tracer.trace(lambda i: _apply("one_hot", [i], {"depth": 5, "axis": -1, "dtype": np.dtype(np.float64)}),
                     tracer.TensorSpec(("n",), np.int64))
    native, ref = _both(g)
    for n in (0, 1, 7):
        i = _ints((n,), seed=n, lo=-6, hi=6)
        assert_agree(native.run(i), ref.run(i))


def _one_hot_file(values, out_dtype=11):
    attrs = [("depth", 1, "i", 4), ("axis", 1, "i", -1), ("dtype", 5, "dtype", out_dtype)]
    if values is not None:
        attrs.append(("values", 6, "ints", values))
    return _hand_model(values=(("x", 5, (3,)), ("", out_dtype, (3, 4))), ops=(("one_hot", (0,), (1,), tuple(attrs)),))


def test_one_hot_values_attribute_of_a_file():
    # the tracer does not emit `values` (ONNX OneHot's off/on), but a file may carry it as two ints
    data = _one_hot_file((2, 7))
    native, ref = runtime.load(data, backend="native"), runtime.load(data, backend="numpy")
    i = np.array([1, -1, 9])
    assert_agree(native.run(i), ref.run(i))
    assert native.run(i)[0].tolist() == [2, 7, 2, 2]
    with pytest.raises(nb.NativeUnsupportedError, match="two ints or two floats"):
        runtime.load(_one_hot_file((1, 2, 3)), backend="native")


def test_one_hot_refuses_float16_output():
    g = tracer.trace(lambda i: _apply("one_hot", [i], {"depth": 3, "axis": -1, "dtype": np.dtype(np.float16)}),
                     np.array([0, 2]))
    _refused(g, "one_hot has no kernel for output dtype float16")


# ---- prelu / lrn ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prelu(dtype):
    x = _f((2, 3, 4, 5), dtype, lo=-3, hi=3)
    special = x.copy()
    special[0, 0, 0, :4] = (np.nan, np.inf, -np.inf, 0.0)
    for slope_shape in ((3, 1, 1), (5,), (), (2, 3, 4, 5), (1, 1, 4, 1)):
        s = _f(slope_shape, dtype, seed=1, lo=-1, hi=1)
        _check(lambda x, s: _apply("prelu", [x, s], {}), x, s, run_args=[(x, s), (special, s)])
    _check(lambda x, s: _apply("prelu", [x, s], {}), _f((0, 3), dtype), _f((3,), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn(dtype):
    for shape, size in (((2, 5, 3, 4), 3), ((1, 7, 6), 5), ((3, 4), 2), ((2, 3, 2, 2), 1), ((1, 2, 3, 3), 6),
                        ((0, 3, 2, 2), 3)):
        attrs = {"size": size, "alpha": 2e-2, "beta": 0.75, "bias": 1.5}
        _check(lambda x, a=attrs: _apply("lrn", [x], a), _f(shape, dtype, seed=size, lo=-4, hi=4))
    for beta in (0.5, 1.0, 0.6, 2.0):  # the exponents with a pow-free path, and others
        _check(lambda x, b=beta: _apply("lrn", [x], {"size": 3, "alpha": 1e-3, "beta": b, "bias": 1.0}),
               _f((1, 4, 2, 2), dtype, lo=-9, hi=9))


def test_prelu_and_lrn_refuse_float16():
    h = _f((2, 3), np.float16)
    _refused(tracer.trace(lambda x, s: _apply("prelu", [x, s], {}), h, h[0]), "prelu")
    _refused(tracer.trace(lambda x: _apply("lrn", [x], {"size": 3, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}), h),
             "lrn")


# ---- conv_transpose --------------------------------------------------------------------------------------

def _deconv(x, w, b=None, **kw):
    nd = np.ndim(x) - 2
    attrs = {"strides": (1,) * nd, "pads": (0,) * (2 * nd), "dilations": (1,) * nd, "group": 1,
             "output_padding": (0,) * nd}
    attrs.update(kw)
    return _apply("conv_transpose", [x, w] + ([] if b is None else [b]), attrs)


CONV_TRANSPOSES = {  # (x shape, w shape, attrs)
    "2d": ((2, 3, 4, 5), (3, 4, 3, 3), {}),
    "2d_stride_pad": ((1, 4, 5, 4), (4, 2, 3, 3), {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
    "2d_outpad_dilation": ((2, 2, 3, 4), (2, 3, 2, 3), {"strides": (3, 2), "dilations": (2, 1),
                                                        "output_padding": (1, 1), "pads": (0, 1, 2, 0)}),
    "2d_grouped": ((1, 6, 4, 4), (6, 2, 3, 3), {"group": 3, "strides": (2, 1)}),
    "2d_1x1": ((2, 5, 3, 3), (5, 4, 1, 1), {}),
    "1d": ((2, 3, 7), (3, 5, 4), {"strides": (2,), "pads": (1, 2)}),
    "1d_depthwise": ((1, 4, 6), (4, 1, 3), {"group": 4, "dilations": (2,)}),
    "3d": ((1, 2, 3, 4, 2), (2, 3, 2, 3, 2), {"strides": (2, 1, 2), "pads": (0, 1, 0, 1, 0, 1)}),
    "pads_crop_to_one": ((1, 1, 2), (1, 1, 3), {"pads": (2, 1)}),
}


@pytest.mark.parametrize("name", sorted(CONV_TRANSPOSES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_transpose(name, dtype):
    sx, sw, attrs = CONV_TRANSPOSES[name]
    m = sw[1] * attrs.get("group", 1)
    x, w, b = _f(sx, dtype), _f(sw, dtype, 1), _f((m,), dtype, 2)
    _check(lambda x, w, b: _deconv(x, w, b, **attrs), x, w, b)
    _check(lambda x, w: _deconv(x, w, **attrs), x, w)


def test_conv_transpose_symbolic_and_empty_batch():
    g = tracer.trace(lambda x, w, b: _deconv(x, w, b, strides=(2, 2), pads=(1, 0, 0, 1)),
                     tracer.TensorSpec(("n", 3, 4, 4), np.float32), _f((3, 2, 3, 3), seed=1), _f((2,), seed=2))
    native, ref = _both(g)
    w, b = _f((3, 2, 3, 3), seed=1), _f((2,), seed=2)
    for n in (1, 3):
        x = _f((n, 3, 4, 4), seed=n)
        assert_agree(native.run(x, w, b), ref.run(x, w, b))
    # an empty batch (the NumPy kernel cannot reshape it: runtime/kernels/conv.py's reshape(..., -1))
    assert_agree(native.run(_f((0, 3, 4, 4)), w, b), np.zeros((0, 2, 8, 8), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_transpose_with_constant_weights(dtype):
    # float32 weights that are constants of the file are transposed once into the step's cache
    w, b = _f((4, 3, 3, 2), dtype, seed=1), _f((6,), dtype, seed=2)
    g = tracer.trace(lambda x: _deconv(x, w, b, strides=(2, 1), group=2, pads=(1, 0, 0, 1)),
                     tracer.TensorSpec(("n", 4, 5, 3), dtype))
    native, ref = _both(g)
    for n in (2, 1, 2):
        x = _f((n, 4, 5, 3), dtype, seed=n)
        assert_agree(native.run(x), ref.run(x))


def test_random_conv_transpose_configurations_match_numpy():
    """Seeded random strides, pads, dilations, output padding, groups and kernels, 1-D and 2-D."""
    rng = np.random.default_rng(1)
    checked = 0
    while checked < 20:
        nd = int(rng.choice([1, 2, 2]))
        group = int(rng.choice([1, 1, 2]))
        cg, mg = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        k = tuple(int(v) for v in rng.integers(1, 4, nd))
        s = tuple(int(v) for v in rng.integers(1, 4, nd))
        d = tuple(int(v) for v in rng.integers(1, 3, nd))
        op = tuple(int(rng.integers(0, max(si, di))) for si, di in zip(s, d))
        pads = tuple(int(v) for v in rng.integers(0, 3, 2 * nd))
        size = tuple(int(v) for v in rng.integers(1, 6, nd))
        full = [si * (i - 1) + o + (ki - 1) * di + 1 for si, i, o, ki, di in zip(s, size, op, k, d)]
        if any(f - pads[i] - pads[nd + i] < 1 for i, f in enumerate(full)):
            continue
        x = _f((2, cg * group) + size, seed=checked)
        w = _f((cg * group, mg) + k, seed=checked + 100)
        _check(lambda x, w: _deconv(x, w, strides=s, pads=pads, dilations=d, group=group, output_padding=op), x, w)
        checked += 1


def test_conv_transpose_refuses_float16_and_bad_pads():
    h = _f((1, 2, 3, 3), np.float16)
    _refused(tracer.trace(lambda x, w: _deconv(x, w), h, _f((2, 2, 2, 2), np.float16)), "conv_transpose")
    g = tracer.trace(lambda x, w: _deconv(x, w, pads=(3, 0)), tracer.TensorSpec((1, 1, "n"), np.float32),
                     _f((1, 1, 2)))
    for backend in ("native", "numpy"):  # n = 2: full length 3, pads (3, 0) leave nothing
        with pytest.raises((runtime.KernelError, runtime.RuntimeInputError)):
            runtime.load(to_bytes(g), backend=backend).run(_f((1, 1, 2)), _f((1, 1, 2)))


# ---- the sanitized build ------------------------------------------------------------------------------

@pytest.mark.slow
def test_sanitized_build_runs_the_extra_kernels():
    """ASan + UBSan build of the library ($CASTML_NATIVE_ASAN_LIB when set, else built by
    runtime.native.build); this file's tests run against it."""
    import os
    import subprocess
    import sys

    from runtime.native.build import build, library_path

    lib = os.environ.get("CASTML_NATIVE_ASAN_LIB")
    if not lib:
        build(sanitize=True)
        lib = str(library_path(sanitize=True))
    libs = [subprocess.run(["g++", f"-print-file-name={n}"], capture_output=True, text=True).stdout.strip()
            for n in ("libasan.so", "libstdc++.so")]
    env = dict(os.environ, LD_PRELOAD=" ".join(libs), ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="print_stacktrace=1", CASTML_NATIVE_LIB=lib)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-m", "not slow"],
                          capture_output=True, text=True, env=env, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "runtime error" not in out and "AddressSanitizer" not in out, out[-4000:]
