"""Durability and determinism under heavy use.

- A save killed with SIGKILL at a random point leaves the old file or the new one, never a torn
  one (`exporters.save` writes a temp file, fsyncs and renames), and the next clean save removes
  the temp files the killed ones left; concurrent savers never remove each other's.
- The same graph gives the same bytes in another process and under other PYTHONHASHSEED values.
- One `Session` shared by 8 threads, 1,000 calls each, gives bit-identical results to serial runs.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import exporters
import runtime
import tracer
from exporters import atomic
from exporters.castml_format import to_bytes
from models import zoo
from tracer import TensorSpec
from tracer import ops as nn

ROOT = Path(__file__).resolve().parents[1]
KILLS = 100


def _zoo_graph(name: str, scale: float = 1.0):
    fn, (x, params) = zoo.MODELS[name].build(seed=0)
    params = params if scale == 1.0 else _scaled(params, scale)
    return tracer.trace(lambda x: fn(x, params), TensorSpec(("batch",) + x.shape[1:], x.dtype)), x


def _scaled(tree, scale: float):
    if isinstance(tree, dict):
        return {k: _scaled(v, scale) for k, v in tree.items()}
    return (np.asarray(tree) * np.float32(scale)).astype(np.asarray(tree).dtype)


def _save_forever(path: str, graphs: list, counter, started) -> None:
    """The child: save the graphs in turn to `path` until killed, counting completed saves."""
    started.value = 1  # kills are timed from here, so a slow fork cannot eat the whole window
    i = 0
    while True:
        exporters.save(graphs[i % len(graphs)], path)
        counter.value += 1  # (a RawValue: no lock a kill could leave held)
        i += 1


@pytest.mark.parametrize("suffix", [".castml", ".onnx"])
def test_sigkill_during_save_leaves_the_old_or_the_new_file(tmp_path, suffix):
    old, _ = _zoo_graph("mlp")
    new, _ = _zoo_graph("mlp", scale=-2.0)  # same structure, other weights: a torn mix would differ
    path = str(tmp_path / f"model{suffix}")
    versions = {}
    for g in (old, new):
        exporters.save(g, path)
        versions[Path(path).read_bytes()] = g
    assert len(versions) == 2
    t0 = time.monotonic()
    exporters.save(old, path)
    window = 3 * (time.monotonic() - t0)  # kills land anywhere in the first ~3 saves
    ctx = mp.get_context("fork")  # a child that already imported everything: kills land in saves
    counter = ctx.RawValue("q", 0)
    rng = random.Random(0)
    seen = set()
    deadline = time.monotonic() + 180
    for k in range(KILLS):
        started = ctx.RawValue("b", 0)
        done_before = counter.value
        child = ctx.Process(target=_save_forever, args=(path, [new, old], counter, started), daemon=True)
        child.start()
        while not started.value and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.0005)
        if k % 10 == 9:  # every tenth child first completes a save, then is killed at a random point
            while counter.value == done_before and child.is_alive() and time.monotonic() < deadline:
                time.sleep(0.0005)  # (a save's time varies with fsync: a fixed window alone may never reach one)
        time.sleep(rng.uniform(0.0, window))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        data = Path(path).read_bytes()
        assert data in versions, f"torn file after a kill: {len(data)} bytes match neither version"
        seen.add(data)
        assert time.monotonic() < deadline
    assert len(seen) == 2 and counter.value > 0, "no save completed between the kills: the test proves nothing"
    back = exporters.load(path)
    x = np.ones((3, 784), np.float32)
    ref = versions[Path(path).read_bytes()]
    assert np.array_equal(runtime.load(to_bytes(back)).run(x), runtime.load(to_bytes(ref)).run(x))
    # kills between creating the temp file and the rename leave it behind; one more (deterministic)
    # leftover of a dead writer, so the clean-up is tested even when no kill hit that window
    litter = _temps(tmp_path)
    Path(tmp_path, atomic.temp_name(path, pid=DEAD_PID)).write_bytes(b"torn")
    exporters.save(new, path)
    assert Path(path).read_bytes() in versions
    assert _temps(tmp_path) == [], f"the clean save left temp files ({len(litter)} after the kills)"
    assert sorted(os.listdir(tmp_path)) == [f"model{suffix}"]


DEAD_PID = 2**22 + 1  # above Linux's largest pid_max: no process has it


def _temps(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def _save_n_times(path: str, g, n: int, seen_foreign) -> None:
    """A concurrent saver; notes whether it ever saw another writer's temp file (a real overlap)."""
    me = str(os.getpid())
    for _ in range(n):
        exporters.save(g, path)
        if any(t.split(".")[-4] != me for t in _temps(os.path.dirname(path))):
            seen_foreign.value = 1


