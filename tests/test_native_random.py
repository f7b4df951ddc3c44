"""Native kernels of kernels_random.cpp against the NumPy runtime: the counter-based random ops
(bits and uniform floats bit for bit, normals under the tolerance rule) and einsum (random
equations with diagonals, broadcasting and implicit output; '...' equations written into the file
by hand, since the tracer spells indices out)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import runtime
import tracer
from exporters.castml_format import to_bytes
from runtime import native_backend as nb
from tests.helpers import assert_agree, build_native
from tests.test_native import _both
from tracer.core import context_of, emit
from tracer.ops import _apply


@pytest.fixture(scope="module", autouse=True)
def native_lib():
    return build_native()


SEEDS = [0, 1, 2**63 - 1, -1, -(2**63), -123456789, 2**32 + 7]


def _random_graph(shape, dtype, stream, seed_dtype=np.int64):
    def fn(seed, x):
        ctx = context_of([seed, x])
        float_attrs = {"shape": shape, "stream": stream, "dtype": np.dtype(dtype)}
        return (emit("random_bits", [seed], {"shape": shape, "stream": stream}, ctx=ctx),
                emit("random_uniform", [seed], float_attrs, ctx=ctx),
                emit("random_normal", [seed], float_attrs, ctx=ctx))

    return tracer.trace(fn, tracer.TensorSpec((), seed_dtype), tracer.TensorSpec(("batch",), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 0, 3), ("batch", 3)])
def test_random_ops_match_numpy_bit_for_bit(shape, dtype):
    for stream in (0, 3):
        native, ref = _both(_random_graph(shape, dtype, stream))
        for seed in SEEDS:
            for batch in (0, 1, 5):
                args = (np.int64(seed), np.zeros(batch, np.float32))
                got, want = native.run(*args), ref.run(*args)
                assert_agree(got, want)
                assert got[0].dtype == np.uint32 and got[0].shape == want[0].shape
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])  # bits, uniform: exact


def test_random_ops_large_draws_and_streams():
    # many elements (every float conversion path), a stream beyond 32 bits (wrapped as NumPy does)
    for stream in (1, 2**40 + 5):
        native, ref = _both(_random_graph((50_000,), np.float64, stream))
        got, want = native.run(np.int64(42), np.zeros(1, np.float32)), ref.run(np.int64(42), np.zeros(1, np.float32))
        assert_agree(got, want)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert 0.0 <= got[1].min() and got[1].max() < 1.0
        assert abs(got[2].mean()) < 0.05 and abs(got[2].std() - 1) < 0.05
    native, ref = _both(_random_graph((50_000,), np.float32, 9))
    got, want = native.run(np.int64(-3), np.zeros(1, np.float32)), ref.run(np.int64(-3), np.zeros(1, np.float32))
    assert_agree(got, want)
    assert np.array_equal(got[1], want[1])


@pytest.mark.parametrize("seed_dtype", [np.int8, np.int32, np.uint8, np.uint32, np.uint64])
def test_random_ops_take_any_integer_seed(seed_dtype):
    native, ref = _both(_random_graph((4, 3), np.float32, 1, seed_dtype))
    info = np.iinfo(seed_dtype)
    for seed in (0, info.max, info.min, -1 if info.min < 0 else 77):
        args = (np.asarray(seed, seed_dtype), np.zeros(2, np.float32))
        got, want = native.run(*args), ref.run(*args)
        assert_agree(got, want)
        assert np.array_equal(got[0], want[0])


def test_random_float16_is_refused_at_load_and_falls_back():
    for kind in ("random_uniform", "random_normal"):
        g = tracer.trace(lambda s, kind=kind: emit(kind, [s], {"shape": (3,), "stream": 0,
                                                             "dtype": np.dtype(np.float16)}, ctx=context_of([s])),
                         np.int64(0))
        with pytest.raises(nb.NativeUnsupportedError, match=f"{kind}.*float16"):
            runtime.load(to_bytes(g), backend="native")
        sess = runtime.load(to_bytes(g), backend="auto")
        assert sess.backend == "numpy" and sess.run(np.int64(5)).dtype == np.float16


# ---- einsum -------------------------------------------------------------------------------------

def _einsum_both(eq, arrays, file_eq=None):
    """Trace einsum(eq) on arrays; file_eq, when given, replaces the equation in the file (an
    equivalent spelling the tracer does not emit: '...', implicit output)."""
    g = tracer.trace(lambda *xs: _apply("einsum", list(xs), {"equation": eq}), *arrays)
    if file_eq is not None:
        (op,) = [op for op in g.ops if op.kind == "einsum"]
        op.attrs["equation"] = file_eq
    return _both(g)


def _arrays(shapes, dtype, rng):
    if np.dtype(dtype) == np.bool_:
        return [rng.random(s) < 0.5 for s in shapes]
    if np.dtype(dtype).kind in "iu":
        return [rng.integers(-50, 50, s).astype(dtype) for s in shapes]
    return [rng.uniform(-2, 2, s).astype(dtype) for s in shapes]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_einsum_equations_match_numpy(data):
    letters = "abcdA"
    sizes = {ch: data.draw(st.integers(0, 4) if data.draw(st.booleans()) else st.integers(1, 4)) for ch in letters}
    n_ops = data.draw(st.integers(1, 3))
    specs = ["".join(data.draw(st.lists(st.sampled_from(letters), max_size=4))) for _ in range(n_ops)]
    used = sorted(set("".join(specs)))
    out = "".join(data.draw(st.permutations(used))[:data.draw(st.integers(0, len(used)))])
    shapes = []
    for sp in specs:  # a letter used once in an operand may be 1 there (broadcast against the others)
        shapes.append(tuple(1 if sp.count(ch) == 1 and data.draw(st.integers(0, 4)) == 0 else sizes[ch] for ch in sp))
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.int8, np.bool_]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    arrays = _arrays(shapes, dtype, rng)
    eq = ",".join(specs) + "->" + out
    native, ref = _einsum_both(eq, arrays)
    assert_agree(native.run(*arrays), ref.run(*arrays))
    assert_agree(native.run(*arrays), np.asarray(np.einsum(eq, *arrays)))


# (equation the tracer writes, equivalent spelling written into the file, operand shapes)
SPELLINGS = [
    ("bij,bjk->bik", "...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("bij,bjk->bik", "...ij,...jk", [(2, 3, 4), (2, 4, 5)]),  # implicit: '...' dims, then ik
    ("abij,bjk->abik", "...ij,...jk->...ik", [(2, 3, 4, 5), (1, 5, 2)]),  # '...' broadcasts
    ("ijc,j->ic", "ij...,j->i...", [(2, 3, 4), (3,)]),
    ("ab,b->ab", "...,...", [(2, 3), (3,)]),
    ("iai->a", "i...i", [(3, 2, 3)]),
    ("ij,jk->ik", "ij,jk", [(2, 3), (3, 4)]),
    ("ba->ab", "ba", [(2, 3)]),
    ("Ba->Ba", "Ba", [(2, 3)]),  # implicit order is ASCII: capitals first
    ("ii->", "ii", [(3, 3)]),
    ("ij,jk->ik", " i j , j k -> i k ", [(2, 3), (3, 4)]),
    ("->", "...->...", [()]),
    ("ab,cd,bc->ad", "ab,cd,bc", [(2, 3), (4, 5), (3, 4)]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("traced,spelled,shapes", SPELLINGS)
def test_einsum_ellipsis_and_implicit_spellings(traced, spelled, shapes, dtype):
    arrays = _arrays(shapes, dtype, np.random.default_rng(3))
    native, ref = _einsum_both(traced, arrays, spelled)
    assert_agree(native.run(*arrays), ref.run(*arrays))
    assert_agree(native.run(*arrays), np.asarray(np.einsum(spelled, *arrays)))


def test_einsum_symbolic_batch_and_many_operands():
    spec = tracer.TensorSpec(("batch", 3, 4), np.float32)
    g = tracer.trace(lambda x, w, v: np.einsum("bij,jk,k->bi", x, w, v), spec, np.ones((4, 5), np.float32),
                     np.ones(5, np.float32))
    native, ref = _both(g)
    rng = np.random.default_rng(0)
    w, v = _arrays([(4, 5), (5,)], np.float32, rng)
    for b in (0, 1, 6):
        (x,) = _arrays([(b, 3, 4)], np.float32, rng)
        assert_agree(native.run(x, w, v), ref.run(x, w, v))
    # a chain where contracting left to right would build a large outer product first
    shapes = [(6, 7), (8, 9), (7, 8), (9, 5)]
    arrays = _arrays(shapes, np.float64, rng)
    native, ref = _einsum_both("ab,cd,bc,de->ae", arrays)
    assert_agree(native.run(*arrays), ref.run(*arrays))


def test_einsum_integers_wrap_as_numpy():
    a = np.full((3, 40), 100, np.int8)
    native, ref = _einsum_both("ij,ij->i", [a, a])
    assert_agree(native.run(a, a), ref.run(a, a))
    big = np.full((2, 3), 2**62, np.int64)
    native, ref = _einsum_both("ij,ij->", [big, big + 3])
    assert_agree(native.run(big, big + 3), ref.run(big, big + 3))


def test_einsum_refusals_at_load():
    h = np.ones((2, 3), np.float16)
    g = tracer.trace(lambda a: np.einsum("ij->ji", a), h)
    with pytest.raises(nb.NativeUnsupportedError, match="einsum.*float16"):
        runtime.load(to_bytes(g), backend="native")
    sess = runtime.load(to_bytes(g), backend="auto")
    assert sess.backend == "numpy"
    assert_agree(sess.run(h), h.T)
    x = np.ones((2, 3), np.float32)
    for bad in ("ij->iq", "ij->ii", "ijk->i", "i.j->i", "ij,jk->ik", "i...->i", "ij->i->j"):
        g = tracer.trace(lambda a: np.einsum("ij->i", a), x)
        (op,) = [op for op in g.ops if op.kind == "einsum"]
        op.attrs["equation"] = bad
        with pytest.raises(nb.NativeUnsupportedError, match="einsum"):
            runtime.load(to_bytes(g), backend="native")
        assert runtime.load(to_bytes(g), backend="auto").backend == "numpy"


def test_einsum_size_mismatch_is_a_kernel_error():
    # a diagonal of a non-square operand: only the run's shapes show it
    g = tracer.trace(lambda a: np.einsum("ij->i", a), tracer.TensorSpec(("n", "m"), np.float32))
    (op,) = [op for op in g.ops if op.kind == "einsum"]
    op.attrs["equation"] = "ii->i"
    native, ref = _both(g)
    assert_agree(native.run(np.eye(3, dtype=np.float32)), ref.run(np.eye(3, dtype=np.float32)))
    with pytest.raises(runtime.KernelError, match="index 'i' twice"):
        native.run(np.ones((2, 3), np.float32))


def test_native_has_these_kernels():
    # test_native.py's exhaustive-coverage test lists the kinds it exercises; these are covered here
    assert {"random_bits", "random_uniform", "random_normal", "einsum"} <= set(nb.kernel_names())


# ---- einsum through GEMM (float32/float64 pairs shaped as a batched matrix product) ----------
# Shapes are large enough for the GEMM path (m*n*k >= 4096 per product, m or n >= 8, n > 1):
# operands read in place or packed (transposed operands, diagonals, intermediates), C written in
# place, transposed (C^T = B^T A^T) or permuted afterwards; batch labels anywhere, broadcast.
GEMM_CASES = [
    ("ij,jk->ik", [(40, 30), (30, 50)]),
    ("ij,jk->ki", [(40, 30), (30, 50)]),  # C^T: the operands swap roles
    ("ji,jk->ik", [(30, 40), (30, 50)]),  # A transposed: packed
    ("ij,kj->ik", [(40, 30), (50, 30)]),  # B transposed: packed
    ("ji,kj->ki", [(30, 40), (50, 30)]),
    ("bij,bjk->bik", [(3, 20, 16), (3, 16, 24)]),
    ("bij,bjk->ibk", [(3, 20, 16), (3, 16, 24)]),  # batch between m and n in C
    ("ibj,bjk->bki", [(20, 3, 16), (3, 16, 24)]),  # batch in different positions
    ("bhqd,bhkd->bhqk", [(2, 3, 17, 16), (2, 3, 19, 16)]),  # attention scores
    ("bhqk,bhkd->bhqd", [(2, 3, 17, 19), (2, 3, 19, 16)]),
    ("bij,bjk->bik", [(1, 20, 16), (4, 16, 24)]),  # batch broadcast from size 1
    ("bij,bjk->bik", [(4, 20, 16), (1, 16, 24)]),
    ("bij,jk->bik", [(4, 20, 16), (16, 24)]),  # m = (b, i) read as one dim
    ("ijk,jkl->il", [(10, 6, 8), (6, 8, 12)]),  # k = (j, k) read as one dim
    ("ijk,kjl->il", [(10, 6, 8), (8, 6, 12)]),  # k in different orders: packed
    ("ikj,jl->ilk", [(10, 12, 16), (16, 9)]),  # neither C layout fits: permuted afterwards
    ("iij,jk->ik", [(20, 20, 30), (30, 40)]),  # a diagonal read in place
    ("ij,jk->ik", [(40, 0), (0, 50)]),  # k = 0: zeros
    ("ij,jk->ik", [(0, 30), (30, 50)]),  # m = 0
    ("ij,jk->ik", [(40, 30), (30, 0)]),  # n = 0
    ("bij,bjk->bik", [(0, 20, 16), (0, 16, 24)]),
    ("ab,bc,cd->ad", [(30, 40), (40, 50), (50, 20)]),  # an intermediate from GEMM feeds GEMM
    ("ab,bc,cd->da", [(30, 40), (40, 50), (50, 20)]),
    ("abc,cd,bd->ab", [(20, 9, 16), (16, 30), (9, 30)]),
    ("a,ab,bc->ac", [(30,), (30, 40), (40, 50)]),  # loop-path intermediate (A) packed into GEMM
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eq,shapes", GEMM_CASES)
def test_einsum_gemm_path_matches_numpy(eq, shapes, dtype):
    arrays = _arrays(shapes, dtype, np.random.default_rng(7))
    native, ref = _einsum_both(eq, arrays)
    got = native.run(*arrays)
    assert_agree(got, ref.run(*arrays))
    assert_agree(got, np.asarray(np.einsum(eq, *arrays)))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_gemm_shaped_einsums_match_numpy(data):
    # b: batch, i: only in x, k: only in y, j and J: summed; each operand's dims and the output in
    # any order, any of them may be 0 or 1 (size 1 in one operand: broadcast)
    size = {"b": data.draw(st.sampled_from([0, 1, 2, 3])), "i": data.draw(st.sampled_from([0, 1, 5, 9, 17])),
            "k": data.draw(st.sampled_from([0, 1, 8, 12, 20])), "j": data.draw(st.sampled_from([0, 1, 6, 16, 33])),
            "J": data.draw(st.sampled_from([1, 2, 3]))}
    use_b, use_J = data.draw(st.booleans()), data.draw(st.booleans())
    xs, ys, outs = "ij" + "b" * use_b + "J" * use_J, "jk" + "b" * use_b + "J" * use_J, "ik" + "b" * use_b
    xs, ys = "".join(data.draw(st.permutations(xs))), "".join(data.draw(st.permutations(ys)))
    out = "".join(data.draw(st.permutations(outs)))
    bx = data.draw(st.booleans()) and use_b
    shapes = [tuple(1 if ch == "b" and bx else size[ch] for ch in xs), tuple(size[ch] for ch in ys)]
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    arrays = _arrays(shapes, dtype, np.random.default_rng(data.draw(st.integers(0, 2**16))))
    eq = f"{xs},{ys}->{out}"
    native, ref = _einsum_both(eq, arrays)
    got = native.run(*arrays)
    assert_agree(got, ref.run(*arrays))
    assert_agree(got, np.asarray(np.einsum(eq, *arrays)))


def test_einsum_gemm_path_with_symbolic_batch():
    rng = np.random.default_rng(1)
    spec = tracer.TensorSpec(("batch", 20, 16), np.float32)
    for eq, w_shape in (("bij,jk->bik", (16, 24)), ("bij,jk->kbi", (16, 24)), ("bij,kj->bki", (24, 16))):
        g = tracer.trace(lambda x, w, eq=eq: np.einsum(eq, x, w), spec, np.ones(w_shape, np.float32))
        native, ref = _both(g)
        (w,) = _arrays([w_shape], np.float32, rng)
        for b in (0, 1, 5):
            (x,) = _arrays([(b, 20, 16)], np.float32, rng)
            assert_agree(native.run(x, w), ref.run(x, w))
    both = tracer.TensorSpec(("batch", 20, 16), np.float64), tracer.TensorSpec(("batch", 16, 24), np.float64)
    native, ref = _both(tracer.trace(lambda x, y: np.einsum("bij,bjk->bik", x, y), *both))
    for b in (0, 1, 3):
        x, y = _arrays([(b, 20, 16), (b, 16, 24)], np.float64, rng)
        assert_agree(native.run(x, y), ref.run(x, y))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 31, 32, 33, 65, 1000])
def test_einsum_vectorised_reductions_and_dots(n, dtype):
    rng = np.random.default_rng(n)
    for eq, shapes in (("ij->", [(3, n)]), ("ij->i", [(3, n)]), ("ij->j", [(3, n)]), ("ij,ij->i", [(3, n)] * 2),
                       ("ij,ij->", [(3, n)] * 2), ("ij,j->i", [(5, n), (n,)]), ("i->", [(n,)])):
        arrays = _arrays(shapes, dtype, rng)
        native, ref = _einsum_both(eq, arrays)
        got = native.run(*arrays)
        assert_agree(got, ref.run(*arrays))
        assert_agree(got, np.asarray(np.einsum(eq, *arrays)))


def test_einsum_float32_sums_accumulate_in_double():
    # 2**24 + 1 + 1 + ... is stuck at 2**24 in float32 accumulation; double keeps every 1
    x = np.ones((2, 4097), np.float32)
    x[:, 0] = 2.0**24
    native, _ = _einsum_both("ij->i", [x])
    assert native.run(x).tolist() == [2.0**24 + 4096] * 2
    native, _ = _einsum_both("ij,ij->", [x, np.ones_like(x)])
    assert native.run(x, np.ones_like(x)) == np.float32(2 * (2.0**24 + 4096))
