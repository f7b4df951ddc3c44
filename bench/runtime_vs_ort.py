"""castml runtime vs onnxruntime on the same models: latency of each and their ratio.

    PYTHONPATH=. python bench/runtime_vs_ort.py [--repeats 15] [--threads 1] [--load-gib 1.0]
                                                [--only mlp,lenet,transformer,resnet_tiny,resnet50,...]
                                                [--backend numpy|native|auto] [--clock wall|cpu]

Each model is traced once with its weights as constants. castml runs the `ir.optimize`d graph
(gemm/fused_conv fusion, BatchNorm folded) saved as .castml and loaded by `runtime.load`;
onnxruntime runs `exporters.to_onnx` of the unoptimized graph with all of its own graph
optimizations on. ResNet-50 is built here (no ONNX model of that size ships with onnx's test
data); its second row runs, on the castml side, the graph exported to ONNX and imported back with
`exporters.from_onnx` (then optimized), as a deployment from an ONNX file would.

Both engines use the same thread count (OpenBLAS for NumPy, intra-op for onnxruntime; default 1)
and are timed in rotating blocks in one process, median of the repeats after warm-up
(../shared/PERF_NOTES.md). The OpenBLAS kernel set is printed (`--blas-core=SkylakeX` picks
another, see `_blas_core`). Also: `runtime.load` of a .castml file with 1 GiB of weights (an
mmap) against onnxruntime session creation for the same model. Not a test: nothing asserts a
threshold.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

import ir
import runtime
import tracer
from exporters.castml_format import save_castml, to_bytes
from runtime.session import set_blas_threads
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


def zoo_model(name: str):
    """A `models.zoo` model traced with its parameters as constants."""
    from models import zoo

    fn, (x, params) = zoo.MODELS[name].build(0, batch=1)
    return tracer.trace(lambda x: fn(x, params), TensorSpec(("batch",) + x.shape[1:], x.dtype))


def _bn(c: int) -> dict:
    return dict(mean=(RNG.standard_normal(c) * 0.1).astype(np.float32),
                var=(RNG.random(c) + 0.5).astype(np.float32),
                weight=(RNG.random(c) + 0.5).astype(np.float32), bias=(RNG.standard_normal(c) * 0.1).astype(np.float32))


def _conv_w(m: int, c: int, k: int) -> np.ndarray:
    return (RNG.standard_normal((m, c, k, k)) * math.sqrt(2.0 / (c * k * k))).astype(np.float32)


def resnet50_model():
    """ResNet-50 (bottleneck blocks 3-4-6-3, 224x224, BatchNorm in eval mode), ~25.5M weights."""
    stem = (_conv_w(64, 3, 7), _bn(64))
    blocks = []
    c = 64
    for stage, (n, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            out = width * 4
            blk = dict(stride=stride, c1=(_conv_w(width, c, 1), _bn(width)), c2=(_conv_w(width, width, 3), _bn(width)),
                       c3=(_conv_w(out, width, 1), _bn(out)))
            if stride != 1 or c != out:
                blk["down"] = (_conv_w(out, c, 1), _bn(out))
            blocks.append(blk)
            c = out
    fc, fcb = _w(2048, 1000), _w(1000)

    def cbn(x, p, stride=1, padding=0, relu=True):
        w, bn = p
        y = nn.batch_norm(nn.conv2d(x, w, stride=stride, padding=padding), bn["mean"], bn["var"], bn["weight"],
                          bn["bias"])
        return np.maximum(y, 0.0) if relu else y

    def resnet50(x):
        h = nn.max_pool2d(cbn(x, stem, 2, 3), 3, 2, 1)
        for b in blocks:
            y = cbn(h, b["c1"])
            y = cbn(y, b["c2"], b["stride"], 1)
            y = cbn(y, b["c3"], relu=False)
            short = cbn(h, b["down"], b["stride"], relu=False) if "down" in b else h
            h = np.maximum(y + short, 0.0)
        h = nn.global_avg_pool2d(h).reshape(h.shape[0], -1)
        return h @ fc + fcb

    return tracer.trace(resnet50, TensorSpec(("batch", 3, 224, 224)))


def _via_onnx(g):
    """`g` exported to ONNX and imported back: the castml side of an imported ONNX model."""
    from exporters import from_onnx, to_onnx

    return from_onnx(to_onnx(g))


CLOCK = time.perf_counter  # --clock cpu: time.process_time (single-threaded runs on a loaded machine)


def _median_times(fns: dict[str, Callable], repeats: int, block: int = 3) -> dict[str, float]:
    for f in fns.values():  # warm-up
        for _ in range(3):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    while min(len(t) for t in times.values()) < repeats:
        for k, f in fns.items():
            for _ in range(block):
                t0 = CLOCK()
                f()
                times[k].append(CLOCK() - t0)
    return {k: statistics.median(t) for k, t in times.items()}


def _ort_options(threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


def _ort_session(g, threads: int):
    try:
        import onnxruntime as ort

        from exporters import to_onnx

        model = to_onnx(g)
        return ort.InferenceSession(model.SerializeToString(), _ort_options(threads),
                                    providers=["CPUExecutionProvider"]), ""
    except Exception as e:  # a bench row is kept, with the reason printed
        return None, f"ONNX export/onnxruntime failed: {type(e).__name__}: {e}"


MODELS = {  # key -> (row name, build, batch sizes, input shape, castml graph from the traced one)
    "mlp": ("MLP 784-512-512-10", mlp_model, (1, 64), (784,), None),
    "lenet": ("LeNet CNN", lenet_model, (1, 64), (1, 28, 28), None),
    "transformer": ("transformer enc 6x256 seq128", lambda: zoo_model("transformer_encoder"), (1,), (128, 256),
                    None),
    "resnet_tiny": ("resnet_tiny 3x32x32", lambda: zoo_model("resnet_tiny"), (1, 16), (3, 32, 32), None),
    "resnet50": ("ResNet-50 traced", resnet50_model, (1,), (3, 224, 224), None),
    "resnet50_onnx": ("ResNet-50 via ONNX import", resnet50_model, (1,), (3, 224, 224), _via_onnx),
}


def latency_rows(repeats: int, threads: int, only: list[str], backend: str = "numpy") -> list[tuple]:
    """(name, castml ms, ort ms or nan, note) per model and batch size; `backend` is the castml
    runtime's (`runtime.load(..., backend=)`: "numpy", the default here, "native" or "auto")."""
    rows = []
    for key in only:
        name, build, batches, shape, convert = MODELS[key]
        g = build()
        ours = ir.optimize(convert(g) if convert else g)
        sess = runtime.load(to_bytes(ours), backend=backend)
        ort_sess, note = _ort_session(g, threads)
        for batch in batches:
            x = RNG.standard_normal((batch, *shape)).astype(np.float32)
            fns = {"castml": lambda x=x: sess.run(x)}
            if ort_sess is not None:
                feed = {ort_sess.get_inputs()[0].name: x}
                got, want = sess.run(x), ort_sess.run(None, feed)[0]
                err = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
                if err > 1e-3:
                    note = f"results differ: max rel err {err:.2e}"
                fns["ort"] = lambda feed=feed: ort_sess.run(None, feed)
            t = _median_times(fns, repeats)
            rows.append((f"{name}, batch {batch}", t["castml"] * 1e3, t.get("ort", float("nan")) * 1e3, note))
            print(_format_row(rows[-1]), flush=True)
    return rows


