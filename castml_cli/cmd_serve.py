"""`castml serve`: an HTTP inference server on TensorFlow Serving's REST conventions.

`POST /v1/models/NAME:predict` takes `{"instances": [...]}` (row format: one entry per example,
stacked into a batch) or `{"inputs": ...}` (columnar: whole tensors), and answers
`{"predictions": ...}` or `{"outputs": ...}` like TF Serving, so existing clients work.
`GET /v1/models/NAME` reports the model's status and `GET /v1/models/NAME/metadata` its
signature. Requests run concurrently (one thread each; a `Session` serves many threads), bodies
are bounded (`--max-body-mb`), and bad input gets a 4xx JSON `{"error": ...}` naming the problem
while the server keeps serving. `--port 0` picks a free port; the first line printed is always
the bound address, so scripts and tests can read it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from runtime import CastmlError, pytree

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
    except (ValueError, TypeError) as e:
        raise RequestError(400, f"input {name!r}: cannot make a {np.dtype(dtype).name} tensor: {e}") from None


def make_handler(model: Model, name: str, max_body: int) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to one model."""
    base = f"/v1/models/{name}"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep stdout for the address line
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
            if self.path == base:
                self._reply(200, {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                            "status": {"error_code": "OK", "error_message": ""}}]})
            elif self.path == base + "/metadata":
                self._reply(200, {"model_spec": {"name": name, "version": "1"},
                                  "metadata": {"signature_def": model.signature()}})
            else:
                self._reply(404, {"error": f"no such resource {self.path!r}; try GET {base} or POST {base}:predict"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                if self.path != base + ":predict":
                    raise RequestError(404, f"no such endpoint {self.path!r}; POST {base}:predict")
                length = int(self.headers.get("Content-Length") or 0)
                if length > max_body:
                    raise RequestError(413, f"request body of {length} bytes exceeds the limit of {max_body}")
                if length <= 0:
                    raise RequestError(411, "a Content-Length header with the JSON body's size is required")
                try:
                    body = json.loads(self.rfile.read(length))
                except (ValueError, UnicodeDecodeError) as e:
                    raise RequestError(400, f"the body is not valid JSON: {e}") from None
                self._reply(200, model.predict(body))
            except RequestError as e:
                if e.status in (411, 413):
                    self.close_connection = True  # the unread body must not be parsed as a request
                self._reply(e.status, {"error": str(e)})
            except Exception as e:  # a bug must not take the server down; report it as 500
                self._reply(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def run(args: argparse.Namespace) -> int:
    """Load the model, bind, print the address, serve until interrupted."""
    check_model_path(args.model)
    name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    model = Model(args.model, args.entry)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(model, name, int(args.max_body_mb * 2**20)))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"serving {name} at http://{host}:{port}/v1/models/{name}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
