"""ONNX export: every op lowers, exports load and run in onnxruntime and agree with
`ir.interpret` (DESIGN.md's tolerance rule), NumPy semantics survive lowering, bytes are
deterministic, and the capability table keeps unsupported (op, dtype) pairs out of models.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import exporters
import ir
import tracer
from tests.helpers import assert_agree
from tracer import ops as nn

RNG = np.random.default_rng(0)


def _run_ort(model: onnx.ModelProto, leaves: list) -> list:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: np.asarray(a) for i, a in zip(sess.get_inputs(), leaves)})


def check_round_trip(fn, *args, specs=None, opset=18, runs=None):
    """Trace `fn` (on `specs` or `args`), export, run in onnxruntime on `runs` (default: args)."""
    g = tracer.trace(fn, *(specs or args))
    m = exporters.to_onnx(g, opset=opset)
    onnx.checker.check_model(m, full_check=True)
    for case in runs or [args]:
        ref = ir.interpret(g, *case)
        leaves = [np.asarray(x) for x in _flatten(case)]
        got = _run_ort(m, leaves)
        ref_leaves = _flatten(ref)
        assert len(got) == len(ref_leaves)
        for a, r in zip(got, ref_leaves):
            assert_agree(np.asarray(a), np.asarray(r))
    return g, m


def _flatten(tree):
    from runtime import pytree

    return pytree.flatten(tree)[0]


F32 = RNG.standard_normal((3, 4)).astype(np.float32)
F64 = RNG.standard_normal((3, 4))
POS32 = (np.abs(F32) + 0.5).astype(np.float32)
I32 = np.array([[-7, -3, 0, 3], [7, -8, 5, -1], [100, -100, 2**31 - 1, -(2**31)]], np.int32)
J32 = np.array([[2, -2, 3, -3], [2, 3, -3, 7], [-7, 9, 2, 5]], np.int32)
NANS = np.array([[np.nan, 1.0, -2.0, 0.5], [3.0, np.nan, np.inf, -np.inf], [1.5, 2.5, -0.5, -2.5]], np.float32)

ELEMENTWISE = {
    "add_mul_sub": (lambda x, y: (x + y) * x - y, F32, POS32),
    "div_pow": (lambda x, y: x / y + y ** 1.5, F32, POS32),
    "unary_float": (lambda x: (np.exp(x), np.log(np.abs(x) + 1), np.sqrt(np.abs(x)), np.sin(x), np.cos(x),
                               np.tanh(x), np.arctan(x), np.floor(x), np.ceil(x), np.trunc(x), -x, np.abs(x),
                               np.sign(x), np.expm1(x), np.log1p(np.abs(x)), np.exp2(x), np.log2(np.abs(x) + 1),
                               np.cbrt(x), 1.0 / (np.abs(x) + 1)), F32),
    "unary_f64": (lambda x: (np.exp(x), np.tanh(x), np.sinh(x), np.cosh(x), np.tan(x), np.arcsinh(x)), F64),
    "round_half_even": (lambda x: np.rint(x), np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, -2.6], np.float32)),
    "int_floordiv_mod": (lambda a, b: (a // b, a % b), I32, J32),
    "float_floordiv_mod": (lambda a, b: (a // b, a % b), I32.astype(np.float64) / 3, J32.astype(np.float64)),
    "float32_floordiv_mod": (lambda a, b: (a // b, a % b), F32 * 5, POS32 - 1.2),
    "nan_max_min": (lambda a, b: (np.maximum(a, b), np.minimum(a, b), np.fmax(a, b), np.fmin(a, b)),
                    NANS, NANS[::-1].copy()),
    "int_overflow_wrap": (lambda a, b: (a * b, a + b, a - b), I32, J32 * 1000),
    "int8_wrap": (lambda a: a * np.int8(3) + np.int8(100), np.array([100, -100, 50, 7], np.int8)),
    "compare_where": (lambda x, y: np.where(x > y, x, y * 2) + (x == y) + (x != y), F32, POS32),
    "logic": (lambda a, b: (a & b, a | b, a ^ b, ~a), np.array([True, False, True]), np.array([True, True, False])),
    "bitwise_int": (lambda a, b: (a & b, a | b, a ^ b, ~a, a << 2, a >> 1), I32 % 1000, J32 & 7),
    "cast": (lambda x: (x.astype(np.int32), x.astype(np.float64), (x > 0).astype(np.float32)), F32),
    "isnan_isinf": (lambda x: (np.isnan(x), np.isinf(x), np.isfinite(x)), NANS),
    "atan2_hypot": (lambda y, x: (np.arctan2(y, x), np.hypot(y, x)), F32, F32[::-1].copy()),
    "activations": (lambda x: (nn.sigmoid(x), nn.relu(x), nn.gelu(x), nn.gelu(x, "tanh"), nn.erf(x),
                                 nn.normal_cdf(x)), F32),
    "uint_neg": (lambda a: -a, np.array([0, 1, 200], np.uint8)),
}

REDUCTIONS = {
    "sum_mean": (lambda x: (x.sum(), x.mean(axis=0), x.sum(axis=1, keepdims=True), x.max(axis=1), x.min(),
                            x.prod(axis=0)), F32),
    "int_sum": (lambda x: (x.sum(axis=0), x.max(axis=1)), I32),
    "bool_any_all": (lambda x: (np.any(x > 0, axis=1), np.all(x > 0)), F32),
    "nan_max": (lambda x: (x.max(axis=1), x.min(axis=0)), NANS),
    "argmax_cumsum": (lambda x: (x.argmax(axis=1), x.argmin(axis=0), np.cumsum(x, axis=1)), F32),
}

INDEXING = {
    "slices": (lambda x: (x[1:, ::2], x[::-1], x[:, -1], x[0]), F32),
    "gather_fancy": (lambda x: x[np.array([2, 0, -1])], F32),
    "setitem": (lambda x: _setitem(x), F32),
    "boolean_mask": (lambda x: x[x > 0], F32),
    "concat_stack_split": (lambda x: (np.concatenate([x, x * 2], axis=1), np.stack([x, x]), np.split(x, 2, axis=1)),
                           F32),
    "transpose_tile_repeat": (lambda x: (x.T, np.tile(x, (2, 1)), np.repeat(x, 2, axis=1), np.pad(x, 1)), F32),
    "arange_full": (lambda x: x + np.arange(4, dtype=np.float32) + np.ones((3, 4), np.float32), F32),
}

LINALG = {
    "matmul": (lambda a, b: a @ b, F32, F32.T.copy()),
    "einsum": (lambda a, b: np.einsum("ij,kj->ik", a, b), F32, F32),
    "matvec": (lambda a, v: a @ v, F32, F32[0]),
}


def test_gather_gradient_exports_as_an_accumulating_scatter():
    idx = np.array([[2, 0], [-1, 2]])  # row 2 is read three times: its gradient accumulates
    dg = ir.grad(tracer.trace(lambda w: np.sum(w[idx] ** 2), F32))
    assert "index_add" in {op.kind for op in dg.ops}
    m = exporters.to_onnx(dg)
    onnx.checker.check_model(m, full_check=True)
    want = np.zeros_like(F32)
    np.add.at(want, idx, 2 * F32[idx])
    assert_agree(_run_ort(m, [F32])[0], want)
    assert "index_add" in {op.kind for op in exporters.from_onnx(m).ops}  # and back
    with pytest.raises(exporters.ExportError, match=r"index_add.* from opset 16; got opset 15"):
        exporters.to_onnx(dg, opset=15)


def _setitem(x):
    y = x.copy()
    y[1:, 2] = 5.0
    y[np.array([0])] = -1.0
    return y


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_agrees_with_onnxruntime(name):
    fn, *args = ELEMENTWISE[name]
    check_round_trip(fn, *args)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_agree(name):
    fn, *args = REDUCTIONS[name]
    check_round_trip(fn, *args)


@pytest.mark.parametrize("name", sorted(INDEXING))
def test_indexing_agrees(name):
    fn, *args = INDEXING[name]
    check_round_trip(fn, *args)


@pytest.mark.parametrize("name", sorted(LINALG))
def test_linalg_agrees(name):
    fn, *args = LINALG[name]
    check_round_trip(fn, *args)


X4 = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
W4 = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
B4 = RNG.standard_normal(4).astype(np.float32)

NN = {
    "conv_pool": (lambda x: nn.max_pool2d(nn.relu(nn.conv2d(x, W4, B4, stride=1, padding=1)), 2), X4),
    "avg_pool_global": (lambda x: (nn.avg_pool2d(x, 3, stride=2, padding=1), nn.global_avg_pool2d(x)), X4),
    "softmax_norms": (lambda x: (nn.softmax(x, axis=1), nn.log_softmax(x), nn.layer_norm(x, np.ones(8, np.float32),
                                                                                          np.zeros(8, np.float32)),
                                 nn.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32))), X4),
    "one_hot": (lambda i: nn.one_hot(i, 4), np.array([0, 3, -1, 2])),
}


@pytest.mark.parametrize("name", sorted(NN))
def test_nn_ops_agree(name):
    fn, *args = NN[name]
    check_round_trip(fn, *args)


def _mlp(x):
    h = np.maximum(x.reshape(x.shape[0], 12) @ W12 + 0.5, 0.0)
    return {"logits": h @ W12.T[:, :5], "first": x[:, 0, :2]}


W12 = RNG.standard_normal((12, 12)).astype(np.float32)


def test_symbolic_batch_runs_at_1_7_64():
    runs = [(RNG.standard_normal((b, 3, 4)).astype(np.float32),) for b in (1, 7, 64)]
    g, m = check_round_trip(_mlp, specs=[tracer.TensorSpec(("batch", 3, 4), np.float32)], runs=runs)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in m.graph.output] == g.output_names


def test_conv_with_symbolic_batch():
    runs = [(RNG.standard_normal((b, 3, 8, 8)).astype(np.float32),) for b in (1, 7)]
    check_round_trip(lambda x: nn.conv2d(x, W4, B4, padding=1).reshape(x.shape[0], -1).sum(axis=1),
                     specs=[tracer.TensorSpec(("n", 3, 8, 8), np.float32)], runs=runs)


@pytest.mark.parametrize("opset", range(13, 22))
def test_every_opset_13_to_21(opset):
    for table in (ELEMENTWISE, REDUCTIONS, INDEXING):
        for name in ("int_floordiv_mod", "bitwise_int", "activations", "sum_mean", "nan_max", "slices", "setitem",
                     "transpose_tile_repeat", "int8_wrap"):
            if name in table:
                fn, *args = table[name]
                check_round_trip(fn, *args, opset=opset)
    fn, *args = NN["softmax_norms"]
    check_round_trip(fn, *args, opset=opset)


def test_every_registered_op_has_an_onnx_lowering():
    missing = [k for k, d in sorted(ir.REGISTRY.items()) if d.onnx is None]
    assert missing == []


def test_float64_conv_is_refused_with_op_dtype_and_line():
    # (static spatial dims are rewritten as im2col + MatMul: tests/test_onnx_float64.py)
    g = tracer.trace(lambda x: nn.conv2d(x, W4.astype(np.float64)), tracer.TensorSpec((2, 3, "h", "w"), np.float64))
    with pytest.raises(exporters.ExportError, match=r"Conv on float64.*test_onnx_export.py:\d+"):
        exporters.to_onnx(g)
    m = exporters.to_onnx(g, target=None)  # plain ONNX for other consumers
    assert [n.op_type for n in m.graph.node] == ["Conv"]


def test_float64_activations_are_rewritten_for_onnxruntime():
    x = F64 * 3
    g, m = check_round_trip(lambda x: (nn.relu(x), np.tanh(x), np.sinh(x)), x)
    assert "Sinh" not in {n.op_type for n in m.graph.node}


def test_pytree_signature_survives_in_metadata():
    g = tracer.trace(lambda p, x: {"y": x @ p["w"] + p["b"], "z": (x,)},
                     {"w": W12[:4, :3], "b": np.zeros(3, np.float32)}, F32)
    m = exporters.to_onnx(g)
    assert [i.name for i in m.graph.input] == ["p.w", "p.b", "x"]
    back = exporters.from_onnx(m)
    assert back.in_tree == g.in_tree and back.out_tree == g.out_tree and back.arg_names == g.arg_names
    args = ({"w": W12[:4, :3], "b": np.ones(3, np.float32)}, F32)
    assert_agree(ir.interpret(back, *args), ir.interpret(g, *args))


BYTE_IDENTICAL = {
    "mlp_static": (lambda x: np.tanh(x @ W12[:4, :6]).reshape(3, 2, 3).transpose(0, 2, 1), F32),
    "conv_net": (lambda x: nn.softmax(nn.max_pool2d(nn.conv2d(x, W4, B4, padding=1), 2).reshape(2, -1)), X4),
    "elementwise": (lambda x, y: (np.exp(x) * y - np.sqrt(y), np.concatenate([x, y])), F32, POS32),
}


@pytest.mark.parametrize("name", sorted(BYTE_IDENTICAL))
def test_export_import_export_is_byte_identical(name):
    fn, *args = BYTE_IDENTICAL[name]
    g = tracer.trace(fn, *args)
    first = exporters.to_onnx(g).SerializeToString()
    again = exporters.to_onnx(exporters.from_onnx(onnx.load_from_string(first))).SerializeToString()
    assert again == first


def test_same_bytes_across_processes_and_hash_seeds(tmp_path):
    script = ("import numpy as np, tracer, exporters, sys\n"
              "w = np.arange(12, dtype=np.float32).reshape(3, 4)\n"
              "g = tracer.trace(lambda p, x: {'a': np.maximum(x @ p['w'], 0.0) // 2.0, 'b': x[:, ::-1]},"
              " {'w': w}, tracer.TensorSpec(('batch', 3), np.float32))\n"
              "sys.stdout.buffer.write(exporters.to_onnx(g).SerializeToString())\n")
    outs = []
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=os.getcwd())
        outs.append(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True).stdout)
    assert len(outs[0]) > 100 and outs[0] == outs[1] == outs[2]


def test_save_and_load_by_suffix(tmp_path):
    g = tracer.trace(_mlp, tracer.TensorSpec(("batch", 3, 4), np.float32))
    path = tmp_path / "m.onnx"
    exporters.save(g, str(path))
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no temp files left behind
    back = exporters.load(str(path))
    x = RNG.standard_normal((5, 3, 4)).astype(np.float32)
    assert_agree(ir.interpret(back, x), ir.interpret(g, x))
    assert list(exporters.load_all(str(path))) == ["main"]
    with pytest.raises(exporters.ExportError, match="entry="):
        exporters.save({"a": g, "b": g}, str(tmp_path / "two.onnx"))
    with pytest.raises(exporters.ExportError, match=r"\.onnx or \.castml"):
        exporters.save(g, str(tmp_path / "m.txt"))


def test_unknown_target_and_opset_are_refused():
    g = tracer.trace(lambda x: x + 1.0, F32)
    with pytest.raises(exporters.ExportError, match="target"):
        exporters.to_onnx(g, target="tpu")
    with pytest.raises(exporters.ExportError, match="opset 12"):
        exporters.to_onnx(g, opset=12)


def single_op_graph(kind: str, inputs: list, **attrs) -> ir.Graph:
    """A graph of one op applied to inputs named a0, a1, ... (for ops the tracer rarely emits)."""
    from ir.graph import Graph
    from ir.types import type_of
    from runtime import pytree

    g = Graph.from_inputs([(f"a{i}", type_of(x)) for i, x in enumerate(inputs)])
    op = g.add_op(kind, g.inputs, attrs)
    g.outputs = list(op.outputs)
    g.out_tree = pytree.LEAF if len(op.outputs) == 1 else ("tuple", (pytree.LEAF,) * len(op.outputs))
    return g


U = RNG.uniform(-0.9, 0.9, (3, 4)).astype(np.float32)
B1, B2 = RNG.random((3, 4)) > 0.5, RNG.random((3, 4)) > 0.5
XS = RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
WT = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
ACT = {"celu": {"alpha": 1.5}, "elu": {"alpha": 0.7},
       "selu": {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805},
       "leaky_relu": {"alpha": 0.1}, "hard_sigmoid": {"alpha": 0.2, "beta": 0.5}, "thresholded_relu": {"alpha": 0.3},
       "hard_swish": {}, "softplus": {}, "softsign": {}}
SINGLE_OPS = {
    **{f"{k}_{dt.__name__}": (k, [(F32 * 3).astype(dt)], a) for k, a in ACT.items() for dt in (np.float32, np.float64)},
    "acos": ("acos", [U], {}), "asin": ("asin", [U], {}), "atanh": ("atanh", [U], {}),
    "atanh_f64": ("atanh", [U.astype(np.float64)], {}), "acosh_f64": ("acosh", [POS32.astype(np.float64) + 1], {}),
    "acosh": ("acosh", [POS32 + 1], {}), "log10": ("log10", [POS32], {}), "reciprocal": ("reciprocal", [POS32], {}),
    "reciprocal_int": ("reciprocal", [J32], {}), "relu_int64": ("relu", [I32.astype(np.int64)], {}),
    "maximum_int16": ("maximum", [I32.astype(np.int16), J32.astype(np.int16)], {}),
    "logical": ("logical_and", [B1, B2], {}), "logical_or": ("logical_or", [B1, B2], {}),
    "logical_xor": ("logical_xor", [B1, B2], {}), "logical_not": ("logical_not", [B1], {}),
    "less": ("less", [F32, POS32], {}), "less_equal": ("less_equal", [I32, J32], {}),
    "greater_equal_bool": ("greater_equal", [B1, B2], {}), "less_bool": ("less", [B1, B2], {}),
    "prelu": ("prelu", [F32, POS32[0]], {}), "prelu_f64": ("prelu", [F64, F64[0]], {}),
    "arange": ("arange", [], {"n": (5,), "dtype": np.dtype(np.float32)}),
    "full": ("full", [], {"shape": (2, 3), "value": np.array(1.5, np.float32)}),
    "shape_dim": ("shape_dim", [F32], {"axis": 1}),
    "conv_transpose": ("conv_transpose", [XS, WT], {"strides": (2, 2), "pads": (1, 1, 1, 1), "dilations": (1, 1),
                                                   "group": 1, "output_padding": (1, 1)}),
    "depth_to_space_dcr": ("depth_to_space", [RNG.standard_normal((1, 8, 2, 2)).astype(np.float32)],
                           {"blocksize": 2, "mode": "DCR"}),
    "depth_to_space_crd": ("depth_to_space", [RNG.standard_normal((1, 8, 2, 2)).astype(np.float32)],
                           {"blocksize": 2, "mode": "CRD"}),
    "space_to_depth": ("space_to_depth", [XS], {"blocksize": 2}),
    "global_max_pool": ("global_max_pool", [XS], {}),
    "global_max_pool_f64": ("global_max_pool", [XS.astype(float)], {}),
    "global_avg_pool_f64": ("global_avg_pool", [XS.astype(float)], {}),
    "instance_norm": ("instance_norm", [XS, POS32[0, :2], F32[0, :2]], {"epsilon": 1e-5}),
    "instance_norm_f64": ("instance_norm", [XS.astype(float), F64[0, :2], F64[1, :2]], {"epsilon": 1e-5}),
    "lrn": ("lrn", [XS], {"size": 3, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}),
    "stop_gradient": ("stop_gradient", [F32], {}),
    "pad_reflect": ("pad", [F32], {"pads": (1, 2, 1, 2), "mode": "reflect", "value": 0.0}),
    "pad_edge": ("pad", [F32], {"pads": (0, 1, 2, 0), "mode": "edge", "value": 0.0}),
    "pad_wrap": ("pad", [F32], {"pads": (1, 1, 2, 2), "mode": "wrap", "value": 0.0}),
    "pad_constant": ("pad", [I32], {"pads": (1, 0, 0, 1), "mode": "constant", "value": 7.0}),
}


@pytest.mark.parametrize("opset", range(13, 22))
@pytest.mark.parametrize("name", sorted(SINGLE_OPS))
def test_single_ops_at_every_opset(name, opset):
    kind, inputs, attrs = SINGLE_OPS[name]
    g = single_op_graph(kind, inputs, **attrs)
    m = exporters.to_onnx(g, opset=opset)
    assert_agree(_run_ort(m, inputs)[0], ir.interpret(g, *inputs))


FUSED = {
    "gemm": ("gemm", [F32, W12[:4, :5], F32[0, :1]], {"activation": "relu"}),
    "gemm_gelu": ("gemm", [F32, W12[:4, :5]], {"activation": "gelu_tanh"}),
    "fused_conv": ("fused_conv", [X4, W4, B4], {"strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1),
                                                "group": 1, "activation": "gelu"}),
}


@pytest.mark.parametrize("name", sorted(FUSED))
def test_fused_ops_agree(name):
    kind, inputs, attrs = FUSED[name]
    g = single_op_graph(kind, inputs, **attrs)
    assert_agree(_run_ort(exporters.to_onnx(g), inputs)[0], ir.interpret(g, *inputs))


def test_data_dependent_dim_comes_from_the_producing_op():
    g, m = check_round_trip(lambda x: x[x > 0].reshape(1, -1) * 2.0, F32)
    assert any(n.op_type == "Shape" and n.input[0] == m.graph.node[[k.op_type for k in m.graph.node].index("GatherND")]
               .output[0] for n in m.graph.node)


def _const_inputs(m: onnx.ModelProto, node: onnx.NodeProto) -> list:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    return [inits[i].tolist() if i in inits else None for i in node.input]


def test_reshape_keeping_a_symbolic_dim_in_place_copies_it_with_zero():
    # x.reshape(x.shape[0], -1) is one Reshape with a constant shape: no Shape/Slice/Concat at run time
    g, m = check_round_trip(lambda x: x.reshape(x.shape[0], -1) * 2.0, XS, specs=[tracer.TensorSpec(("n", 2, 4, 4),
                                                                                                      np.float32)],
                            runs=[(XS,), (np.concatenate([XS] * 3),)])
    assert [n.op_type for n in m.graph.node] == ["Reshape", "Mul"]
    assert _const_inputs(m, m.graph.node[0])[1] == [0, 32]
    # a symbolic dim on another axis (or a literal 0, where Reshape's 0 cannot mean "copy") still
    # comes from Shape
    _, m = check_round_trip(lambda x: x.reshape(1, -1), XS[0], specs=[tracer.TensorSpec((2, "n", 4), np.float32)])
    assert "Shape" in [n.op_type for n in m.graph.node]
    z = np.zeros((0, 3), np.float32)
    _, m = check_round_trip(lambda x: x.reshape(x.shape[0], 0, 3) + 1.0, z, specs=[tracer.TensorSpec(("n", 3),
                                                                                                     np.float32)])
    assert _const_inputs(m, [n for n in m.graph.node if n.op_type == "Reshape"][0])[1] is None


# --- the onnxruntime-cpu-contrib target: fused ops as com.microsoft contrib nodes ------------------

CONTRIB = "onnxruntime-cpu-contrib"
CONV_ATTRS = {"strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1), "group": 1}
CONTRIB_CASES = {  # name: (kind, inputs, attrs, ONNX nodes as (domain, op_type))
    **{f"gemm_{act}": ("gemm", [F32, W12[:4, :5], F32[0, :1]], {"activation": act},
                       [("com.microsoft", "FusedGemm")]) for act in ("relu", "sigmoid", "tanh")},
    "gemm_no_bias": ("gemm", [F32, W12[:4, :5]], {"activation": "relu"}, [("com.microsoft", "FusedGemm")]),
    "gemm_none": ("gemm", [F32, W12[:4, :5], W12[0, :5]], {"activation": "none"}, [("", "Gemm"), ("", "Identity")]),
    "gemm_gelu_tanh": ("gemm", [F32, W12[:4, :5]], {"activation": "gelu_tanh"},
                       [("", "Gemm"), ("com.microsoft", "FastGelu")]),
    "gemm_gelu": ("gemm", [F32, W12[:4, :5]], {"activation": "gelu"}, [("", "Gemm"), ("com.microsoft", "Gelu")]),
    "gemm_batched": ("gemm", [np.stack([F32, F32 * 2]), W12[:4, :5]], {"activation": "relu"},
                     [("", "MatMul"), ("", "Relu")]),
    "gemm_f64": ("gemm", [F64, W12[:4, :5].astype(np.float64)], {"activation": "relu"}, [("", "Gemm"), ("", "Relu")]),
    **{f"conv_{act}": ("fused_conv", [X4, W4, B4], {**CONV_ATTRS, "activation": act},
                       [("com.microsoft", "FusedConv")]) for act in ("relu", "sigmoid", "tanh")},
    "conv_gelu": ("fused_conv", [X4, W4, B4], {**CONV_ATTRS, "activation": "gelu"},
                  [("", "Conv"), ("com.microsoft", "Gelu")]),
    "conv_none": ("fused_conv", [X4, W4], {**CONV_ATTRS, "activation": "none"}, [("", "Conv"), ("", "Identity")]),
}


def _ort_plain(model: onnx.ModelProto, leaves: list) -> list:
    """Run with graph optimizations disabled: the contrib nodes must run as exported."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: np.asarray(a) for i, a in zip(sess.get_inputs(), leaves)})