def load_times(gib: float, threads: int) -> tuple[float, float, int]:
    """Median seconds of `runtime.load` on a .castml file with `gib` GiB of weights, of onnxruntime
    session creation for the same model from an .onnx file, and the .castml file's size."""
    import onnxruntime as ort

    from exporters import to_onnx

    n = int(gib * 2**30 / 4 / 4096)
    w = np.ones((n, 4096), np.float32)
    g = tracer.trace(lambda x: x @ w.T, TensorSpec((1, 4096)))
    with tempfile.TemporaryDirectory() as tmp:
        path, onnx_path = os.path.join(tmp, "big.castml"), os.path.join(tmp, "big.onnx")
        save_castml(g, path)
        with open(onnx_path, "wb") as f:
            f.write(to_onnx(g).SerializeToString())
        del g
        ours = []
        for _ in range(7):
            t0 = time.perf_counter()
            runtime.load(path, backend="numpy")
            ours.append(time.perf_counter() - t0)
        theirs = []
        for _ in range(3):
            t0 = time.perf_counter()
            ort.InferenceSession(onnx_path, _ort_options(threads), providers=["CPUExecutionProvider"])
            theirs.append(time.perf_counter() - t0)
        return statistics.median(ours), statistics.median(theirs), os.path.getsize(path)


