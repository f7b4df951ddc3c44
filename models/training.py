"""`models.fit`: the whole training step traced once into one graph, then run every step.

Why this way: what is trained is exactly what is deployed. The loss of `model.apply` is traced
with a symbolic batch, differentiated by `ir.grad`, and inlined, together with the optimizer's
update (and BatchNorm's running-statistics update), into one `train_step` graph:

    train_step(params, buffers, opt_state, x, y, seed) -> (loss, params, buffers, opt_state)

`seed` (int64) feeds the random layers (Dropout, through `models.rng.seed_scope`); fit passes a
new one each step, so each step draws new masks. That graph is optimized (when `ir.optimize`
exists), written to `.castml` bytes and executed by `runtime.load` each step (`ir.interpret`
when `engine="interpret"`). Each epoch prints a progress line, appends a CSV row, writes
TensorBoard scalars (with `log_dir=`, when tensorboardX is installed), and (with `checkpoint=`)
atomically saves one `.castml` with entries `predict` (x -> logits, trained weights baked in),
`train_step`, and `state` (no inputs; returns params, buffers, opt_state, so training can
resume).
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import ir
import tracer
from runtime import pytree
from tracer.core import current, emit, lift

from . import losses as L
from .layers_core import ModelError, Module, Params, merge, trainable
from .rng import seed_scope

SEED_SPEC = tracer.TensorSpec((), np.int64)
TENSORBOARD_HINT = ("fit: tensorboardX is not installed, so {dir} gets metrics.csv only; for TensorBoard event "
                    "files: pip install 'castml[train]' (or tensorboardX)")


def buffers_of(params: Params) -> Params:
    """The non-trainable leaves (`running_*`), the complement of `layers.trainable`.

    >>> buffers_of({"bn": {"weight": 1, "running_mean": 2}, "w": 3})
    {'bn': {'running_mean': 2}}
    """
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            sub = buffers_of(v)
            if sub:
                out[k] = sub
        elif k.startswith("running_"):
            out[k] = v
    return out


def call_graph(g: ir.Graph, *args: Any) -> Any:
    """Inline graph `g` into the current trace, applied to `args` (a pytree per argument, like
    `ir.interpret`); returns the result pytree of tracers. Ops with regions (`if`, `loop`) are
    copied with their regions re-pointed at the inlined values.

    >>> import numpy as np, tracer, ir
    >>> sq = tracer.trace(lambda x: x * x, 1.0)
    >>> h = tracer.trace(lambda x: call_graph(sq, x) + 1.0, 1.0)
    >>> float(ir.interpret(h, 3.0))
    10.0
    """
    from ir.autodiff.rules_control import clone_region

    ctx = current()
    if ctx is None:
        raise ModelError("call_graph: call it inside tracer.trace (outside, use ir.interpret)")
    leaves = pytree.flatten(args)[0]
    if len(leaves) != len(g.inputs):
        raise ModelError(f"call_graph: the graph takes {len(g.inputs)} input leaves, got {len(leaves)}")
    env = {id(v): x for v, x in zip(g.inputs, leaves)}
    for op in g.ops:
        regions = ()
        if op.regions:  # regions may use any earlier value of g: map them all to the inlined ones
            values = {k: lift(t, ctx)._value for k, t in env.items()}
            regions = [clone_region(r, dict(values)) for r in op.regions]
        outs = emit(op.kind, [env[id(v)] for v in op.inputs], op.attrs, ctx=ctx, regions=regions)
        outs = outs if isinstance(outs, tuple) else (outs,)
        env.update({id(v): t for v, t in zip(op.outputs, outs)})
    return pytree.unflatten(g.out_tree, [env[id(v)] for v in g.outputs])


def _spec(a: np.ndarray) -> tracer.TensorSpec:
    return tracer.TensorSpec(("batch",) + a.shape[1:], a.dtype)


def build_train_step(model: Module, loss: Callable, optimizer: Any, params: Params, opt_state: Any,
                     x: np.ndarray, y: np.ndarray) -> ir.Graph:
    """Trace `train_step(params, buffers, opt_state, x, y, seed) -> (loss, params, buffers, opt_state)`
    (params = the trainable leaves; seed = an int64 scalar for random layers) with a symbolic batch.

    >>> from models.layers import Linear
    >>> from models.optim import SGD
    >>> m = Linear(2, 1); p = m.init(0, np.float64)
    >>> g = build_train_step(m, L.mse, SGD(0.1), p, {}, np.ones((4, 2)), np.ones((4, 1)))
    >>> g.arg_names
    ['params', 'buffers', 'opt_state', 'x', 'y', 'seed']
    """
    tp, bufs = trainable(params), buffers_of(params)

    def loss_of(params, buffers, x, y, seed):
        with seed_scope(seed):
            return loss(model.apply(merge(buffers, params), x, train=True), y)

    lg = tracer.trace(loss_of, tp, bufs, _spec(x), _spec(y), SEED_SPEC)
    gg = ir.grad(lg, wrt=0, with_value=True)

    def train_step(params, buffers, opt_state, x, y, seed):
        value, grads = call_graph(gg, params, buffers, x, y, seed)
        new_params, new_state = optimizer.update(params, grads, opt_state)
        if buffers:
            with seed_scope(seed):  # the same streams as in loss_of: the same masks
                _, updates = model.apply_with_updates(merge(buffers, params), x, train=True)
            buffers = merge(buffers, updates)
        return value, new_params, buffers, new_state

    return tracer.trace(train_step, tp, bufs, opt_state, _spec(x), _spec(y), SEED_SPEC)


def step_seed(seed: int, step: int) -> np.ndarray:
    """The int64 seed `fit` passes to training step `step` (0-based) of a run seeded `seed`.

    >>> int(step_seed(0, 5)), int(step_seed(1, 0))
    (5, 4294967296)
    """
    return np.array((int(seed) * 2**32 + int(step)) % 2**63, np.int64)


def _compile(g: ir.Graph, engine: str) -> Callable:
    """A callable running `g`: the runtime on .castml bytes, or the reference interpreter."""
    if hasattr(ir, "optimize"):
        g = ir.optimize(g)
    if engine == "interpret":
        return lambda *a: ir.interpret(g, *a)
    if engine != "runtime":
        raise ModelError(f"fit: engine must be 'runtime' or 'interpret', got {engine!r}")
    import runtime
    from exporters.castml_format import to_bytes

    sess = runtime.load(to_bytes(g))
    return sess.run


def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


class History:
    """Per-epoch metrics (`history.metrics["loss"]` etc.), the final parameters and optimizer state.

    >>> h = History(); h.record({"loss": 0.5}); h.record({"loss": 0.25})
    >>> h.metrics, h
    ({'loss': [0.5, 0.25]}, History(loss=0.25))
    """

    def __init__(self):
        self.metrics: dict[str, list[float]] = {}
        self.params: Params = {}
        self.opt_state: Any = None

    def record(self, row: dict[str, float]) -> None:
        """Append one epoch's metrics, one value per name, to `metrics`.

        >>> h = History(); h.record({"loss": 1.0, "accuracy": 0.5})
        >>> h.metrics["accuracy"]
        [0.5]
        """
        for k, v in row.items():
            self.metrics.setdefault(k, []).append(v)

    def __repr__(self) -> str:
        return f"History({', '.join(f'{k}={v[-1]:.4g}' for k, v in self.metrics.items())})"


def evaluate(model: Module, params: Params, data: tuple[np.ndarray, np.ndarray], loss: Callable,
             batch_size: int = 256) -> dict[str, float]:
    """Loss (and accuracy for integer labels) of `model` in evaluation mode, eagerly.

    >>> from models.layers import Linear
    >>> m = Linear(2, 1); p = m.init(0, np.float64)
    >>> sorted(evaluate(m, p, (np.ones((3, 2)), np.ones((3, 1))), L.mse))
    ['loss']
    """
    x, y = data
    total, correct = 0.0, 0.0
    for idx in _batches(len(x), batch_size, None):
        out = model.apply(params, x[idx])
        total += float(loss(out, y[idx])) * len(idx)
        if np.asarray(y).dtype.kind in "iu":
            correct += float(np.sum(np.argmax(out, axis=-1) == y[idx]))
    row = {"loss": total / len(x)}
    if np.asarray(y).dtype.kind in "iu":
        row["accuracy"] = correct / len(x)
    return row


def save_checkpoint(path: str, model: Module, params: Params, opt_state: Any, train_step: ir.Graph,
                    example_x: np.ndarray) -> None:
    """Atomically write a `.castml` with `predict` (trained weights as constants), `train_step`
    and `state` (returns (params, opt_state)) entries."""
    import exporters

    predict = tracer.trace(lambda x: model.apply(params, x), _spec(example_x))
    state = tracer.trace(lambda: (trainable(params), buffers_of(params), opt_state))
    exporters.save({"predict": predict, "train_step": train_step, "state": state}, path)


def fit(model: Module, loss: Callable | str, optimizer: Any, train_data: tuple[np.ndarray, np.ndarray],
        epochs: int = 1, val_data: tuple[np.ndarray, np.ndarray] | None = None, batch_size: int = 32,
        params: Params | None = None, seed: int = 0, shuffle: bool = True, log_csv: str | None = None,
        checkpoint: str | None = None, engine: str = "runtime", verbose: bool = True,
        log_dir: str | None = None, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> History:
    """Train `model` on `train_data = (x, y)`; returns a `History` (metrics, params, opt_state).

    `params` defaults to `model.params` (or `model.init(seed)`); the trained parameters are also
    stored back in `model.params`. `log_csv` appends one row per epoch; `log_dir` gets
    `metrics.csv` and, when tensorboardX is installed, TensorBoard event files (the epoch metrics
    and `batch/loss` per step); `checkpoint` is a `.castml` path rewritten atomically after each
    epoch. Step `i` runs with seed `step_seed(seed, i)`, so Dropout draws a new mask every step.
    `on_epoch(epoch, metrics)` is called after each epoch (e.g. to drive a progress bar).

    >>> from models.layers import Linear
    >>> from models.optim import SGD
    >>> m = Linear(1, 1); _ = m.init(0, np.float64)
    >>> x = np.linspace(-1, 1, 32).reshape(-1, 1); y = 3 * x
    >>> h = fit(m, "mse", SGD(0.5), (x, y), epochs=20, batch_size=8, verbose=False)
    >>> round(float(m.params["weight"][0, 0]), 3)
    3.0
    """
    loss_fn = L.LOSSES[loss] if isinstance(loss, str) else loss
    x, y = (np.asarray(a) for a in train_data)
    if len(x) != len(y) or len(x) == 0:
        raise ModelError(f"fit: train_data needs as many (>0) inputs as targets, got {len(x)} and {len(y)}")
    params = params if params is not None else (model.params if model.params is not None else model.init(seed))
    tp, bufs = trainable(params), buffers_of(params)
    opt_state = optimizer.init(tp)
    g = build_train_step(model, loss_fn, optimizer, params, opt_state, x[:1], y[:1])
    step = _compile(g, engine)
    rng = np.random.default_rng(seed) if shuffle else None
    history = History()
    writer = None
    board = MetricsLog(log_dir) if log_dir is not None else None
    n_steps = 0
    try:
        for epoch in range(1, epochs + 1):
            t0, total = time.perf_counter(), 0.0
            for idx in _batches(len(x), batch_size, rng):
                value, tp, bufs, opt_state = step(tp, bufs, opt_state, x[idx], y[idx], step_seed(seed, n_steps))
                n_steps += 1
                total += float(value) * len(idx)
                if board is not None:
                    board.scalar("batch/loss", float(value), n_steps)
            params = merge(bufs, tp)
            row = {"epoch": float(epoch), "loss": total / len(x)}
            if val_data is not None:
                row.update({f"val_{k}": v for k, v in evaluate(model, params, val_data, loss_fn).items()})
            history.record(row)
            if log_csv is not None:
                writer = _append_csv(log_csv, row, header=writer is None and not os.path.exists(log_csv))
            if board is not None:
                board.epoch(row)
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, params, opt_state, g, x[:1])
            if on_epoch is not None:
                on_epoch(epoch, row)
            if verbose:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
                print(f"epoch {epoch}/{epochs}  {shown}  ({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    finally:
        if board is not None:
            board.close()
    model.params = history.params = params
    history.opt_state = opt_state
    return history


class MetricsLog:
    """`log_dir/metrics.csv` always, plus TensorBoard event files when tensorboardX is installed
    (imported lazily; without it a one-line hint says how to get them).

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); log = MetricsLog(d, tensorboard=False)
    >>> log.epoch({"epoch": 1.0, "loss": 0.5}); log.close()
    >>> open(os.path.join(d, "metrics.csv")).read().split()
    ['epoch,loss', '1,0.5']
    """

    def __init__(self, log_dir: str, tensorboard: bool = True):
        os.makedirs(log_dir, exist_ok=True)
        self.csv_path = os.path.join(log_dir, "metrics.csv")
        self._header = not os.path.exists(self.csv_path)
        self.writer = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                print(TENSORBOARD_HINT.format(dir=log_dir), file=sys.stderr)
            else:
                self.writer = SummaryWriter(log_dir)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard scalar (nothing without tensorboardX)."""
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def epoch(self, row: dict[str, float]) -> None:
        """One epoch's metrics: a CSV row, and a scalar per metric at step `row["epoch"]`."""
        _append_csv(self.csv_path, row, header=self._header)
        self._header = False
        for k, v in row.items():
            if k != "epoch":
                self.scalar(k, v, int(row["epoch"]))

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _append_csv(path: str, row: dict[str, float], header: bool) -> bool:
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(list(row))
        w.writerow([f"{v:.8g}" for v in row.values()])
    return True
