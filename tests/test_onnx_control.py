"""ONNX export and import of the region ops: IR `if`/`loop` ⇄ ONNX `If`/`Loop`.

Every export passes the full ONNX checker, runs in onnxruntime and agrees with `ir.interpret`
(DESIGN.md's tolerance rule); the scripted functions run eagerly are the specification. Import
turns ONNX `If`/`Loop` back into IR regions, and export → import → interpret agrees too.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import exporters
import ir
import runtime
import tracer
from runtime import pytree
from tests.helpers import assert_agree
from tests.test_script import (  # the same scripted functions, here exported to ONNX
    collatz_steps,
    find_in_loop,
    first_over,
    halve_or_grow,
    nested_sum,
    sum_skipping_negatives,
)
from tracer import TensorSpec


# --- the functions under test --------------------------------------------------------------------
@tracer.script
def nested_branches(x):
    s = x.sum()
    if s > 0.0:
        if s > 10.0:
            y = x * 2.0
        else:
            y = x + 1.0
        tag = 1
    else:
        y = -x
        tag = 0
    return y, tag


@tracer.script
def grow(x, n):
    y = x
    for _ in range(n):
        y = np.concatenate([y, np.ones_like(y) * 2.0])  # the body needs y's symbolic length at run time
    return y


@tracer.script
def grow_rows(x, n):
    y = x
    for _ in range(n):
        y = np.concatenate([y, y[:1] + 1.0], axis=0)
    return y.sum(axis=1), y


@tracer.script
def early_return(x):
    if x.sum() < 0:
        return x * 0.0
    return x * 2.0 + 1.0


@tracer.script
def grow_from_symbolic(x, n):
    y = x
    for _ in range(n):  # the body needs both the outer symbol m and the carried value's fresh one
        y = np.concatenate([y, np.zeros_like(x) + y.sum()])
    return y.reshape(-1, 1) * 2.0


@tracer.script
def concat_or_keep(x):
    if x.sum() > 0:
        y = np.concatenate([x, x * 3.0])
    else:
        y = x
    return y


@tracer.script
def rnn(x, w, h0):
    h = h0
    for t in range(x.shape[0]):
        h = np.tanh(h @ w + x[t])
    return h


# --- helpers ---------------------------------------------------------------------------------------
def ort_run(model: onnx.ModelProto, *args) -> list:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    leaves = pytree.flatten(args)[0]
    return sess.run(None, {i.name: np.asarray(a) for i, a in zip(sess.get_inputs(), leaves)})


def check(g: ir.Graph, cases, opset: int = 18) -> onnx.ModelProto:
    """Export `g`, check it, and for each argument tuple compare onnxruntime, the eager function
    (when given as `(args, expected)`) and export → import → interpret against `ir.interpret`."""
    m = exporters.to_onnx(g, opset=opset)
    onnx.checker.check_model(m, full_check=True)
    assert {"If", "Loop"} & {n.op_type for n in m.graph.node}
    back = exporters.from_onnx(m)
    ir.verify(back)
    for args in cases:
        ref = ir.interpret(g, *args)
        ref_leaves = pytree.flatten(ref)[0]
        got = ort_run(m, *args)
        assert len(got) == len(ref_leaves)
        for a, r in zip(got, ref_leaves):
            assert_agree(np.asarray(a), np.asarray(r))
        assert_agree(ir.interpret(back, *args), ref)
    return m


def op_types(graph: onnx.GraphProto) -> list[str]:
    """Node types of `graph` and its subgraphs, outer first."""
    out = []
    for n in graph.node:
        out.append(n.op_type)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out.extend(op_types(a.g))
    return out


# --- export: If --------------------------------------------------------------------------------------
@pytest.mark.parametrize("x", [np.array([20.0, 1.0]), np.array([1.0, 2.0]), np.array([-1.0, -2.0])])
def test_nested_if_takes_every_branch(x):
    g = tracer.trace(nested_branches, TensorSpec((2,), np.float64))
    m = check(g, [(x,)])
    assert op_types(m.graph).count("If") == 2
    y, tag = nested_branches(x)
    assert_agree(ort_run(m, x), [y, np.asarray(tag, np.int64)])


def test_branches_of_different_lengths_give_a_symbolic_output():
    g = tracer.trace(concat_or_keep, np.zeros(3))
    m = check(g, [(np.ones(3),), (-np.ones(3),)])
    (dim,) = m.graph.output[0].type.tensor_type.shape.dim
    assert dim.dim_param == g.outputs[0].shape[0]
    for x in (np.ones(3), -np.ones(3)):
        assert_agree(ort_run(m, x)[0], concat_or_keep(x))


# --- export: Loop ------------------------------------------------------------------------------------
def test_for_loop_over_a_traced_trip_count_including_zero_trips():
    x = np.array([1.0, -3.0], np.float32)
    g = tracer.trace(halve_or_grow, x, np.int64(3))
    m = check(g, [(x, np.int64(n)) for n in (0, 1, 3, 7)])
    assert op_types(m.graph).count("Loop") == 1 and "If" in op_types(m.graph)
    for n in (0, 1, 3, 7):
        assert_agree(ort_run(m, x, np.int64(n))[0], halve_or_grow(x, n))


def test_while_loop_with_a_data_dependent_trip_count():
    g = tracer.trace(collatz_steps, np.int64(5))
    m = check(g, [(np.int64(n),) for n in (1, 6, 7, 27)])
    for n in (1, 6, 7, 27):
        assert ort_run(m, np.int64(n))[0] == collatz_steps(n)


@pytest.mark.parametrize("limit", [-1.0, 2.5, 6.0, 100.0])
def test_break(limit):
    x = np.array([1.0, 3.0, 5.0, 7.0])
    g = tracer.trace(first_over, TensorSpec(("n",), np.float64), 0.0)
    m = check(g, [(x, limit), (x[:1], limit), (x[:0], limit)])
    assert ort_run(m, x, np.float64(limit))[0] == first_over(x, limit)


def test_continue_and_zero_trips_over_an_empty_input():
    g = tracer.trace(sum_skipping_negatives, TensorSpec(("n",), np.float32))
    xs = [np.array([1.0, -2.0, 3.0], np.float32), np.zeros(0, np.float32), -np.ones(4, np.float32)]
    m = check(g, [(x,) for x in xs])
    for x in xs:
        assert_agree(ort_run(m, x)[0], sum_skipping_negatives(x))


def test_nested_loops_read_the_outer_iteration_by_name():
    g = tracer.trace(nested_sum, np.int64(1), np.int64(1))
    cases = [(np.int64(a), np.int64(b)) for a, b in ((0, 3), (3, 0), (2, 3), (4, 1))]
    m = check(g, cases)
    assert op_types(m.graph).count("Loop") == 2
    for a, b in cases:
        assert_agree(ort_run(m, a, b)[0], np.asarray(nested_sum(int(a), int(b)), np.float64))


def test_carried_values_that_grow_get_fresh_symbolic_dims():
    x = np.array([1.0, 2.0], np.float32)
    g = tracer.trace(grow, x, np.int64(2))
    m = check(g, [(x, np.int64(n)) for n in (0, 1, 4)])
    (dim,) = m.graph.output[0].type.tensor_type.shape.dim
    assert dim.dim_param and dim.dim_param == g.outputs[0].shape[0]
    assert_agree(ort_run(m, x, np.int64(3))[0], grow(x, 3))
    rows = np.arange(6.0).reshape(3, 2)
    g2 = tracer.trace(grow_rows, TensorSpec(("r", 2), np.float64), np.int64(1))
    check(g2, [(rows, np.int64(n)) for n in (0, 2)] + [(rows[:1], np.int64(3))])
    assert_agree(ort_run(check(g2, []), rows, np.int64(2)), list(grow_rows(rows, 2)))


def test_early_return_and_return_inside_a_loop():
    for x in (np.array([1.0, 2.0]), np.array([-5.0, 2.0])):
        g = tracer.trace(early_return, TensorSpec((2,), np.float64))
        assert_agree(ort_run(check(g, [(x,)]), x)[0], early_return(x))
    x = np.array([4.0, 2.0, 0.0])
    g = tracer.trace(find_in_loop, TensorSpec(("n",), np.float64), 1.0)
    m = check(g, [(x, t) for t in (0.0, 2.0, 9.0)] + [(x[:0], 1.0)])
    for t in (0.0, 2.0, 9.0):
        assert ort_run(m, x, np.float64(t))[0] == find_in_loop(x, t)


def test_body_computes_outer_and_fresh_symbolic_dims():
    g = tracer.trace(grow_from_symbolic, TensorSpec(("m",), np.float32), np.int64(1))
    x = np.array([1.0, -2.0, 0.5], np.float32)
    m = check(g, [(x, np.int64(k)) for k in (0, 2)] + [(x[:1], np.int64(3))])
    assert_agree(ort_run(m, x, np.int64(2))[0], grow_from_symbolic(x, 2))


def test_every_opset_13_to_21():
    x = np.array([1.0, -3.0], np.float32)
    g = tracer.trace(halve_or_grow, x, np.int64(3))
    for opset in range(13, 22):
        m = check(g, [(x, np.int64(4))], opset=opset)
        assert m.opset_import[0].version == opset


# --- the RNN over a symbolic sequence length ---------------------------------------------------------
def test_rnn_exported_once_runs_at_every_length_in_onnxruntime_and_our_runtime(tmp_path):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 4)) * 0.5).astype(np.float32)
    h0 = np.zeros(4, np.float32)
    g = tracer.trace(rnn, TensorSpec(("seq", 4), np.float32), w, h0)
    onnx_path, castml_path = str(tmp_path / "m.onnx"), str(tmp_path / "m.castml")
    exporters.save(g, onnx_path)
    exporters.save(g, castml_path)
    model = onnx.load(onnx_path)
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "seq"
    ort_sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ours = runtime.load(castml_path)
    imported = exporters.load(onnx_path)  # ONNX Loop -> IR loop, saved and run by our runtime too
    exporters.save(imported, str(tmp_path / "back.castml"))
    ours_from_onnx = runtime.load(str(tmp_path / "back.castml"))
    for n in (1, 5, 50):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        ref = rnn(x, w, h0)  # eager NumPy: the specification
        assert_agree(ir.interpret(g, x, w, h0), ref)
        assert_agree(ort_sess.run(None, {"x": x, "w": w, "h0": h0})[0], ref)
        assert_agree(ours.run(x, w, h0), ref)
        assert_agree(ours_from_onnx.run(x, w, h0), ref)


# --- determinism and round trips --------------------------------------------------------------------
@tracer.script
def append_input(x, n):
    y = x
    for _ in range(n):
        y = np.concatenate([y, x])
    return y


def test_same_graph_same_bytes():
    x = np.array([1.0, 2.0], np.float32)
    for g in (tracer.trace(halve_or_grow, x, np.int64(3)), tracer.trace(collatz_steps, np.int64(5)),
              tracer.trace(grow, x, np.int64(2)), tracer.trace(nested_sum, np.int64(1), np.int64(1))):
        first = exporters.to_onnx(g).SerializeToString()
        assert exporters.to_onnx(g).SerializeToString() == first
        assert exporters.to_onnx(g.copy()).SerializeToString() == first


def test_bytes_do_not_depend_on_the_hash_seed():
    script = ("import sys, numpy as np, tracer, exporters\n"
              "from tests.test_onnx_control import halve_or_grow, grow\n"
              "x = np.ones(2, np.float32)\n"
              "for f in (halve_or_grow, grow):\n"
              "    sys.stdout.buffer.write(exporters.to_onnx(tracer.trace(f, x, np.int64(2))).SerializeToString())\n")
    outs = []
    for seed in ("0", "7"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=os.getcwd())
        outs.append(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True).stdout)
    assert len(outs[0]) > 200 and outs[0] == outs[1]


def test_export_import_export_is_byte_identical():
    # names of subgraph inputs/outputs, and the symbols of growing loop values, survive import
    x = np.array([1.0, 2.0], np.float32)
    for g in (tracer.trace(halve_or_grow, x, np.int64(3)), tracer.trace(append_input, x, np.int64(2)),
              tracer.trace(nested_sum, np.int64(1), np.int64(1)), tracer.trace(nested_branches, np.zeros(2))):
        first = exporters.to_onnx(g).SerializeToString()
        again = exporters.to_onnx(exporters.from_onnx(onnx.load_from_string(first))).SerializeToString()
        assert again == first


def test_import_gives_ir_regions():
    g = tracer.trace(halve_or_grow, np.zeros(2, np.float32), np.int64(3))
    back = exporters.from_onnx(exporters.to_onnx(g))
    kinds = [op.kind for op in back.walk()]
    assert kinds.count("loop") == 1 and kinds.count("if") == 1
    h = ir.parse(back.to_text())
    assert h == back


# --- import of ONNX models written by hand -------------------------------------------------------------
def _model(nodes, inputs, outputs, opset=18):
    graph = helper.make_graph(nodes, "m", inputs, outputs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _f(name, shape=None):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_import_loop_without_trip_count_runs_until_cond_is_false():
    # while s < 100: s = s * 2 (M absent), and a for loop with cond absent (onnxruntime still stops
    # when the body's cond turns false)
    one = helper.make_tensor("hundred", TensorProto.FLOAT, [], [100.0])
    body = helper.make_graph(
        [helper.make_node("Constant", [], ["two"], value=helper.make_tensor("t", TensorProto.FLOAT, [], [2.0])),
         helper.make_node("Mul", ["s_in", "two"], ["s_out"]),
         helper.make_node("Less", ["s_out", "hundred"], ["c_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, []), _f("s_in", [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), _f("s_out", [])], initializer=[one])
    nodes = [helper.make_node("Less", ["s0", "s0_limit"], ["c0"]),
             helper.make_node("Loop", ["", "c0", "s0"], ["s"], body=body),
             helper.make_node("Loop", ["n", "", "s0"], ["t"], body=body)]
    m = _model(nodes, [_f("s0", []), _f("s0_limit", []), helper.make_tensor_value_info("n", TensorProto.INT64, [])],
               [_f("s", []), _f("t", [])])
    g = exporters.from_onnx(m)
    ir.verify(g)
    for s0, n in ((3.0, 0), (3.0, 7), (200.0, 2)):
        args = (np.float32(s0), np.float32(100.0), np.int64(n))
        ref = ort_run(m, *args)
        assert_agree(list(ir.interpret(g, *args)), [np.asarray(r) for r in ref])


def test_import_if_with_branches_of_different_shapes_and_outer_names():
    then = helper.make_graph([helper.make_node("Concat", ["x", "x"], ["y_then"], axis=0)], "then", [],
                             [_f("y_then", ["a"])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["y_else"])], "else", [], [_f("y_else", ["b"])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    m = _model(nodes, [_f("x", ["n"]), _f("zero", [])], [_f("y", ["m"])])
    g = exporters.from_onnx(m)
    ir.verify(g)
    assert isinstance(g.outputs[0].shape[0], str)
    for x in (np.ones(3, np.float32), -np.ones(2, np.float32)):
        assert_agree(ir.interpret(g, x, np.float32(0.0)), ort_run(m, x, np.float32(0.0))[0])


def test_import_refuses_scan_outputs():
    body = helper.make_graph([helper.make_node("Identity", ["c_in"], ["c_out"]),
                              helper.make_node("Identity", ["s_in"], ["s_out"]),
                              helper.make_node("Identity", ["s_in"], ["scan"])],
                             "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                      helper.make_tensor_value_info("c_in", TensorProto.BOOL, []), _f("s_in", [])],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), _f("s_out", []),
                              _f("scan", [])])
    m = _model([helper.make_node("Loop", ["n", "", "s0"], ["s", "scans"], body=body)],
               [helper.make_tensor_value_info("n", TensorProto.INT64, []), _f("s0", [])],
               [_f("s", []), _f("scans", ["k"])])
    with pytest.raises(exporters.UnsupportedOpError, match="scan outputs"):
        exporters.from_onnx(m)


def test_unsupported_op_inside_a_subgraph_is_listed():
    then = helper.make_graph([helper.make_node("MelWeightMatrix", ["x"], ["y_then"])], "then", [], [_f("y_then", [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["y_else"])], "else", [], [_f("y_else", [2])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "m",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []), _f("x", [2])], [_f("y", [2])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(exporters.UnsupportedOpError, match="MelWeightMatrix"):
        exporters.from_onnx(m)
