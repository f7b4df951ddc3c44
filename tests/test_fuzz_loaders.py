"""Hostile model files: a bounded, fixed-seed slice of the mutation fuzzer (bench/fuzz_loaders.py)
and structure-aware cases — valid FlatBuffers with bad semantics, built with the generated
builders — each of which must load and run, or raise a `CastmlError` subclass (ModelFormatError
at load, RuntimeInputError/KernelError at run): never another exception, a hang or a runaway
allocation. The run-time limits are lowered here so a bypassed check would show at once."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
import runtime
import tracer
from bench import fuzz_loaders as fz
from exporters.castml_format import load_castml
from runtime import limits
from runtime.errors import KernelError, ModelFormatError, RuntimeInputError
from tests.helpers import assert_agree
from tests.test_castml_format import _hand_model, _nested

F32, I64 = 11, 5  # DType codes
INT, FLOAT, BOOL, STR, DTYPE, INTS, FLOATS, DIMS, TENSOR = range(1, 10)  # AttrKind codes
SMALL = dict(max_tensor_bytes=1 << 20, max_intermediate_bytes=4 << 20, max_loop_iterations=1000)
BOUNDARY = [-2**63, -1, 0, 1, 2, 3, 2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**63 - 1]
CORPUS = fz.build_corpus(onnx=True, zoo=True)


@pytest.fixture(autouse=True)
def small_limits():
    with limits.limits(**SMALL):
        yield


def _tuple_tree(n: int) -> str:
    """The in_tree JSON of a tuple of `n` array arguments."""
    return '["tuple",[' + ",".join(['["*"]'] * n) + "]]"


def load_and_run(data: bytes, *args) -> str:
    """'format' (ModelFormatError at load), 'run' (RuntimeInputError/KernelError), or 'ok'; any
    other exception propagates and fails the test."""
    try:
        sess = runtime.load(data)
    except ModelFormatError:
        return "format"
    try:
        sess.run(*args)
    except (RuntimeInputError, KernelError):
        return "run"
    return "ok"


# ---- the mutation fuzzer ---------------------------------------------------------------------------
def test_every_seed_of_the_corpus_loads_and_runs():
    kinds = {(s.kind, s.name) for s in CORPUS}
    assert {("castml", n) for n in ("mlp", "cnn", "ln_softmax", "pytree", "shapes", "loop", "zoo_lenet")} <= kinds
    assert ("onnx", "zoo_lenet") in kinds
    for s in CORPUS:  # a seed that fails would turn every one of its mutations into an error
        rng = np.random.default_rng(0)
        fz.run_castml(s, s.data, rng) if s.kind == "castml" else fz.run_onnx(s, s.data, rng, _scratch())


def _scratch() -> str:
    import tempfile

    return os.path.join(tempfile.mkdtemp(), "case.onnx")


def _check(report: fz.Report, cases: int) -> None:
    print(report)
    assert report.cases == cases
    assert not report.findings, str(report)
    # the slice must reach past the structure checks, or it tests nothing
    assert report.histogram["ok"] > cases // 50 and report.histogram["ModelFormatError"] > cases // 10
    assert report.histogram["RuntimeInputError"] + report.histogram["KernelError"] > 0


def test_fuzz_slice_castml():
    seeds = [s for s in CORPUS if s.kind == "castml"]
    _check(fz.fuzz(seeds, 3000, seed=0, time_limit=60, jobs=2), 3000)


def test_fuzz_slice_onnx():
    seeds = [s for s in CORPUS if s.kind == "onnx"]
    _check(fz.fuzz(seeds, 1000, seed=0, time_limit=60, jobs=2), 1000)


@pytest.mark.slow
def test_fuzz_every_structure_byte_of_the_small_seeds():
    seeds = [s for s in CORPUS if len(s.data) < 8192]
    space = fz.CaseSpace(seeds, 1, exhaustive=True)
    report = fz.fuzz(seeds, space.n_systematic + 20000, seed=1, time_limit=60, jobs=os.cpu_count() or 2,
                     exhaustive=True)
    print(report)
    assert not report.findings, str(report)


def test_fuzzer_reports_what_it_must_catch(monkeypatch):
    """The harness itself: another exception type, a MemoryError behind a CastmlError, a hang, a
    crash and a peak resident size past the limits are all findings (forked workers inherit the
    patched function)."""
    seeds = [s for s in CORPUS if s.kind == "castml" and s.name == "mlp"]
    behaviours = {
        0: lambda: [][1],
        1: lambda: _raise_from(KernelError("x"), MemoryError()),
        2: lambda: time.sleep(120),
        3: lambda: os.kill(os.getpid(), signal.SIGKILL),
        4: lambda: _raise_from(ModelFormatError("fine"), None),
        5: lambda: np.ones(90_000_000).sum(),  # 720 MB: under the address-space cap, over the limits
    }
    monkeypatch.setattr(fz.CaseSpace, "case", lambda self, i: (self.seeds[0], f"behaviour {i}", bytes([i])))
    monkeypatch.setattr(fz, "run_castml", lambda seed, data, rng: behaviours[data[0]]())
    report = fz.fuzz(seeds, 6, time_limit=8, jobs=2, ids=[0, 1, 2, 3, 4, 5])
    labels = {i: label for i, label, _, _ in report.findings}
    assert labels[0] == "IndexError" and labels[1] == "MemoryError via KernelError"
    assert labels[2].startswith("hang") and labels[3].startswith("crash") and labels[5].startswith("memory")
    assert 4 not in labels and report.histogram["ModelFormatError"] == 1


def _raise_from(exc: BaseException, cause: BaseException | None):
    raise exc from cause


# ---- structure-aware cases ---------------------------------------------------------------------------
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INDEX = st.sampled_from([0, 1, 2, 3, 2**31, 2**32 - 1])  # u32 fields: -1 is 2**32-1


@SETTINGS
@given(ins=st.lists(INDEX, max_size=3), outs=st.lists(INDEX, max_size=2), rin=st.lists(INDEX, max_size=2),
       rout=st.lists(INDEX, max_size=2))
def test_value_indices_out_of_range_or_before_definition(ins, outs, rin, rout):
    values = (("x", F32, (2,)), ("", F32, (2,)), ("", F32, (2,)))
    names = tuple(f"x{i}" for i in range(len(rin)))
    data = _hand_model(values=values, ops=(("add", tuple(ins), tuple(outs), ()),), region_inputs=tuple(rin),
                       region_outputs=tuple(rout), in_tree=_tuple_tree(len(rin)),
                       arg_names=names, input_names=names, output_names=tuple(f"y{i}" for i in range(len(rout))))
    result = load_and_run(data, *[np.ones(2, np.float32)] * len(rin))
    if max(ins + outs + rin + rout, default=0) >= 3 or len(ins) != 2 or len(outs) != 1:
        assert result != "ok", (ins, outs, rin, rout)


@SETTINGS
@given(in_dims=st.lists(st.sampled_from(BOUNDARY + ["n"]), min_size=1, max_size=3),
       out_dims=st.lists(st.sampled_from(BOUNDARY + ["n", "n*4"]), min_size=1, max_size=3))
def test_dims_negative_huge_or_overflowing(in_dims, out_dims):
    data = _hand_model(values=(("x", F32, tuple(in_dims)), ("", F32, tuple(out_dims))))
    shape = tuple(2 if d == "n" else d for d in in_dims)
    small = all(isinstance(d, int) and 0 <= d <= 4 for d in shape)
    result = load_and_run(data, np.ones(shape if small else (1,), np.float32))
    if any(isinstance(d, int) and d < 0 for d in in_dims + out_dims):
        assert result == "format"
    if not small:
        assert result != "ok"


def test_shape_product_overflowing_int64_is_refused_before_allocating():
    data = _hand_model(values=(("x", F32, ("n",)), ("", F32, (2**40, 2**40, 2**40))))
    with pytest.raises(RuntimeInputError, match="max_tensor_bytes.*set_limits"):
        runtime.load(data).run(np.ones(2, np.float32))
    tensor = _hand_model(tensors=((F32, (2**40, 2**40), 0, 0),))
    with pytest.raises(ModelFormatError, match=r"more than 2\*\*63-1 elements"):
        runtime.load(tensor)


def test_regions_nested_1000_deep_and_cycles():
    with pytest.raises(ModelFormatError, match="regions nest deeper than 16"):
        runtime.load(_hand_model(**_nested(1000)))
    with limits.limits(max_region_depth=20):
        runtime.load(_hand_model(**_nested(17)))  # the limit is configurable
    cycle = dict(values=(("x", F32, (2,)), ("", F32, (2,)), ("", F32, (2,))),
                 ops=(("neg", (0,), (1,), (), (1,)),), extra_regions=(((), (("neg", (0,), (2,), (), (1,)),), ()),))
    with pytest.raises(ModelFormatError, match="must exist and come after region 1"):
        runtime.load(_hand_model(**cycle))


@SETTINGS
@given(refs=st.lists(st.lists(st.integers(0, 4), max_size=2), min_size=1, max_size=4))
def test_region_references_never_form_cycles(refs):
    n = len(refs)
    values = (("x", F32, (2,)), ("", F32, (2,))) + tuple(("", F32, (2,)) for _ in range(n))
    extra = tuple(((), (("neg", (0,), (k + 2,), (), tuple(r)),), ()) for k, r in enumerate(refs[1:]))
    data = _hand_model(values=values, ops=(("neg", (0,), (1,), (), tuple(refs[0])),), extra_regions=extra)
    load_and_run(data, np.ones(2, np.float32))


@SETTINGS
@given(a=st.tuples(st.sampled_from([0, 8, 64, 128, 2**40, 2**64 - 64]), st.sampled_from([0, 8, 16, 64, 2**63])),
       b=st.tuples(st.sampled_from([0, 8, 64, 128, 2**40]), st.sampled_from([0, 8, 16, 64])),
       size=st.sampled_from([0, 64, 192]))
def test_buffers_beyond_the_file_overlapping_or_misaligned(a, b, size):
    tensors = ((F32, (a[1] // 4,), *a), (F32, (b[1] // 4,), *b))
    data = _hand_model(ops=(("constant", (), (1,), (("value", TENSOR, "tensor", 1),)),), region_inputs=(),
                       in_tree='["tuple",[]]', arg_names=(), input_names=(),
                       values=(("x", F32, (2,)), ("", F32, (b[1] // 4,))), tensors=tensors, data=bytes(size))
    if load_and_run(data) == "ok":  # then the buffers were sound
        for off, length in (a, b):
            assert off % 64 == 0 and off + length <= size
        assert a[1] == 0 or b[1] == 0 or a[0] + a[1] <= b[0] or b[0] + b[1] <= a[0]


@SETTINGS
@given(dtype=st.integers(0, 255), kind=st.sampled_from(["neg", "exp", "os_system", "", "__import__", "neg\x00"]))
def test_unknown_dtype_and_op_codes(dtype, kind):
    data = _hand_model(values=(("x", F32, (2,)), ("", dtype, (2,))), ops=((kind, (0,), (1,), ()),))
    result = load_and_run(data, np.ones(2, np.float32))
    if not (1 <= dtype <= 12) or kind not in ("neg", "exp"):
        assert result == "format"


# ops whose output size comes from an attribute: a mutated one must be refused before NumPy allocates
SIZED_OPS = {"tile": "reps", "repeat": "repeats", "pad": "pads", "broadcast_to": "shape", "arange": "n",
             "one_hot": "depth", "max_pool": "kernel_shape", "reshape": "shape", "slice": "stops"}
ATTR_VALUES = st.one_of(
    st.tuples(st.sampled_from([INT, BOOL, FLOAT, STR, DTYPE]), st.just("i"), st.sampled_from(BOUNDARY)),
    st.tuples(st.just(INTS), st.just("ints"), st.lists(st.sampled_from(BOUNDARY), max_size=4)),
    st.tuples(st.just(DIMS), st.just("dims"), st.lists(st.sampled_from([0, 1, 2, 2**31, 2**62, "n"]), max_size=4)),
    st.tuples(st.sampled_from([DTYPE, TENSOR]), st.sampled_from(["dtype", "tensor"]), st.integers(0, 20)),
)


@SETTINGS
@given(op=st.sampled_from(sorted(SIZED_OPS)), attr=ATTR_VALUES, out=st.sampled_from([(2,), (4,), (2, 2), ("n",)]))
def test_attributes_of_the_wrong_type_or_size(op, attr, out):
    kind, fld, value = attr
    if fld == "dtype" and not 1 <= value <= 12:
        value = 11
    data = _hand_model(values=(("x", F32, ("n",)), ("", F32, out)),
                       ops=((op, (0,), (1,), ((SIZED_OPS[op], kind, fld, value),)),))
    load_and_run(data, np.ones(2, np.float32))


@pytest.mark.parametrize("op,attrs,out", [
    ("tile", (("reps", INTS, "ints", (2**40,)),), (4,)),
    ("repeat", (("axis", INT, "i", 0), ("repeats", INT, "i", 2**40)), (4,)),
    ("broadcast_to", (("shape", DIMS, "dims", (2**20, 2**20)),), (2, 2)),
    ("pad", (("pads", INTS, "ints", (0, 2**40)),), (4,)),
    ("arange", (("dtype", DTYPE, "dtype", F32), ("n", DIMS, "dims", (2**40,))), (4,)),
])
def test_a_mutated_size_attribute_is_refused_before_allocating(op, attrs, out):
    """The declared type says 4 elements; the attribute asks for 2**40: refused with the limit's name."""
    ins = () if op == "arange" else (0,)
    names = () if op == "arange" else ("x",)
    data = _hand_model(values=(("x", F32, (2,)), ("", F32, out)), ops=((op, ins, (1,), attrs),),
                       region_inputs=ins, in_tree=_tuple_tree(len(ins)),
                       arg_names=names, input_names=names)
    sess = runtime.load(data, backend="numpy")  # the NumPy kernels' size guards (native checks declared types)
    with pytest.raises(RuntimeInputError, match=r"max_tensor_bytes.*set_limits\(max_tensor_bytes="):
        sess.run(*[np.ones(2, np.float32)] * len(ins))


