"""ONNX export at the edges: dims that are 0 at run time (Reshape's 0 means "copy" unless
allowzero=1), the float64 rewrites of the hyperbolic functions and exp-linear activations at the
ends of the float64 range, and the Transpose -> Cast -> MatMul form that crashes onnxruntime 1.32
when the transposed tensor has other readers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import exporters
import ir
import tracer
from ir.graph import Graph, Value
from ir.types import TensorType
from runtime import pytree
from tests.helpers import assert_agree
from tracer import TensorSpec
from tracer import ops as nn

OPSETS = [13, 14, 18]


def _ort(m: onnx.ModelProto, args, optimize: bool = True) -> list:
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: np.asarray(a) for i, a in zip(sess.get_inputs(), args)})


def _check_runs(g: ir.Graph, runs, opset: int) -> onnx.ModelProto:
    """Export `g`; on every run onnxruntime gives ir.interpret's shapes and values, with its graph
    optimizations and without them (they rewrite some Reshapes, which hid a wrong shape; other
    ONNX consumers read the model as written)."""
    m = exporters.to_onnx(g, opset=opset)
    for args in runs:
        ref = pytree.flatten(ir.interpret(g, *args))[0]
        for optimize in (True, False):
            got = _ort(m, args, optimize)
            where = f"opset {opset}, inputs {[np.shape(a) for a in args]}, ORT optimizations {optimize}"
            assert [a.shape for a in got] == [np.shape(r) for r in ref], where
            for a, r in zip(got, ref):
                assert_agree(a, np.asarray(r))
    return m


# --- dims that are 0 ------------------------------------------------------------------------------

def _assign_into_empty(a):
    y = a[:, 0:0].copy()  # (2, 0)
    y[1] = 7.0
    return y


@pytest.mark.parametrize("opset", OPSETS)
def test_slice_update_of_a_zero_size_array_loads_and_runs(opset):
    x = np.arange(4.0).reshape(2, 2)
    m = _check_runs(tracer.trace(_assign_into_empty, x), [(x,)], opset)
    assert _ort(m, [x])[0].shape == (2, 0)


def _expand_and_stack(a):
    v = a[:, :, np.array([2, -4])] == 0.5
    w = np.isclose(a[:, :, np.array([2, -4])] * 1.0, a[:, :, np.array([2, -4])] * 1.000001)
    return np.expand_dims(v, -4), v, np.stack([w, w], -4)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("optimize", [False, True])
def test_symbolic_batch_of_zero_through_expand_dims_and_stack(opset, optimize):
    g = tracer.trace(_expand_and_stack, TensorSpec(("batch", 1, 4), np.int32))
    g = ir.optimize(g) if optimize else g
    _check_runs(g, [(np.ones((b, 1, 4), np.int32),) for b in (2, 0)], opset)


@pytest.mark.parametrize("opset", OPSETS)
def test_reshape_to_two_symbolic_dims_when_either_is_zero(opset):
    # (c, b*2) from (b, c, 2): neither dim is a "copy"; before opset 14 no allowzero
    g = tracer.trace(lambda a: a.reshape(a.shape[1], a.shape[0] * 2), TensorSpec(("b", "c", 2), np.float64))
    runs = [(np.arange(b * c * 2, dtype=np.float64).reshape(b, c, 2),) for b, c in ((2, 3), (0, 3), (2, 0), (0, 0))]
    _check_runs(g, runs, opset)


@pytest.mark.parametrize("opset", OPSETS)
def test_one_symbolic_dim_that_is_zero_among_static_dims(opset):
    # (3, b) from (b, 3): a plain Reshape to [3, 0] would copy the input's 3 for the 0
    g = tracer.trace(lambda a: a.reshape(3, a.shape[0]), TensorSpec(("b", 3), np.float64))
    _check_runs(g, [(np.arange(3.0 * b).reshape(b, 3),) for b in (2, 0)], opset)


@pytest.mark.parametrize("opset", OPSETS)
def test_updates_into_a_symbolic_dim_that_is_zero(opset):
    def fn(a, c):
        b = a.copy()
        b[:, 1] = 3.0
        d = c.copy()
        d[np.array([0])] = 5.0
        return b, d

    g = tracer.trace(fn, TensorSpec(("n", 3), np.float64), TensorSpec((2, "k"), np.float64))
    _check_runs(g, [(np.ones((n, 3)), np.ones((2, n))) for n in (2, 0)], opset)


@pytest.mark.parametrize("opset", OPSETS)
def test_repeat_over_a_symbolic_dim_that_is_zero(opset):
    # (6, n) from (3, 2, n): a plain Reshape to [6, 0] would copy the 2 for the 0
    g = tracer.trace(lambda a: np.repeat(a, 2, axis=0), TensorSpec((3, "n"), np.float64))
    _check_runs(g, [(np.arange(3.0 * n).reshape(3, n),) for n in (2, 0)], opset)


@pytest.mark.parametrize("opset", [13, 18])
def test_random_bits_with_a_dim_that_is_zero(opset):
    static = tracer.trace(lambda s: nn.random_bits((2, 0), s), np.array(3))
    _check_runs(static, [(np.array(3),)], opset)
    symbolic = tracer.trace(lambda a, s: nn.random_bits((2, a.shape[0]), s), TensorSpec(("n", 2), np.float64),
                            np.array(3))
    _check_runs(symbolic, [(np.ones((n, 2)), np.array(3)) for n in (3, 0)], opset)


def test_reshapes_to_shapes_computed_at_run_time_allow_zero():
    # the audit, as a rule on the exported graph: from opset 14 a Reshape whose shape is not a
    # constant reads it literally (allowzero=1); a constant shape's 0 is a deliberate "copy"
    g = tracer.trace(lambda a: (_expand_and_stack(a), a.reshape(a.shape[1] * 4, a.shape[0])),
                     TensorSpec(("batch", 1, 4), np.int32))
    m = exporters.to_onnx(g, opset=18)
    consts = {t.name for t in m.graph.initializer}
    runtime = [n for n in m.graph.node if n.op_type == "Reshape" and n.input[1] not in consts]
    assert runtime and all(onnx.helper.get_node_attr_value(n, "allowzero") == 1 for n in runtime)


# --- float64 rewrites for onnxruntime ----------------------------------------------------------

def _wide_range() -> np.ndarray:
    pos = np.concatenate([np.geomspace(5e-324, 1e308, 4001), np.linspace(0.0, 5.0, 2001),
                          1 - np.geomspace(1e-16, 0.5, 201), 1 + np.geomspace(2.2e-16, 1.0, 201),
                          [0.0, 1.0, 2.0, np.inf, np.nan, 709.5, 710.4, 1e154, 1e155, 2.0**28, 1.7976931348623157e308]])
    return np.concatenate([pos, -pos])


def _assert_close_everywhere(got: np.ndarray, ref: np.ndarray, x: np.ndarray) -> None:
    """Pointwise float64 agreement (rtol 1e-10; DESIGN.md's atol is relative to max|ref|, which
    would excuse everything near 0 here), the same NaNs and infinities, and signed zeros."""
    assert got.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"NaN at {x[np.isnan(got) != np.isnan(ref)]}")
    inf = np.isinf(ref)
    np.testing.assert_array_equal(got[inf], ref[inf])
    fin = np.isfinite(ref)
    bad = np.abs(got[fin] - ref[fin]) > 1e-10 * np.abs(ref[fin])
    assert not bad.any(), f"x={x[fin][bad][:5]}: got {got[fin][bad][:5]}, want {ref[fin][bad][:5]}"
    zero = ref == 0
    np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(ref[zero]))


@pytest.mark.parametrize("name", ["sinh", "cosh", "arcsinh", "arccosh", "arctanh"])
@pytest.mark.parametrize("opset", [13, 18])
def test_float64_hyperbolic_rewrites_agree_with_numpy_over_the_whole_range(name, opset):
    f = getattr(np, name)
    x = _wide_range()
    m = exporters.to_onnx(tracer.trace(lambda a: f(a), x), opset=opset)
    assert not {"Sinh", "Cosh", "Asinh", "Acosh", "Atanh"} & {n.op_type for n in m.graph.node}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = f(x)
    _assert_close_everywhere(_ort(m, [x])[0], ref, x)


def _unary_graph(kind: str, attrs: dict, x: np.ndarray) -> Graph:
    v = Value(TensorType(np.float64, x.shape), name="x")
    g = Graph([v], arg_names=["x"])
    g.outputs = [g.add_op(kind, [v], attrs).output]
    g.out_tree = pytree.LEAF
    return g


@pytest.mark.parametrize("kind, attrs", [("elu", {"alpha": 1.3}), ("celu", {"alpha": 0.7}),
                                         ("selu", {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805}),
                                         ("softplus", {})])
def test_float64_exp_linear_rewrites_keep_digits_near_zero_and_far_out(kind, attrs):
    # opset 13: onnxruntime has no float64 kernels for these there, so the rewrites run
    x = _wide_range()
    g = _unary_graph(kind, attrs, x)
    m = exporters.to_onnx(g, opset=13)
    assert kind.capitalize() not in {n.op_type for n in m.graph.node}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.asarray(ir.interpret(g, x))
    got = _ort(m, [x])[0]
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    bad = np.abs(got[fin] - ref[fin]) > 1e-10 * np.abs(ref[fin])
    assert not bad.any(), f"x={x[fin][bad][:5]}: got {got[fin][bad][:5]}, want {ref[fin][bad][:5]}"


# --- Transpose -> Cast -> MatMul with other readers of the transposed tensor ---------------------

_SHARED_TRANSPOSE = """
import sys
import numpy as np
import exporters, ir, onnxruntime as ort, tracer
w = np.array([[0.5, -0.25, 2.0]])  # products and sums exact in float64
x = np.array([[[6], [-2], [1]], [[6], [3], [3]]], np.int64)
variants = {
    "neg": (lambda a: (np.transpose(a, (1, 0, 2)) @ w, -np.transpose(a, (1, 0, 2))), x),
    "symbolic": (lambda a: (np.transpose(a, (1, 0, 2)) @ w, np.transpose(a, (1, 0, 2)) + 1),
                 tracer.TensorSpec(("batch", 3, 1), np.int64)),
}
fn, spec = variants[sys.argv[1]]
m = exporters.to_onnx(ir.optimize(tracer.trace(fn, spec)))
print(" ".join(n.op_type for n in m.graph.node), flush=True)
sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # ORT_ENABLE_ALL
for got, ref in zip(sess.run(None, {"a": x}), fn(x)):
    np.testing.assert_array_equal(got, ref)
