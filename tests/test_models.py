"""models/: layers (eager vs traced, against independent NumPy references), losses, optimizers,
the traced training step against a hand-written NumPy step, `fit` (CSV log, checkpoint), and a
real task (scikit-learn's digits) when scikit-learn is installed."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import ir
import tracer
from models import layers as nn
from models import losses, optim
from models.training import buffers_of, build_train_step, call_graph, fit
from tests.helpers import assert_agree

RNG = np.random.default_rng(0)


def _traced_agrees(module, x, train=False):
    """Trace module.apply with a symbolic batch; compare with eager at this batch and another."""
    params = module.params
    g = tracer.trace(lambda p, x: module.apply(p, x, train=train), params,
                     tracer.TensorSpec(("batch",) + x.shape[1:], x.dtype))
    for xb in (x, np.concatenate([x, x[:1]])):
        assert_agree(ir.interpret(g, params, xb), module.apply(params, xb, train=train))
    return g


def test_linear_and_sequential_match_numpy():
    m = nn.Sequential([nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3, bias=False)])
    p = m.init(seed=3, dtype=np.float64)
    x = RNG.standard_normal((6, 5))
    ref = np.maximum(x @ p["0"]["weight"] + p["0"]["bias"], 0) @ p["2"]["weight"]
    assert_agree(m(x), ref)
    assert set(p) == {"0", "2"} and "bias" not in p["2"]
    _traced_agrees(m, x)


def test_init_is_seeded_and_cast():
    a, b, c = (nn.Linear(3, 2).init(s) for s in (0, 0, 1))
    assert_agree(a, b)
    assert not np.array_equal(a["weight"], c["weight"])
    assert a["weight"].dtype == np.float32
    assert np.abs(a["weight"]).max() <= 1 / np.sqrt(3)


def _conv_ref(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out + b.reshape(1, -1, 1, 1)


def test_conv_pool_flatten_match_numpy():
    m = nn.Sequential([nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.MaxPool2d(2), nn.Flatten()])
    p = m.init(seed=1, dtype=np.float64)
    x = RNG.standard_normal((2, 2, 8, 8))
    conv = _conv_ref(x, p["0"]["weight"], p["0"]["bias"], 2, 1)
    pooled = conv.reshape(2, 3, 2, 2, 2, 2).max(axis=(3, 5))
    assert_agree(m(x), pooled.reshape(2, -1))
    g = _traced_agrees(m, x)
    assert g.outputs[0].type.shape == ("batch", 12)


def test_batchnorm_eval_and_train():
    bn = nn.BatchNorm2d(3, momentum=0.25)
    p = bn.init(0, np.float64)
    p.update(weight=RNG.uniform(0.5, 2, 3), bias=RNG.standard_normal(3), running_mean=RNG.standard_normal(3),
             running_var=RNG.uniform(0.5, 2, 3))
    x = RNG.standard_normal((4, 3, 5, 5)) * 2 + 1
    r = lambda a: a.reshape(1, -1, 1, 1)  # noqa: E731
    ref_eval = (x - r(p["running_mean"])) / np.sqrt(r(p["running_var"]) + 1e-5) * r(p["weight"]) + r(p["bias"])
    assert_agree(bn.apply(p, x), ref_eval)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    ref_train = (x - r(mean)) / np.sqrt(r(var) + 1e-5) * r(p["weight"]) + r(p["bias"])
    y, upd = bn.apply_with_updates(p, x, train=True)
    assert_agree(y, ref_train)
    assert_agree(upd, {"running_mean": 0.75 * p["running_mean"] + 0.25 * mean,
                       "running_var": 0.75 * p["running_var"] + 0.25 * var})
    bn.params = p
    _traced_agrees(bn, x, train=True)
    _traced_agrees(bn, x, train=False)
    assert nn.trainable(p).keys() == {"weight", "bias"}
    assert buffers_of({"bn": p})["bn"].keys() == {"running_mean", "running_var"}


def test_layernorm_embedding_dropout():
    ln = nn.LayerNorm(4)
    p = ln.init(0, np.float64)
    assert_agree(p, {"weight": np.ones(4), "bias": np.zeros(4)})
    p.update(weight=RNG.standard_normal(4), bias=RNG.standard_normal(4))
    x = RNG.standard_normal((3, 2, 4))
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * p["weight"] + p["bias"]
    assert_agree(ln(x), ref)
    _traced_agrees(ln, x)
    emb = nn.Embedding(10, 4)
    w = emb.init(2)["weight"]
    ids = np.array([[1, 9], [0, 1]])
    assert_agree(emb(ids), w[ids])
    g = tracer.trace(lambda p, i: emb.apply(p, i), emb.params, tracer.TensorSpec(("batch", 2), np.int64))
    assert_agree(ir.interpret(g, emb.params, ids), w[ids])
    drop = nn.Dropout(0.25, seed=1)
    x = np.ones((200, 50))
    assert_agree(drop(x), x)
    y = drop(x, train=True)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8 and np.allclose(y[kept], 1 / 0.75)
    with pytest.raises(tracer.TraceError, match="Dropout"):
        tracer.trace(lambda x: drop.apply({}, x, train=True), x)
    with pytest.raises(nn.ModelError):
        nn.Dropout(1.0)


def test_multihead_attention_matches_numpy():
    mha = nn.MultiHeadAttention(8, 2)
    p = mha.init(4, np.float64)
    x = RNG.standard_normal((3, 5, 8))

    def proj(name, a):
        return a @ p[name]["weight"] + p[name]["bias"]

    q, k, v = (proj(n, x).reshape(3, 5, 2, 4) for n in "qkv")
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ref = proj("o", np.einsum("bhqk,bkhd->bqhd", a, v).reshape(3, 5, 8))
    assert_agree(mha(x), ref)
    _traced_agrees(mha, x)
    with pytest.raises(nn.ModelError, match="divide"):
        nn.MultiHeadAttention(8, 3)


def test_transformer_layer_traces():
    layer = nn.TransformerEncoderLayer(8, 2, 16)
    layer.init(0, np.float64)
    _traced_agrees(layer, RNG.standard_normal((2, 4, 8)))


def test_losses():
    logits = RNG.standard_normal((5, 4)) * 10
    labels = np.array([0, 3, 1, 1, 2])
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    assert_agree(losses.cross_entropy(logits, labels), np.mean(lse - logits[np.arange(5), labels]))
    big = np.array([[1e4, 0.0], [0.0, 1e4]])
    assert np.isfinite(losses.cross_entropy(big, np.array([1, 0])))
    g = tracer.trace(losses.cross_entropy, tracer.TensorSpec(("batch", 4), np.float64),
                     tracer.TensorSpec(("batch",), np.int64))
    assert_agree(ir.interpret(g, logits, labels), losses.cross_entropy(logits, labels))
    assert_agree(losses.mse(logits, logits + 2.0), np.float64(4.0))


def _sgd_ref(p, g, buf, lr, mom, wd):
    g = g + wd * p
    buf = mom * buf + g
    return p - lr * buf, buf


def test_sgd_and_adam_match_torch_formulas():
    p0 = {"w": RNG.standard_normal((3, 2)), "b": RNG.standard_normal(2)}
    grads = [{k: RNG.standard_normal(v.shape) for k, v in p0.items()} for _ in range(3)]
    sgd = optim.SGD(0.1, momentum=0.9, weight_decay=0.01)
    p, s = p0, sgd.init(p0)
    ref, buf = dict(p0), {k: 0 * v for k, v in p0.items()}
    for g in grads:
        p, s = sgd.update(p, g, s)
        for k in ref:
            ref[k], buf[k] = _sgd_ref(ref[k], g[k], buf[k], 0.1, 0.9, 0.01)
    assert_agree(p, ref)
    adam = optim.Adam(0.01, betas=(0.8, 0.99), eps=1e-8)
    p, s = p0, adam.init(p0)
    ref, m, v = dict(p0), {k: 0 * x for k, x in p0.items()}, {k: 0 * x for k, x in p0.items()}
    for t, g in enumerate(grads, 1):
        p, s = adam.update(p, g, s)
        for k in ref:
            m[k] = 0.8 * m[k] + 0.2 * g[k]
            v[k] = 0.99 * v[k] + 0.01 * g[k] ** 2
            ref[k] = ref[k] - 0.01 * (m[k] / (1 - 0.8 ** t)) / (np.sqrt(v[k] / (1 - 0.99 ** t)) + 1e-8)
    assert_agree(p, ref)
    assert float(s["step"]) == 3.0


def _mlp_numpy_step(p, buf, x, y, lr, mom, wd):
    """One SGD step on Linear-ReLU-Linear + cross-entropy, backward derived by hand."""
    z1 = x @ p["0"]["weight"] + p["0"]["bias"]
    h = np.maximum(z1, 0)
    logits = h @ p["2"]["weight"] + p["2"]["bias"]
    e = np.exp(logits - logits.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    n = len(x)
    loss = -np.mean(np.log(prob[np.arange(n), y]))
    d = prob.copy()
    d[np.arange(n), y] -= 1
    d /= n
    dz1 = (d @ p["2"]["weight"].T) * (z1 > 0)
    grads = {"0": {"weight": x.T @ dz1, "bias": dz1.sum(0)}, "2": {"weight": h.T @ d, "bias": d.sum(0)}}
    new_p, new_buf = {}, {}
    for k in p:
        new_p[k], new_buf[k] = {}, {}
        for n_ in p[k]:
            new_p[k][n_], new_buf[k][n_] = _sgd_ref(p[k][n_], grads[k][n_], buf[k][n_], lr, mom, wd)
    return loss, new_p, new_buf


@pytest.mark.parametrize("engine", ["interpret", "runtime"])
def test_traced_train_step_matches_numpy_reference(engine):
    from models.training import _compile

    m = nn.Sequential([nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)])
    p = m.init(seed=5, dtype=np.float64)
    opt = optim.SGD(0.2, momentum=0.9, weight_decay=1e-3)
    state = opt.init(p)
    x, y = RNG.standard_normal((10, 6)), RNG.integers(0, 3, 10)
    g = build_train_step(m, losses.cross_entropy, opt, p, state, x[:1], y[:1])
    assert g.inputs[-2].type.shape == ("batch",) and g.inputs[-1].type.shape == ()
    step = _compile(g, engine)
    ref_p, ref_buf = p, state["momentum"]
    for i in range(4):
        xb, yb = x[i * 3:i * 3 + 4], y[i * 3:i * 3 + 4]  # batches of 4, the last of 1
        loss, p, bufs, state = step(p, {}, state, xb, yb, np.int64(i))
        ref_loss, ref_p, ref_buf = _mlp_numpy_step(ref_p, ref_buf, xb, yb, 0.2, 0.9, 1e-3)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-12)
        for a, b in zip(_leaves(p) + _leaves(state), _leaves(ref_p) + _leaves(ref_buf)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)


def _leaves(tree):
    from runtime import pytree

    return pytree.flatten(tree)[0]


def test_call_graph_inlines_and_checks_arity():
    sq = tracer.trace(lambda x, y: x * y, 1.0, 2.0)
    h = tracer.trace(lambda a: call_graph(sq, a, a + 1.0), 1.0)
    assert float(ir.interpret(h, 3.0)) == 12.0
    with pytest.raises(nn.ModelError, match="input leaves"):
        tracer.trace(lambda a: call_graph(sq, a), 1.0)
    with pytest.raises(nn.ModelError, match="inside tracer.trace"):
        call_graph(sq, 1.0, 2.0)


def test_fit_with_batchnorm_logs_and_checkpoints(tmp_path, capsys):
    runtime = pytest.importorskip("runtime")
    m = nn.Sequential([nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                       nn.Flatten(), nn.Linear(16, 2)])
    m.init(0)
    x = RNG.standard_normal((40, 1, 4, 4)).astype(np.float32)
    y = (x[:, 0].sum(axis=(1, 2)) > 0).astype(np.int64)
    x[:, 0] += 3.0  # so the running mean must move
    log, ckpt = tmp_path / "log.csv", tmp_path / "m.castml"
    h = fit(m, "cross_entropy", optim.Adam(0.05), (x, y), epochs=12, val_data=(x, y), batch_size=16,
            log_csv=str(log), checkpoint=str(ckpt))
    assert "epoch 12/12" in capsys.readouterr().err
    assert h.metrics["loss"][-1] < 0.8 * h.metrics["loss"][0], h.metrics["loss"]
    assert 0.0 <= h.metrics["val_accuracy"][-1] <= 1.0
    rows = list(csv.DictReader(open(log)))
    assert [r["epoch"] for r in rows] == [str(i) for i in range(1, 13)] and "val_loss" in rows[0]
    assert abs(float(m.params["1"]["running_mean"].mean()) - 0.0) > 0.05  # moved from its initial 0
    sess = runtime.load(str(ckpt))
    assert set(sess.entries) == {"predict", "train_step", "state"}
    assert_agree(sess["predict"].run(x[:7]), m.apply(m.params, x[:7]))
    params, bufs, _ = sess["state"].run()
    assert_agree(nn.merge(bufs, params), m.params)


def test_train_step_updates_batchnorm_buffers():
    m = nn.Sequential([nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2)])
    p = m.init(1, np.float64)
    x, y = RNG.standard_normal((5, 1, 4, 4)) + 2.0, RNG.integers(0, 2, 5)
    opt = optim.SGD(0.1)
    g = build_train_step(m, losses.cross_entropy, opt, p, {}, x[:1], y[:1])
    loss, new_p, new_bufs, _ = ir.interpret(g, nn.trainable(p), buffers_of(p), {}, x, y, np.int64(0))
    _, upd = m.apply_with_updates(p, x, train=True)
    assert_agree(new_bufs, upd)
    assert_agree(loss, losses.cross_entropy(m.apply(p, x, train=True), y))
    assert set(new_p["1"]) == {"weight", "bias"}


def _digits(images: bool):
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], shuffled; (x, y, split index)."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.images[:, None] if images else digits.data) / 16.0
    order = np.random.default_rng(0).permutation(len(x))
    return x[order].astype(np.float32), digits.target[order].astype(np.int64), int(0.8 * len(x))


def test_digits_cnn_reaches_95_percent():
    x, y, split = _digits(images=True)
    m = nn.Sequential([nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                       nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10)])
    m.init(0)
    h = fit(m, losses.cross_entropy, optim.Adam(0.01), (x[:split], y[:split]), epochs=8,
            val_data=(x[split:], y[split:]), batch_size=32, verbose=False)
    assert h.metrics["val_accuracy"][-1] >= 0.95, h.metrics["val_accuracy"]


def test_digits_mlp_reaches_95_percent(tmp_path):
    x, y, split = _digits(images=False)
    m = nn.Sequential([nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)])
    m.init(0)
    h = fit(m, losses.cross_entropy, optim.SGD(0.1, momentum=0.9), (x[:split], y[:split]), epochs=15,
            val_data=(x[split:], y[split:]), batch_size=32, verbose=False)
    assert h.metrics["val_accuracy"][-1] >= 0.95, h.metrics["val_accuracy"]
    # the exported model predicts the same in our runtime and in onnxruntime
    runtime = pytest.importorskip("runtime")
    ort = pytest.importorskip("onnxruntime")
    m.export(str(tmp_path / "digits.castml"), x)
    m.export(str(tmp_path / "digits.onnx"), x)
    ref = m.apply(m.params, x[split:])
    ours = runtime.load(str(tmp_path / "digits.castml")).run(x[split:])
    sess = ort.InferenceSession(str(tmp_path / "digits.onnx"), providers=["CPUExecutionProvider"])
    (theirs,) = sess.run(None, {sess.get_inputs()[0].name: x[split:]})
    assert_agree(ours, ref)
    assert_agree(theirs, ref)
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))


# --- Dropout in traced training steps ----------------------------------------------------------------------------

def test_traced_dropout_step_draws_a_new_mask_per_seed_and_matches_eager():
    from models.rng import seed_scope

    m = nn.Sequential([nn.Linear(4, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 1)])
    p = m.init(2, np.float64)
    x, y = RNG.standard_normal((9, 4)), RNG.standard_normal((9, 1))
    opt = optim.SGD(0.1)
    g = build_train_step(m, losses.mse, opt, p, {}, x[:1], y[:1])
    assert "random_uniform" in [op.kind for op in g.ops] and g.arg_names[-1] == "seed"
    (l0, p0, _, _), (l1, _, _, _), (l0b, p0b, _, _) = (ir.interpret(g, p, {}, {}, x, y, np.int64(s)) for s in (0, 1, 0))
    assert l0 != l1 and l0 == l0b
    assert_agree(p0, p0b)
    with seed_scope(np.int64(1)):  # eager, same seed: the same mask as the traced step
        assert_agree(l1, losses.mse(m.apply(p, x, train=True), y))


def test_two_dropout_layers_draw_independent_masks():
    from models.rng import seed_scope

    m = nn.Sequential([nn.Dropout(0.5), nn.Dropout(0.5)])
    x = np.ones((100, 40), np.float32)
    with seed_scope(3):
        y = m.apply({}, x, train=True)
    assert y.dtype == np.float32 and set(np.unique(y).tolist()) <= {0.0, 4.0}
    assert 0.2 < np.mean(y != 0) < 0.3  # independent masks keep 1/4, equal ones 1/2


def test_fit_with_dropout_learns_and_uses_a_seed_per_step():
    from models.training import step_seed

    assert len({int(step_seed(s, i)) for s in (0, 1) for i in range(1000)}) == 2000
    x = RNG.standard_normal((64, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    m = nn.Sequential([nn.Linear(3, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 1)])
    m.init(0)
    h = fit(m, "mse", optim.Adam(0.02), (x, y), epochs=30, batch_size=16, verbose=False)
    assert h.metrics["loss"][-1] < 0.2 * h.metrics["loss"][0], h.metrics["loss"]


# --- TensorBoard and CSV logs ---------------------------------------------------------------------------------------

def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = _crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """Parse a TensorBoard event file: TFRecord framing (length, masked CRC32C of the length, data,
    masked CRC32C of the data), each record an `Event` protobuf."""
    import struct

    from tensorboardX.proto import event_pb2

    data, pos, out = open(path, "rb").read(), 0, {}
    while pos < len(data):
        header = data[pos:pos + 8]
        (n,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == _masked_crc(header)
        record = data[pos + 12:pos + 12 + n]
        assert struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] == _masked_crc(record)
        pos += 16 + n
        event = event_pb2.Event.FromString(record)
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_fit_writes_tensorboard_events_and_csv(tmp_path):
    pytest.importorskip("tensorboardX")
    x = RNG.standard_normal((40, 3)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)
    m = nn.Sequential([nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)])
    m.init(0)
    h = fit(m, "cross_entropy", optim.SGD(0.1), (x, y), epochs=3, val_data=(x, y), batch_size=16,
            verbose=False, log_dir=str(tmp_path / "run"))
    events = sorted((tmp_path / "run").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = _read_scalars(events[0])
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3]
    assert_agree(np.array([v for _, v in scalars["loss"]], np.float32), np.array(h.metrics["loss"], np.float32))
    assert_agree(np.array([v for _, v in scalars["val_accuracy"]], np.float32),
                 np.array(h.metrics["val_accuracy"], np.float32))
    assert [s for s, _ in scalars["batch/loss"]] == list(range(1, 10))  # 3 epochs x 3 batches
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [float(r["loss"]) for r in rows] == pytest.approx(h.metrics["loss"], rel=1e-7)


def test_fit_without_tensorboardx_writes_csv_and_says_how(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes `import tensorboardX` fail
    m = nn.Linear(2, 1)
    m.init(0)
    fit(m, "mse", optim.SGD(0.1), (np.ones((4, 2), np.float32), np.ones((4, 1), np.float32)), epochs=2,
        verbose=False, log_dir=str(tmp_path))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'castml[train]'" in err and "tensorboardX" in err
    assert not list(tmp_path.glob("events.out.tfevents.*"))
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "metrics.csv"))] == ["1", "2"]


# --- GRU --------------------------------------------------------------------------------------------------------------

def test_gru_train_step_matches_finite_differences():
    from runtime import pytree

    m = nn.Sequential([nn.GRU(2, 3), nn.Linear(3, 2)])
    p = m.init(4, np.float64)
    x, y = RNG.standard_normal((4, 3, 2)), RNG.integers(0, 2, 4)
    g = build_train_step(m, losses.cross_entropy, optim.SGD(1.0), p, {}, x[:1], y[:1])
    loss, new_p, _, _ = ir.interpret(g, p, {}, {}, x, y, np.int64(0))
    leaves, tree = pytree.flatten(p)
    got = [a - b for a, b in zip(leaves, pytree.flatten(new_p)[0])]  # lr 1: the gradient

    def loss_at(ls):
        return losses.cross_entropy(m.apply(pytree.unflatten(tree, ls), x), y)

    assert_agree(loss, loss_at(leaves))
    for k, leaf in enumerate(leaves):
        fd = np.zeros_like(leaf)
        for i in np.ndindex(leaf.shape):
            for sign in (1, -1):
                bumped = [v.copy() for v in leaves]
                bumped[k][i] += sign * 1e-6
                fd[i] += sign * loss_at(bumped) / 2e-6
        np.testing.assert_allclose(got[k], fd, rtol=1e-5, atol=1e-8)


def test_gru_cell_and_errors():
    cell = nn.GRUCell(3, 2)
    p = cell.init(0, np.float64)
    assert {k: v.shape for k, v in p.items()} == {"weight_ih": (3, 6), "weight_hh": (2, 6), "bias_ih": (6,),
                                                  "bias_hh": (6,)}
    x, h = RNG.standard_normal((5, 3)), RNG.standard_normal((5, 2))
    gru = nn.GRU(3, 2)
    seq = gru.apply({"cell": p}, x[:, None, :])
    assert_agree(cell.apply(p, (x, np.zeros((5, 2)))), seq)
    assert cell.apply(p, (x, h)).shape == (5, 2)
    with pytest.raises(nn.ModelError, match=r"expected \(x, h\)"):
        cell.apply(p, x)
    with pytest.raises(nn.ModelError, match=r"expected input \(batch, seq, 3\)"):
        gru.apply({"cell": p}, x)


def test_call_graph_inlines_a_scripted_loop():
    m = nn.GRU(3, 4)
    p = m.init(0)
    g = tracer.trace(lambda x: m.apply(p, x), tracer.TensorSpec(("batch", "seq", 3), np.float32))
    assert "loop" in [op.kind for op in g.ops]
    h = tracer.trace(lambda x: call_graph(g, x) * 2.0, tracer.TensorSpec(("batch", "seq", 3), np.float32))
    x = RNG.standard_normal((2, 5, 3)).astype(np.float32)
    assert_agree(ir.interpret(h, x), 2.0 * m.apply(p, x))


def test_cli_demo_train_reaches_95_percent_and_engines_agree(tmp_path, capsys):
    pytest.importorskip("sklearn")
    import argparse

    from castml_cli import cmd_demo

    args = argparse.Namespace(out_dir=str(tmp_path), no_ir=False, train=True, epochs=15)
    assert cmd_demo.run(args) == 0
    captured = capsys.readouterr()
    assert captured.out.count("epoch ") == 15 and "epoch 15/15" in captured.out  # printed above the bar
    assert "same class for 360/360 images" in captured.out and "demo: all results agree" in captured.out
    assert (tmp_path / "digits.castml").exists() and (tmp_path / "digits.onnx").exists()
    assert (tmp_path / "logs" / "metrics.csv").exists()
