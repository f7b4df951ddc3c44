"""Conformance: onnx's own PyTorch-converted and PyTorch-operator backend cases, imported and run
with `ir.interpret`, must match the expected outputs (DESIGN.md's tolerance rule, NaN == NaN).

112 of the 117 cases are opset 6, many of which onnxruntime 1.32 can no longer load; castml runs
them all. Round trips through onnxruntime live in tests/test_onnx_export.py.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import exporters
import ir
from tests.helpers import assert_agree

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
CASES = sorted(glob.glob(os.path.join(DATA, "pytorch-converted", "*")) +
               glob.glob(os.path.join(DATA, "pytorch-operator", "*")))


def _read(path: str) -> np.ndarray:
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def test_the_suites_are_all_there():
    assert len(CASES) == 117


@pytest.mark.parametrize("case", CASES, ids=[os.path.basename(c) for c in CASES])
def test_case(case):
    g = exporters.load(os.path.join(case, "model.onnx"))
    ir.verify(g)
    sets = sorted(glob.glob(os.path.join(case, "test_data_set_*")))
    assert sets, f"{case} has no test data"
    for ds in sets:
        inputs = [_read(p) for p in sorted(glob.glob(os.path.join(ds, "input_*.pb")),
                                            key=lambda p: int(p.rsplit("_", 1)[1][:-3]))]
        expected = [_read(p) for p in sorted(glob.glob(os.path.join(ds, "output_*.pb")),
                                              key=lambda p: int(p.rsplit("_", 1)[1][:-3]))]
        got = ir.interpret(g, *inputs)
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        assert len(got) == len(expected)
        assert_agree([np.asarray(x) for x in got], expected)
