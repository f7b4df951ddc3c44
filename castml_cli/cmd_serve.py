"""`castml serve`: an HTTP inference server on TensorFlow Serving's REST conventions.

`POST /v1/models/NAME:predict` takes `{"instances": [...]}` (row format: one entry per example,
stacked into a batch) or `{"inputs": ...}` (columnar: whole tensors), and answers
`{"predictions": ...}` or `{"outputs": ...}` like TF Serving, so existing clients work.
`GET /v1/models/NAME` reports the model's status and `GET /v1/models/NAME/metadata` its
signature. Connections are kept alive and served concurrently (a thread each, at most
`--max-connections`; a `Session` serves many threads). Bodies are bounded (`--max-body-mb`,
checked before reading, also for `Expect: 100-continue`), idle connections and stalled bodies
time out (`--timeout`), and bad input gets a 4xx JSON `{"error": ...}` naming the problem (400
bad JSON/values/framing, 404 unknown model or verb, 405 wrong method, 408 stalled body, 411
chunked or no length, 413 too large) while the server keeps serving; `bench/serve_load.py` checks
all of it under load. `--port 0` picks a free port; the first line printed is always the bound
address, so scripts and tests can read it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from runtime import CastmlError, pytree

from .common import CliError
from .loading import check_model_path

EXAMPLES = """\
examples:
  castml serve m.castml --port 8500
  castml serve m.onnx --port 0 --name mnist     # prints: serving mnist at http://127.0.0.1:PORT
  curl -d '{"instances": [[1.0, 2.0, 3.0, 4.0]]}' http://127.0.0.1:8500/v1/models/m:predict"""


