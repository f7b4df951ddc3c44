"""The standalone runtime: saved models run like `ir.interpret`, with the traced pytrees, checked
inputs, many threads, a memory plan, a profile, and no import of the rest of castml."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ir
import runtime
import tracer
from exporters.castml_format import save_castml, to_bytes
from tests.helpers import assert_agree, run_in_threads
from tracer import TensorSpec
from tracer import ops as nn

RNG = np.random.default_rng(0)
F32 = np.float32


def _w(*shape):
    return RNG.standard_normal(shape).astype(F32)


W1, B1, W2 = _w(6, 5), _w(5), _w(5, 3)
CONV_W, CONV_B = _w(4, 3, 3, 3), _w(4)
LN_W, LN_B = _w(6), _w(6)

# name -> (function, input specs with a "batch" symbol, concrete inputs for a batch size)
CASES = {
    "elementwise": (lambda x, y: np.tanh(x) * np.exp(-y) + np.sqrt(np.abs(x)) - x / (1.0 + y * y),
                    lambda b: [TensorSpec(("batch", 6)), TensorSpec(("batch", 6))],
                    lambda b: [_w(b, 6), _w(b, 6)]),
    "compare_where": (lambda x: np.where(x > 0.5, x, -x) + (x <= 0).astype(F32) + np.minimum(x, 0.1),
                      lambda b: [TensorSpec(("batch", 6))], lambda b: [_w(b, 6)]),
    "reductions": (lambda x: (x.sum(axis=1), x.mean(axis=0, keepdims=True), x.max(axis=-1), np.argmax(x, axis=1),
                              np.prod(x[:, :2], axis=1), x.min()),
                   lambda b: [TensorSpec(("batch", 6))], lambda b: [_w(b, 6)]),
    "indexing": (lambda x: (x[:, 1:4], x[::-1, 0], x[..., 2], x.T, x[:, [0, 2, 5]]),
                 lambda b: [TensorSpec(("batch", 6))], lambda b: [_w(b, 6)]),
    "reshape": (lambda x: (x.reshape(-1, 2, 3).sum(axis=2), np.concatenate([x, x * 2.0], axis=1).reshape(-1),
                           x[:, None, :][:, 0], np.transpose(x.reshape(-1, 3, 2), (0, 2, 1))),
                lambda b: [TensorSpec(("batch", 6))], lambda b: [_w(b, 6)]),
    "mlp": (lambda x: np.maximum(x @ W1 + B1, 0.0) @ W2, lambda b: [TensorSpec(("batch", 6))],
            lambda b: [_w(b, 6)]),
    "nn_ops": (lambda x: nn.softmax(nn.layer_norm(x, LN_W, LN_B), axis=-1), lambda b: [TensorSpec(("batch", 6))],
               lambda b: [_w(b, 6)]),
    "cnn": (lambda x: nn.max_pool2d(np.maximum(nn.conv2d(x, CONV_W, CONV_B, padding=1), 0.0), 2).reshape(-1, 16),
            lambda b: [TensorSpec(("batch", 3, 4, 4))], lambda b: [_w(b, 3, 4, 4)]),
    "int_ops": (lambda i: (i * 3 + 1, i // 2, i % 3, np.cumsum(i, axis=1)),
                lambda b: [TensorSpec(("batch", 4), np.int64)],
                lambda b: [RNG.integers(-9, 9, (b, 4))]),
    "pytree": (lambda p, x: {"h": np.maximum(x @ p["w"] + p["b"], 0.0), "n": [x.sum(), p["b"] * 2.0]},
               lambda b: [{"w": W1, "b": B1}, TensorSpec(("batch", 6))],
               lambda b: [{"w": _w(6, 5), "b": _w(5)}, _w(b, 6)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_model_runs_like_interpret(name, tmp_path):
    fn, specs, inputs = CASES[name]
    g = tracer.trace(fn, *specs(1))
    path = tmp_path / f"{name}.castml"
    save_castml(g, path)
    sess = runtime.load(path, verify=True, backend="numpy")  # same kernels as ir.interpret: identical bits
    for batch in (1, 7, 64):
        args = inputs(batch)
        got, ref = sess.run(*args), ir.interpret(g, *args)
        assert_agree(got, ref)
        for a, b in zip(*(runtime.pytree.flatten(t)[0] for t in (got, ref))):
            assert np.array_equal(a, b, equal_nan=True), "the same kernels must give identical bits"


def test_seed_example(tmp_path):
    p = tmp_path / "square.castml"
    save_castml(tracer.trace(lambda x: x * x, 2.0), p)
    assert runtime.load(p).run(3.0) == 9.0


def test_signature_keeps_symbols_and_names():
    g = tracer.trace(CASES["pytree"][0], *CASES["pytree"][1](1))
    sess = runtime.load(to_bytes(g))
    assert [tuple(i) for i in sess.inputs] == [("p.w", np.dtype(F32), (6, 5)), ("p.b", np.dtype(F32), (5,)),
                                               ("x", np.dtype(F32), ("batch", 6))]
    assert [(o.name, o.shape) for o in sess.outputs] == [("output.h", ("batch", 5)), ("output.n.0", ()),
                                                          ("output.n.1", (5,))]
    p, x = {"w": W1, "b": B1}, _w(3, 6)
    assert_agree(sess.run(x=x, p=p), ir.interpret(g, p, x))


def test_input_errors_name_the_input():
    g = tracer.trace(lambda x, y: x @ y, TensorSpec(("n", 3)), TensorSpec((3, "m")))
    sess = runtime.load(to_bytes(g))
    with pytest.raises(runtime.RuntimeInputError, match=r"input 'x'.*f32\[n,3\].*float64"):
        sess.run(np.zeros((2, 3)), np.zeros((3, 4), F32))
    with pytest.raises(runtime.RuntimeInputError, match=r"input 'y'.*f32\[3,m\]"):
        sess.run(np.zeros((2, 3), F32), np.zeros((4, 4), F32))
    with pytest.raises(runtime.RuntimeInputError, match=r"input 'x'.*rank 2"):
        sess.run(np.zeros(3, F32), np.zeros((3, 4), F32))
    with pytest.raises(runtime.RuntimeInputError, match=r"takes 2 arguments \(x, y\), got 1"):
        sess.run(np.zeros((2, 3), F32))
    with pytest.raises(runtime.RuntimeInputError, match="unexpected argument 'z'"):
        sess.run(np.zeros((2, 3), F32), z=1)
    g2 = tracer.trace(lambda x, y: x + y, TensorSpec(("n",)), TensorSpec(("n",)))
    with pytest.raises(runtime.RuntimeInputError, match=r"input 'y': dim 0 is 4 but n = 3"):
        runtime.load(to_bytes(g2)).run(np.zeros(3, F32), np.zeros(4, F32))


def test_several_entries():
    predict = tracer.trace(lambda x: x * 2.0, TensorSpec(("b",)))
    step = tracer.trace(lambda w, g: w - 0.1 * g, TensorSpec((3,)), TensorSpec((3,)))
    sess = runtime.load(to_bytes({"predict": predict, "train_step": step}))
    assert sess.entries == ["predict", "train_step"]
    w, gr = np.ones(3, F32), np.full(3, 2.0, F32)
    assert_agree(sess["train_step"].run(w, gr), np.full(3, 0.8, F32))
    assert_agree(sess["predict"].run(w), np.full(3, 2.0, F32))
    with pytest.raises(runtime.RuntimeInputError, match="no entry 'main'.*predict, train_step"):
        sess.run(w)
    with pytest.raises(runtime.RuntimeInputError, match="no entry 'nope'; the model has predict, train_step"):
        sess["nope"]


def test_threads_get_identical_results_and_outputs_are_owned(tmp_path):
    fn, specs, inputs = CASES["cnn"]
    p = tmp_path / "cnn.castml"
    save_castml(tracer.trace(fn, *specs(1)), p)
    sess = runtime.load(p)
    xs = [inputs(b) for b in (1, 2, 3, 5)]
    refs = [sess.run(*x) for x in xs]

    def work(k: int) -> None:
        for i in range(20):
            j = (k + i) % len(xs)
            assert np.array_equal(sess.run(*xs[j]), refs[j]), (k, i)

    errors = run_in_threads(work, 6)
    assert not errors, errors[0]
    # a constant output is copied out of the mmap: writable, and writing it changes nothing
    const = runtime.load(to_bytes(tracer.trace(lambda x: (x, W1), TensorSpec((2,)))))
    _, w = const.run(np.zeros(2, F32))
    assert w.flags.writeable and not np.shares_memory(w, W1)
    w[:] = 0
    assert_agree(const.run(np.zeros(2, F32))[1], W1)


def test_memory_plan_is_near_the_liveness_bound():
    d = 64
    ws = [_w(d, d) for _ in range(6)]

    def deep(x):
        for w in ws:
            x = np.tanh(x @ w) + x
        return x

    sess = runtime.load(to_bytes(tracer.trace(deep, TensorSpec(("batch", d)))), backend="numpy")
    plan = sess.memory_plan(batch=32)
    assert plan.lower_bound_bytes >= 2 * 32 * d * 4  # a residual block holds two activations
    assert plan.lower_bound_bytes <= plan.peak_bytes <= 1.2 * plan.lower_bound_bytes
    for v, off in plan.offsets.items():  # buffers alive at the same time never overlap
        for u, off2 in plan.offsets.items():
            (a0, a1), (b0, b1) = plan.intervals[v], plan.intervals[u]
            if u != v and a0 <= b1 and b0 <= a1:
                assert off + plan.sizes[v] <= off2 or off2 + plan.sizes[u] <= off
    with pytest.raises(runtime.RuntimeInputError, match=r"memory_plan\(batch=1\)"):
        sess.memory_plan()


def test_profile_reports_every_op():
    fn, specs, inputs = CASES["mlp"]
    g = tracer.trace(fn, *specs(1))
    old = runtime.session.set_blas_threads(1)
    try:
        sess = runtime.load(to_bytes(g), profile=True, blas_threads=2)
        assert runtime.session.set_blas_threads(2) == 2
        for _ in range(3):
            sess.run(*inputs(4))
    finally:
        runtime.session.set_blas_threads(old)
    rows = sess.profile()
    assert sorted(r.kind for r in rows) == sorted(op.kind for op in g.ops)
    assert all(r.calls == 3 and r.seconds >= 0 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r.seconds)
    with pytest.raises(runtime.CastmlError, match="profile=True"):
        runtime.load(to_bytes(g)).profile()


@pytest.mark.parametrize("backend", ["numpy", "native", "auto"])
def test_runtime_imports_nothing_else_of_ours(tmp_path, backend):
    """Both backends run a model with tracer/ir/exporters/onnx blocked; "auto" picks the native one
    once it is built (pip install -e . builds it; build() is a no-op then)."""
    if backend != "numpy":
        from runtime.native.build import build

        build()
    fn, specs, inputs = CASES["cnn"]
    g = tracer.trace(fn, *specs(1))
    p = tmp_path / "m.castml"
    save_castml(g, p)
    x = inputs(2)[0]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", ir.interpret(g, x))
    code = textwrap.dedent(f"""
        import sys
        for name in ("tracer", "ir", "exporters", "onnx", "onnxruntime", "models", "castml_cli"):
            sys.modules[name] = None
        import numpy as np
        import runtime
        sess = runtime.load({str(p)!r}, verify=True, backend={backend!r})
        assert sess.backend == {"numpy" if backend == "numpy" else "native"!r}, sess.backend
        y = sess.run(np.load({str(tmp_path / 'x.npy')!r}))
        ref = np.load({str(tmp_path / 'ref.npy')!r})  # BLAS thread counts may differ: the tolerance rule
        assert np.all(np.abs(y - ref) <= 1e-4 * np.abs(ref) + 1e-5 * np.abs(ref).max())
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tracer", "ir", "exporters", "onnx")
                        and sys.modules[m] is not None)
        assert not leaked, leaked
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                       env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1])})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_jit_traces_once_per_signature():
    calls = []

    def f(x, scale, n):
        calls.append(1)
        return np.maximum(x * scale, 0.0).sum(axis=n)

    jf = tracer.jit(f, static_argnums=2)
    x = _w(4, 3)
    assert_agree(jf(x, 2.0, 1), f(x, 2.0, 1))
    assert_agree(jf(x * 3, 5.0, 1), f(x * 3, 5.0, 1))
    assert jf.cache_size == 1
    assert_agree(jf(x, 2.0, 0), f(x, 2.0, 0))  # another static value
    y = _w(7, 3)
    assert_agree(jf(y, 2.0, 1), f(y, 2.0, 1))  # another shape
    assert jf.cache_size == 3
    assert_agree(jf(x=x.astype(np.float64), scale=2.0, n=1), f(x.astype(np.float64), 2.0, 1))
    assert jf.cache_size == 4


def test_jit_decorator_runs_nn_code():
    @tracer.jit
    def lenet(x):
        return nn.softmax(nn.max_pool2d(np.maximum(nn.conv2d(x, CONV_W, CONV_B, padding=1), 0.0), 2).reshape(
            x.shape[0], -1) @ _FC, axis=-1)

    x = _w(2, 3, 4, 4)
    ref = nn.softmax(nn.max_pool2d(np.maximum(nn.conv2d(x, CONV_W, CONV_B, padding=1), 0.0), 2).reshape(2, -1) @ _FC)
    assert_agree(lenet(x), ref)


_FC = _w(16, 5)
