"""`castml serve` under concurrent load: a fixed-seed slice of bench/serve_load.py.

20 keep-alive clients send 1,000 requests, about 70% valid (`instances` and `inputs` formats,
answers compared with the model run in-process) and the rest malformed in every way the bench
knows (bad JSON, wrong dtype/shape, unknown model or verb, wrong method, oversized, truncated and
stalled bodies, broken framing, ...). Every valid request must be answered correctly, every
malformed one with its own 4xx and a JSON error, the server's RSS must stay flat after warm-up
and it must print no traceback. Only a generous watchdog guards against hangs: no timing checks.
"""

from __future__ import annotations

import json

import numpy as np

from bench import serve_load as sl


def test_twenty_clients_a_thousand_requests_valid_and_malformed(tmp_path):
    report = sl.run_load(clients=20, requests=1000, seed=0, stalls=2, watchdog=300, folder=str(tmp_path))
    assert report.failures == [], report.summary()
    assert report.answered == 1000
    assert set(report.statuses) == {"valid", "stalled", *sl.MALFORMED}, "a request kind was never sent"
    assert report.statuses["valid"] == {200: report.valid_sent} and report.valid_sent > 600
    for kind, status in [*sl.MALFORMED.items(), sl.STALLED]:
        assert set(report.statuses[kind]) == {status}, (kind, report.statuses[kind])


def test_the_checks_catch_wrong_answers(tmp_path):
    """The harness itself: a wrong value, a wrong status or a non-JSON error fails the check."""
    _, sess = sl.build_model(str(tmp_path))
    names = [t.name for t in sess.outputs]
    cases = sl.make_cases(sess, 100, seed=1, stalls=0)
    valid = next(c for c in cases if c.kind == "valid" and c.ref[0] == "inputs")
    fmt, ref = valid.ref
    good = json.dumps({"outputs": {n: r.tolist() for n, r in zip(names, ref)}}).encode()
    assert sl.check(valid, 200, good, names) is None
    off = [r.copy() for r in ref]
    off[0][0, 0] += np.float32(1e-2)
    bad = json.dumps({"outputs": {n: r.tolist() for n, r in zip(names, off)}}).encode()
    assert "disagrees" in sl.check(valid, 200, bad, names)
    assert "answered 400" in sl.check(valid, 400, b'{"error": "x"}', names)
    malformed = next(c for c in cases if c.kind == "bad_json")
    assert sl.check(malformed, 400, b'{"error": "not JSON"}', names) is None
    assert "expected 400, got 500" in sl.check(malformed, 500, b'{"error": "x"}', names)
    assert "not JSON" in sl.check(malformed, 400, b"<html>Bad request</html>", names)


def test_connections_beyond_the_limit_get_503_and_head_has_no_body(tmp_path):
    import http.client
    import threading
    import time

    from castml_cli.cmd_serve import Model, Server, make_handler

    path, _ = sl.build_model(str(tmp_path))
    server = Server(("127.0.0.1", 0), make_handler(Model(path, None), "m", 1 << 20, timeout=30), max_connections=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        first = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        first.request("GET", "/v1/models/m")
        assert first.getresponse().read()  # the connection is kept open: it holds the one slot
        second = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        second.request("GET", "/v1/models/m")
        resp = second.getresponse()
        assert (resp.status, resp.getheader("Retry-After")) == (503, "1")
        assert "too many connections" in json.loads(resp.read())["error"]
        first.request("HEAD", "/v1/models/m/metadata")
        resp = first.getresponse()
        assert resp.status == 200 and int(resp.getheader("Content-Length")) > 0 and resp.read() == b""
        first.close()
        deadline = time.monotonic() + 60  # watchdog: the slot is freed once the handler thread ends
        while True:
            third = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            third.request("GET", "/v1/models/m")
            resp = third.getresponse()
            body = json.loads(resp.read())
            third.close()
            if resp.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert resp.status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        server.shutdown()
        server.server_close()
