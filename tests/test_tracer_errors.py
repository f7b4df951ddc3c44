"""Untraceable Python gets a TraceError naming the user's line and a way out."""

from __future__ import annotations

import numpy as np
import pytest

import tracer
from runtime import CastmlError

SPEC = tracer.TensorSpec(("batch", 3), np.float32)


@pytest.mark.parametrize("fn, what", [
    (lambda x: x if x.sum() > 0 else -x, "bool"),
    (lambda x: float(x.sum()), "float"),
    (lambda x: int(x[0, 0]), "int"),
    (lambda x: np.asarray(x), "asarray"),
    (lambda x: x.item(), "item"),
])
def test_python_conversions_raise_with_location_and_hint(fn, what):
    with pytest.raises(tracer.TraceError) as info:
        tracer.trace(fn, SPEC)
    msg = str(info.value)
    assert "test_tracer_errors.py:" in msg
    assert "np.where" in msg and "tracer.script" in msg
    assert isinstance(info.value, CastmlError)


def test_np_zeros_with_symbolic_dim_points_to_like_forms():
    with pytest.raises(tracer.TraceError, match="zeros_like"):
        tracer.trace(lambda x: np.zeros((x.shape[0], 2)), SPEC)


def test_like_forms_stay_symbolic():
    g = tracer.trace(lambda x: np.ones((x.shape[0], 2), like=x) + np.zeros_like(x, shape=(x.shape[0], 2))
                     + np.full((x.shape[0], 1), 3.0, like=x), SPEC)
    assert str(g.outputs[0].type) == "f64[batch,2]"
    assert "full[shape=(batch, 2)" in str(g)


def test_np_random_is_refused():
    with pytest.raises(tracer.TraceError, match=r"np.random.normal"):
        tracer.trace(lambda x: x + np.random.normal(size=3), SPEC)
    np.random.normal(size=2)  # restored afterwards


def test_unsupported_function_is_named():
    with pytest.raises(tracer.TraceError, match=r"np.sort is not supported"):
        tracer.trace(lambda x: np.sort(x), SPEC)


def test_out_argument_is_refused():
    buf = np.zeros((2, 3), np.float32)
    with pytest.raises(tracer.TraceError, match="out="):
        tracer.trace(lambda x: np.add(x, 1, out=buf), np.ones((2, 3), np.float32))


def test_writing_through_a_view_is_refused():
    def f(x):
        y = x * 1.0
        v = y[0]
        v[0] = 5.0
        return y

    with pytest.raises(tracer.TraceError, match="view"):
        tracer.trace(f, np.ones((2, 3)))


def test_len_of_symbolic_dim():
    with pytest.raises(tracer.TraceError, match="x.shape\\[0\\]"):
        tracer.trace(lambda x: x * len(x), SPEC)


def test_broadcast_error_is_a_trace_error_with_location():
    with pytest.raises(tracer.TraceError, match=r"test_tracer_errors.py:\d+: .*broadcast"):
        tracer.trace(lambda x, y: x + y, np.ones(3), np.ones(4))


def test_coverage_doc_is_current():
    """docs/numpy_coverage.md is generated from the dispatch tables; regenerate when this fails:
    python -m tracer.coverage > docs/numpy_coverage.md"""
    from pathlib import Path

    from tracer.coverage import coverage_table

    doc = Path(__file__).resolve().parent.parent / "docs" / "numpy_coverage.md"
    assert doc.read_text() == coverage_table()


def test_squeeze_without_axis_on_a_symbolic_dim_asks_for_axis():
    """NumPy drops a dim of size 1 only: with a symbolic batch the traced shape would be wrong at
    batch 1, so squeeze() must name its axes (as in JAX's shape polymorphism)."""
    spec = tracer.TensorSpec(("batch", 1, 3))
    with pytest.raises(tracer.TraceError, match=r"axis 0 \(batch\) may be 1 at run time; pass axis="):
        tracer.trace(lambda x: x.squeeze(), spec)
    with pytest.raises(tracer.TraceError, match="pass axis="):
        tracer.trace(lambda x: np.squeeze(x), spec)
    g = tracer.trace(lambda x: np.squeeze(x, axis=1), spec)
    assert g.outputs[0].type.shape == ("batch", 3)
