"""Benchmark: trace + optimize + export time of castml vs `torch.onnx.export(..., dynamo=True)`.

Models: the zoo's MLP 784-512-512-10 and 6-layer transformer encoder (d 256, 4 heads, ff 1024,
seq 128), batch 2, weights closed over (so both sides write them as initializers). The PyTorch
side is the equivalent `torch.nn` module loaded with the same weights; both exports are run once in
onnxruntime and must agree (DESIGN.md's float32 rule), so the two columns time the same model.

Columns (seconds, median of `--repeat` interleaved runs; the first run of each, with its one-time
costs, on a line of its own):
  trace, optimize          castml's two steps
  .onnx, .castml           `exporters.save` of the optimized graph to each format (atomic write)
  ours                     trace + optimize + .onnx (what the torch column does)
  torch                    `torch.onnx.export(module, (x,), path, dynamo=True)`; "-" without torch
  speedup                  torch / ours (target >= 10)

torch is optional (bench-only; `pip install torch onnxscript`); without it the torch columns are
skipped. Run: `PYTHONPATH=. python bench/export_vs_torch.py [--repeat 5]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

import exporters
import ir
import models.zoo
import tracer

try:
    import torch
except ImportError:  # the torch columns are skipped
    torch = None


def ours(name: str, folder: str) -> Callable[[], dict[str, float]]:
    """castml's pipeline for zoo model `name`: a callable returning the time of each step."""
    fn, (x, params) = models.zoo.MODELS[name].build(0)

    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        g = tracer.trace(lambda x: fn(x, params), x)
        t1 = time.perf_counter()
        g2 = ir.optimize(g)
        t2 = time.perf_counter()
        exporters.save(g2, os.path.join(folder, f"{name}.onnx"))
        t3 = time.perf_counter()
        exporters.save(g2, os.path.join(folder, f"{name}.castml"))
        t4 = time.perf_counter()
        return {"trace": t1 - t0, "optimize": t2 - t1, ".onnx": t3 - t2, ".castml": t4 - t3, "ours": t3 - t0}
    return run


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)))


def torch_module(name: str) -> torch.nn.Module:
    """The `torch.nn` equivalent of zoo model `name`, with the zoo's weights (eval mode)."""
    _, (_, p) = models.zoo.MODELS[name].build(0)
    nn = torch.nn
    if name == "mlp":
        m = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        with torch.no_grad():
            for k in ("0", "2", "4"):
                m[int(k)].weight.copy_(_t(p[k]["weight"]).T)
                m[int(k)].bias.copy_(_t(p[k]["bias"]))
        return m.eval()

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(_t(p["pos"]))
            layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, activation="gelu", batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)

        def forward(self, x):
            return self.encoder(x + self.pos)

    m = Encoder()
    with torch.no_grad():
        for i, layer in enumerate(m.encoder.layers):
            q = p[f"layer{i}"]
            a = q["attn"]
            layer.self_attn.in_proj_weight.copy_(torch.cat([_t(a[k]["weight"]).T for k in "qkv"]))
            layer.self_attn.in_proj_bias.copy_(torch.cat([_t(a[k]["bias"]) for k in "qkv"]))
            layer.self_attn.out_proj.weight.copy_(_t(a["o"]["weight"]).T)
            layer.self_attn.out_proj.bias.copy_(_t(a["o"]["bias"]))
            for k in ("linear1", "linear2"):
                getattr(layer, k).weight.copy_(_t(q[k]["weight"]).T)
                getattr(layer, k).bias.copy_(_t(q[k]["bias"]))
            for k in ("norm1", "norm2"):
                getattr(layer, k).weight.copy_(_t(q[k]["weight"]))
                getattr(layer, k).bias.copy_(_t(q[k]["bias"]))
    return m.eval()


def theirs(name: str, folder: str) -> Callable[[], dict[str, float]]:
    """`torch.onnx.export(..., dynamo=True)` of the equivalent module, timed."""
    import logging

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # (notes on torchvision ops, every export)
    module = torch_module(name)
    _, (x, _) = models.zoo.MODELS[name].build(0)
    args = (torch.from_numpy(x),)
    path = os.path.join(folder, f"{name}.torch.onnx")

    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, path, dynamo=True, verbose=False)
        return {"torch": time.perf_counter() - t0}
    return run


def _ort_output(path: str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def check_same_model(name: str, folder: str) -> float:
    """Largest |ours - torch| of the two exported models in onnxruntime, relative to max|torch|;
    raises when they disagree beyond DESIGN.md's float32 rule (so the timings compare equals)."""
    _, (x, _) = models.zoo.MODELS[name].build(0)
    a = _ort_output(os.path.join(folder, f"{name}.onnx"), x)
    b = _ort_output(os.path.join(folder, f"{name}.torch.onnx"), x)
    scale = float(np.max(np.abs(b)))
    if a.shape != b.shape or not np.all(np.abs(a - b) <= 1e-4 * np.abs(b) + 1e-5 * scale):
        raise AssertionError(f"{name}: castml's and torch's exports disagree (shapes {a.shape}, {b.shape}; "
                             f"max |diff| {np.max(np.abs(a - b)):.3g} vs max|ref| {scale:.3g})")
    return float(np.max(np.abs(a - b))) / scale


def compare(repeat: int) -> None:
    """The export-time table."""
    cols = ["trace", "optimize", ".onnx", ".castml", "ours", "torch"]
    print(f"{'model':<20} " + " ".join(f"{c:>9}" for c in cols) + f" {'speedup':>8} {'max rel diff':>12}")
    with tempfile.TemporaryDirectory() as folder:
        for name in ("mlp", "transformer_encoder"):
            runs = [ours(name, folder)] + ([theirs(name, folder)] if torch is not None else [])
            first: dict[str, float] = {}
            for r in runs:  # the first run (imports, caches, first compilation of everything) is shown apart
                first.update(r())
            times: dict[str, list[float]] = {}
            for _ in range(repeat):
                for r in runs:  # interleaved, so slow phases of the machine hit both sides
                    for k, v in r().items():
                        times.setdefault(k, []).append(v)
            med = {k: float(np.median(v)) for k, v in times.items()}
            cells = [f"{med[c]:>9.3f}" if c in med else f"{'-':>9}" for c in cols]
            speed = f"{med['torch'] / med['ours']:>7.1f}x" if "torch" in med else f"{'-':>8}"
            diff = f"{check_same_model(name, folder):>12.2e}" if torch is not None else f"{'-':>12}"
            print(f"{name:<20} " + " ".join(cells) + f" {speed} {diff}")
            cold = [f"{first[c]:>9.3f}" if c in first else f"{'-':>9}" for c in cols]
            speed = f"{first['torch'] / first['ours']:>7.1f}x" if "torch" in first else f"{'-':>8}"
            print(f"{'  (first run)':<20} " + " ".join(cold) + f" {speed}")
    if torch is None:
        print("(torch is not installed: the torch columns are skipped)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    compare(ap.parse_args().repeat)
