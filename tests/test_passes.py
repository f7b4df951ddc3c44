# ruff: noqa: E501  (golden IR text has long lines)
"""Targeted tests of every pass in `ir.passes` (exact printed graph after the pass, then DCE),
the pass manager, `ir.optimize`'s contract (new graph, input untouched, idempotent, report), and
zoo-style models (MLP, CNN with batch_norm, transformer-encoder block) that must lose the
expected ops and keep their outputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import ir
import tracer
from ir import passes as P
from runtime import pytree
from tests.helpers import assert_agree
from tracer import TensorSpec, ops

F64 = np.float64


def _parsed(text: str):
    return lambda: ir.parse(text)


def _traced(fn, *specs):
    def make():
        g = tracer.trace(fn, *specs)
        for op in g.walk():
            op.loc = None  # printed IR without source lines
        return g
    return make


def run_case(make, p) -> str:
    """The printed graph after `p` and dead code elimination."""
    g = make()
    res = P.PassManager([p, P.DCE()], debug=True).run(g)
    return str(res.graph)


W34 = np.arange(12.0).reshape(3, 4)
B4 = np.array([1.0, -1.0, 0.5, 2.0])
G4 = np.array([1.0, 2.0, 3.0, 4.0])
WC = np.ones((2, 1, 3))
BC = np.array([[1.0], [2.0]])
BN = dict(mean=np.array([0.5, -0.5]), var=np.array([4.0, 0.25]), weight=np.array([2.0, 1.0]),
          bias=np.array([0.0, 1.0]))
W45 = np.arange(20.0).reshape(4, 5)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _log_softmax(x):
    t = x - x.max(-1, keepdims=True)
    return t - np.log(np.exp(t).sum(-1, keepdims=True))


def _layer_norm(x):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * G4 + B4


def _gelu(x):
    return 0.5 * x * (1 + ops.erf(x / math.sqrt(2)))


def _gelu_tanh(x):
    return x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))) * 0.5


def _gelu_and_phi(x):
    phi = ops.normal_cdf(x)
    return x * phi, phi + 1.0


N4 = TensorSpec(("n", 4), F64)
CASES = {
    "dce": (_parsed("""graph(%x: f64[6]) {
  %0: f64[6] = exp(%x)
  %1: f64[2], %2: f64[4] = split[axis=0, sizes=(2, 4)](%x)
  %3: f64[4] = neg(%2)
  return %3
}"""), P.DCE()),
    "cse": (_parsed("""graph(%a: f64[n], %b: f64[n]) {
  %0: f64[n] = mul(%a, %b)
  %1: f64[n] = mul(%b, %a)
  %2: f64[n] = sub(%a, %b)
  %3: f64[n] = sub(%b, %a)
  %4: f64[2] = constant[value=tensor<f64[2]: [1.0, 2.0]>]()
  %5: f64[2] = constant[value=tensor<f64[2]: [1.0, 2.0]>]()
  %6: f64[2] = add(%4, %5)
  return %0, %1, %2, %3, %6
}"""), P.CSE()),
    "fold": (_parsed("""graph(%x: i64[3]) {
  %0: i64[3] = constant[value=tensor<i64[3]: [1, 2, 3]>]()
  %1: i64[3] = mul(%0, %0)
  %2: i64[] = constant[value=tensor<i64[]: [0]>]()
  %3: i64[3] = floordiv(%0, %2)
  %4: i64[4096] = broadcast_to[shape=(4096,)](%2)
  %5: i64[3] = add(%x, %1)
  return %5, %3, %4
}"""), P.ConstantFolding()),
    "algebra": (_parsed("""graph(%x: f32[n,4], %i: i32[n,4]) {
  %0: f32[] = constant[value=tensor<f32[]: [0.0]>]()
  %1: f32[] = constant[value=tensor<f32[]: [1.0]>]()
  %2: i32[] = constant[value=tensor<i32[]: [0]>]()
  %3: f32[n,4] = add(%x, %0)
  %4: f32[n,4] = mul(%1, %3)
  %5: f32[n,4] = mul(%4, %0)
  %6: i32[n,4] = mul(%i, %2)
  %7: f32[n,4] = neg(%4)
  %8: f32[n,4] = neg(%7)
  %9: f32[4,n] = transpose[perm=(1, 0)](%8)
  %10: f32[n,4] = transpose[perm=(1, 0)](%9)
  %11: f32[n,2,2] = reshape[shape=(n, 2, 2)](%10)
  %12: f32[n,1,4] = reshape[shape=(n, 1, 4)](%11)
  %13: f32[n,1,4] = cast[dtype=f32](%12)
  %14: f32[n,1,4] = slice[starts=(0, 0, 0), steps=(1, 1, 1), stops=(n, 1, 4)](%13)
  %15: f32[n,1,3] = slice[starts=(0, 0, 1), steps=(1, 1, 1), stops=(n, 1, 4)](%13)
  %16: f64[n,1,4] = cast[dtype=f64](%14)
  %17: f32[n,1,4] = cast[dtype=f32](%16)
  return %17, %15, %5, %6
}"""), P.AlgebraicSimplification()),
    "shapes": (_parsed("""graph(%x: f64[n,4], %y: f64[n]) {
  %0: i64[] = shape_dim[axis=0](%x)
  %1: i64[] = shape_dim[axis=0](%y)
  %2: i64[] = sub(%0, %1)
  %3: b1[] = equal(%0, %1)
  %4: i64[] = constant[value=tensor<i64[]: [4]>]()
  %5: i64[] = mul(%0, %4)
  %6: i64[] = add(%1, %1)
  %7: i64[] = add(%6, %6)
  %8: i64[] = shape_dim[axis=1](%x)
  return %2, %3, %5, %7, %8
}"""), P.ShapeSimplification()),
    "dedup": (_traced(lambda x: (x @ W45) @ np.ascontiguousarray(W45.T) + W45.reshape(2, 10)[0, :4], N4),
              P.DedupConstants()),
    "softmax": (_traced(_softmax, N4), P.RecognizePatterns()),
    "log_softmax": (_traced(_log_softmax, N4), P.RecognizePatterns()),
    "layer_norm": (_traced(_layer_norm, N4), P.RecognizePatterns()),
    "gelu": (_traced(_gelu, N4), P.RecognizePatterns()),
    "gelu_tanh": (_traced(_gelu_tanh, N4), P.RecognizePatterns()),
    "gelu_normal_cdf": (_traced(lambda x: ops.normal_cdf(x) * x, N4), P.RecognizePatterns()),
    # Phi used twice (as gradient graphs do): kept, so it is computed once
    "gelu_shared_phi": (_traced(_gelu_and_phi, N4), P.RecognizePatterns()),
    "linear": (_traced(lambda x: np.maximum(x @ W34 + B4, 0.0), TensorSpec(("n", 3), F64)), P.FuseLinear()),
    "conv_bn": (_traced(lambda x: ops.relu(ops.batch_norm(ops.conv(x, WC), **BN)), TensorSpec(("n", 1, 5), F64)),
                P.FuseConv()),
    "conv_bias": (_traced(lambda x: np.tanh(ops.conv(x, WC) + BC), TensorSpec(("n", 1, 5), F64)), P.FuseConv()),
}

EXPECTED = {
    'dce': """\