@pytest.mark.parametrize("name", sorted(CONTRIB_CASES))
def test_contrib_target_lowers_fused_ops_to_contrib_nodes(name):
    kind, inputs, attrs, nodes = CONTRIB_CASES[name]
    g = single_op_graph(kind, inputs, **attrs)
    m = exporters.to_onnx(g, target=CONTRIB)
    assert [(n.domain, n.op_type) for n in m.graph.node] == nodes
    uses_contrib = any(d == "com.microsoft" for d, _ in nodes)
    assert ("com.microsoft", 1) in [(o.domain, o.version) for o in m.opset_import] or not uses_contrib
    assert_agree(_ort_plain(m, inputs)[0], ir.interpret(g, *inputs))


def test_contrib_table_is_what_the_installed_onnxruntime_does():
    from exporters import capabilities_contrib as C

    caps = C.load_contrib()
    if caps.version != ort.__version__:
        pytest.skip(f"the committed contrib table is for onnxruntime {caps.version}, {ort.__version__} is installed")
    assert C.probe_all()["ops"] == caps.contrib, "re-probe: python -m exporters.capabilities_contrib"
    # float64 FastGelu loads and runs, but only to ~1e-7: the probe's value check keeps it out
    assert not caps.has_contrib("com.microsoft.FastGelu", np.float64, 18)