def _format_row(row: tuple) -> str:
    name, ours, ort_ms, note = row
    ratio = ours / ort_ms if ort_ms == ort_ms else float("nan")
    return f"{name:<40} {ours:>10.3f} {ort_ms:>10.3f} {ratio:>7.2f}" + (f"  ({note})" if note else "")


def _blas_core(want: str | None) -> str:
    """OpenBLAS's kernel set, from OPENBLAS_CORETYPE (read only when NumPy is first imported).

    `--blas-core NAME` re-runs this script with OPENBLAS_CORETYPE=NAME. On AVX-512 AMD EPYCs set
    to (or detected as) Haswell, SkylakeX kernels ran 1024^3 GEMM ~1.5-1.9x faster (one thread)."""
    if want and os.environ.get("OPENBLAS_CORETYPE") != want:
        os.environ["OPENBLAS_CORETYPE"] = want
        os.execv(sys.executable, [sys.executable] + sys.argv)
    return os.environ.get("OPENBLAS_CORETYPE", "unset (DYNAMIC_ARCH detection)")


def main() -> None:
    """Print the latency table and the load times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenBLAS threads for castml and intra-op threads for onnxruntime (default 1: on a "
                             "shared, loaded machine spinning BLAS threads make timings meaningless)")
    parser.add_argument("--load-gib", type=float, default=1.0, help="weights in the load-time file (0: skip)")
    parser.add_argument("--blas-core", default=None, help="OPENBLAS_CORETYPE to re-run with (default: as set)")
    parser.add_argument("--only", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--backend", choices=("numpy", "native", "auto"), default="numpy",
                        help="castml runtime backend (default numpy: the pure-NumPy runtime)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time, steadier on a shared machine (meaningful with --threads 1)")
    args = parser.parse_args()
    core = _blas_core(args.blas_core)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    only = [k for k in args.only.split(",") if k]
    unknown = sorted(set(only) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    set_blas_threads(args.threads)
    print(f"castml backend {args.backend}; "
          f"threads: OpenBLAS {args.threads} (castml, OPENBLAS_CORETYPE {core}), intra-op {args.threads} / "
          f"inter-op 1 (onnxruntime); {args.clock} clock, median of >= {args.repeats} runs, engines rotating in "
          f"blocks of 3")
    print(f"{'model':<40} {'castml ms':>10} {'ort ms':>10} {'ratio':>7}")
    latency_rows(args.repeats, args.threads, only, args.backend)
    if args.load_gib > 0:
        ours, theirs, size = load_times(args.load_gib, args.threads)
        print(f"load of a {size / 2**30:.2f} GiB model: runtime.load {ours * 1e3:.2f} ms (mmap; target <= 10 ms), "
              f"onnxruntime session creation {theirs * 1e3:.1f} ms, ratio {ours / theirs:.4f}")


if __name__ == "__main__":
    main()
