"""castml runtime vs onnxruntime on the same models: latency of each and their ratio.

    PYTHONPATH=. python bench/runtime_vs_ort.py [--repeats 30] [--load-gib 1.0]

Each model is traced once, saved as .castml (run by `runtime.load`) and exported with
`exporters.to_onnx` (run by onnxruntime, all graph optimizations on). Engines are timed in
rotating blocks in one process, median of the repeats after warm-up (../shared/PERF_NOTES.md).
Also reports the load time of a .castml file with large weights (an mmap, no copy). Not a test:
nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import runtime
import tracer
from exporters.castml_format import save_castml, to_bytes
from tracer import TensorSpec
from tracer import ops as nn

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def mlp_model():
    """MLP 784-512-512-10."""
    w1, b1, w2, b2, w3, b3 = _w(784, 512), _w(512), _w(512, 512), _w(512), _w(512, 10), _w(10)

    def mlp(x):
        h = np.maximum(x @ w1 + b1, 0.0)
        h = np.maximum(h @ w2 + b2, 0.0)
        return h @ w3 + b3

    return tracer.trace(mlp, TensorSpec(("batch", 784)))


def lenet_model():
    """LeNet-5 style: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, 84, 10 on 1x28x28."""
    c1, cb1, c2, cb2 = _w(6, 1, 5, 5), _w(6), _w(16, 6, 5, 5), _w(16)
    f1, fb1, f2, fb2, f3, fb3 = _w(256, 120), _w(120), _w(120, 84), _w(84), _w(84, 10), _w(10)

    def lenet(x):
        h = nn.max_pool2d(np.maximum(nn.conv2d(x, c1, cb1), 0.0), 2)
        h = nn.max_pool2d(np.maximum(nn.conv2d(h, c2, cb2), 0.0), 2)
        h = h.reshape(h.shape[0], -1)
        h = np.maximum(h @ f1 + fb1, 0.0)
        h = np.maximum(h @ f2 + fb2, 0.0)
        return h @ f3 + fb3

    return tracer.trace(lenet, TensorSpec(("batch", 1, 28, 28)))


def _median_times(fns: dict, repeats: int, block: int = 5) -> dict[str, float]:
    for f in fns.values():  # warm-up
        for _ in range(3):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    while min(len(t) for t in times.values()) < repeats:
        for k, f in fns.items():
            for _ in range(block):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(t) for k, t in times.items()}


def _ort_session(g):
    try:
        from exporters import to_onnx
    except ImportError as e:
        return None, f"exporters.to_onnx unavailable ({e})"
    try:
        import onnxruntime as ort

        model = to_onnx(g)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), ""
    except Exception as e:  # a bench row is skipped, with the reason printed
        return None, f"ONNX export/onnxruntime failed: {type(e).__name__}: {e}"


def latency_rows(repeats: int) -> list[tuple]:
    """(name, castml ms, ort ms or None, note) per model and batch size."""
    rows = []
    for name, build, batches, shape in (("MLP 784-512-512-10", mlp_model, (1, 64), (784,)),
                                        ("LeNet CNN", lenet_model, (1, 64), (1, 28, 28))):
        g = build()
        sess = runtime.load(to_bytes(g))
        ort_sess, note = _ort_session(g)
        for batch in batches:
            x = RNG.standard_normal((batch, *shape)).astype(np.float32)
            fns = {"castml": lambda x=x: sess.run(x)}
            if ort_sess is not None:
                feed = {ort_sess.get_inputs()[0].name: x}
                np.testing.assert_allclose(ort_sess.run(None, feed)[0], sess.run(x), rtol=1e-3, atol=1e-3)
                fns["ort"] = lambda feed=feed: ort_sess.run(None, feed)
            t = _median_times(fns, repeats)
            rows.append((f"{name}, batch {batch}", t["castml"] * 1e3, t.get("ort", float("nan")) * 1e3, note))
    return rows


def load_time(gib: float) -> tuple[float, int]:
    """Median seconds of `runtime.load` on a file with `gib` GiB of weights, and its size."""
    n = int(gib * 2**30 / 4 / 4096)
    w = np.ones((n, 4096), np.float32)
    g = tracer.trace(lambda x: x @ w.T, TensorSpec((1, 4096)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.castml")
        save_castml(g, path)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            runtime.load(path)
            times.append(time.perf_counter() - t0)
        return statistics.median(times), os.path.getsize(path)


def main() -> None:
    """Print the latency table and the load time."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--load-gib", type=float, default=1.0, help="weights in the load-time file (0: skip)")
    args = parser.parse_args()
    print(f"{'model':<32} {'castml ms':>10} {'ort ms':>10} {'ratio':>7}")
    for name, ours, ort_ms, note in latency_rows(args.repeats):
        ratio = ours / ort_ms if ort_ms == ort_ms else float("nan")
        print(f"{name:<32} {ours:>10.3f} {ort_ms:>10.3f} {ratio:>7.2f}" + (f"  ({note})" if note else ""))
    if args.load_gib > 0:
        seconds, size = load_time(args.load_gib)
        print(f"runtime.load of a {size / 2**30:.2f} GiB .castml: {seconds * 1e3:.2f} ms (mmap; target <= 10 ms)")


if __name__ == "__main__":
    main()
