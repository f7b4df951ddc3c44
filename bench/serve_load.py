"""Loopback load test of `castml serve`: many keep-alive clients, valid and malformed requests.

Why: a server is judged under concurrent use, not one request at a time. This starts
`castml serve --port 0` as a subprocess, runs N client threads (one `http.client` keep-alive
connection each; raw sockets for what `http.client` cannot send) through a seeded mix of
requests, and checks every answer:

- valid `{"instances": ...}` (row format) and `{"inputs": ...}` (columnar) requests must be
  answered 200 with values that agree (DESIGN.md's rule) with the model run in-process;
- malformed ones — bad JSON, wrong dtype/shape, ragged lists, missing/unknown inputs and keys,
  JSON nested too deeply, unknown model name or verb, wrong method, oversized body (sent in
  full, or announced with `Expect: 100-continue`), truncated body, a body that stalls, invalid
  Content-Length, chunked framing, a garbage request line — must get their own 4xx with a JSON
  `{"error": ...}` body, and the server keeps serving;
- the server's RSS (`VmRSS` of /proc/PID/status, sampled through the run) must stay flat after
  warm-up, and it must print no traceback.

    PYTHONPATH=. python bench/serve_load.py --clients 20 --requests 10000 --seed 0

Prints requests/s, latency percentiles, the status histogram per request kind and RSS
start/after-warm-up/peak/end; exits 1 on any dropped or wrong valid answer, any malformed request
not answered its 4xx, or RSS growth beyond `--rss-growth-mb` after warm-up. (`tests/test_serve_load.py`
runs a slice of it.) Timings on a shared machine are noisy; the checks never depend on them.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "m"
FEATURES, HIDDEN, CLASSES = 16, 8, 3
MAX_BODY_MB = 0.25  # small, so oversized bodies are cheap to send
SERVER_TIMEOUT = 5.0  # the server's --timeout: idle connections and stalled bodies
CLIENT_TIMEOUT = 60.0  # a client gives up on an answer after this: counted as dropped
VALID_SHARE = 0.7
POOL = 64  # distinct valid payloads (with their references), reused across requests

# kind -> the status it must get; "valid" must get 200
MALFORMED = {
    "bad_json": 400, "wrong_dtype": 400, "wrong_shape": 400, "ragged": 400, "missing_input": 400,
    "unknown_input": 400, "no_instances_or_inputs": 400, "empty_instances": 400, "deep_nesting": 400,
    "empty_body": 400, "unknown_model": 404, "unknown_verb": 404, "put_predict": 405, "delete_predict": 405,
    "get_predict": 405, "post_metadata": 405, "oversized": 413, "oversized_expect": 413, "truncated": 400,
    "bad_content_length": 400, "chunked": 411, "garbage_line": 400,
}
STALLED = ("stalled", 408)  # a body that stops arriving: answered after SERVER_TIMEOUT, so only a few


def model_fn(x, p):
    """The served model: two outputs, a batched input and weight inputs (so `instances` carry both).

    >>> out = model_fn(np.ones((2, FEATURES), np.float32), weights(np.random.default_rng(0)))
    >>> out["probs"].shape, out["norm"].tolist()
    ((2, 3), [16.0, 16.0])
    """
    from tracer import ops as nn

    w2 = np.linspace(-1.0, 1.0, HIDDEN * CLASSES, dtype=np.float32).reshape(HIDDEN, CLASSES)
    return {"probs": nn.softmax(np.tanh(x @ p["w"] + p["b"]) @ w2, axis=-1), "norm": (x * x).sum(axis=1)}


def weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 weights for `model_fn`."""
    return {"w": rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32),
            "b": rng.standard_normal(HIDDEN).astype(np.float32)}


def build_model(folder: str):
    """Trace and save the model to `folder`/m.castml; the path and an in-process `Session`.

    >>> path, sess = build_model(tempfile.mkdtemp()); [t.name for t in sess.outputs]
    ['output.probs', 'output.norm']
    """
    import exporters
    import runtime
    import tracer
    from tracer import TensorSpec

    g = tracer.trace(model_fn, TensorSpec(("batch", FEATURES)),
                     {"w": TensorSpec((FEATURES, HIDDEN)), "b": TensorSpec((HIDDEN,))})
    path = os.path.join(folder, f"{MODEL}.castml")
    exporters.save(g, path)
    return path, runtime.load(path)


