"""`castml web`: a self-contained static folder that runs a model in the browser (onnxruntime-web).

Why a folder and not a server: the WebAssembly build of onnxruntime runs the model in the page,
so any static server (or `python -m http.server`) is enough, and nothing is fetched from a CDN:
the folder holds `model.onnx` (exported with the `onnxruntime-web` target, so it is a model that
build loads), `model.json` (inputs and outputs by their Python pytree names, symbolic dims),
the page (`index.html`, `app.js`, `style.css` from `web/page/`) and onnxruntime-web's own files
copied from `web/node_modules` (installed by `scripts/install_web.sh`). `--input NAME=file`
bakes arrays into the folder (`inputs/*.bin`), e.g. the weights of a model whose parameters are
inputs; the page offers random, typed and (for NCHW float inputs with 1 or 3 channels) image inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np

from .common import CliError, input_arg, is_array_file, load_array_file, parse_literal
from .loading import check_model_path, load_graph
from .progress import Progress

EXAMPLES = """\
examples:
  castml web m.castml -o site/
  castml web m.castml -o site/ --input params=weights.npz --dim batch=4
  castml web m.onnx -o site/ && python -m http.server -d site/ --bind 127.0.0.1 8000"""

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB_DIR = os.path.join(ROOT, "web")
PAGE_FILES = ("index.html", "app.js", "style.css")
# onnxruntime-web's ESM entry for the WebAssembly backend, its wasm loader and the binary
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `web`."""
    p = sub.add_parser("web", help="write a static web page that runs the model in the browser (onnxruntime-web)",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file (.castml or .onnx)")
    p.add_argument("-o", "--output", required=True, help="folder to write (created; existing page files replaced)")
    p.add_argument("-i", "--input", dest="inputs", action="append", type=input_arg, default=[],
                   metavar="NAME=VALUE", help="bake an input into the page: NAME=file.npy, NAME=file.npz (a whole "
                   "pytree argument, e.g. params=weights.npz) or NAME=literal")
    p.add_argument("--dim", action="append", default=[], metavar="SYMBOL=N",
                   help="initial value of a symbolic dimension on the page (default 1)")
    p.add_argument("--entry", help="entry point of a multi-entry .castml file (default main)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset of model.onnx (default 18)")
    p.add_argument("--title", help="page title (default: the model file name)")
    return p


def ort_dist() -> str:
    """The `dist/` folder of the installed onnxruntime-web, or a `CliError` saying how to install it.

    >>> ort_dist().endswith("dist")  # doctest: +SKIP
    True
    """
    dist = os.path.join(WEB_DIR, "node_modules", "onnxruntime-web", "dist")
    missing = [f for f in ORT_FILES if not os.path.isfile(os.path.join(dist, f))]
    if missing:
        raise CliError(f"onnxruntime-web is not installed: {os.path.join(dist, missing[0])} is missing; run "
                       f"scripts/install_web.sh (npm ci in {WEB_DIR})")
    return dist


def _baked(inputs, names: list[str]) -> dict[str, np.ndarray]:
    """`--input` values by flat input name (pytree leaf paths, e.g. `params.0.weight`)."""
    flat: dict[str, np.ndarray] = {}
    for arg in inputs:
        if arg.name is None:
            raise CliError(f"--input {arg.text!r} has no name; expected NAME=VALUE with NAME one of {names}")
        if is_array_file(arg.text):
            flat.update({k: v for k, v in load_array_file(arg.text, arg.name).items() if k is not None})
            continue
        value = parse_literal(arg.text)
        if value is None:
            raise CliError(f"--input {arg.name}={arg.text!r}: expected a .npy/.npz file or a number/list literal")
        flat[arg.name] = value
    unknown = sorted(set(flat) - set(names))
    if unknown:
        raise CliError(f"--input names {unknown} are not inputs of the model; expected some of {names}")
    return flat


def _dims(texts: list[str], symbols: list[str]) -> dict[str, int]:
    dims = {s: 1 for s in symbols}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise CliError(f"bad --dim {text!r}; expected SYMBOL=N with N >= 1, e.g. batch=4")
        if name.strip() not in dims:
            raise CliError(f"--dim {name.strip()!r} is not a symbolic dimension of the inputs; they are {symbols}")
        dims[name.strip()] = int(value)
    return dims


def _is_image(dtype: np.dtype, shape: tuple) -> bool:
    """An NCHW float input with 1 or 3 channels and fixed height and width: the page offers image files."""
    return (dtype.kind == "f" and len(shape) == 4 and shape[1] in (1, 3)
            and all(isinstance(d, int) for d in shape[1:]))


def manifest(g, title: str, source: str, baked: dict[str, np.ndarray], dims: list[str]) -> dict:
    """What `app.js` needs to know about the model: inputs, outputs, dims, baked files.

    >>> import tracer
    >>> m = manifest(tracer.trace(lambda x: x * 2.0, np.zeros(3, np.float32)), "t", "t.castml", {}, [])
    >>> m["inputs"], m["outputs"][0]["name"]
    ([{'name': 'x', 'dtype': 'float32', 'shape': [3], 'image': False, 'default': None}], 'output')
    """
    from ir.graph import input_names

    symbols: list[str] = []
    inputs = []
    for name, v in zip(input_names(g), g.inputs):
        dtype, shape = np.dtype(v.type.dtype), tuple(v.type.shape)
        for d in shape:
            if not isinstance(d, int) and str(d) not in symbols:
                symbols.append(str(d))
        default = None
        if name in baked:
            a = baked[name]
            if a.dtype != dtype:
                raise CliError(f"--input {name}: expected {dtype.name}, got {a.dtype.name}")
            if a.ndim != len(shape) or any(isinstance(d, int) and d != n for d, n in zip(shape, a.shape)):
                raise CliError(f"--input {name}: expected shape {list(shape)}, got {list(a.shape)}")
            default = {"file": f"inputs/{name}.bin", "shape": list(a.shape)}
        inputs.append({"name": name, "dtype": dtype.name, "shape": [d if isinstance(d, int) else str(d) for d in shape],
                       "image": _is_image(dtype, shape), "default": default})
    outputs = [{"name": n, "dtype": np.dtype(v.type.dtype).name,
                "shape": [d if isinstance(d, int) else str(d) for d in v.type.shape]}
               for n, v in zip(g.output_names, g.outputs)]
    return {"title": title, "source": source, "inputs": inputs, "outputs": outputs,
            "dims": _dims(dims, symbols)}


def write_site(g, out_dir: str, title: str, source: str, baked: dict[str, np.ndarray] | None = None,
               dims: list[str] | None = None, opset: int = 18, progress: Progress | None = None) -> dict:
    """Write the static folder for graph `g` into `out_dir`; returns the manifest.

    `progress` (if given) gets one step per phase: export, page files, onnxruntime-web, inputs.

    >>> import tracer, tempfile
    >>> g = tracer.trace(lambda x: x * 2.0, np.zeros(3, np.float32))
    >>> write_site(g, tempfile.mkdtemp(), "t", "t.castml")["outputs"][0]["shape"]  # doctest: +SKIP
    [3]
    """
    import exporters

    def step(text: str) -> None:
        if progress is not None:
            progress.step(text)

    dist = ort_dist()
    baked = baked or {}
    info = manifest(g, title, source, baked, dims or [])
    step("exporting model.onnx for onnxruntime-web")
    model = exporters.to_onnx(g, opset=opset, target="onnxruntime-web")  # ExportError names an op it lacks
    os.makedirs(os.path.join(out_dir, "ort"), exist_ok=True)
    exporters.write_atomic(os.path.join(out_dir, "model.onnx"), model.SerializeToString())
    exporters.write_atomic(os.path.join(out_dir, "model.json"), (json.dumps(info, indent=1) + "\n").encode())
    step("copying the page")
    for f in PAGE_FILES:
        shutil.copyfile(os.path.join(WEB_DIR, "page", f), os.path.join(out_dir, f))
    step("copying onnxruntime-web")
    for f in ORT_FILES:
        shutil.copyfile(os.path.join(dist, f), os.path.join(out_dir, "ort", f))
    step("writing baked inputs")
    if baked:
        os.makedirs(os.path.join(out_dir, "inputs"), exist_ok=True)
    for name, a in baked.items():
        data = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
        exporters.write_atomic(os.path.join(out_dir, "inputs", f"{name}.bin"), data)
    return info


def run(args: argparse.Namespace) -> int:
    """Load the model, export it for onnxruntime-web, write the folder."""
    from ir.graph import input_names

    check_model_path(args.model)
    with Progress(f"castml web {os.path.basename(args.model)}", total=5) as bar:
        bar.step(f"loading {args.model}")
        g = load_graph(args.model, args.entry)
        baked = _baked(args.inputs, input_names(g))
        title = args.title or os.path.basename(args.model)
        info = write_site(g, args.output, title, os.path.basename(args.model), baked, args.dim, args.opset, bar)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.output) for f in fs)
    print(f"wrote {args.output} ({size / 2**20:.1f} MiB): {len(info['inputs'])} inputs, {len(info['outputs'])} "
          f"outputs; serve it with `python -m http.server -d {args.output} --bind 127.0.0.1 8000` and open "
          f"http://127.0.0.1:8000/")
    return 0