class RequestError(CastmlError):
    """A request the server rejects with a 4xx status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `serve`."""
    p = sub.add_parser("serve", help="serve a model over HTTP (TensorFlow Serving REST API)",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file (.castml or .onnx)")
    p.add_argument("--port", type=int, default=8500, help="port to listen on; 0 picks a free one (default 8500)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--name", help="model name in URLs (default: the file's stem)")
    p.add_argument("--entry", help="entry of a multi-entry .castml file")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted (default 64)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds a connection may stay idle, or a body stall, before it is closed (default 60)")
    p.add_argument("--max-connections", type=int, default=100,
                   help="connections served at once; more are answered 503 (default 100)")
    return p


class Model:
    """The served model: a runtime `Session` plus its flat input/output signature."""

    def __init__(self, path: str, entry: str | None):
        import runtime
        from exporters.castml_format import to_bytes

        from .loading import load_graph

        g = load_graph(path, entry)  # also gives the argument structure (pytree) of the entry
        if path.endswith(".castml"):
            sess = runtime.load(path)
            self.session = sess[entry] if entry else sess
        else:
            self.session = runtime.load(to_bytes(g))
        self.in_tree = g.in_tree
        self.inputs = self.session.inputs
        self.outputs = self.session.outputs

    def signature(self) -> dict[str, Any]:
        """TF Serving-style metadata (names, dtypes, shapes with -1 for symbolic dims)."""
        def spec(t) -> dict[str, Any]:
            return {"dtype": np.dtype(t.dtype).name, "shape": [d if isinstance(d, int) else -1 for d in t.shape],
                    "symbolic_shape": [str(d) for d in t.shape]}
        return {"inputs": {t.name: spec(t) for t in self.inputs}, "outputs": {t.name: spec(t) for t in self.outputs}}

    def _leaves(self, named: dict[str, Any]) -> list[np.ndarray]:
        flat = _flatten_names(named)
        leaves = []
        for t in self.inputs:
            if t.name not in flat:
                raise RequestError(400, f"missing input {t.name!r}; the model takes "
                                        f"{', '.join(i.name for i in self.inputs)}")
            leaves.append(_array(flat.pop(t.name), t.dtype, t.name))
        if flat:
            raise RequestError(400, f"unknown input(s) {', '.join(flat)}; the model takes "
                                    f"{', '.join(i.name for i in self.inputs)}")
        return leaves

    def run_leaves(self, leaves: list[np.ndarray]) -> list[np.ndarray]:
        """Run on flat input leaves; flat output leaves."""
        try:
            out = self.session.run(*pytree.unflatten(self.in_tree, leaves))
        except CastmlError as e:
            raise RequestError(400, " ".join(str(e).split())) from None
        return [np.asarray(o) for o in pytree.flatten(out)[0]]

    def _stack_rows(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Row format to tensors: inputs with a symbolic leading (batch) dim are stacked; the others
        (weights) must be equal in every instance and are passed once."""
        batched = {t.name for t in self.inputs if t.shape and not isinstance(t.shape[0], int)}
        named: dict[str, Any] = {}
        for n in rows[0]:
            values = [r.get(n) for r in rows]
            if n in batched:
                named[n] = values
            elif all(v == values[0] for v in values):
                named[n] = values[0]
            else:
                raise RequestError(400, f"input {n!r} has no batch dimension, so every instance must give the same "
                                        "value; send differing values with the columnar \"inputs\" format")
        return named

    def predict(self, body: Any) -> dict[str, Any]:
        """Answer one `:predict` request body."""
        if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
            raise RequestError(400, 'the request must be a JSON object with exactly one of "instances" or "inputs"')
        names = [t.name for t in self.inputs]
        outs_names = [t.name for t in self.outputs]
        if "inputs" in body:
            given = body["inputs"]
            named = given if isinstance(given, dict) and (len(names) != 1 or names[0] in given) else {names[0]: given}
            outs = self.run_leaves(self._leaves(named))
            result = outs[0].tolist() if len(outs) == 1 else {n: o.tolist() for n, o in zip(outs_names, outs)}
            return {"outputs": result}
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise RequestError(400, '"instances" must be a non-empty list, one entry per example')
        if len(names) == 1 and not (isinstance(rows[0], dict) and names[0] in rows[0]):
            named = {names[0]: rows}
        else:
            if not all(isinstance(r, dict) for r in rows):
                raise RequestError(400, f"the model has several inputs ({', '.join(names)}): each instance must be "
                                        "an object keyed by input name")
            named = self._stack_rows([_flatten_names(r) for r in rows])
        outs = self.run_leaves(self._leaves(named))
        if len(outs) == 1:
            return {"predictions": outs[0].tolist()}
        return {"predictions": [{n: o[i].tolist() for n, o in zip(outs_names, outs)} for i in range(len(rows))]}


def _flatten_names(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"params": {"w": 1}} -> {"params.w": 1}.

    >>> _flatten_names({"x": [1], "p": {"w": 2}})
    {'x': [1], 'p.w': 2}
    """
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_names(v, name + "."))
        else:
            out[name] = v
    return out


def _array(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as e:  # (OverflowError: 10**30 for an int64 input)
        raise RequestError(400, f"input {name!r}: cannot make a {np.dtype(dtype).name} tensor: {e}") from None


DRAIN_SECONDS = 2.0  # after an early error reply, how long the unread rest of a request may take to arrive
ALLOW_PREDICT, ALLOW_INFO = "POST", "GET, HEAD"


def make_handler(model: Model, name: str, max_body: int, timeout: float = 60.0) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to one model.

    `timeout` bounds every socket read: an idle keep-alive connection is closed after it, and a
    body that stops arriving is answered 408.

    >>> import tempfile, threading, urllib.request, exporters, tracer
    >>> path = os.path.join(tempfile.mkdtemp(), "double.castml")
    >>> exporters.save(tracer.trace(lambda x: x * 2.0, tracer.TensorSpec(("batch",))), path)
    >>> server = Server(("127.0.0.1", 0), make_handler(Model(path, None), "double", 1 << 20), max_connections=4)
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    >>> url = f"http://127.0.0.1:{server.server_address[1]}/v1/models/double:predict"
    >>> urllib.request.urlopen(url, data=b'{"instances": [1.5, 2.0]}').read()
    b'{"predictions": [3.0, 4.0]}'
    >>> server.shutdown(); server.server_close()
    """
    base = f"/v1/models/{name}"
    routes = {base: ALLOW_INFO, base + "/metadata": ALLOW_INFO, base + ":predict": ALLOW_PREDICT}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out in two writes; with Nagle on, the second waits for the client's
        # delayed ACK (~40 ms on Linux) on every keep-alive request
        disable_nagle_algorithm = True

        def setup(self) -> None:
            self.timeout = timeout  # StreamRequestHandler applies it to the socket
            super().setup()

        def log_message(self, format: str, *args: Any) -> None:  # keep stdout for the address line
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

        def _reply(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:  # tell keep-alive clients not to send another request here
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own errors (bad request line, headers, unknown method) as JSON too."""
            self.close_connection = True  # after a malformed request line the stream cannot be trusted
            if self.request_version == "HTTP/0.9":  # (http.server's guess for an unparsable line: no status line)
                self.request_version = "HTTP/1.0"
            text = message or self.responses.get(code, ("error",))[0]
            self._reply(code, {"error": f"{text}{': ' + explain if explain else ''}"})

        def _route(self) -> str:
            return urlsplit(self.path).path

        def _has_body(self) -> bool:
            length = self.headers.get("Content-Length", "0").strip()
            return length not in ("", "0") or "Transfer-Encoding" in self.headers

        def _method_not_allowed(self) -> None:
            allow = routes.get(self._route())
            if allow is None:
                e = RequestError(404, f"no such resource {self.path!r}; try GET {base} or POST {base}:predict")
            else:
                e = RequestError(405, f"{self.command} is not allowed on {self._route()!r}; use {allow}")
            self._fail(e, unread_body=self._has_body(), headers={"Allow": allow} if allow else None)

        do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815  (http.server's naming)

        def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
            path = self._route()
            if self._has_body():
                self._fail(RequestError(400, f"{self.command} takes no body"), unread_body=True)
            elif path == base:
                self._reply(200, {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                            "status": {"error_code": "OK", "error_message": ""}}]})
            elif path == base + "/metadata":
                self._reply(200, {"model_spec": {"name": name, "version": "1"},
                                  "metadata": {"signature_def": model.signature()}})
            else:
                self._method_not_allowed()

        do_HEAD = do_GET  # noqa: N815  (`_reply` leaves the body out)

        def _check_route(self) -> None:
            if self._route() != base + ":predict":
                if self._route() in routes:
                    raise RequestError(405, f"POST is not allowed on {self._route()!r}; use {routes[self._route()]}")
                raise RequestError(404, f"no such endpoint {self.path!r}; POST {base}:predict")

        def _declared_length(self) -> int:
            """The body size, checked (framing, limit) before a byte of the body is read."""
            if self.headers.get("Transfer-Encoding", "identity").lower() != "identity":
                raise RequestError(411, "chunked bodies are not accepted; send a Content-Length header")
            text = self.headers.get("Content-Length")
            if text is None:
                raise RequestError(411, "a Content-Length header with the JSON body's size is required")
            if not text.strip().isdigit():
                raise RequestError(400, f"Content-Length must be a non-negative integer, got {text[:40]!r}")
            length = int(text)
            if length > max_body:
                raise RequestError(413, f"request body of {length} bytes exceeds the limit of {max_body} "
                                        "(raise it with --max-body-mb)")
            return length

        def handle_expect_100(self) -> bool:
            """`Expect: 100-continue`: refuse a bad route or size before the client sends the body."""
            if self.command == "POST":
                try:
                    self._declared_length()
                    self._check_route()
                except RequestError as e:
                    self._fail(e, unread_body=True)
                    return False
            return super().handle_expect_100()

        def _read_body(self, length: int) -> bytes:
            try:
                data = self.rfile.read(length)
            except TimeoutError:
                raise RequestError(408, f"the body stopped arriving: no data for {timeout:g} s") from None
            if len(data) != length:
                raise RequestError(400, f"the body ended after {len(data)} of the {length} bytes "
                                        "its Content-Length announced")
            return data

        def do_POST(self) -> None:  # noqa: N802
            unread = True
            try:
                data = self._read_body(self._declared_length())
                unread = False
                self._check_route()
                if not data:
                    raise RequestError(400, 'the body is empty; send a JSON object with "instances" or "inputs"')
                try:
                    body = json.loads(data)
                except (ValueError, UnicodeDecodeError) as e:
                    raise RequestError(400, f"the body is not valid JSON: {e}") from None
                except RecursionError:
                    raise RequestError(400, "the body's JSON is nested too deeply") from None
                self._reply(200, model.predict(body))
            except RequestError as e:
                self._fail(e, unread_body=unread)
            except Exception as e:  # a bug must not take the server down; report it as 500
                self._reply(500, {"error": f"{type(e).__name__}: {e}"})

        def _fail(self, e: RequestError, unread_body: bool, headers: dict[str, str] | None = None) -> None:
            """Answer a rejected request. With its body (partly) unread the connection cannot carry
            another request: it is closed, after letting the client finish sending (see `_drain`)."""
            if unread_body:
                self.close_connection = True
            self._reply(e.status, {"error": str(e)}, headers)
            if unread_body and e.status != 408:
                self._drain()

        def _drain(self) -> None:
            """Read and drop what the client still sends (for `DRAIN_SECONDS` at most) before closing:
            closing a socket with unread data resets it, and the client may lose the reply."""
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + DRAIN_SECONDS
                while (left := deadline - time.monotonic()) > 0:
                    self.connection.settimeout(left)
                    if not self.rfile.read1(1 << 16):
                        break
            except OSError:  # timeout, reset: the client is gone or too slow; close anyway
                pass

    return Handler


class Server(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once (more get 503 and are closed);
    see `make_handler` for an example."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog; socketserver's default of 5 drops bursts of connects

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int):
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        """Serve the connection in a thread of its own, or answer 503 when all slots are taken."""
        if not self.slots.acquire(blocking=False):
            data = json.dumps({"error": "too many connections; retry later"}).encode()
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1"
                                b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
                request.shutdown(socket.SHUT_WR)
                request.setblocking(False)  # drop what the client already sent, without waiting: closing
                for _ in range(16):  # with unread data resets the connection, and the 503 may be lost
                    if not request.recv(1 << 16):
                        break
            except OSError:  # (BlockingIOError: nothing more to drop)
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        """The connection's thread; frees its slot when the connection ends."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def run(args: argparse.Namespace) -> int:
    """Load the model, bind, print the address, serve until interrupted."""
    check_model_path(args.model)
    if args.max_connections < 1 or not args.timeout > 0 or not args.max_body_mb > 0:
        raise CliError(f"--max-connections must be >= 1 and --timeout, --max-body-mb > 0; got "
                       f"{args.max_connections}, {args.timeout:g}, {args.max_body_mb:g}")
    name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    model = Model(args.model, args.entry)
    handler = make_handler(model, name, int(args.max_body_mb * 2**20), args.timeout)
    server = Server((args.host, args.port), handler, args.max_connections)
    host, port = server.server_address[:2]
    print(f"serving {name} at http://{host}:{port}/v1/models/{name}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