graph(%x: f64[6]) {
  %0: f64[4] = slice[starts=(2,), steps=(1,), stops=(6,)](%x)
  %1: f64[4] = neg(%0)
  return %1
}
""",
    'cse': """\
graph(%a: f64[n], %b: f64[n]) {
  %0: f64[n] = mul(%a, %b)
  %1: f64[n] = sub(%a, %b)
  %2: f64[n] = sub(%b, %a)
  %3: f64[2] = constant[value=tensor<f64[2]: [1.0, 2.0]>]()
  %4: f64[2] = add(%3, %3)
  return %0, %0, %1, %2, %4
}
""",
    'fold': """\
graph(%x: i64[3]) {
  %0: i64[3] = constant[value=tensor<i64[3]: [1, 2, 3]>]()
  %1: i64[3] = constant[value=tensor<i64[3]: [1, 4, 9]>]()
  %2: i64[] = constant[value=tensor<i64[]: [0]>]()
  %3: i64[3] = floordiv(%0, %2)
  %4: i64[4096] = broadcast_to[shape=(4096,)](%2)
  %5: i64[3] = add(%x, %1)
  return %5, %3, %4
}
""",
    'algebra': """\
graph(%x: f32[n,4], %i: i32[n,4]) {
  %0: f32[] = constant[value=tensor<f32[]: [0.0]>]()
  %1: f32[n,4] = mul(%x, %0)
  %2: i32[n,4] = full[shape=(n, 4), value=tensor<i32[]: [0]>]()
  %3: f32[n,1,4] = reshape[shape=(n, 1, 4)](%x)
  %4: f32[n,1,3] = slice[starts=(0, 0, 1), steps=(1, 1, 1), stops=(n, 1, 4)](%3)
  return %3, %4, %1, %2
}
""",
    'shapes': """\
