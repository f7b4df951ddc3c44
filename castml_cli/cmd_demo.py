"""`castml demo`: the seed example end to end, in a few seconds.

First f(x) = x**2 at 2: its traced value, its eager gradient (`tracer.grad`) and its static
gradient (`ir.grad` on the traced graph, saved to `.castml` and run by `runtime`) — all 4.
Then a 784-512-512-10 MLP traced with a symbolic batch, printed as IR, saved as `.castml` and
`.onnx`, and run at batch 1 and 7 by our runtime and by onnxruntime against eager NumPy. It is
the README's first command, so it checks its own numbers and exits 1 when anything disagrees.

With `--train` it instead trains an MLP (with Dropout) on scikit-learn's bundled 8x8 digits with
`models.fit` (one traced training step run by the runtime, a line per epoch under a progress bar), checks
that it reaches 95% test accuracy, exports it to `.castml` and `.onnx`, and checks that our
runtime and onnxruntime predict the same classes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from .common import max_abs_error, save_model, type_text
from .progress import Progress

EXAMPLES = """\
examples:
  castml demo                      # run everything in a temporary folder
  castml demo --out-dir demo_out   # keep square.castml, mlp.castml, mlp.onnx
  castml demo --no-ir              # skip printing the MLP's IR
  castml demo --train              # train on scikit-learn's digits, export, compare engines"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `demo`."""
    p = sub.add_parser("demo", help="the seed example (x**2 at 2) and a traced MLP, end to end",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", help="folder to keep the demo's model files in (default: a temporary folder)")
    p.add_argument("--no-ir", action="store_true", help="do not print the MLP's IR text")
    p.add_argument("--train", action="store_true",
                   help="train an MLP on scikit-learn's digits instead (needs the 'train' extra)")
    p.add_argument("--epochs", type=int, default=15, help="epochs for --train (default 15)")
    return p


def make_mlp(seed: int = 0):
    """The demo MLP 784-512-512-10 (ReLU) with seeded weights, as a NumPy function of `x`.

    >>> f = make_mlp(); f(np.zeros((2, 784), np.float32)).shape
    (2, 10)
    """
    rng = np.random.default_rng(seed)

    def dense(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        w = (rng.standard_normal((m, n)) / np.sqrt(m)).astype(np.float32)
        return w, (0.1 * rng.standard_normal(n)).astype(np.float32)

    (w1, b1), (w2, b2), (w3, b3) = dense(784, 512), dense(512, 512), dense(512, 10)

    def mlp(x):
        h1 = np.maximum(x @ w1 + b1, 0.0)
        h2 = np.maximum(h1 @ w2 + b2, 0.0)
        return h2 @ w3 + b3

    return mlp


def _square_part(folder: str) -> bool:
    import ir
    import runtime
    import tracer

    print("== f(x) = x**2 at x = 2")
    g = tracer.trace(lambda x: x**2, 2.0)
    print(g)
    value = float(ir.interpret(g, 2.0))
    print(f"value:                        {value}")
    ok = value == 4.0
    if hasattr(tracer, "grad"):
        eager = float(tracer.grad(lambda x: x**2)(2.0))
        print(f"eager gradient (tracer.grad): {eager}")
        ok &= abs(eager - 4.0) <= 1e-12
    else:
        print("eager gradient (tracer.grad): not available in this build")
    if hasattr(ir, "grad"):
        dg = ir.grad(g)
        path = os.path.join(folder, "square_grad.castml")
        save_model(dg, path)
        static = float(np.asarray(runtime.load(path).run(2.0)))
        print(f"static gradient (ir.grad -> {os.path.basename(path)} -> runtime): {static}")
        ok &= abs(static - 4.0) <= 1e-12
    else:
        print("static gradient (ir.grad): not available in this build")
    return ok


def _mlp_part(folder: str, show_ir: bool) -> bool:
    import runtime
    import tracer

    from .ort_backend import OrtModel

    print("\n== MLP 784-512-512-10, traced with x: f32[batch,784]")
    mlp = make_mlp(0)
    t0 = time.perf_counter()
    g = tracer.trace(mlp, tracer.TensorSpec(("batch", 784), np.float32))
    print(f"traced in {time.perf_counter() - t0:.3f} s: {sum(1 for _ in g.walk())} ops")
    if show_ir:
        print(g)
    paths = {ext: os.path.join(folder, f"mlp.{ext}") for ext in ("castml", "onnx")}
    for path in paths.values():
        save_model(g, path)
        print(f"saved {path} ({os.path.getsize(path):,} bytes)")
    sess = runtime.load(paths["castml"])
    ort = OrtModel.from_onnx_file(paths["onnx"])
    rng = np.random.default_rng(1)
    ok = True
    for batch in (1, 7):
        x = rng.standard_normal((batch, 784)).astype(np.float32)
        ref = mlp(x)
        ours = sess.run(x)
        theirs = ort.run_flat([x])[0]
        err_ours, ok_ours = max_abs_error(ours, ref)
        err_ort, ok_ort = max_abs_error(theirs, ref)
        err_cross, _ = max_abs_error(ours, theirs)
        print(f"batch {batch}: out {type_text(ours.dtype, ours.shape)}  max|castml - numpy| {err_ours:.3g}  "
              f"max|onnxruntime - numpy| {err_ort:.3g}  max|castml - onnxruntime| {err_cross:.3g}")
        ok &= ok_ours and ok_ort
    return ok


def _train_part(folder: str, epochs: int, keep: bool) -> bool:
    """Train on the digits, then compare the exported model in our runtime and onnxruntime."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("castml demo --train needs scikit-learn: pip install 'castml[train]'")
        return False
    import runtime
    from models import fit, optim
    from models import layers as nn

    from .ort_backend import OrtModel

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.data))
    x = (digits.data[order] / 16.0).astype(np.float32)
    y = digits.target[order].astype(np.int64)
    split = int(0.8 * len(x))
    print(f"== MLP 64-128-10 with Dropout(0.1) on scikit-learn's digits: {split} train, {len(x) - split} test images")
    model = nn.Sequential([nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10)])
    model.init(0)
    with Progress("castml demo --train", total=epochs, unit=" epochs") as bar:
        bar.describe("tracing the training step")
        t0 = time.perf_counter()

        def epoch_done(epoch: int, row: dict[str, float]) -> None:
            nonlocal t0
            shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
            bar.print(f"epoch {epoch}/{epochs}  {shown}  ({time.perf_counter() - t0:.1f}s)")
            bar.describe("training")
            bar.advance()
            t0 = time.perf_counter()

        history = fit(model, "cross_entropy", optim.SGD(0.1, momentum=0.9), (x[:split], y[:split]), epochs=epochs,
                      val_data=(x[split:], y[split:]), batch_size=32, log_dir=os.path.join(folder, "logs"),
                      verbose=False, on_epoch=epoch_done)
    accuracy = history.metrics["val_accuracy"][-1]
    print(f"test accuracy {accuracy:.2%} (needs >= 95%)")
    if keep:
        print(f"metrics.csv and TensorBoard events in {os.path.join(folder, 'logs')}")
    paths = {ext: os.path.join(folder, f"digits.{ext}") for ext in ("castml", "onnx")}
    for path in paths.values():
        model.export(path, x[:1])
        print(f"saved {path} ({os.path.getsize(path):,} bytes)")
    xt, ref = x[split:], model.apply(model.params, x[split:])
    ours = runtime.load(paths["castml"]).run(xt)
    theirs = OrtModel.from_onnx_file(paths["onnx"]).run_flat([xt])[0]
    err_ours, ok_ours = max_abs_error(ours, ref)
    err_ort, ok_ort = max_abs_error(theirs, ref)
    same = int(np.sum(ours.argmax(1) == theirs.argmax(1)))
    print(f"castml runtime accuracy {np.mean(ours.argmax(1) == y[split:]):.2%}, onnxruntime accuracy "
          f"{np.mean(theirs.argmax(1) == y[split:]):.2%}; same class for {same}/{len(xt)} images; "
          f"max|castml - numpy| {err_ours:.3g}  max|onnxruntime - numpy| {err_ort:.3g}")
    return accuracy >= 0.95 and ok_ours and ok_ort and same == len(xt)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every number agrees with its reference, else 1."""
    with tempfile.TemporaryDirectory(prefix="castml-demo-") as tmp:
        folder = args.out_dir or tmp
        os.makedirs(folder, exist_ok=True)
        if args.train:
            ok = _train_part(folder, args.epochs, keep=bool(args.out_dir))
        else:
            ok = _square_part(folder)
            ok &= _mlp_part(folder, not args.no_ir)
    print("\ndemo: all results agree" if ok else "\ndemo: MISMATCH (see above)")
    return 0 if ok else 1