def test_conv_pads_that_blow_up_the_im2col_workspace_are_refused_before_allocating():
    """The output bound alone (N x M x padded spatial) fits the limit; the im2col matrix is 49 times
    that (a 7x7 kernel): found by the 1M-case fuzz run, where a flipped bit in `pads` made the
    NumPy conv allocate ~650 MB before the declared shape check could fail."""
    attrs = (("pads", INTS, "ints", (2, 0, 2, 25_000)),)
    data = _hand_model(values=(("x", F32, (1, 1, 4, 4)), ("w", F32, (1, 1, 7, 7)), ("", F32, (1, 1, 2, 2))),
                       ops=(("conv", (0, 1), (2,), attrs),), region_inputs=(0, 1), region_outputs=(2,),
                       in_tree=_tuple_tree(2), arg_names=("x", "w"), input_names=("x", "w"))
    sess = runtime.load(data, backend="numpy")
    with pytest.raises(RuntimeInputError, match=r"im2col workspace would take .*max_tensor_bytes"):
        sess.run(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 7, 7), np.float32))


def test_an_op_declaring_the_wrong_number_of_outputs_is_refused():
    """The runtime knows no type rules: a `neg` declaring two results must fail, not hand back None."""
    data = _hand_model(values=(("x", F32, (2,)), ("", F32, (2,)), ("", F32, (2,))),
                       ops=(("neg", (0,), (1, 2), ()),), region_outputs=(2,))
    with pytest.raises(KernelError, match="gave 1 values, the file declares 2"):
        runtime.load(data, backend="numpy").run(np.ones(2, np.float32))


