"""Writes tests/golden/castml_v1.castml, the format-version-1 golden file (run once; committed).

Never regenerate a committed golden file: every later loader must read this exact file
(runtime/format/README.md, compatibility policy). `tests/test_castml_format.py` checks its
outputs against the NumPy expressions below, written out again there.

    PYTHONPATH=. python tests/golden/make_castml_v1.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tracer
from exporters.castml_format import save_castml
from tracer import TensorSpec
from tracer import ops as nn

W = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5) / 10
B = np.array([0.1, -0.2, 0.3, 0.0], np.float32)


def main(x, params):
    """Exercises symbolic dims, pytrees, constants and int/float/bool/str/dtype/ints/dims attributes."""
    h = np.maximum(x @ W + B, 0.0) * params["scale"]
    return {
        "h": nn.layer_norm(h, np.ones(4, np.float32)),
        "idx": np.argmax(x, axis=1),
        "flat": x.T.reshape(-1).astype(np.float64),
        "padded": np.pad(x, ((0, 0), (1, 1))).sum(axis=0, keepdims=True),
    }


def double(v):
    """A second entry point on int32."""
    return v * 2 + 1


def build() -> dict:
    """The golden entries as IR graphs."""
    g = tracer.trace(main, TensorSpec(("batch", 3)), {"scale": TensorSpec((), np.float32)})
    g.metadata = {"purpose": "golden file of .castml format version 1"}
    return {"main": g, "double": tracer.trace(double, TensorSpec(("n",), np.int32))}


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "castml_v1.castml"
    save_castml(build(), out)
    print(out, out.stat().st_size, "bytes")