@dataclass
class Case:
    """One request: what to send, and what must come back."""

    kind: str
    status: int
    method: str = "POST"
    target: str = f"/v1/models/{MODEL}:predict"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent on a fresh socket instead of through http.client
    shut: bool = True  # raw: half-close after sending (a client that is done) or stall (False)
    ref: tuple[str, list[np.ndarray]] | None = None  # valid: format and reference output leaves


def _valid_pool(sess, rng: np.random.Generator) -> list[Case]:
    from runtime import pytree

    names = [t.name for t in sess.outputs]
    pool = []
    for k in range(POOL):
        n = int(rng.integers(1, 9))
        x = rng.standard_normal((n, FEATURES)).astype(np.float32)
        p = weights(rng)
        ref = [np.asarray(o) for o in pytree.flatten(sess.run(x, p))[0]]
        pj = {"w": p["w"].tolist(), "b": p["b"].tolist()}
        if k % 2:
            body = {"inputs": {"x": x.tolist(), "p": pj}}
        else:
            body = {"instances": [{"x": row.tolist(), "p": pj} for row in x]}
        fmt = "inputs" if k % 2 else "instances"
        pool.append(Case("valid", 200, body=json.dumps(body).encode(), ref=(fmt, ref)))
    assert len(names) == len(pool[0].ref[1])
    return pool


def _malformed(kind: str, rng: random.Random, good: dict[str, Any]) -> Case:
    """A malformed request of `kind` (see MALFORMED), built around a valid body `good`."""
    status = MALFORMED.get(kind, STALLED[1])
    predict = f"/v1/models/{MODEL}:predict"
    x = good["inputs"]["x"]
    p = good["inputs"]["p"]

    def body(obj: Any) -> Case:
        return Case(kind, status, body=json.dumps(obj).encode(), headers={"Content-Type": "application/json"})

    def raw(head: str, data: bytes = b"", shut: bool = True) -> Case:
        return Case(kind, status, raw=head.encode() + b"\r\n\r\n" + data, shut=shut)

    whole = json.dumps(good).encode()
    if kind == "bad_json":
        return Case(kind, status, body=whole[: rng.randrange(1, len(whole) - 1)] + b"}{")
    if kind == "wrong_dtype":
        return body({"inputs": {"x": [["a"] * FEATURES] * len(x), "p": p}})
    if kind == "wrong_shape":
        return body({"inputs": {"x": [row[:-1] for row in x], "p": p}})
    if kind == "ragged":
        return body({"inputs": {"x": [x[0], x[0][:-3]], "p": p}})
    if kind == "missing_input":
        return body({"inputs": {"x": x}})
    if kind == "unknown_input":
        return body({"inputs": {"x": x, "p": p, "extra": [1.0]}})
    if kind == "no_instances_or_inputs":
        return body(rng.choice([{"examples": x}, {"instances": [x[0]], "inputs": x}, [1, 2], "inputs"]))
    if kind == "empty_instances":
        return body({"instances": []})
    if kind == "deep_nesting":
        depth = rng.randrange(5_000, 50_000)
        return Case(kind, status, body=b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}")
    if kind == "empty_body":
        return Case(kind, status, body=b"")
    if kind == "unknown_model":
        return Case(kind, status, target="/v1/models/nope:predict", body=whole)
    if kind == "unknown_verb":
        return Case(kind, status, target=f"/v1/models/{MODEL}:" + rng.choice(["classify", "regress", "predikt"]),
                    body=whole)
    if kind == "put_predict":
        return Case(kind, status, method="PUT", body=whole)
    if kind == "delete_predict":
        return Case(kind, status, method="DELETE")
    if kind == "get_predict":
        return Case(kind, status, method="GET")
    if kind == "post_metadata":
        return Case(kind, status, target=f"/v1/models/{MODEL}/metadata", body=whole)
    limit = int(MAX_BODY_MB * 2**20)
    if kind == "oversized":
        pad = b" " * (limit + rng.randrange(1, 64 << 10) - len(whole))
        return Case(kind, status, body=whole + pad)
    if kind == "oversized_expect":
        return raw(f"POST {predict} HTTP/1.1\r\nHost: x\r\nContent-Length: {limit + rng.randrange(1, 2**40)}\r\n"
                   "Expect: 100-continue")
    if kind in ("truncated", "stalled"):
        cut = rng.randrange(0, len(whole))
        return raw(f"POST {predict} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(whole)}", whole[:cut],
                   shut=kind == "truncated")
    if kind == "bad_content_length":
        value = rng.choice(["12abc", "-5", "0x10", "", "1e3"])
        return raw(f"POST {predict} HTTP/1.1\r\nHost: x\r\nContent-Length: {value}", whole)
    if kind == "chunked":
        return raw(f"POST {predict} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
                   b"%x\r\n%s\r\n0\r\n\r\n" % (len(whole), whole))
    if kind == "garbage_line":
        return raw(rng.choice(["\x16\x03\x01garbage", "GET", "POST /v1 HTTP/9.x", "GET / HTTP/1.1 extra words"]))
    raise ValueError(f"unknown request kind {kind!r}; expected 'valid', 'stalled' or one of {', '.join(MALFORMED)}")