print("ok", flush=True)
"""


@pytest.mark.parametrize("variant", ["neg", "symbolic"])
def test_transposed_integers_with_other_readers_into_matmul(variant):
    """In a subprocess: onnxruntime 1.32 segfaults creating the session for Transpose -> Cast ->
    MatMul, also when the transposed tensor is read elsewhere too (returncode -11)."""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    r = subprocess.run([sys.executable, "-c", _SHARED_TRANSPOSE, variant], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stdout}{r.stderr[-2000:]}"
    assert r.stdout.split()[-1] == "ok"


def test_shared_transpose_keeps_names_and_casts_first():
    w = np.array([[0.5, -0.25, 2.0]])
    g = ir.optimize(tracer.trace(lambda a: (np.transpose(a, (1, 0, 2)) @ w, -np.transpose(a, (1, 0, 2))),
                                 np.ones((2, 3, 1), np.int64)))
    assert [op.kind for op in g.ops].count("transpose") == 1  # one tensor, two readers
    names: dict = {}
    m = exporters.to_onnx(g, value_names=names)
    producer = {o: n for n in m.graph.node for o in n.output}
    defined = set(producer) | {i.name for i in m.graph.input} | {t.name for t in m.graph.initializer}
    assert set(names.values()) <= defined
    for n in m.graph.node:
        if n.op_type == "MatMul":
            for name in n.input:
                cast = producer.get(name)
                if cast is not None and cast.op_type == "Cast":
                    assert producer.get(cast.input[0]) is None or producer[cast.input[0]].op_type != "Transpose"
    # the negation still reads the transposed integers, under the name value_names gives it
    neg = next(n for n in m.graph.node if n.op_type == "Neg")
    transposed = next(v for v, name in names.items() if v.producer is not None and v.producer.kind == "transpose")
    assert neg.input[0] == names[transposed] and producer[neg.input[0]].op_type == "Transpose"
