"""The IR contract: text round trip, verifier, interpreter, symbolic dims, signatures, errors."""

from __future__ import annotations

import numpy as np
import pytest

import ir
import tracer
from ir.graph import Graph, Op, Value
from ir.types import TensorType
from runtime import RuntimeInputError
from tests.helpers import assert_agree

F32 = np.float32


def mlp(x, w, b):
    return np.maximum(x @ w + b, 0.0)


def test_seed_example_forward():
    g = tracer.trace(lambda x: x * x, 2.0)
    assert ir.parse(g.to_text()) == g
    assert float(ir.interpret(g, 2.0)) == 4.0
    assert ir.interpret(g, 2.0).dtype == np.float64


def test_contract_example_prints_and_round_trips():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(4, 3)).astype(F32), rng.normal(size=(3, 5)).astype(F32), rng.normal(size=5).astype(F32)
    g = tracer.trace(mlp, tracer.TensorSpec(("batch", 3), F32), w, b)
    text = str(g)
    assert "%0: f32[batch,5] = matmul(%x, %w)" in text
    assert "# test_ir.py:" in text  # ops remember the user's line
    assert ir.parse(g.to_text()) == g
    assert str(ir.parse(str(g))) == str(g)
    ir.verify(g)
    assert [v.name for v in g.inputs] == ["x", "w", "b"]
    assert g.inputs[0].type == TensorType(F32, ("batch", 3))
    assert [op.kind for op in g.ops] == ["matmul", "add", "constant", "maximum"]
    assert_agree(ir.interpret(g, x, w, b), mlp(x, w, b))
    assert_agree(ir.interpret(g, x=x, w=w, b=b), mlp(x, w, b))


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_symbolic_batch(batch):
    rng = np.random.default_rng(batch)
    w = rng.normal(size=(12, 5)).astype(F32)

    def f(x):
        h = x.reshape(x.shape[0], -1) @ w
        return h - h.mean(axis=0), x.shape[0] * 2

    g = tracer.trace(f, tracer.TensorSpec(("batch", 3, 4), F32))
    assert "reshape[shape=(batch, 12)]" in str(g)
    x = rng.normal(size=(batch, 3, 4)).astype(F32)
    got = ir.interpret(g, x)
    ref = f(x)
    assert_agree(got[0], ref[0])
    assert int(got[1]) == 2 * batch  # shape arithmetic recorded, never folded to the example


def test_symbolic_shape_functions():
    def f(x):
        y = np.expand_dims(x, 1).squeeze(1)
        z = np.concatenate([y, y[:, :1]], axis=1)
        return np.stack([z, z]).transpose(1, 0, 2)[:, :, ::-1], np.broadcast_to(x[:1], (x.shape[0], 3))

    g = tracer.trace(f, tracer.TensorSpec(("batch", 3)))
    assert str(g.outputs[0].type) == "f32[batch,2,4]"  # TensorSpec defaults to float32
    for n in (1, 6):
        x = np.random.default_rng(n).normal(size=(n, 3)).astype(F32)
        assert_agree(ir.interpret(g, x), f(x))


def test_large_constants_are_elided_in_str_but_not_in_text():
    w = np.arange(512 * 4, dtype=F32).reshape(512, 4)
    g = tracer.trace(lambda x: x @ w, np.ones((2, 512), F32))
    assert "tensor<f32[512,4] #" in str(g)
    assert "constants {" in g.to_text()
    g2 = ir.parse(g.to_text())
    assert g2 == g
    np.testing.assert_array_equal(g2.ops[0].attrs["value"], w)
    with pytest.raises(ir.ParseError, match="elides large constants"):
        ir.parse(str(g))


def test_special_float_constants_round_trip():
    c = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-300, 3.4e38], dtype=np.float64)
    g = tracer.trace(lambda x: x + c, np.zeros(6))
    g2 = ir.parse(g.to_text())
    assert g2 == g
    assert g2.ops[0].attrs["value"].tobytes() == c.tobytes()


def test_pytree_arguments_and_results():
    params = {"fc1": {"w": np.ones((3, 2), F32), "b": np.zeros(2, F32)}, "scale": 2.0}

    def f(params, xs):
        h = xs[0] @ params["fc1"]["w"] + params["fc1"]["b"]
        return {"out": h * params["scale"], "aux": [xs[1].sum()]}

    xs = (np.ones((4, 3), F32), np.arange(3.0))
    g = tracer.trace(f, params, xs)
    names = [v.name for v in g.inputs]
    assert names == ["params.fc1.w", "params.fc1.b", "params.scale", "xs.0", "xs.1"]
    assert ir.parse(g.to_text()) == g
    assert_agree(ir.interpret(g, params, xs), f(params, xs))


