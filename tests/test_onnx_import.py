"""ONNX import: legacy opset forms, shape arithmetic folding, unsupported ops, external data
safety, and models onnxruntime can run compared against `ir.interpret`.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import exporters
import ir
import tracer
from tests.helpers import assert_agree

RNG = np.random.default_rng(1)
F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, opset, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))


def _vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, shape)


def _ort(m, *args):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {i.name: a for i, a in zip(s.get_inputs(), args)})


def test_opset6_add_with_legacy_broadcast_axis():
    m = _model([helper.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=1)],
               [_vi("x", [2, 3, 4]), _vi("b", [3])], [_vi("y", [2, 3, 4])], 6)
    x, b = RNG.standard_normal((2, 3, 4)).astype(np.float32), RNG.standard_normal(3).astype(np.float32)
    assert_agree(ir.interpret(exporters.from_onnx(m), x, b), x + b[:, None])


def test_opset6_softmax_flattens_at_axis():
    m = _model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [_vi("x", [2, 3, 4])], [_vi("y", [2, 3, 4])], 6)
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    flat = x.reshape(2, 12)
    ref = (np.exp(flat) / np.exp(flat).sum(axis=1, keepdims=True)).reshape(2, 3, 4)
    assert_agree(ir.interpret(exporters.from_onnx(m), x), ref)


def test_opset6_batchnorm_ignores_is_test_and_consumed_inputs():
    c = 3
    inits = [numpy_helper.from_array(np.full(c, v, np.float32), n) for n, v in
             (("s", 2.0), ("bias", 1.0), ("mean", 0.5), ("var", 4.0))]
    node = helper.make_node("BatchNormalization", ["x", "s", "bias", "mean", "var"], ["y"], is_test=1,
                            epsilon=0.0, consumed_inputs=[0, 0, 0, 1, 1])
    m = _model([node], [_vi("x", [1, c, 2])], [_vi("y", [1, c, 2])], 6, inits)
    x = RNG.standard_normal((1, c, 2)).astype(np.float32)
    assert_agree(ir.interpret(exporters.from_onnx(m), x), (x - 0.5) / 2.0 * 2.0 + 1.0)


def test_reshape_split_slice_pad_attribute_and_input_forms_agree():
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    shape = numpy_helper.from_array(np.array([6, 4], np.int64), "shape")
    old = _model([helper.make_node("Reshape", ["x", "shape"], ["r"]),
                  helper.make_node("Slice", ["r"], ["s"], starts=[1], ends=[-1], axes=[0]),
                  helper.make_node("Split", ["s"], ["a", "b"], axis=1, split=[1, 3]),
                  helper.make_node("Pad", ["b"], ["p"], pads=[0, 1, 0, 1], mode="reflect")],
                 [_vi("x", [4, 6])], [_vi("a", [4, 1]), _vi("p", [4, 5])], 9, [shape])
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("shape", [6, 4]), ("st", [1]), ("en", [-1]), ("ax", [0]), ("sp", [1, 3]), ("pads", [0, 1, 0, 1]))]
    new = _model([helper.make_node("Reshape", ["x", "shape"], ["r"]),
                  helper.make_node("Slice", ["r", "st", "en", "ax"], ["s"]),
                  helper.make_node("Split", ["s", "sp"], ["a", "b"], axis=1),
                  helper.make_node("Pad", ["b", "pads"], ["p"], mode="reflect")],
                 [_vi("x", [4, 6])], [_vi("a", [4, 1]), _vi("p", [4, 5])], 13, consts)
    ref = _ort(new, x)
    for m in (old, new):
        got = ir.interpret(exporters.from_onnx(m), x)
        assert_agree(list(got), ref)


def test_shape_arithmetic_on_symbolic_batch_folds_to_dims():
    # the pattern of a PyTorch export: Shape -> Gather -> Unsqueeze -> Concat -> Reshape
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"]),
             helper.make_node("Mul", ["n", "two"], ["n2"]),
             helper.make_node("ConstantOfShape", ["n2_1"], ["z"],
                              value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("Unsqueeze", ["n2", "ax0"], ["n2_1"])]
    nodes = nodes[:6] + [nodes[7], nodes[6]]
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
             (("zero", 0), ("ax0", [0]), ("minus1", [-1]), ("two", 2))]
    m = _model(nodes, [_vi("x", ["batch", 3, 4])], [_vi("y", ["batch", 12]), _vi("z", None)], 13, inits)
    g = exporters.from_onnx(m)
    assert g.outputs[0].shape == ("batch", 12) and g.outputs[1].shape == ("batch*2",)
    assert not any(op.kind == "shape_dim" for op in g.ops)
    for b in (1, 5):
        x = RNG.standard_normal((b, 3, 4)).astype(np.float32)
        assert_agree(list(ir.interpret(g, x)), _ort(m, x))


def test_unsupported_ops_are_all_listed():
    m = _model([helper.make_node("Foo", ["x"], ["a"], name="first"),
                helper.make_node("Relu", ["a"], ["b"]),
                helper.make_node("Bar", ["b"], ["c"], name="second", domain="com.example")],
               [_vi("x", [2])], [_vi("c", [2])], 13)
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(exporters.UnsupportedOpError) as e:
        exporters.from_onnx(m)
    assert "Foo (nodes: first)" in str(e.value) and "com.example::Bar (nodes: second)" in str(e.value)


def test_imports_onnxruntime_models_and_agrees():
    # a TransformerEncoder-like block: LayerNormalization, Where, Erf, Equal, Cast, ReduceMean, Sqrt, Pow
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], axis=-1, epsilon=1e-5),
             helper.make_node("Div", ["ln", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Equal", ["x", "x"], ["eq"]), helper.make_node("Where", ["eq", "e", "x"], ["w"]),
             helper.make_node("Pow", ["w", "two"], ["p"]),
             helper.make_node("ReduceMean", ["p"], ["m"], axes=[-1], keepdims=1),
             helper.make_node("Sqrt", ["m"], ["s"]), helper.make_node("Cast", ["s"], ["c"], to=TensorProto.DOUBLE)]
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "g"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(np.array(np.sqrt(2), np.float32), "sqrt2"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    m = _model(nodes, [_vi("x", ["n", 4])], [_vi("c", ["n", 1], TensorProto.DOUBLE)], 17, inits)
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    # computed in float32, cast at the end: float32's tolerance applies
    assert_agree(ir.interpret(exporters.from_onnx(m), x), _ort(m, x)[0], dtype=np.float32)


def test_external_data_round_trip_and_escape_refused(tmp_path):
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    g = tracer.trace(lambda x: x @ w, tracer.TensorSpec(("b", 64), np.float32))
    path = tmp_path / "big.onnx"
    exporters.save(g, str(path), external_data=True)
    data = [f for f in os.listdir(tmp_path) if f.endswith(".data")]
    assert len(data) == 1 and os.path.getsize(path) < w.nbytes
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    assert_agree(ir.interpret(exporters.load(str(path)), x), x @ w)
    assert_agree(_ort(onnx.load(str(path)), x)[0], x @ w)  # onnxruntime reads it too
    m = onnx.load(str(path), load_external_data=False)
    for bad in ("../outside.data", "/etc/passwd", "link.data"):
        mm = onnx.ModelProto()
        mm.CopyFrom(m)
        for e in mm.graph.initializer[0].external_data:
            if e.key == "location":
                e.value = bad
        if bad == "link.data":
            outside = tmp_path.parent / "outside.data"
            outside.write_bytes(b"\0" * w.nbytes)
            os.symlink(outside, tmp_path / "link.data")
        p = tmp_path / "evil.onnx"
        p.write_bytes(mm.SerializeToString())
        with pytest.raises(exporters.ExportError, match="outside|relative path"):
            exporters.load(str(p))


def test_foreign_signature_uses_onnx_names():
    m = _model([helper.make_node("Relu", ["input.1"], ["out"])], [_vi("input.1", [2])], [_vi("out", [2])], 13)
    g = exporters.from_onnx(m)
    assert g.arg_names == ["arg0"] and len(g.inputs) == 1
    assert_agree(ir.interpret(g, np.array([-1.0, 2.0], np.float32)), np.array([0.0, 2.0], np.float32))


def test_newer_opsets_accept_only_unchanged_ops():
    relu = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2])], [_vi("y", [2])], 23)
    assert_agree(ir.interpret(exporters.from_onnx(relu), np.array([-1.0, 1.0], np.float32)),
                 np.array([0.0, 1.0], np.float32))
    # Reshape got a new definition in opset 23 (more types): refused, naming op and opset
    shape = numpy_helper.from_array(np.array([2], np.int64), "s")
    reshape = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="r")], [_vi("x", [2])], [_vi("y", [2])],
                     23, [shape])
    with pytest.raises(exporters.UnsupportedOpError, match=r"Reshape \(changed after opset 21\) \(nodes: r\)"):
        exporters.from_onnx(reshape)


def test_integer_div_truncates_and_mod_fmod_follows_the_dividend():
    a = np.array([-7, 7, -7, 7, 0], np.int64)
    b = np.array([2, -2, -2, 2, 3], np.int64)
    m = _model([helper.make_node("Div", ["a", "b"], ["q"]), helper.make_node("Mod", ["a", "b"], ["r"], fmod=1),
                helper.make_node("Mod", ["a", "b"], ["p"])],
               [_vi("a", [5], TensorProto.INT64), _vi("b", [5], TensorProto.INT64)],
               [_vi(n, [5], TensorProto.INT64) for n in ("q", "r", "p")], 13)
    got = ir.interpret(exporters.from_onnx(m), a, b)
    assert_agree(list(got), _ort(m, a, b))
    assert_agree(list(got), [np.trunc(a / b).astype(np.int64), np.fmod(a, b), np.mod(a, b)])


@pytest.mark.parametrize("opset", [6, 11, 13])
def test_clip_attribute_and_input_forms(opset):
    x = np.array([-3.0, 0.5, 4.0], np.float32)
    if opset < 11:
        node, inits = helper.make_node("Clip", ["x"], ["y"], min=-1.0, max=2.0), []
    else:
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
        inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", -1.0), ("hi", 2.0))]
    m = _model([node], [_vi("x", [3])], [_vi("y", [3])], opset, inits)
    assert_agree(ir.interpret(exporters.from_onnx(m), x), np.clip(x, -1.0, 2.0))


def test_symbolic_slice_bounds_survive_a_round_trip(tmp_path):
    """x[-1:] on a symbolic axis exports its start as Shape arithmetic; import folds it to `n-1`."""

    def f(x):
        return x[-1:] * 2 + x[:1]

    g = tracer.trace(f, tracer.TensorSpec(("n", 3), np.float64))
    path = tmp_path / "m.onnx"
    exporters.save(g, str(path))
    back = exporters.load(str(path))
    for n in (1, 5):
        x = np.random.default_rng(n).normal(size=(n, 3))
        assert_agree(ir.interpret(back, x), f(x))


def test_slice_clamps_as_onnx_does_not_as_python():
    """ONNX clamps a negative step's start to [0, dim-1] after counting it from the end once, so
    starts=-4 on 3 elements takes index 0 (Python's x[-4::-1] is empty); checked against
    onnxruntime for negative and positive steps, bounds past both ends."""
    x = np.arange(1.0, 4.0, dtype=np.float32)
    big = 2**63 - 1
    for start, end, step in [(-4, -big - 1, -1), (-4, 0, -1), (5, -big - 1, -1), (2, -5, -1), (-1, -4, -2),
                             (-4, 2, 1), (-big - 1, big, 2), (5, 9, 1), (1, 1, -1), (0, -1, -1)]:
        consts = [numpy_helper.from_array(np.array([v], np.int64), n)
                  for n, v in (("st", start), ("en", end), ("ax", 0), ("sp", step))]
        m = _model([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], [_vi("x", [3])],
                   [_vi("y", None)], 13, consts)
        (want,) = _ort(m, x)
        got = ir.interpret(exporters.from_onnx(m), x)
        assert got.shape == want.shape and np.array_equal(got, want), (start, end, step, got, want)
