"""Generate the capability table of the installed onnxruntime (CPU) by measuring it.

Why probe instead of writing a list: which (op, dtype) pairs onnxruntime has kernels for changes
between releases, and a hand-written list drifts silently. For every ONNX op the lowerings emit
and every dtype castml knows, this script builds a one-node model at each opset 13..21, checks it
with ONNX's strict type inference (ONNX itself rejects e.g. bool Add) and creates and runs it once in
onnxruntime. The result is written to `exporters/capabilities/onnxruntime-<version>.json`
(committed), which `exporters.capabilities` reads.

Run: `PYTHONPATH=. python -m exporters.probe_capabilities` (about a minute).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSETS = tuple(range(13, 22))
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
          "uint32", "uint64", "bool")

# Each probe: (dtype) -> (inputs as arrays (None: skip input), attrs, min opset). Input 0's dtype is
# the probed one unless the probe says otherwise. Arrays are small and valid for the op.
Probe = Callable[[np.dtype], tuple[list, dict]]


def _x(dt, shape=(2, 3)):
    n = int(np.prod(shape))
    if dt == np.bool_:
        return (np.arange(n) % 2 == 0).reshape(shape)
    return (np.arange(n) % 5 + 1).astype(dt).reshape(shape)


def _i64(*v):
    return np.array(v, np.int64)


UNARY = ["Neg", "Abs", "Sign", "Exp", "Log", "Sqrt", "Reciprocal", "Sin", "Cos", "Tan", "Asin", "Acos",
         "Atan", "Sinh", "Cosh", "Tanh", "Asinh", "Acosh", "Atanh", "Floor", "Ceil", "Round", "Not",
         "BitwiseNot", "Erf", "Sigmoid", "Relu", "Softplus", "Softsign", "HardSwish", "Selu", "Elu",
         "Celu", "LeakyRelu", "HardSigmoid", "ThresholdedRelu", "IsNaN", "IsInf", "Identity", "NonZero",
         "Gelu"]
BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "And", "Or", "Xor", "BitwiseAnd", "BitwiseOr",
          "BitwiseXor", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "MatMul", "PRelu",
          "BitShift", "Sum"]

PROBES: dict[str, Probe] = {name: (lambda dt: ([_x(dt)], {})) for name in UNARY}
PROBES.update({name: (lambda dt: ([_x(dt), _x(dt)], {})) for name in BINARY})
PROBES["PRelu"] = lambda dt: ([_x(dt), _x(dt, (3,))], {})
PROBES["MatMul"] = lambda dt: ([_x(dt), _x(dt, (3, 2))], {})
PROBES["BitShift"] = lambda dt: ([_x(dt), _x(dt)], {"direction": "LEFT"})
PROBES["Mod"] = lambda dt: ([_x(dt), _x(dt)], {})
PROBES["Mod.fmod"] = lambda dt: ([_x(dt), _x(dt)], {"fmod": 1})
PROBES.update({
    "Where": lambda dt: ([_x(np.bool_), _x(dt), _x(dt)], {}),
    "Cast": lambda dt: ([_x(dt)], {"to": TensorProto.FLOAT}),
    "Cast.to": lambda dt: ([_x(np.float32)], {"to": helper.np_dtype_to_tensor_dtype(dt)}),
    "Einsum": lambda dt: ([_x(dt), _x(dt, (3, 2))], {"equation": "ij,jk->ik"}),
    "Conv": lambda dt: ([_x(dt, (1, 1, 3, 3)), _x(dt, (1, 1, 2, 2))], {}),
    "ConvTranspose": lambda dt: ([_x(dt, (1, 1, 3, 3)), _x(dt, (1, 1, 2, 2))], {}),
    "MaxPool": lambda dt: ([_x(dt, (1, 1, 3, 3))], {"kernel_shape": [2, 2]}),
    "AveragePool": lambda dt: ([_x(dt, (1, 1, 3, 3))], {"kernel_shape": [2, 2]}),
    "GlobalAveragePool": lambda dt: ([_x(dt, (1, 1, 3, 3))], {}),
    "GlobalMaxPool": lambda dt: ([_x(dt, (1, 1, 3, 3))], {}),
    "Softmax": lambda dt: ([_x(dt)], {"axis": 1}),
    "LogSoftmax": lambda dt: ([_x(dt)], {"axis": 1}),
    "LayerNormalization": lambda dt: ([_x(dt), _x(dt, (3,))], {"axis": 1}),
    "BatchNormalization": lambda dt: ([_x(dt, (1, 2, 2))] + [_x(dt, (2,))] * 4, {}),
    "InstanceNormalization": lambda dt: ([_x(dt, (1, 2, 2)), _x(dt, (2,)), _x(dt, (2,))], {}),
    "LRN": lambda dt: ([_x(dt, (1, 2, 2, 2))], {"size": 3}),
    "CumSum": lambda dt: ([_x(dt), _i64(1)], {}),
    "ArgMax": lambda dt: ([_x(dt)], {"axis": 1}),
    "ArgMin": lambda dt: ([_x(dt)], {"axis": 1}),
    "Gather": lambda dt: ([_x(dt), _i64(0, 1)], {"axis": 1}),
    "GatherND": lambda dt: ([_x(dt), _i64(0, 1).reshape(1, 2)], {}),
    "ScatterElements": lambda dt: ([_x(dt, (4,)), _i64(1, 2), _x(dt, (2,))], {}),
    "Expand": lambda dt: ([_x(dt, (1, 3)), _i64(2, 3)], {}),
    "Reshape": lambda dt: ([_x(dt), _i64(3, 2)], {}),
    "Transpose": lambda dt: ([_x(dt)], {"perm": [1, 0]}),
    "Concat": lambda dt: ([_x(dt), _x(dt)], {"axis": 0}),
    "Split": lambda dt: ([_x(dt), _i64(1, 2)], {"axis": 1}),
    "Slice": lambda dt: ([_x(dt), _i64(0), _i64(2), _i64(1), _i64(1)], {}),
    "Tile": lambda dt: ([_x(dt), _i64(2, 1)], {}),
    "Squeeze": lambda dt: ([_x(dt, (1, 3)), _i64(0)], {}),
    "Unsqueeze": lambda dt: ([_x(dt), _i64(0)], {}),
    "Shape": lambda dt: ([_x(dt)], {}),
    "Range": lambda dt: ([np.array(0, dt), np.array(3, dt), np.array(1, dt)], {}),
    "ConstantOfShape": lambda dt: ([_i64(2, 3)], {"value": numpy_helper.from_array(np.ones(1, dt))}),
    "OneHot": lambda dt: ([_x(dt), _i64(6), np.array([0, 1], np.float32)], {}),
    "DepthToSpace": lambda dt: ([_x(dt, (1, 4, 1, 1))], {"blocksize": 2}),
    "SpaceToDepth": lambda dt: ([_x(dt, (1, 1, 2, 2))], {"blocksize": 2}),
})
for _red in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"):
    PROBES[_red] = lambda dt: ([_x(dt), _i64(1)], {"keepdims": 0})
for _mode in ("constant", "reflect", "edge", "wrap"):
    PROBES[f"Pad.{_mode}"] = (lambda m: lambda dt: ([_x(dt), _i64(1, 1, 1, 1)], {"mode": m}))(_mode)

# ops whose axes/pads/etc. moved from attributes to inputs at some opset: (op, first opset with inputs)
INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18, "ReduceProd": 18,
               "Split": 13, "Squeeze": 13, "Unsqueeze": 13}
ATTR_NAME = {"Split": "split", "Squeeze": "axes", "Unsqueeze": "axes"}


def _model(op_key: str, dt: np.dtype, opset: int) -> onnx.ModelProto:
    op = op_key.split(".")[0]
    arrays, attrs = PROBES[op_key](dt)
    attrs = dict(attrs)
    if op in INPUT_SINCE and opset < INPUT_SINCE[op] and len(arrays) > 1:
        attrs[ATTR_NAME.get(op, "axes")] = [int(v) for v in arrays[1]]
        arrays = arrays[:1]
    names = [f"in{i}" for i in range(len(arrays))]
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in zip(names, arrays)]
    n_out = 2 if op == "Split" else 1
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    graph = helper.make_graph([node], "probe", inputs, [])
    ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    # output types come from ONNX's own inference (it fails for type combinations ONNX forbids)
    inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    by_name = {vi.name: vi for vi in inferred.graph.value_info}
    m.graph.output.extend(
        helper.make_tensor_value_info(o, by_name[o].type.tensor_type.elem_type, None) for o in outs)
    return m


def probe_one(op_key: str, dt: np.dtype, opset: int) -> bool:
    """Whether onnxruntime creates and runs a one-node `op_key` model on `dt` at `opset`.

    >>> probe_one("Add", np.dtype(np.float32), 18)
    True
    """
    import onnxruntime as ort

    try:
        m = _model(op_key, dt, opset)
        arrays, _ = PROBES[op_key](dt)
        if op_key.split(".")[0] in INPUT_SINCE and opset < INPUT_SINCE[op_key.split(".")[0]]:
            arrays = arrays[:1]
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        sess.run(None, {f"in{i}": a for i, a in enumerate(arrays)})
        return True
    except Exception:  # noqa: BLE001 - any failure (checker, load, run) means "not supported"
        return False


def probe_table(keys: Iterable[str], probe: Callable[[str, np.dtype, int], bool],
                dtypes: Iterable[str] = DTYPES) -> dict:
    """{"onnxruntime", "opsets", "ops": {key: {dtype: [opsets]}}}: `probe(key, dtype, opset)` for
    every key, dtype and opset, in the installed onnxruntime (also the contrib table's driver).

    >>> probe_table(["Neg"], lambda key, dt, v: dt == np.float32 and v == 13)["ops"]
    {'Neg': {'float32': [13]}}
    """
    import onnxruntime as ort

    table: dict[str, dict[str, list[int]]] = {}
    for key in keys:
        row = {}
        for dname in dtypes:
            ok = [v for v in OPSETS if probe(key, np.dtype(dname), v)]
            if ok:
                row[dname] = ok
        table[key] = row
    return {"onnxruntime": ort.__version__, "opsets": list(OPSETS), "ops": table}


def write_table(data: dict, path: str) -> None:
    """Write a probed table as sorted, indented JSON (the committed form), naming it on stderr."""
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {path}: {len(data['ops'])} ops", file=sys.stderr)


def probe_all() -> dict:
    """The whole table: {"ops": {op_key: {dtype: [opsets]}}} for the installed onnxruntime."""
    return probe_table(sorted(PROBES), probe_one)


def main() -> None:
    """Probe and write `exporters/capabilities/onnxruntime-<version>.json`."""
    data = probe_all()
    folder = os.path.join(os.path.dirname(__file__), "capabilities")
    write_table(data, os.path.join(folder, f"onnxruntime-{data['onnxruntime']}.json"))


if __name__ == "__main__":
    main()