graph(%x: f64[n,4], %y: f64[n]) {
  %0: i64[] = shape_dim[axis=0](%x)
  %1: i64[] = constant[value=tensor<i64[]: [0]>]()
  %2: b1[] = constant[value=tensor<b1[]: [true]>]()
  %3: i64[] = constant[value=tensor<i64[]: [4]>]()
  %4: i64[] = mul(%0, %3)
  %5: i64[] = constant[value=tensor<i64[]: [4]>]()
  return %1, %2, %4, %4, %5
}
""",
    'dedup': """\
graph(%x: f64[n,4]) {
  %0: f64[4,5] = constant[value=tensor<f64[4,5] #f71fe7>]()
  %1: f64[n,5] = matmul(%x, %0)
  %2: f64[5,4] = transpose[perm=(1, 0)](%0)
  %3: f64[n,4] = matmul(%1, %2)
  %4: f64[4] = constant[value=tensor<f64[4]: [0.0, 1.0, 2.0, 3.0]>]()
  %5: f64[n,4] = add(%3, %4)
  return %5
}
""",
    'softmax': """\
graph(%x: f64[n,4]) {
  %0: f64[n,4] = softmax[axis=1](%x)
  return %0
}
""",
    'log_softmax': """\
graph(%x: f64[n,4]) {
  %0: f64[n,4] = log_softmax[axis=1](%x)
  return %0
}
""",
    'layer_norm': """\
graph(%x: f64[n,4]) {
  %0: f64[4] = constant[value=tensor<f64[4]: [1.0, 2.0, 3.0, 4.0]>]()
  %1: f64[4] = constant[value=tensor<f64[4]: [1.0, -1.0, 0.5, 2.0]>]()
  %2: f64[n,4] = layer_norm[axis=1, epsilon=1e-05](%x, %0, %1)
  return %2
}
""",
    'gelu': """\
graph(%x: f64[n,4]) {
  %0: f64[n,4] = gelu[approximate="none"](%x)
  return %0
}
""",
    'gelu_tanh': """\
graph(%x: f64[n,4]) {
  %0: f64[n,4] = gelu[approximate="tanh"](%x)
  return %0
}
""",
    'gelu_normal_cdf': """\
graph(%x: f64[n,4]) {
  %0: f64[n,4] = gelu[approximate="none"](%x)
  return %0
}
""",
    'gelu_shared_phi': """\
graph(%x: f64[n,4]) {
  %0: f64[n,4] = normal_cdf(%x)
  %1: f64[n,4] = mul(%x, %0)
  %2: f64[] = constant[value=tensor<f64[]: [1.0]>]()
  %3: f64[n,4] = add(%0, %2)
  return %1, %3
}
signature {"out_tree":["tuple",[["*"],["*"]]]}
""",
    'linear': """\
graph(%x: f64[n,3]) {
  %0: f64[3,4] = constant[value=tensor<f64[3,4]: [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]>]()
  %1: f64[4] = constant[value=tensor<f64[4]: [1.0, -1.0, 0.5, 2.0]>]()
  %2: f64[n,4] = gemm[activation="relu"](%x, %0, %1)
  return %2
}
""",
    'conv_bn': """\
graph(%x: f64[n,1,5]) {
  %0: f64[2,1,3] = constant[value=tensor<f64[2,1,3]: [0.9999987500023437, 0.9999987500023437, 0.9999987500023437, 1.9999600011999599, 1.9999600011999599, 1.9999600011999599]>]()
  %1: f64[2] = constant[value=tensor<f64[2]: [-0.49999937500117186, 1.99998000059998]>]()
  %2: f64[n,2,3] = fused_conv[activation="relu", dilations=(1,), group=1, pads=(0, 0), strides=(1,)](%x, %0, %1)
  return %2
}
""",
    'conv_bias': """\
graph(%x: f64[n,1,5]) {
  %0: f64[2,1,3] = constant[value=tensor<f64[2,1,3]: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]>]()
  %1: f64[2,1] = constant[value=tensor<f64[2,1]: [1.0, 2.0]>]()
  %2: f64[2] = reshape[shape=(2,)](%1)
  %3: f64[n,2,3] = fused_conv[activation="tanh", dilations=(1,), group=1, pads=(0, 0), strides=(1,)](%x, %0, %2)
  return %3
}
""",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pass_output(name: str) -> None:
    make, p = CASES[name]
    assert run_case(make, p) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_pass_keeps_results(name: str) -> None:
    make, p = CASES[name]
    g = make()
    g2 = P.PassManager([p, P.DCE()], debug=True).run(g).graph
    for h in (g, g2):  # parsed graphs return a flat tuple
        h.out_tree = ("tuple", (pytree.LEAF,) * len(h.outputs)) if len(h.outputs) > 1 else pytree.LEAF
    rng = np.random.default_rng(1)
    args = []
    for v in g.inputs:
        shape = tuple(3 if isinstance(d, str) else d for d in v.type.shape)
        args.append((rng.standard_normal(shape) * 3).astype(v.dtype))
    assert_agree(ir.interpret(g2, *args), ir.interpret(g, *args))


# --- pass manager and the optimize contract -------------------------------------------------------
def test_optimize_returns_new_graph_and_leaves_input_untouched() -> None:
    g = tracer.trace(lambda x: (x + 0.0) * (x + 0.0) + (x + 0.0) * (x + 0.0), TensorSpec(("n",), F64))
    before = g.to_text()
    g2, report = ir.optimize(g, report=True)
    assert g.to_text() == before
    assert g2 is not g and str(g2).count("= mul(") == 1
    assert report.ops_before == P.count_ops(g) == 11 and report.ops_after == P.count_ops(g2) == 2
    names = [s.name for s in report.passes]
    assert names[:3] == ["dce", "shapes", "fold"]
    assert report.passes[names.index("cse")].modified >= 1
    assert "total" in str(report)
    assert ir.optimize(g2) == g2


def test_pass_manager_verifies_between_passes_in_debug_mode() -> None:
    class Breaks:
        name = "breaks"

        def run(self, graph):
            graph.ops = graph.ops[1:]  # drops the definition of a used value
            return P.PassResult(graph, True)

    g = tracer.trace(lambda x: np.exp(x) + 1.0, TensorSpec((3,), F64))
    with pytest.raises(ir.VerifyError, match="after pass 'breaks'"):
        P.PassManager([Breaks()], debug=True).run(g)
    P.PassManager([Breaks()], debug=False, max_iterations=1).run(g)  # no verification without debug


def test_region_ops_are_left_intact() -> None:
    g = ir.parse("""graph(%c: b1[], %x: f64[3]) {
  %0: f64[3] = if(%c) regions {
    () {
      %1: f64[] = constant[value=tensor<f64[]: [0.0]>]()
      %2: f64[3] = add(%x, %1)
      %3: f64[3] = exp(%x)
      yield %2
    }
    () {
      %4: f64[3] = neg(%x)
      %5: f64[3] = neg(%4)
      yield %5
    }
  }
  %6: f64[3] = exp(%x)
  return %0, %6
}""")
    g.out_tree = ("tuple", (pytree.LEAF, pytree.LEAF))
    g2 = ir.optimize(g, debug=True)
    assert str(g2) == """\
