"""Benchmark: are castml's graph passes as good as onnxruntime's graph-level fusions?

For each zoo-style model (MLP, CNN with batch norm, transformer-encoder block) it times, with
one intra-op thread and all sessions run interleaved (`--repeat` runs each, `--rounds` times):
  ours:     ir.optimize'd graph exported for target `onnxruntime-cpu-contrib` (fused ops as
            onnxruntime's com.microsoft FusedConv/FusedGemm/FastGelu), run with graph
            optimizations disabled. Target: ours / ort-ext <= 1.0
  ours-std: the same graph exported as standard ONNX (the default target), optimizations disabled
  ort-ext:  the unoptimized standard export run with ORT_ENABLE_EXTENDED (which makes the same
            contrib nodes while loading)
  ort-all:  the unoptimized export with ORT_ENABLE_ALL (adds blocked-layout kernels plain ONNX
            cannot express; for reference)
Medians per round are printed; the machine's noise shows as the spread between rounds.
Then trace + optimize time for synthetic graphs of 1k, 10k and 100k ops (should grow linearly).
Run: `PYTHONPATH=. python bench/passes_vs_ort.py [--repeat 300] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import onnxruntime as ort

import ir
import tracer
from exporters import to_onnx
from tracer import TensorSpec, ops

RNG = np.random.default_rng(0)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ln(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def mlp():
    """A 4-layer MLP with relu, float32, batch 64."""
    sizes = [256, 512, 512, 256, 10]
    ws = [RNG.standard_normal((a, b)).astype(np.float32) / math.sqrt(a) for a, b in zip(sizes, sizes[1:])]
    bs = [RNG.standard_normal(b).astype(np.float32) for b in sizes[1:]]

    def fn(x):
        for w, b in zip(ws[:-1], bs[:-1]):
            x = np.maximum(x @ w + b, 0.0)
        return _softmax(x @ ws[-1] + bs[-1])
    return fn, TensorSpec(("batch", 256), np.float32), RNG.standard_normal((64, 256)).astype(np.float32)


def cnn():
    """Two conv + batch_norm + relu stages, pooling and a linear head, float32, batch 8."""
    w1 = RNG.standard_normal((32, 3, 3, 3)).astype(np.float32) / 5
    w2 = RNG.standard_normal((64, 32, 3, 3)).astype(np.float32) / 17
    bn = [dict(mean=RNG.standard_normal(c).astype(np.float32), var=(RNG.random(c) + 0.5).astype(np.float32),
               weight=RNG.standard_normal(c).astype(np.float32), bias=RNG.standard_normal(c).astype(np.float32))
          for c in (32, 64)]
    wf, bf = RNG.standard_normal((64, 10)).astype(np.float32), RNG.standard_normal(10).astype(np.float32)

    def fn(x):
        y = ops.relu(ops.batch_norm(ops.conv2d(x, w1, padding=1), **bn[0]))
        y = ops.max_pool2d(y, 2)
        y = ops.relu(ops.batch_norm(ops.conv2d(y, w2, padding=1), **bn[1]))
        y = ops.global_avg_pool2d(y).reshape(y.shape[0], -1)
        return y @ wf + bf
    return fn, TensorSpec(("n", 3, 32, 32), np.float32), RNG.standard_normal((8, 3, 32, 32)).astype(np.float32)


def encoder():
    """One transformer-encoder block written in NumPy (decomposed softmax, layer_norm, gelu)."""
    d, h, s = 128, 4, 64
    f = lambda *shape: (RNG.standard_normal(shape) / math.sqrt(shape[0])).astype(np.float32)  # noqa: E731
    wq, wk, wv, wo, w1, w2 = f(d, d), f(d, d), f(d, d), f(d, d), f(d, 4 * d), f(4 * d, d)
    b1, b2 = np.zeros(4 * d, np.float32), np.zeros(d, np.float32)
    g1, g2, be1, be2 = (np.ones(d, np.float32), np.ones(d, np.float32), np.zeros(d, np.float32),
                        np.zeros(d, np.float32))

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    def fn(x):
        n = x.shape[0]
        q = (x @ wq).reshape(n, h, d // h).transpose(1, 0, 2)
        k = (x @ wk).reshape(n, h, d // h).transpose(1, 0, 2)
        v = (x @ wv).reshape(n, h, d // h).transpose(1, 0, 2)
        a = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(d // h)) @ v
        x = _ln(x + a.transpose(1, 0, 2).reshape(n, d) @ wo, g1, be1)
        return _ln(x + gelu(x @ w1 + b1) @ w2 + b2, g2, be2)
    return fn, TensorSpec((s, d), np.float32), RNG.standard_normal((s, d)).astype(np.float32)


def _session(g, level, target: str = "onnxruntime-cpu") -> tuple[ort.InferenceSession, str]:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(to_onnx(g, target=target).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess, sess.get_inputs()[0].name


def _time_interleaved(sessions: dict, x, repeat: int) -> dict[str, float]:
    """Median seconds per run of each session, the sessions taking turns run by run."""
    for sess, name in sessions.values():
        for _ in range(5):
            sess.run(None, {name: x})
    ts: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeat):
        for k, (sess, name) in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            ts[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in ts.items()}


def compare_with_ort(repeat: int, rounds: int) -> None:
    """The ORT table: one line per model and round."""
    lv = ort.GraphOptimizationLevel
    print(f"{'model':<9} {'round':>5} {'ops':>5} {'opt ops':>7} {'ours us':>9} {'ours-std':>9} {'ort-ext us':>10} "
          f"{'ratio':>6} {'std ratio':>9} {'ort-all us':>10}")
    for name, make in (("mlp", mlp), ("cnn", cnn), ("encoder", encoder)):
        fn, spec, x = make()
        g = tracer.trace(fn, spec)
        g2 = ir.optimize(g)
        sessions = {"ours": _session(g2, lv.ORT_DISABLE_ALL, "onnxruntime-cpu-contrib"),
                    "std": _session(g2, lv.ORT_DISABLE_ALL),
                    "ext": _session(g, lv.ORT_ENABLE_EXTENDED),
                    "all": _session(g, lv.ORT_ENABLE_ALL)}
        for r in range(rounds):
            t = _time_interleaved(sessions, x, repeat)
            print(f"{name:<9} {r + 1:>5} {len(g.ops):>5} {len(g2.ops):>7} {t['ours'] * 1e6:>9.1f} "
                  f"{t['std'] * 1e6:>9.1f} {t['ext'] * 1e6:>10.1f} {t['ours'] / t['ext']:>6.3f} "
                  f"{t['std'] / t['ext']:>9.3f} {t['all'] * 1e6:>10.1f}")


def synthetic(n_ops: int):
    """A function tracing to about `n_ops` ops: chained elementwise work with shared, dead and
    foldable subexpressions, so every pass has something to do."""
    def fn(x):
        acc = x
        for i in range(n_ops // 6):
            y = acc * 1.0 + 0.0          # algebra removes both
            z = np.tanh(y) * float(i % 7)  # constant multiplier
            acc = acc + z - np.tanh(y)   # CSE merges the second tanh
        return acc
    return fn


def scaling() -> None:
    """The trace + optimize timing table."""
    print(f"\n{'target ops':>10} {'traced ops':>10} {'trace s':>8} {'optimize s':>10} {'us/op':>7} {'opt ops':>8}")
    for n in (1_000, 10_000, 100_000):
        t0 = time.perf_counter()
        g = tracer.trace(synthetic(n), TensorSpec(("n", 16), np.float32))
        t1 = time.perf_counter()
        g2 = ir.optimize(g)
        t2 = time.perf_counter()
        count = sum(1 for _ in g.walk())
        print(f"{n:>10} {count:>10} {t1 - t0:>8.3f} {t2 - t1:>10.3f} {(t2 - t0) / count * 1e6:>7.1f} "
              f"{len(g2.ops):>8}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-ort", action="store_true")
    args = ap.parse_args()
    if not args.skip_ort:
        compare_with_ort(args.repeat, args.rounds)
    scaling()
