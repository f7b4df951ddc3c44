"""Gradient overhead: time of forward+backward over time of forward, run by our runtime.

Two models, float32: an MLP 784-512-512-10 (ReLU, softmax cross-entropy) at batch 64, and the
zoo's transformer encoder (`models.zoo.transformer_encoder`: 6 post-norm layers, d_model 256,
4 heads, feed-forward 1024, sequence 128) at batch 2 under a mean squared error loss. For each,
the forward graph is the traced loss and the forward+backward graph is
`ir.grad(loss, wrt=params, with_value=True)`; both go through `ir.optimize`, are saved as
`.castml` and are run by `runtime.load(..., backend="numpy")`. The two graphs of every model are
timed interleaved in the same rounds, so machine load hits both alike; the table shows the best
time of each and the median of the per-round ratios. PyTorch eager measures about 2.9 on the
MLP; the target is <= 3.

Run: `PYTHONPATH=. python bench/grad_overhead.py [--repeat 20] [--profile]`. `--profile` also
prints the ops of each forward+backward graph that take the most time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import exporters
import ir
import runtime
import tracer
from runtime.session import set_blas_threads


def mlp_loss(params: dict, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean softmax cross-entropy of a 3-layer ReLU MLP (labels one-hot).

    >>> p = {f"w{i}": np.zeros((2, 2), np.float32) for i in (1, 2, 3)}
    >>> p.update({f"b{i}": np.zeros(2, np.float32) for i in (1, 2, 3)})
    >>> round(float(mlp_loss(p, np.ones((1, 2), np.float32), np.eye(2, dtype=np.float32)[:1])), 4)
    0.6931
    """
    h = np.maximum(x @ params["w1"] + params["b1"], 0.0)
    h = np.maximum(h @ params["w2"] + params["b2"], 0.0)
    logits = h @ params["w3"] + params["b3"]
    logp = tracer.ops.log_softmax(logits, axis=-1)
    return -np.mean(np.sum(logp * labels, axis=-1))


@dataclass
class Case:
    """One benchmarked model: its loss function and arguments (parameters first)."""

    name: str
    loss: Callable[..., Any]
    args: tuple


def mlp_case(batch: int = 64, seed: int = 0) -> Case:
    """The MLP 784-512-512-10 with random weights, inputs and one-hot labels.

    >>> [a.shape for a in mlp_case(4).args[1:]]
    [(4, 784), (4, 10)]
    """
    rng = np.random.default_rng(seed)
    sizes = [784, 512, 512, 10]
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]), 1):
        params[f"w{i}"] = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros(n_out, np.float32)
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    return Case(f"MLP 784-512-512-10, batch {batch}", mlp_loss, (params, x, labels))