def make_cases(sess, requests: int, seed: int, stalls: int) -> list[Case]:
    """The seeded request mix: `requests` cases, about `VALID_SHARE` valid, `stalls` stalled bodies.

    >>> _, sess = build_model(tempfile.mkdtemp())
    >>> cases = make_cases(sess, 200, seed=0, stalls=1)
    >>> len(cases), sum(c.kind == "stalled" for c in cases), 100 < sum(c.kind == "valid" for c in cases) < 180
    (200, 1, True)
    """
    rng = random.Random(seed)
    pool = _valid_pool(sess, np.random.default_rng(seed))
    columnar = [json.loads(c.body) for c in pool if c.ref[0] == "inputs"]
    kinds = sorted(MALFORMED)
    cases = []
    for i in range(requests):
        if rng.random() < VALID_SHARE:
            cases.append(rng.choice(pool))
        else:  # every malformed kind at least once when there is room for it
            kind = kinds[i % len(kinds)] if i < 2 * len(kinds) else rng.choice(kinds)
            cases.append(_malformed(kind, rng, rng.choice(columnar)))
    for i in rng.sample(range(requests), min(stalls, requests)):
        cases[i] = _malformed(STALLED[0], rng, rng.choice(columnar))
    return cases


class Server:
    """`castml serve` in a subprocess; its address, pid and stderr log."""

    def __init__(self, model_path: str, folder: str, timeout: float = 120.0):
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log_path = os.path.join(folder, "serve.log")
        self.log = open(self.log_path, "wb")  # a file, not a pipe: an unread pipe would block the server
        self.proc = subprocess.Popen([sys.executable, "-m", "castml_cli.main", "serve", model_path, "--port", "0",
                                      "--max-body-mb", str(MAX_BODY_MB), "--timeout", str(SERVER_TIMEOUT)],
                                     cwd=folder, env=env, stdout=subprocess.PIPE, stderr=self.log)
        deadline = time.monotonic() + timeout
        line = b""
        while not line and time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
        words = line.decode().split()
        if len(words) < 4 or words[0] != "serving":
            self.close()
            raise RuntimeError(f"castml serve did not start: first line {line!r}; log:\n{self.stderr()[-2000:]}")
        url = words[3]
        hostport = url.split("/")[2]
        self.host, self.port = hostport.rsplit(":", 1)[0], int(hostport.rsplit(":", 1)[1])

    def rss(self) -> int | None:
        """The server's resident set size in bytes (None once it is gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def stderr(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


def _raw_exchange(host: str, port: int, case: Case) -> tuple[int, bytes]:
    """Send `case.raw` on a fresh socket; the status and body of the answer (read to EOF)."""
    with socket.create_connection((host, port), timeout=CLIENT_TIMEOUT) as s:
        s.sendall(case.raw)
        if case.shut:
            s.shutdown(socket.SHUT_WR)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        return resp.status, resp.read()


class Client:
    """One keep-alive connection, reopened when the server closes it (as `Connection: close` says)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.conn: http.client.HTTPConnection | None = None
        self.last = 0.0  # when the connection last answered
        self.idle_retries = 0

    def send(self, case: Case) -> tuple[int, bytes]:
        """The status and body of the answer to `case`; raises OSError/HTTPException if there is none."""
        if case.raw is not None:
            return _raw_exchange(self.host, self.port, case)
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=CLIENT_TIMEOUT)
            idle = time.monotonic() - self.last
            try:
                self.conn.request(case.method, case.target, body=case.body, headers=case.headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                # the server may close a connection idle for its --timeout before the request reached
                # it, as any HTTP server does; only then is resending right
                if attempt == 0 and reused and idle > 0.8 * SERVER_TIMEOUT:
                    self.idle_retries += 1
                    continue
                raise
            self.last = time.monotonic()
            if resp.will_close:
                self.conn.close()
                self.conn = None
            return resp.status, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def check(case: Case, status: int, data: bytes, names: list[str]) -> str | None:
    """What is wrong with the answer `status`/`data` to `case` (None when it is right)."""
    from tests.helpers import agree

    if case.kind != "valid":
        if status != case.status:
            return f"{case.kind}: expected {case.status}, got {status}: {data[:200]!r}"
        try:
            payload = json.loads(data) if case.method != "HEAD" else {"error": ""}
        except ValueError:
            return f"{case.kind}: the {status} answer is not JSON: {data[:200]!r}"
        if not isinstance(payload, dict) or not isinstance(payload.get("error"), str):
            return f"{case.kind}: the {status} answer has no \"error\" text: {data[:200]!r}"
        return None
    if status != 200:
        return f"valid {case.ref[0]} request answered {status}: {data[:300]!r}"
    fmt, ref = case.ref
    try:
        payload = json.loads(data)
        if fmt == "inputs":
            got = [np.asarray(payload["outputs"][n], np.float32) for n in names]
        else:
            got = [np.asarray([row[n] for row in payload["predictions"]], np.float32) for n in names]
    except (ValueError, KeyError, TypeError) as e:
        return f"valid {fmt} request: malformed answer ({type(e).__name__}: {e}): {data[:300]!r}"
    for n, g, r in zip(names, got, ref):
        ok, msg = agree(g, r)
        if not ok:
            return f"valid {fmt} request: output {n!r} disagrees with the in-process run: {msg}"
    return None


@dataclass
class Report:
    """What a run saw. `failures` empty means it passed."""

    requests: int = 0
    answered: int = 0
    seconds: float = 0.0
    statuses: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    failures: list[str] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)
    idle_retries: int = 0

    @property
    def valid_sent(self) -> int:
        return sum(self.statuses["valid"].values())

    def summary(self) -> str:
        """A human-readable summary."""
        lines = [f"{self.answered}/{self.requests} requests answered in {self.seconds:.1f} s "
                 f"({self.answered / max(self.seconds, 1e-9):.0f} requests/s)"]
        for group in ("valid", "malformed"):
            lat = np.asarray(self.latencies[group]) * 1e3
            if lat.size:
                p50, p90, p99 = np.percentile(lat, [50, 90, 99])
                lines.append(f"  latency {group:9s} ms: p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}  "
                             f"max {lat.max():.1f}  ({lat.size} requests)")
        total = collections.Counter()
        for c in self.statuses.values():
            total.update(c)
        lines.append("  status histogram: " + ", ".join(f"{k}: {v}" for k, v in sorted(total.items())))
        for kind in sorted(self.statuses):
            lines.append(f"    {kind:24s} " + ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses[kind].items())))
        if self.rss:
            mb = {k: v / 2**20 for k, v in self.rss.items()}
            lines.append(f"  server RSS MiB: start {mb['start']:.1f}, after warm-up {mb['warm']:.1f}, "
                         f"peak {mb['peak']:.1f}, end {mb['end']:.1f} "
                         f"(growth after warm-up {mb['end'] - mb['warm']:+.1f})")
        lines.append(f"  keep-alive reconnects after the server's idle timeout: {self.idle_retries}")
        lines.append(f"  failures: {len(self.failures)}")
        lines.extend(f"    {f}" for f in self.failures[:20])
        return "\n".join(lines)