graph(%c: b1[], %x: f64[3]) {
  %0: f64[3] = if(%c) regions {
    () {
      yield %x
    }
    () {
      yield %x
    }
  }
  %1: f64[3] = exp(%x)
  return %0, %1
}
signature {"out_tree":["tuple",[["*"],["*"]]]}
"""
    for c in (True, False):
        assert_agree(ir.interpret(g2, np.array(c), np.arange(3.0)), ir.interpret(g, np.array(c), np.arange(3.0)))


# --- zoo-style models -------------------------------------------------------------------------------
RNG = np.random.default_rng(0)


def _kinds(g) -> list[str]:
    return [op.kind for op in g.walk()]


def _check_model(fn, spec, x):
    g = tracer.trace(fn, spec)
    g2 = ir.optimize(g, debug=True)
    ir.verify(g2)
    assert_agree(ir.interpret(g2, x), ir.interpret(g, x))
    assert ir.optimize(g2) == g2
    return g, g2


def test_mlp() -> None:
    ws = [RNG.standard_normal(s) for s in ((8, 16), (16, 16), (16, 4))]
    bs = [RNG.standard_normal(s[1]) for s in ((8, 16), (16, 16), (16, 4))]

    def mlp(x):
        for w, b in zip(ws[:-1], bs[:-1]):
            x = np.maximum(x @ w + b, 0.0)
        return _softmax(x @ ws[-1] + bs[-1])

    g, g2 = _check_model(mlp, TensorSpec(("batch", 8), F64), RNG.standard_normal((5, 8)))
    assert _kinds(g2).count("gemm") == 3 and "softmax" in _kinds(g2)
    assert len(g2.ops) < len(g.ops) and not {"matmul", "add", "maximum", "exp"} & set(_kinds(g2))


def test_cnn_with_batch_norm() -> None:
    w1, w2 = RNG.standard_normal((4, 3, 3, 3)), RNG.standard_normal((6, 4, 3, 3))
    bn = [dict(mean=RNG.standard_normal(c), var=RNG.random(c) + 0.5, weight=RNG.standard_normal(c),
               bias=RNG.standard_normal(c)) for c in (4, 6)]
    wf, bf = RNG.standard_normal((6, 10)), RNG.standard_normal(10)

    def cnn(x):
        y = ops.relu(ops.batch_norm(ops.conv2d(x, w1, padding=1), **bn[0]))
        y = ops.max_pool2d(y, 2)
        y = ops.relu(ops.batch_norm(ops.conv2d(y, w2, padding=1), **bn[1]))
        y = ops.global_avg_pool2d(y).reshape(y.shape[0], -1)
        return y @ wf + bf

    g, g2 = _check_model(cnn, TensorSpec(("n", 3, 8, 8), F64), RNG.standard_normal((2, 3, 8, 8)))
    assert "batch_norm" not in _kinds(g2) and "relu" not in _kinds(g2)
    assert _kinds(g2).count("fused_conv") == 2 and _kinds(g2).count("gemm") == 1


def test_transformer_encoder_block() -> None:
    d, h = 8, 2
    wq, wk, wv, wo = (RNG.standard_normal((d, d)) / 3 for _ in range(4))
    w1, b1, w2, b2 = RNG.standard_normal((d, 16)) / 3, RNG.standard_normal(16), RNG.standard_normal((16, d)) / 4, \
        RNG.standard_normal(d)
    g1, g2_, be1, be2 = (RNG.standard_normal(d) for _ in range(4))

    def ln(x, g, b):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + 1e-5) * g + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    def block(x):
        s = x.shape[0]
        q = (x @ wq).reshape(s, h, d // h).transpose(1, 0, 2)
        k = (x @ wk).reshape(s, h, d // h).transpose(1, 0, 2)
        v = (x @ wv).reshape(s, h, d // h).transpose(1, 0, 2)
        a = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(d // h)) @ v
        x = ln(x + a.transpose(1, 0, 2).reshape(s, d) @ wo, g1, be1)
        return ln(x + gelu(x @ w1 + b1) @ w2 + b2, g2_, be2)

    g, g2 = _check_model(block, TensorSpec((5, d), F64), RNG.standard_normal((5, d)))
    kinds = _kinds(g2)
    assert kinds.count("layer_norm") == 2 and kinds.count("softmax") == 1
    assert ("gemm", "gelu_tanh") in [(op.kind, op.attrs.get("activation")) for op in g2.ops]
    assert not {"sqrt", "exp", "tanh", "pow", "reduce_mean"} & set(kinds)
    assert len(g2.ops) < len(g.ops) // 2


# --- constant digests: once per optimize run, never merging different data ----------------------

def test_dedup_skips_same_fingerprint_that_is_no_transpose() -> None:
    # same dtype, dims and multiset of elements as W45.T (so the same fingerprint), but not W45.T
    shuffled = np.ascontiguousarray(W45.T).reshape(-1)[::-1].reshape(5, 4).copy()
    g = _traced(lambda x: (x @ W45) @ shuffled, N4)()
    out = P.PassManager([P.DedupConstants(), P.DCE()]).run(g).graph
    assert [op.kind for op in out.ops] == ["constant", "matmul", "constant", "matmul"]
    x = RNG.standard_normal((3, 4))
    assert_agree(ir.interpret(out, x), ir.interpret(g, x))


def test_rank3_transposed_copies_are_found_through_the_fingerprint() -> None:
    w = np.arange(60.0).reshape(3, 4, 5)
    t = np.ascontiguousarray(w.transpose(2, 0, 1))
    g = _traced(lambda x: (x[0, 0] * w, x[0, 0] * t), N4)()
    out = P.PassManager([P.DedupConstants(), P.DCE()]).run(g).graph
    consts = [op for op in out.ops if op.kind == "constant" and op.attrs["value"].size > 16]
    assert len(consts) == 1 and [op.attrs["perm"] for op in out.ops if op.kind == "transpose"] == [(2, 0, 1)]
    x = RNG.standard_normal((2, 4))
    assert_agree(ir.interpret(out, x), ir.interpret(g, x))


def test_cse_merges_equal_large_constants_only() -> None:
    a = np.arange(20.0).reshape(4, 5)
    # (the same bytes under another shape or dtype are other constants)
    same, other_shape, other_dtype = a.copy(), a.reshape(5, 4).copy(), a.view(np.int64)
    g = _traced(lambda x: (x @ a, x @ same, x[0, 0] * other_shape, x[0, 0].astype(np.int64) * other_dtype), N4)()
    out = P.PassManager([P.CSE()]).run(g).graph
    values = [op.attrs["value"] for op in out.ops if op.kind == "constant"]
    assert sorted((v.shape, v.dtype.name) for v in values) == [((4, 5), "float64"), ((4, 5), "int64"),
                                                               ((5, 4), "float64")]


def test_each_constant_is_hashed_once_per_optimize(monkeypatch) -> None:
    from ir.passes import digest as D

    big = RNG.standard_normal((64, 64))
    hashed = []
    real = D.hashlib.sha256
    monkeypatch.setattr(D.hashlib, "sha256", lambda data=b"": hashed.append(len(bytes(data))) or real(data))
    g = _traced(lambda x: np.tanh(x @ big[:4]) @ big[4:8].T + (x * 1.0 + 0.0), N4)()
    ir.optimize(g)
    assert hashed.count(big[:4].nbytes) == 2  # the two slices of `big`, each hashed once
    assert not D._CACHE  # the cache lives for one run only