def test_contrib_target_is_opt_in():
    # the default (and every other target) stays standard ONNX: no contrib domain anywhere
    kind, inputs, attrs, _ = CONTRIB_CASES["conv_relu"]
    g = single_op_graph(kind, inputs, **attrs)
    for target in ("onnxruntime-cpu", None):
        m = exporters.to_onnx(g, target=target)
        assert [n.op_type for n in m.graph.node] == ["Conv", "Relu"]
        assert [o.domain for o in m.opset_import] == [""]


def test_contrib_target_cnn_has_the_nodes_ort_extended_makes(tmp_path):
    # what ORT_ENABLE_EXTENDED makes of the unoptimized export is what we export optimized
    w1 = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    w2 = RNG.standard_normal((3, 4, 3, 3)).astype(np.float32)
    stats = dict(mean=F32[0, :4], var=POS32[0], weight=F32[1], bias=F32[2])

    def f(x):
        y = nn.relu(nn.batch_norm(nn.conv2d(x, w1, padding=1), **stats))
        return nn.global_avg_pool2d(np.tanh(nn.conv2d(y, w2, padding=1))).reshape(x.shape[0], -1)

    spec = tracer.TensorSpec(("n", 2, 4, 4), np.float32)
    g = tracer.trace(f, spec)
    m = exporters.to_onnx(ir.optimize(g), target=CONTRIB)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "ort_extended.onnx")
    ort.InferenceSession(exporters.to_onnx(g).SerializeToString(), so, providers=["CPUExecutionProvider"])
    theirs = onnx.load(so.optimized_model_filepath)
    ours = [(n.domain, n.op_type) for n in m.graph.node]
    assert ours == [(n.domain, n.op_type) for n in theirs.graph.node]
    assert ours == [("com.microsoft", "FusedConv")] * 2 + [("", "GlobalAveragePool"), ("", "Reshape")]
    x = np.concatenate([XS, XS * 0.5])
    assert_agree(_ort_plain(m, [x])[0], ir.interpret(g, x))


_TRANSPOSED_INT_MATMUL = """
import sys
import numpy as np
import exporters, onnxruntime as ort, tracer
w = np.array([[0.5, -0.25, 2.0]])  # products and sums exact in float64
x = np.array([[[6], [-2], [1]], [[6], [3], [3]]], np.int32)
m = exporters.to_onnx(tracer.trace(lambda a: np.transpose(a, (1, 0, 2)) @ w, x))
print(" ".join(n.op_type for n in m.graph.node), flush=True)
sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # ORT_ENABLE_ALL
y = sess.run(None, {"a": x})[0]
np.testing.assert_array_equal(y, np.transpose(x, (1, 0, 2)) @ w)
"""


def test_transposed_integers_into_matmul_export_cast_first():
    """Transpose -> Cast -> MatMul made onnxruntime 1.32 segfault while creating the session (its
    MatmulTransposeFusion); the exporter casts first. In a subprocess, so a crash is a failure."""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    r = subprocess.run([sys.executable, "-c", _TRANSPOSED_INT_MATMUL], env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stdout}{r.stderr[-2000:]}"
    assert r.stdout.split() == ["Cast", "Transpose", "MatMul"]