def test_zero_size_tensors_load_and_run():
    data = _hand_model(ops=(("constant", (), (1,), (("value", TENSOR, "tensor", 0),)),), region_inputs=(),
                       in_tree='["tuple",[]]', arg_names=(), input_names=(),
                       values=(("x", F32, (0,)), ("", F32, (0, 3))), tensors=((F32, (0, 3), 0, 0),), data=b"")
    got = runtime.load(data).run()
    assert got.shape == (0, 3) and got.dtype == np.float32
    data = _hand_model(values=(("x", F32, (0,)), ("", F32, (0,))))
    assert runtime.load(data).run(np.ones(0, np.float32)).shape == (0,)


def test_loop_trip_count_2_to_the_62_stops_at_the_limit():
    g = tracer.trace(tracer.script(fz._halve_or_grow), np.ones(3, np.float32), np.int64(3))
    from exporters.castml_format import to_bytes

    sess = runtime.load(to_bytes(g))
    x = np.array([1.0, -3.0, 2.0], np.float32)
    assert_agree(sess.run(x, np.int64(5)), fz._halve_or_grow(x, 5))
    t0 = time.monotonic()
    with pytest.raises(RuntimeInputError, match="max_loop_iterations"):
        sess.run(x, np.int64(2**62))
    assert time.monotonic() - t0 < 30
    with limits.limits(max_loop_iterations=2000):
        assert_agree(sess.run(x, np.int64(1500)), fz._halve_or_grow(x, 1500))