def test_clean_up_spares_live_writers_and_other_hosts(tmp_path):
    target = str(tmp_path / "m.castml")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"dead": atomic.temp_name(target, pid=DEAD_PID), "live": atomic.temp_name(target, pid=live.pid),
                 "mine": atomic.temp_name(target),
                 "other host": f".m.castml.{DEAD_PID}.0badc0de.12345678.tmp",
                 "other target": atomic.temp_name(str(tmp_path / "m.castml.1"), pid=DEAD_PID),
                 "user file": ".m.castml.backup.tmp"}
        assert atomic._HOST != "0badc0de"
        for n in names.values():
            (tmp_path / n).write_bytes(b"x")
        exporters.save(tracer.trace(lambda x: x + 1.0, 1.0), target)
        left = set(os.listdir(tmp_path))
        assert names["dead"] not in left
        assert {names[k] for k in ("live", "mine", "other host", "other target", "user file")} <= left
        live.kill()
        live.wait()
        exporters.save(tracer.trace(lambda x: x + 2.0, 1.0), target)
        assert names["live"] not in set(os.listdir(tmp_path))  # its writer is gone now
    finally:
        live.kill()
        live.wait()


def test_concurrent_savers_never_remove_each_others_temp_files(tmp_path):
    path = str(tmp_path / "model.castml")
    graphs = [_zoo_graph("mlp", scale=s)[0] for s in (1.0, -1.0, 0.5)]
    valid = set()
    for g in graphs:
        exporters.save(g, path)
        valid.add(Path(path).read_bytes())
    Path(tmp_path, atomic.temp_name(path, pid=DEAD_PID)).write_bytes(b"stale")
    ctx = mp.get_context("fork")
    overlap = ctx.RawValue("b", 0)
    savers = [ctx.Process(target=_save_n_times, args=(path, g, 15, overlap)) for g in graphs]
    for p in savers:
        p.start()
    for p in savers:
        p.join(timeout=120)
    assert [p.exitcode for p in savers] == [0, 0, 0], "a saver failed: another one removed its temp file?"
    assert Path(path).read_bytes() in valid
    assert _temps(tmp_path) == []
    assert overlap.value, "the savers never overlapped: the test proves nothing"


_DIGEST_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    sys.path.insert(0, {root!r})
    from tests.test_durability import digests
    print(digests())
""")


def digests() -> str:
    """sha256 of every exporter's bytes for a few graphs (pytree inputs, names, metadata, zoo)."""
    rng = np.random.default_rng(3)
    w = {"b": rng.standard_normal(5).astype(np.float32), "a": rng.standard_normal((6, 5)).astype(np.float32)}
    cw = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    graphs = {
        "pytree": tracer.trace(lambda p, x: {"z": np.tanh(x @ p["a"] + p["b"]), "a": [x.sum(axis=1)]}, w,
                               TensorSpec(("batch", 6))),
        "cnn": tracer.trace(lambda x: nn.softmax(nn.max_pool2d(nn.conv2d(x, cw, padding=1), 2).reshape(-1, 8)),
                            TensorSpec(("n", 3, 4, 4))),
        "lenet": _zoo_graph("lenet")[0],
    }
    graphs["pytree"].metadata = {"zeta": "1", "alpha": "2", "mid": "3"}
    out = []
    for name, g in graphs.items():
        out.append(f"{name}.castml:{hashlib.sha256(to_bytes(g)).hexdigest()}")
        out.append(f"{name}.onnx:{hashlib.sha256(exporters.to_onnx(g).SerializeToString()).hexdigest()}")
    out.append("several.castml:" + hashlib.sha256(to_bytes(dict(sorted(graphs.items(), reverse=True)))).hexdigest())
    return " ".join(out)


def test_same_graph_same_bytes_across_processes_and_hash_seeds():
    here = digests()
    assert digests() == here
    for seed in ("0", "1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        got = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT.format(root=str(ROOT))], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr[-2000:]
        assert got.stdout.strip() == here, f"PYTHONHASHSEED={seed} gave other bytes"


def test_one_session_from_8_threads_matches_serial_runs():
    rng = np.random.default_rng(5)
    w1, w2 = rng.standard_normal((6, 16)).astype(np.float32), rng.standard_normal((16, 3)).astype(np.float32)
    g = tracer.trace(lambda x: {"p": nn.softmax(np.maximum(x @ w1, 0.0) @ w2, axis=-1), "s": (x * x).sum(axis=1)},
                     TensorSpec(("batch", 6)))
    sess = runtime.load(to_bytes(g))
    inputs = [rng.standard_normal((1 + k % 5, 6)).astype(np.float32) for k in range(64)]
    serial = [sess.run(x) for x in inputs]
    threads, calls = 8, 1000
    mismatches: list[str] = []
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for c in range(calls):
                k = (t * 7 + c) % len(inputs)
                got = sess.run(inputs[k])
                if not all(np.array_equal(got[n], serial[k][n]) for n in ("p", "s")):
                    mismatches.append(f"thread {t} call {c} input {k}")
        except BaseException as e:  # surfaced below: a thread's exception must fail the test
            errors.append(e)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    t0 = time.monotonic()
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in pool), "a thread hung"
    assert not errors, errors[:3]
    assert not mismatches, mismatches[:5]
    assert time.monotonic() - t0 < 60