def transformer_case(batch: int = 2, seed: int = 0) -> Case:
    """The zoo's transformer encoder under a mean squared error against a random target.

    >>> c = transformer_case(1)
    >>> c.args[1].shape, c.args[2].shape
    ((1, 128, 256), (1, 128, 256))
    """
    from models.zoo import transformer_encoder

    fn, (x, params) = transformer_encoder.build(seed, batch)
    target = np.random.default_rng(seed + 2).standard_normal(x.shape).astype(np.float32)

    def loss(params: dict, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        d = fn(x, params) - target
        return np.mean(d * d)

    return Case(f"transformer encoder (6x256, seq 128), batch {batch}", loss, (params, x, target))


def compile_case(case: Case, folder: str, profile: bool = False) -> tuple:
    """(forward session, forward+backward session, forward ops, forward+backward ops): both
    graphs optimized, saved as `.castml` in `folder` and loaded by the NumPy runtime.

    >>> import tempfile
    >>> sf, sb, nf, nb = compile_case(mlp_case(2), tempfile.mkdtemp())
    >>> sf.backend, nf < nb
    ('numpy', True)
    """
    traced = tracer.trace(case.loss, *case.args)
    graphs = {"fwd": ir.optimize(traced), "bwd": ir.optimize(ir.grad(traced, wrt=0, with_value=True))}
    sessions = []
    for tag, g in graphs.items():
        path = os.path.join(folder, f"{tag}_{abs(hash(case.name))}.castml")
        exporters.save(g, path)
        sessions.append(runtime.load(path, backend="numpy", profile=profile))
    return sessions[0], sessions[1], len(graphs["fwd"].ops), len(graphs["bwd"].ops)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(cases: list[Case], repeat: int) -> list[dict]:
    """Time every case's forward and forward+backward sessions, interleaved round by round.

    Returns one row per case: ops and best times of both graphs, the ratio of the best times
    and the median of the per-round ratios. The forward+backward graph's loss is checked
    against the forward graph's.

    >>> row = measure([mlp_case(2)], repeat=2)[0]
    >>> row["ratio_best"] > 1.0
    True
    """
    folder = tempfile.mkdtemp(prefix="castml_grad_overhead_")
    compiled = [compile_case(c, folder) for c in cases]
    for case, (sf, sb, _, _) in zip(cases, compiled):
        value, _ = sb.run(*case.args)
        ref = sf.run(*case.args)
        if not np.allclose(value, ref, rtol=1e-4, atol=1e-6):
            raise AssertionError(f"{case.name}: the gradient graph's loss {value} differs from the forward's {ref}")
    times = [([], []) for _ in cases]
    for _ in range(repeat):
        for case, (sf, sb, _, _), (tf, tb) in zip(cases, compiled, times):
            tf.append(_timed(lambda: sf.run(*case.args)))
            tb.append(_timed(lambda: sb.run(*case.args)))
    rows = []
    for case, (_, _, nf, nb), (tf, tb) in zip(cases, compiled, times):
        rows.append({"name": case.name, "ops_fwd": nf, "ops_bwd": nb, "t_fwd": min(tf), "t_bwd": min(tb),
                     "ratio_best": min(tb) / min(tf),
                     "ratio_median": statistics.median(b / f for f, b in zip(tf, tb))})
    return rows


def _print_profile(case: Case, runs: int = 3, top: int = 12) -> None:
    """Profile `runs` runs of the case's forward+backward graph (apart from the timed runs, as
    profiling adds per-op overhead) and print the time per op kind and the slowest ops."""
    _, sess, _, _ = compile_case(case, tempfile.mkdtemp(prefix="castml_grad_profile_"), profile=True)
    for _ in range(runs):
        sess.run(*case.args)
    by_kind: dict[str, float] = {}
    rows = sess.profile()
    for r in rows:
        by_kind[r.kind] = by_kind.get(r.kind, 0.0) + r.seconds
    total = sum(by_kind.values())
    print("  time by op kind: " + ", ".join(f"{k} {100 * t / total:.0f}%"
                                           for k, t in sorted(by_kind.items(), key=lambda kv: -kv[1])[:8]))
    for r in rows[:top]:
        print(f"  {100 * r.seconds / total:5.1f}%  {r.op[:110]}")


def main(repeat: int = 20, mlp_batch: int = 64, transformer_batch: int = 2, profile: bool = False,
         blas_threads: int | None = None) -> list[dict]:
    """Print a table of forward / forward+backward times and their ratio for both models."""
    if blas_threads is not None:
        set_blas_threads(blas_threads)
    cases = [mlp_case(mlp_batch), transformer_case(transformer_batch)]
    rows = measure(cases, repeat)
    print(f"forward+backward over forward, float32, runtime backend 'numpy', ir.optimize'd, "
          f"{repeat} interleaved rounds")
    print(f"{'model':<44}{'ops f/fb':>10}{'best f (ms)':>13}{'best fb (ms)':>14}{'ratio':>7}{'median':>8}")
    for r in rows:
        print(f"{r['name']:<44}{str(r['ops_fwd']) + '/' + str(r['ops_bwd']):>10}{r['t_fwd'] * 1e3:>13.2f}"
              f"{r['t_bwd'] * 1e3:>14.2f}{r['ratio_best']:>7.2f}{r['ratio_median']:>8.2f}")
    if profile:
        for case in cases:
            print(f"\n{case.name}: forward+backward profile")
            _print_profile(case)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--mlp-batch", type=int, default=64)
    ap.add_argument("--transformer-batch", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also print the slowest ops (profiled runs)")
    ap.add_argument("--blas-threads", type=int, default=None)
    a = ap.parse_args()
    main(a.repeat, a.mlp_batch, a.transformer_batch, a.profile, a.blas_threads)