def run_load(clients: int = 20, requests: int = 10_000, seed: int = 0, stalls: int = 3,
             rss_growth_mb: float = 64.0, watchdog: float = 1800.0, folder: str | None = None) -> Report:
    """Serve a model, send the request mix from `clients` threads, check every answer.

    >>> r = run_load(clients=2, requests=40, stalls=0); r.failures, r.answered
    ([], 40)
    """
    folder = folder or tempfile.mkdtemp(prefix="castml-serve-load-")
    path, sess = build_model(folder)
    names = [t.name for t in sess.outputs]
    cases = make_cases(sess, requests, seed, stalls)
    report = Report(requests=requests)
    server = Server(path, folder)
    lock = threading.Lock()
    next_case = iter(range(requests))
    done = [0]
    warmup = max(100, requests // 10)
    samples: list[tuple[int, int]] = []  # (requests done, rss)
    stop = threading.Event()
    deadline = time.monotonic() + watchdog

    def sample() -> None:
        while not stop.is_set():
            rss = server.rss()
            if rss is not None:
                samples.append((done[0], rss))
            stop.wait(0.05)

    def work() -> None:
        client = Client(server.host, server.port)
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = next(next_case, None)
                if i is None:
                    return
                case = cases[i]
                t0 = time.perf_counter()
                try:
                    status, data = client.send(case)
                except (OSError, http.client.HTTPException) as e:
                    problem = (f"{'dropped valid' if case.kind == 'valid' else case.kind} request #{i}: "
                               f"no answer ({type(e).__name__}: {e})")
                    status = None
                else:
                    problem = check(case, status, data, names)
                elapsed = time.perf_counter() - t0
                with lock:
                    done[0] += 1
                    report.answered += status is not None
                    report.statuses[case.kind][status or 0] += 1  # 0: no answer
                    report.latencies["valid" if case.kind == "valid" else "malformed"].append(elapsed)
                    if problem:
                        report.failures.append(problem)
        finally:
            client.close()
            with lock:
                report.idle_retries += client.idle_retries

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        report.rss["start"] = server.rss() or 0
        sampler.start()
        t0 = time.monotonic()
        threads = [threading.Thread(target=work, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + CLIENT_TIMEOUT)
        report.seconds = time.monotonic() - t0
        if any(t.is_alive() for t in threads) or done[0] < requests:
            report.failures.append(f"watchdog: {done[0]} of {requests} requests done after {watchdog:g} s")
        stop.set()
        sampler.join()
        time.sleep(0.2)
        report.rss["end"] = server.rss() or 0
        if server.proc.poll() is not None:
            report.failures.append(f"the server exited with {server.proc.returncode}")
        elif valid := [c for c in cases if c.kind == "valid"]:  # still serving after all that
            status, data = Client(server.host, server.port).send(valid[0])
            if check(valid[0], status, data, names):
                report.failures.append(f"a valid request after the run: {check(valid[0], status, data, names)}")
    finally:
        stop.set()
        server.close()
    warm = [rss for n, rss in samples if n >= warmup] or [report.rss["end"]]
    report.rss["warm"] = warm[0]
    report.rss["peak"] = max([rss for _, rss in samples] + [report.rss["start"], report.rss["end"]])
    growth = report.rss["end"] - report.rss["warm"]
    if growth > rss_growth_mb * 2**20:
        report.failures.append(f"server RSS grew by {growth / 2**20:.1f} MiB after warm-up "
                               f"(bound {rss_growth_mb:g} MiB): a leak?")
    log = server.stderr()
    if "Traceback" in log:
        at = log.index("Traceback")
        report.failures.append("the server printed a traceback:\n" + log[at:at + 2000])
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: run, print the summary, exit 1 on any failure."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stalls", type=int, default=3,
                    help=f"stalled bodies (each waits the server's {SERVER_TIMEOUT:g} s)")
    ap.add_argument("--rss-growth-mb", type=float, default=64.0, help="allowed RSS growth after warm-up")
    ap.add_argument("--watchdog", type=float, default=1800.0, help="give up after this many seconds")
    a = ap.parse_args(argv)
    report = run_load(a.clients, a.requests, a.seed, a.stalls, a.rss_growth_mb, a.watchdog)
    print(report.summary())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
