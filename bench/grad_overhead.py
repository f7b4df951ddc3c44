"""Gradient overhead: time of forward+backward over time of forward, run by `ir.interpret`.

The model is an MLP 784-512-512-10 (ReLU, softmax cross-entropy) at batch 64, float32. The
backward graph is `ir.grad(loss, wrt=params, with_value=True)`; PyTorch eager measures about 2.9
on the same MLP, and the target is <= 3. Run: `PYTHONPATH=. python bench/grad_overhead.py`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ir
import tracer


def mlp_loss(params: dict, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean softmax cross-entropy of a 3-layer ReLU MLP (labels one-hot)."""
    h = np.maximum(x @ params["w1"] + params["b1"], 0.0)
    h = np.maximum(h @ params["w2"] + params["b2"], 0.0)
    logits = h @ params["w3"] + params["b3"]
    logp = tracer.ops.log_softmax(logits, axis=-1)
    return -np.mean(np.sum(logp * labels, axis=-1))


def _best_of(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(batch: int = 64, repeat: int = 20) -> None:
    """Print a table of forward / forward+backward times and their ratio."""
    rng = np.random.default_rng(0)
    sizes = [784, 512, 512, 10]
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]), 1):
        params[f"w{i}"] = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros(n_out, np.float32)
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    fwd = tracer.trace(mlp_loss, params, x, labels)
    bwd = ir.grad(fwd, wrt=0, with_value=True)
    t_f = _best_of(lambda: ir.interpret(fwd, params, x, labels), repeat)
    t_fb = _best_of(lambda: ir.interpret(bwd, params, x, labels), repeat)
    print(f"MLP 784-512-512-10, batch {batch}, float32, ir.interpret (best of {repeat})")
    print(f"{'graph':<22}{'ops':>6}{'time (ms)':>12}{'ratio':>8}")
    print(f"{'forward':<22}{len(fwd.ops):>6}{t_f * 1e3:>12.3f}{1.0:>8.2f}")
    print(f"{'forward + backward':<22}{len(bwd.ops):>6}{t_fb * 1e3:>12.3f}{t_fb / t_f:>8.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    main(a.batch, a.repeat)
