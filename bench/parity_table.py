"""The parity matrix of docs/models.md: every zoo model x every engine, measured, as a Markdown table.

    PYTHONPATH=. python bench/parity_table.py [--write docs/models.md] [--batches 1,7,64] [--only gru,mlp]

Each model is traced once with a symbolic batch (`gru` also with a symbolic sequence length) and
run at each batch by `ir.interpret`, our runtime (`runtime.load` of the `.castml` bytes, NumPy
backend), the native C++ runtime when it is built and runs the model, onnxruntime (via
`exporters.to_onnx`) and onnxruntime-web (exported with `target="onnxruntime-web"`, run by
`node web/run_model.mjs`: WebAssembly, one thread, the build the browser page loads; without node
and `scripts/install_web.sh` its cells say n/a and why). A cell is `max|got - ref| / max|ref|`
against eager NumPy, marked `ok` when DESIGN.md's tolerance rule holds elementwise (float32:
rtol 1e-4, atol 1e-5 * max|ref|). With `--write`, the table replaces the text between the
`parity` markers of that file; the exit status is 1 when any cell fails (an engine that raises
while running fails its cell, with the error). Not a timed benchmark: it measures agreement only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

import numpy as np

BEGIN, END = "<!-- parity:begin -->", "<!-- parity:end -->"
RTOL, ATOL = 1e-4, 1e-5  # float32, DESIGN.md
WEB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web")


def agreement(got: np.ndarray, ref: np.ndarray) -> tuple[float, bool]:
    """(max|got-ref| / max|ref|, whether the tolerance rule holds elementwise).

    >>> agreement(np.float32([1, 2]), np.float32([1, 2]))
    (0.0, True)
    """
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return float("inf"), False
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = np.abs(got - ref)
    ok = bool(np.all(err <= RTOL * np.abs(ref) + ATOL * scale))
    return (float(err.max()) / scale if scale and err.size else 0.0), ok


def _engines(g) -> dict[str, Callable | str]:
    """name -> run(x, params), or a string saying why the engine cannot run this model."""
    import onnxruntime as ort

    import exporters
    import ir
    import runtime
    from exporters.castml_format import to_bytes
    from runtime import pytree

    data = to_bytes(g)
    numpy_session = runtime.load(data, backend="numpy")
    out: dict[str, Callable | str] = {"ir.interpret": lambda x, p: ir.interpret(g, x, p),
                                      "castml runtime": numpy_session.run}
    try:
        native = runtime.load(data, backend="native")
        out["castml native"] = native.run
    except Exception as e:  # not built, or an op it lacks: reported in the table, not fatal
        op = re.search(r"op kind '(\w+)'", str(e))
        out["castml native"] = f"no native `{op.group(1)}` kernel" if op else type(e).__name__
    sess = ort.InferenceSession(exporters.to_onnx(g).SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out["onnxruntime"] = lambda x, p: sess.run(None, dict(zip(names, pytree.flatten((x, p))[0])))[0]
    out["onnxruntime-web"] = web_engine(g)
    return out


def web_version() -> str | None:
    """The onnxruntime-web version installed in `web/node_modules`, or None when it is not installed.

    >>> web_version() is None or web_version().count(".") == 2
    True
    """
    try:
        with open(os.path.join(WEB, "node_modules", "onnxruntime-web", "package.json")) as f:
            return json.load(f)["version"]
    except FileNotFoundError:
        return None


def json_array(out: dict) -> np.ndarray:
    """A tensor printed by `web/run_model.mjs` ({dtype, shape, data}) as a NumPy array; NaN,
    +-Infinity and exact int64 arrive as strings.

    >>> json_array({"dtype": "float32", "shape": [1, 2], "data": [1.5, "NaN"]})
    array([[1.5, nan]], dtype=float32)
    """
    dt = np.dtype(out["dtype"])
    data = [(float(v) if dt.kind == "f" else int(v)) if isinstance(v, str) else v for v in out["data"]]
    return np.array(data, dtype=dt).reshape(out["shape"])


def web_engine(g) -> Callable | str:
    """run(*args) -> outputs of `g` computed by onnxruntime-web in node, or why it cannot run.

    The model is exported once with `target="onnxruntime-web"` (an `ExportError` is reported as
    the reason); each call writes it and the flattened inputs (`.npy`) to a temporary folder and
    runs `node web/run_model.mjs`, raising `RuntimeError` with node's message when that fails.

    >>> import tracer
    >>> run = web_engine(tracer.trace(lambda x: x * 2, np.float32([1, 2])))
    >>> isinstance(run, str) or run(np.float32([1, 2])).tolist() == [2.0, 4.0]
    True
    """
    import exporters
    from ir.graph import input_names
    from runtime import pytree

    node = shutil.which("node")
    if node is None:
        return "node not on PATH"
    if web_version() is None:
        return "web/node_modules missing: run scripts/install_web.sh"
    try:
        model = exporters.to_onnx(g, target="onnxruntime-web").SerializeToString()
    except exporters.ExportError as e:
        return "ExportError: " + str(e).splitlines()[0].replace("|", "/")
    names = input_names(g)

    def run(*args):
        leaves = pytree.flatten(args)[0]
        with tempfile.TemporaryDirectory(prefix="castml-parity-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            with open(path, "wb") as f:
                f.write(model)
            argv = [node, os.path.join(WEB, "run_model.mjs"), path]
            for i, (name, leaf) in enumerate(zip(names, leaves)):
                npy = os.path.join(tmp, f"in{i}.npy")
                np.save(npy, np.ascontiguousarray(leaf))
                argv += ["--input", f"{name}={npy}"]
            proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"node web/run_model.mjs exited with {proc.returncode}: {proc.stderr.strip()}")
        outputs = json.loads(proc.stdout)["outputs"]
        arrays = tuple(json_array(outputs[n]) for n in g.output_names)
        return arrays[0] if len(arrays) == 1 else arrays

    return run


def _cases(name: str, batches: tuple[int, ...]) -> tuple[object, Callable, dict, list[tuple[str, np.ndarray]]]:
    """(graph, fn, params, [(row label, input)]) for one zoo model."""
    import tracer
    from models import zoo

    fn, (x, params) = zoo.MODELS[name].build(seed=0)
    rng = np.random.default_rng(123)
    if name == "gru":
        spec = tracer.TensorSpec(("batch", "seq") + x.shape[2:], x.dtype)
        shapes = [((b, s) + x.shape[2:], f"batch {b}, seq {s}") for b in batches for s in (1, x.shape[1], 23)]
    else:
        spec = tracer.TensorSpec(("batch",) + x.shape[1:], x.dtype)
        shapes = [((b,) + x.shape[1:], f"batch {b}") for b in batches]
    g = tracer.trace(fn, spec, params)
    inputs = [(label, rng.standard_normal(shape).astype(x.dtype)) for shape, label in shapes]
    return g, fn, params, inputs


def measure(names: list[str], batches: tuple[int, ...]) -> tuple[list[str], list[list[str]], bool]:
    """(header, rows, all ok): one row per model and input shape, one column per engine."""
    header, rows, all_ok = ["model", "input"], [], True
    for name in names:
        g, fn, params, inputs = _cases(name, batches)
        engines = _engines(g)
        if len(header) == 2:
            header += list(engines)
        for label, x in inputs:
            ref = fn(x, params)
            row = [f"`{name}`", label]
            for run in engines.values():
                if isinstance(run, str):
                    row.append(f"n/a ({run})")
                    continue
                try:
                    err, ok = agreement(run(x, params), ref)
                except Exception as e:  # noqa: BLE001 - an engine that cannot run a model it loaded fails the cell
                    all_ok = False
                    row.append(f"FAIL ({type(e).__name__}: {str(e).splitlines()[0][:120].replace('|', '/')})")
                    continue
                all_ok &= ok
                row.append(f"{'ok' if ok else 'FAIL'} {err:.1e}")
            rows.append(row)
            print(" | ".join(row), file=sys.stderr)
    return header, rows, all_ok


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table.

    >>> print(to_markdown(["a", "b"], [["1", "2"]]))
    | a | b |
    |---|---|
    | 1 | 2 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_between_markers(path: str, text: str) -> None:
    """Replace what lies between the parity markers of `path` with `text`."""
    with open(path) as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers to write the table between")
    doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{text}\n{END}", doc, flags=re.S)
    with open(path, "w") as f:
        f.write(doc)


def _node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "none"
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, optionally write it into a Markdown file; 1 when a cell fails."""
    from models import zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,7,64")
    ap.add_argument("--only", help="comma-separated zoo model names (default: all)")
    ap.add_argument("--write", help="Markdown file whose parity markers receive the table")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(zoo.MODELS)
    batches = tuple(int(b) for b in args.batches.split(","))
    header, rows, ok = measure(names, batches)
    import onnxruntime

    web = web_version()
    web_note = (f"onnxruntime-web {web} wasm single-threaded under node {_node_version()}" if web
                else "onnxruntime-web not installed")
    note = (f"Measured by `PYTHONPATH=. python bench/parity_table.py --write docs/models.md` (numpy {np.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, {web_note}, {platform.machine()}). Cell: "
            f"`max|got - ref| / max|ref|` against eager NumPy; `ok` when the float32 tolerance rule holds elementwise.")
    text = note + "\n\n" + to_markdown(header, rows)
    print(text)
    if args.write:
        write_between_markers(args.write, text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
