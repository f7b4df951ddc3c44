"""The onnxruntime backend of `castml run` (and the demo's cross-check).

It lives in the CLI because `runtime` must run with only numpy and flatbuffers installed.
`.onnx` files go to onnxruntime as they are; `.castml` files are converted in memory with
`exporters.load` + `exporters.to_onnx`, so both formats run on both engines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .common import CliError

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


class OrtModel:
    """An onnxruntime session with castml-style input/output descriptions.

    >>> m = OrtModel.from_onnx_file("mlp.onnx")  # doctest: +SKIP
    >>> m.run_flat([np.zeros((1, 784), np.float32)])[0].shape  # doctest: +SKIP
    (1, 10)
    """

    def __init__(self, model_bytes: bytes, where: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped exceptions
            raise CliError(f"onnxruntime cannot load {where}: {str(e).splitlines()[0]}") from None
        self.where = where

    @classmethod
    def from_onnx_file(cls, path: str) -> OrtModel:
        """Load an `.onnx` file."""
        with open(path, "rb") as f:
            return cls(f.read(), path)

    @classmethod
    def from_graph(cls, g, where: str) -> OrtModel:
        """Convert an `ir.Graph` with `exporters.to_onnx` and load it."""
        import exporters

        return cls(exporters.to_onnx(g).SerializeToString(), where)

    @property
    def input_names(self) -> list[str]:
        """ONNX input names, in order."""
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        """ONNX output names, in order."""
        return [o.name for o in self.session.get_outputs()]

    def inputs(self) -> list[tuple[str, np.dtype, tuple]]:
        """(name, dtype, shape) of each input; symbolic dims stay strings."""
        return [(i.name, np.dtype(_ORT_TYPES.get(i.type, np.float32)), tuple(i.shape))
                for i in self.session.get_inputs()]

    def run_flat(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run on input arrays in ONNX input order; returns outputs in ONNX output order."""
        names = self.input_names
        if len(arrays) != len(names):
            raise CliError(f"{self.where}: onnxruntime expects {len(names)} inputs ({', '.join(names)}), "
                           f"got {len(arrays)}")
        feed = {n: np.asarray(a) for n, a in zip(names, arrays)}
        try:
            return list(self.session.run(None, feed))
        except Exception as e:  # onnxruntime's errors are untyped; keep the first line
            raise CliError(f"onnxruntime failed on {self.where}: {str(e).splitlines()[0]}") from None