def test_static_argnums():
    g = tracer.trace(lambda x, n: x.reshape(n, -1), np.ones((4, 6)), 2, static_argnums=1)
    assert g.arg_names == ["x"]
    assert ir.interpret(g, np.ones((4, 6))).shape == (2, 12)


def test_python_scalar_argument_is_weak():
    g = tracer.trace(lambda x, s: x * s, np.ones(3, F32), 2.5)
    assert g.outputs[0].type.dtype == F32
    assert ir.interpret(g, np.ones(3, F32), 2.5).dtype == F32


def test_wrong_input_shape_is_a_clear_error():
    g = tracer.trace(mlp, tracer.TensorSpec(("batch", 3), F32), np.ones((3, 2), F32), np.zeros(2, F32))
    with pytest.raises(RuntimeInputError, match="input 'x'"):
        ir.interpret(g, np.ones((4, 5), F32), np.ones((3, 2), F32), np.zeros(2, F32))
    with pytest.raises(RuntimeInputError, match="dtype"):
        ir.interpret(g, np.ones((4, 3), np.int64), np.ones((3, 2), F32), np.zeros(2, F32))
    with pytest.raises(RuntimeInputError, match="expected 3 arguments"):
        ir.interpret(g, np.ones((4, 3), F32))


def _graph_x():
    return Graph.from_inputs([("x", TensorType(F32, (3,)))])


def test_verifier_rejects_use_before_def():
    g = _graph_x()
    a = Op("exp", g.inputs)
    b = Op("neg", [a.output])
    g.ops = [b, a]
    g.outputs = [b.output]
    with pytest.raises(ir.VerifyError, match="used before it is defined"):
        ir.verify(g)


def test_verifier_rejects_type_mismatch():
    g = _graph_x()
    op = g.add_op("exp", g.inputs)
    op.outputs[0].type = TensorType(np.float64, (3,))
    g.outputs = [op.output]
    with pytest.raises(ir.VerifyError, match="typed f64\\[3\\] but the rule gives f32\\[3\\]"):
        ir.verify(g)


def test_verifier_rejects_wrong_arity():
    g = _graph_x()
    op = g.add_op("add", [g.inputs[0], g.inputs[0]])
    op.inputs = (g.inputs[0],)
    g.outputs = [op.output]
    with pytest.raises(ir.VerifyError, match="expected 2 inputs, got 1"):
        ir.verify(g)


def test_verifier_rejects_duplicate_definition():
    g = _graph_x()
    op = g.add_op("exp", g.inputs)
    g.ops.append(op)
    g.outputs = [op.output]
    with pytest.raises(ir.VerifyError, match="defined twice"):
        ir.verify(g)


def test_verifier_rejects_bad_attribute():
    g = _graph_x()
    op = g.add_op("reduce_sum", g.inputs, {"axes": (0,), "keepdims": False})
    op.attrs["axes"] = (5,)
    g.outputs = [op.output]
    with pytest.raises(ir.VerifyError, match="reduce_sum"):
        ir.verify(g)


def test_type_rule_errors_name_the_op():
    g = _graph_x()
    y = Value(TensorType(np.float64, (3,)), "y")
    with pytest.raises(ir.TypeRuleError, match="add.*one dtype"):
        Op("add", [g.inputs[0], y])


def test_parse_errors_name_line_and_column():
    with pytest.raises(ir.ParseError, match="line 2"):
        ir.parse("graph(%x: f32[3]) {\n  %0: f32[3] = exp(%y)\n  return %0\n}\n")
    with pytest.raises(ir.ParseError, match="unknown dtype"):
        ir.parse("graph(%x: q32[3]) {\n  return %x\n}\n")


def test_kernel_failures_name_the_op_and_line():
    idx = np.array([5])
    g = tracer.trace(lambda x: np.take(x, idx), np.ones(3))
    from runtime.errors import KernelError

    with pytest.raises(KernelError, match=r"gather\[axis=0\].*test_ir.py:\d+"):
        ir.interpret(g, np.ones(3))


def test_boolean_mask_gets_a_fresh_symbol():
    g = tracer.trace(lambda x: x[x > 0].sum(), np.array([1.0, -1.0, 2.0]))
    assert "_n0" in str(g)
    assert float(ir.interpret(g, np.array([3.0, -2.0, 4.0]))) == 7.0
