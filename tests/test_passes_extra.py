"""Elementwise-chain fusion (`fused_elementwise`), ONNX `Gemm` lowering, and imported ONNX CNNs
under `ir.optimize`.

The fused op is checked on every path a graph takes: the exact printed graph after the pass,
idempotence, random chains under `ir.interpret` (hypothesis; bit-identical to the unfused chain,
as the kernel runs the same ufuncs), `.castml` save/load and the runtime, ONNX export run by
onnxruntime, and gradients (against the unfused graph's and finite differences).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import exporters
import ir
import runtime
import tracer
from ir import passes as P
from ir.interpret import to_program_spec
from runtime.executor import Program
from runtime.kernels import fused_elementwise as fused_kernel
from tests.helpers import assert_agree
from tracer import TensorSpec

RNG = np.random.default_rng(7)
F64 = np.float64


def _traced(fn, *specs):
    g = tracer.trace(fn, *specs)
    for op in g.walk():
        op.loc = None  # printed IR without source lines
    return g


def _fuse(g):
    return P.PassManager([P.FuseElementwise(), P.DCE()], debug=True).run(g).graph


def _kinds(g) -> Counter:
    return Counter(op.kind for op in g.walk())


def _chain(x, y):
    z = np.where(x > 0.0, x * 2.0, -x) + y
    return z.astype(np.float32), np.exp(z)


CHAIN_SPECS = (TensorSpec(("n", 4), F64), TensorSpec((4,), F64))

FUSED_CHAIN = """\
graph(%x: f64[n,4], %y: f64[4]) {
  %0: f64[] = constant[value=tensor<f64[]: [0.0]>]()
  %1: f64[] = constant[value=tensor<f64[]: [2.0]>]()
  %2: f64[n,4] = fused_elementwise(%x, %0, %1, %y) regions {
    (%3: f64[n,4], %4: f64[], %5: f64[], %6: f64[4]) {
      %7: b1[n,4] = greater(%3, %4)
      %8: f64[n,4] = mul(%3, %5)
      %9: f64[n,4] = neg(%3)
      %10: f64[n,4] = where(%7, %8, %9)
      %11: f64[n,4] = add(%10, %6)
      yield %11
    }
  }
  %12: f32[n,4] = cast[dtype=f32](%2)
  %13: f64[n,4] = exp(%2)
  return %12, %13
}
signature {"out_tree":["tuple",[["*"],["*"]]]}
"""


def test_fused_chain_printed_graph() -> None:
    # the value used twice (by cast and exp) ends the chain; single ops stay as they are
    g = _fuse(_traced(_chain, *CHAIN_SPECS))
    assert str(g) == FUSED_CHAIN
    assert ir.parse(g.to_text()) == g
    ir.verify(g)


def test_fused_chain_keeps_results_and_is_idempotent() -> None:
    g = _traced(_chain, *CHAIN_SPECS)
    x, y = RNG.standard_normal((5, 4)), RNG.standard_normal(4)
    g2 = ir.optimize(g, debug=True)
    assert _kinds(g2)["fused_elementwise"] == 1
    assert ir.optimize(g2) == g2
    assert_agree(ir.interpret(g2, x, y), _chain(x, y))


def test_later_rounds_grow_an_existing_fused_op() -> None:
    # a chain fused once absorbs the ops of a second round instead of stacking fused ops
    g = _fuse(_traced(lambda x: np.tanh(np.exp(x) * 3.0), TensorSpec((3,), F64)))
    out = g.outputs[0]
    neg = g.add_op("neg", [out]).output
    g.outputs = [g.add_op("abs", [neg]).output]
    g = _fuse(g)
    assert _kinds(g)["fused_elementwise"] == 1
    assert [op.kind for op in g.ops[-1].regions[0].ops] == ["exp", "mul", "tanh", "neg", "abs"]
    x = RNG.standard_normal(3)
    assert_agree(ir.interpret(g, x), np.abs(-np.tanh(np.exp(x) * 3.0)))


def test_bias_and_activation_are_left_to_gemm_and_conv() -> None:
    w, b = RNG.standard_normal((4, 3)), RNG.standard_normal(3)
    wc = RNG.standard_normal((2, 1, 3, 3))
    g = tracer.trace(lambda x: np.tanh(np.maximum(x @ w + b, 0.0) * 2.0 - 1.0), TensorSpec(("n", 4), F64))
    g2 = ir.optimize(g)
    gemm = [op for op in g2.ops if op.kind == "gemm"]
    assert len(gemm) == 1 and gemm[0].attrs["activation"] == "relu"
    assert [op.kind for op in g2.ops[-1].regions[0].ops] == ["mul", "sub", "tanh"]
    g = tracer.trace(lambda x: tracer.ops.relu(tracer.ops.conv2d(x, wc)) * 0.5 + 1.0, TensorSpec((1, 1, 5, 5), F64))
    g2 = ir.optimize(g)
    conv = [op for op in g2.ops if op.kind == "fused_conv"]
    assert len(conv) == 1 and conv[0].attrs["activation"] == "relu"
    assert [op.kind for op in g2.ops[-1].regions[0].ops] == ["mul", "add"]


def test_chains_inside_control_flow_regions_are_fused() -> None:
    @tracer.script
    def f(x):
        if x.sum() > 0.0:
            x = np.exp(-x) * 2.0
        return x

    g = ir.optimize(tracer.trace(f, np.ones(3)), debug=True)
    branch = next(op for op in g.walk() if op.kind == "if").regions[0]
    assert [op.kind for op in branch.ops if op.kind != "constant"] == ["fused_elementwise"]
    for x in (np.ones(3), -np.ones(3)):
        assert_agree(ir.interpret(g, x), f(x))


# --- random chains -------------------------------------------------------------------------------

UNARY = {"neg": np.negative, "tanh": np.tanh, "abs": np.abs, "exp": np.exp, "sin": np.sin}
BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum}
SHAPES = {"x": ("n", 4), "y": (4,), "z": (1, 4), "s": ()}


@st.composite
def chains(draw):
    """A program: steps over a pool [x, y, z, s], each (kind, operand indices); outputs are the
    last value and maybe an earlier one (a second use that splits the chain)."""
    steps = []
    n = len(SHAPES)
    for _ in range(draw(st.integers(2, 9))):
        kind = draw(st.sampled_from([*UNARY, *BINARY, "where", "cast", "const"]))
        a, b, c = (draw(st.integers(0, n - 1)) for _ in range(3))
        steps.append((kind, a, b, c, draw(st.floats(-2, 2, allow_nan=False, width=32))))
        n += 1
    extra = draw(st.none() | st.integers(len(SHAPES), n - 2)) if n - 2 >= len(SHAPES) else None
    return steps, extra


def _run_chain(steps, extra, *args):
    pool = list(args)
    for kind, a, b, c, k in steps:
        if kind in UNARY:
            v = UNARY[kind](pool[a])
        elif kind in BINARY:
            v = BINARY[kind](pool[a], pool[b])
        elif kind == "where":
            v = np.where(pool[a] > pool[b], pool[c], pool[a])
        elif kind == "cast":
            v = pool[a].astype(np.float32).astype(np.float64)
        else:
            v = pool[a] * np.float64(k)
        pool.append(v)
    return (pool[-1], pool[extra]) if extra is not None else pool[-1]


def _chain_inputs(n: int = 3):
    return [RNG.standard_normal(tuple(n if isinstance(d, str) else d for d in s)) for s in SHAPES.values()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains())
def test_random_chains_agree_before_and_after_fusion(prog) -> None:
    steps, extra = prog
    g = tracer.trace(lambda *a: _run_chain(steps, extra, *a), *(TensorSpec(s, F64) for s in SHAPES.values()))
    fused = _fuse(g)
    ir.verify(fused)
    args = _chain_inputs()
    with np.errstate(all="ignore"):
        ref = ir.interpret(g, *args)
        got = ir.interpret(fused, *args)
    # the kernel runs the very ufuncs of the unfused ops on the same dtypes: bit-identical
    for a, b in zip(np.atleast_1d(got) if extra is None else got, np.atleast_1d(ref) if extra is None else ref):
        np.testing.assert_array_equal(a, b)
    opt = ir.optimize(g, debug=True)
    assert ir.optimize(opt) == opt
    with np.errstate(all="ignore"):
        assert_agree(ir.interpret(opt, *args), ref)


def test_kernel_reuses_buffers_and_never_writes_its_inputs(monkeypatch) -> None:
    g = _fuse(tracer.trace(lambda x, y: np.tanh((x * y + y) * x - y), np.zeros((64, 32)), np.zeros(32)))
    x, y = RNG.standard_normal((64, 32)), RNG.standard_normal(32)
    xc, yc = x.copy(), y.copy()
    got = ir.interpret(g, x, y)
    np.testing.assert_array_equal(got, np.tanh((x * y + y) * x - y))
    np.testing.assert_array_equal(x, xc)
    np.testing.assert_array_equal(y, yc)

    # each later step writes into the buffer of the value that dies there: one allocation in all
    program = Program(to_program_spec(g))
    step = next(s for s in program.steps if s.kind == "fused_elementwise")
    allocated = []
    real = fused_kernel._new_buffer
    monkeypatch.setattr(fused_kernel, "_new_buffer", lambda *a: allocated.append(a) or real(*a))
    out = fused_kernel.fused_elementwise(step, [x, y], {}, [None] * program.num_slots)
    monkeypatch.undo()
    np.testing.assert_array_equal(out, got)
    assert allocated == [((64, 32), np.dtype(F64))]


def test_kernel_copies_a_step_result_that_is_its_input() -> None:
    # cast to the same dtype returns its input array: the buffer of %2, which dies at `neg` and
    # would be overwritten there, must not also hold %3
    g = ir.parse("""graph(%x: f64[3]) {
  %0: f64[3] = fused_elementwise(%x) regions {
    (%1: f64[3]) {
      %2: f64[3] = exp(%1)
      %3: f64[3] = cast[dtype=f64](%2)
      %4: f64[3] = neg(%2)
      %5: f64[3] = sub(%3, %4)
      yield %5
    }
  }
  return %0
}""")
    x = np.arange(3.0)
    np.testing.assert_array_equal(ir.interpret(g, x), 2 * np.exp(x))


# --- formats and gradients -------------------------------------------------------------------------

def _ort(model: onnx.ModelProto, feeds: dict) -> list:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_fused_chain_saves_loads_and_runs(tmp_path) -> None:
    g = ir.optimize(tracer.trace(_chain, TensorSpec(("n", 4), np.float32), TensorSpec((4,), np.float32)))
    assert _kinds(g)["fused_elementwise"] == 1
    x, y = RNG.standard_normal((5, 4)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
    ref = _chain(x, y)
    path = str(tmp_path / "m.castml")
    exporters.save(g, path)
    assert exporters.load(path) == g
    assert_agree(runtime.load(path).run(x, y), ref)

    model = exporters.to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    assert not [n for n in model.graph.node if n.op_type in ("If", "Loop")]  # the chain is inline
    assert_agree(tuple(_ort(model, {"x": x, "y": y})), ref)
    back = exporters.from_onnx(model)
    assert_agree(ir.interpret(back, x, y), ref)


def test_gradient_through_fused_chain() -> None:
    def f(x, w):
        return np.sum(np.where(x > 0.0, np.tanh(x * w), np.sin(x) * w) * x)

    g = tracer.trace(f, TensorSpec((3, 4), F64), TensorSpec((4,), F64))
    g2 = ir.optimize(g)
    assert _kinds(g2)["fused_elementwise"] == 1
    x, w = RNG.standard_normal((3, 4)), RNG.standard_normal(4)
    dx, dw = ir.interpret(ir.grad(g2, wrt=(0, 1)), x, w)
    rx, rw = ir.interpret(ir.grad(g, wrt=(0, 1)), x, w)
    assert_agree(dx, rx)
    assert_agree(dw, rw)
    # central differences: their own truncation error (~h^2) is far above the agreement rule's
    # float64 tolerance, so this independent check uses 1e-6
    h = 1e-6
    for arg, grad in ((0, dx), (1, dw)):
        base = [x, w]
        fd = np.zeros_like(base[arg])
        for i in np.ndindex(fd.shape):
            up, down = [a.copy() for a in base], [a.copy() for a in base]
            up[arg][i] += h
            down[arg][i] -= h
            fd[i] = (f(*up) - f(*down)) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


# --- gemm lowering -------------------------------------------------------------------------------

def test_2d_gemm_lowers_to_onnx_gemm_and_stacks_to_matmul() -> None:
    w, b = RNG.standard_normal((8, 6)).astype(np.float32), RNG.standard_normal(6).astype(np.float32)
    for shape, want in ((("n", 8), ["Gemm", "Relu"]), ((2, "n", 8), ["MatMul", "Add", "Relu"])):
        g = ir.optimize(tracer.trace(lambda x: np.maximum(x @ w + b, 0.0), TensorSpec(shape, np.float32)))
        assert [op.kind for op in g.ops if op.kind != "constant"] == ["gemm"]
        model = exporters.to_onnx(g)
        onnx.checker.check_model(model, full_check=True)
        assert [n.op_type for n in model.graph.node] == want
        x = RNG.standard_normal(tuple(3 if d == "n" else d for d in shape)).astype(np.float32)
        assert_agree(_ort(model, {"x": x})[0], np.maximum(x @ w + b, 0.0))


# --- imported ONNX CNNs ----------------------------------------------------------------------------

def _pytorch_style_cnn() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> MaxPool -> Flatten -> Gemm(transB=1), opset 9, weights
    as initializers also listed as graph inputs: how `torch.onnx.export` wrote CNNs at opset 9."""
    c, k = 3, 6
    inits = {
        "conv.weight": RNG.standard_normal((k, c, 3, 3)).astype(np.float32) / 4,
        "conv.bias": RNG.standard_normal(k).astype(np.float32),
        "bn.weight": RNG.standard_normal(k).astype(np.float32),
        "bn.bias": RNG.standard_normal(k).astype(np.float32),
        "bn.running_mean": RNG.standard_normal(k).astype(np.float32),
        "bn.running_var": (RNG.random(k) + 0.5).astype(np.float32),
        "fc.weight": RNG.standard_normal((10, k * 4 * 4)).astype(np.float32) / 8,
        "fc.bias": RNG.standard_normal(10).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[1, 1], dilations=[1, 1], group=1),
        helper.make_node("BatchNormalization", ["1", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
                         ["2"], epsilon=1e-5, momentum=0.9),
        helper.make_node("Relu", ["2"], ["3"]),
        helper.make_node("MaxPool", ["3"], ["4"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]),
        helper.make_node("Flatten", ["4"], ["5"], axis=1),
        helper.make_node("Gemm", ["5", "fc.weight", "fc.bias"], ["output"], alpha=1.0, beta=1.0, transB=1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, c, 8, 8])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in inits.items()]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 10])]
    graph = helper.make_graph(nodes, "cnn", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    onnx.checker.check_model(model)
    return model


def test_imported_pytorch_style_cnn_is_fused_and_keeps_its_outputs() -> None:
    model = _pytorch_style_cnn()
    g = exporters.from_onnx(model)
    assert {"conv", "batch_norm", "relu", "max_pool"} <= set(_kinds(g))
    g2 = ir.optimize(g, debug=True)
    kinds = _kinds(g2)
    assert kinds["batch_norm"] == 0 and kinds["conv"] == 0 and kinds["relu"] == 0 and kinds["matmul"] == 0
    assert kinds["fused_conv"] == 1 and kinds["gemm"] == 1 and kinds["max_pool"] == 1
    assert next(op for op in g2.ops if op.kind == "fused_conv").attrs["activation"] == "relu"
    assert ir.optimize(g2) == g2
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = _ort(model, {"input": x})[0]
    assert_agree(ir.interpret(g2, x), ref)
    assert_agree(ir.interpret(g, x), ref)
    # and our optimized export runs in onnxruntime with the same result
    assert_agree(_ort(exporters.to_onnx(g2), {"input": x})[0], ref)


LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_resnet50.onnx")


@pytest.mark.skipif(not os.path.exists(LIGHT), reason="onnx's light model zoo is not installed")
def test_imported_resnet50_folds_every_batch_norm() -> None:
    # onnx's own ResNet-50 (opset 9, 53 Conv+BatchNormalization pairs, residual Sum+Relu)
    g = exporters.from_onnx(onnx.load(LIGHT))
    before = _kinds(g)
    assert before["batch_norm"] == 53 and before["conv"] == 53
    g2, report = ir.optimize(g, report=True)
    kinds = _kinds(g2)
    assert kinds["batch_norm"] == 0 and kinds["conv"] + kinds["fused_conv"] == 53
    assert kinds["fused_conv"] == 33  # 49 relus, 16 of them after a residual add
    assert kinds["fused_elementwise"] == 16  # add + relu of each residual block
    assert kinds["gemm"] == 1 and kinds["matmul"] == 0
    assert report.iterations < 8  # a fixpoint, not the iteration cap