def _division_model(a: np.ndarray, b: np.ndarray) -> bytes:
    """x + a // b + a % b with a and b int64 constants, as a hand-written file."""
    t = ((I64, (3,), 0, 24), (I64, (3,), 64, 24))
    vals = (("x", I64, (3,)),) + tuple(("", I64, (3,)) for _ in range(6))
    ops = (("constant", (), (1,), (("value", TENSOR, "tensor", 0),)),
           ("constant", (), (2,), (("value", TENSOR, "tensor", 1),)),
           ("floordiv", (1, 2), (3,), ()), ("mod", (1, 2), (4,), ()), ("add", (3, 4), (5,), ()),
           ("add", (0, 5), (6,), ()))
    data = a.astype("<i8").tobytes() + bytes(40) + b.astype("<i8").tobytes()
    return _hand_model(values=vals, ops=ops, region_outputs=(6,), tensors=t, data=data)


@SETTINGS
@given(a=st.lists(st.sampled_from([-2**63, -7, -1, 0, 1, 7, 2**63 - 1]), min_size=3, max_size=3),
       b=st.lists(st.sampled_from([0, 0, -1, 1, 2, -2**63]), min_size=3, max_size=3))
def test_division_and_modulo_by_zero_in_constant_folding(a, b):
    a, b = np.array(a, np.int64), np.array(b, np.int64)
    data = _division_model(a, b)
    x = np.arange(3, dtype=np.int64)
    with np.errstate(all="ignore"):
        ref = x + (a // b + a % b)
    assert_agree(runtime.load(data).run(x), ref)
    g = ir.optimize(load_castml(data))  # folds what it can, never raising on a zero divisor
    assert_agree(ir.interpret(g, x), ref)
