"""`castml run`: run a saved model on `.npy`/`.npz` inputs and write its outputs to an `.npz`.

Inputs are matched by name (`--input x=x.npy`, pytree leaves by path `params.fc1.w=w.npy`, or
all of an `.npz` at once) or by position. Backends: `numpy` is castml's own runtime and `native`
its C++ runtime (build it once with `python -m runtime.native.build`); both run `.onnx` files
too, imported in memory. `onnxruntime` runs ONNX directly (`.castml` files are converted in
memory). `auto` (the default) runs `.onnx` on onnxruntime and `.castml` on the native runtime
when it is built and has every op of the model, else on NumPy. The backend that ran is printed.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from runtime import pytree

from .common import (
    CliError,
    InputArg,
    input_arg,
    is_array_file,
    load_array_file,
    parse_literal,
    save_npz,
    summary,
    type_text,
)
from .loading import check_model_path
from .progress import Progress

EXAMPLES = """\
examples:
  castml run m.castml --input x=x.npy -o out.npz
  castml run m.onnx --input inputs.npz -o out.npz --backend numpy
  castml run m.castml --input x=x.npy --backend onnxruntime
  castml run m.onnx --input x=x.npy --backend native   # the C++ runtime (python -m runtime.native.build)
  castml run losses.castml --entry train --input params=weights.npz --input x=batch.npy -o grads.npz"""

BACKENDS = ("auto", "numpy", "native", "onnxruntime")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `run`."""
    p = sub.add_parser("run", help="run a .castml or .onnx model on .npy/.npz inputs",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file (.castml or .onnx)")
    p.add_argument("-i", "--input", dest="inputs", action="append", type=input_arg, default=[],
                   metavar="[NAME=]VALUE", help="an input: NAME=file.npy, NAME=file.npz, file.npz (all its arrays "
                   "by name), NAME=literal; without NAME, inputs are taken in order")
    p.add_argument("-o", "--output", help="write the outputs to this .npz file")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="execution engine (default auto)")
    p.add_argument("--entry", help="entry point of a multi-entry .castml file (default main)")
    return p


class Signature:
    """What a model expects: flat input leaves (name, dtype, shape), and the arguments' structure."""

    def __init__(self, inputs: list[tuple[str, np.dtype, tuple]], outputs: list[str], in_tree: Any):
        self.inputs = inputs
        self.output_names = outputs
        self.in_tree = in_tree

    @classmethod
    def of_graph(cls, g) -> Signature:
        """The signature of an `ir.Graph`."""
        from ir.graph import input_names

        ins = [(n, v.type.dtype, v.type.shape) for n, v in zip(input_names(g), g.inputs)]
        return cls(ins, list(g.output_names), g.in_tree)

    def describe(self) -> str:
        """`x: f32[batch,784], w: f32[784,10]`."""
        return ", ".join(f"{n}: {type_text(d, s)}" for n, d, s in self.inputs)


def gather_inputs(sig: Signature, inputs: list[InputArg]) -> list[np.ndarray]:
    """Flat input arrays in the model's leaf order, from named or positional `--input`s.

    Literals are cast to the expected dtype; arrays from files are passed as they are, so a
    dtype mistake is reported by the engine rather than hidden.
    """
    named: dict[str, np.ndarray] = {}
    positional: list[np.ndarray] = []
    expected = {n: d for n, d, _ in sig.inputs}
    for arg in inputs:
        if is_array_file(arg.text):
            for name, value in load_array_file(arg.text, arg.name).items():
                if name is None:
                    positional.append(value)
                else:
                    named[name] = value
            continue
        value = parse_literal(arg.text)
        if value is None:
            raise CliError(f"input {arg.name or len(positional)!r}: {arg.text!r} is neither an .npy/.npz file "
                           f"nor a number or list literal")
        if arg.name is None:
            dt = sig.inputs[len(positional)][1] if len(positional) < len(sig.inputs) else value.dtype
            positional.append(value.astype(dt))
        else:
            named[arg.name] = value.astype(expected.get(arg.name, value.dtype))
    leaves: list[np.ndarray] = list(positional)
    for name, _, _ in sig.inputs[len(positional):]:
        if name not in named:
            raise CliError(f"missing input {name!r}; the model takes {sig.describe()}")
        leaves.append(named.pop(name))
    if len(leaves) > len(sig.inputs):
        raise CliError(f"{len(leaves)} inputs given; the model takes {len(sig.inputs)}: {sig.describe()}")
    if named:
        raise CliError(f"unknown input(s) {', '.join(named)}; the model takes {sig.describe()}")
    return leaves


NATIVE_HINT = "build it with `python -m runtime.native.build`, or choose --backend numpy"


def _session(source: Any, backend: str, where: str) -> Any:
    """`runtime.load(source, backend=...)`, with a one-line hint when the native runtime is missing."""
    import runtime
    from runtime.native_backend import NativeUnavailableError, NativeUnsupportedError

    try:
        return runtime.load(source, backend=backend)
    except NativeUnavailableError as e:
        reason = str(e).split("; build it")[0]
        raise CliError(f"--backend native cannot run {where}: {reason}; {NATIVE_HINT}") from None
    except NativeUnsupportedError as e:
        raise CliError(f"--backend native cannot run {where}: {e}; --backend auto or numpy runs it on NumPy") from None


def _run_castml_runtime(path: str, entry: str | None, inputs: list[InputArg],
                        backend: str) -> tuple[Signature, list[np.ndarray], str]:
    """Run on castml's runtime (`backend` numpy, native or auto); an `.onnx` file is imported first."""
    from runtime.loader import load_model

    if path.endswith(".onnx"):
        import exporters
        from exporters.castml_format import to_bytes

        if entry:
            raise CliError(f"--entry {entry!r}: an .onnx file has a single entry")
        source: Any = to_bytes(exporters.load(path))
    else:
        source = path
    sess = _session(source, backend, path)
    name = entry or ("main" if "main" in sess.entries else None)
    if name is None:
        raise CliError(f"{path} has no entry 'main'; choose one with --entry: {', '.join(sess.entries)}")
    if name not in sess.entries:
        raise CliError(f"{path} has no entry {name!r}; its entries are {', '.join(sess.entries)}")
    sess = sess[name]
    gd = load_model(source).entries[name]
    sig = Signature([(i.name, i.dtype, i.shape) for i in sess.inputs], [o.name for o in sess.outputs], gd.in_tree)
    leaves = gather_inputs(sig, inputs)
    outs = sess.run(*pytree.unflatten(sig.in_tree, leaves))
    return sig, [np.asarray(o) for o in pytree.flatten(outs)[0]], sess.backend


def _run_onnxruntime(path: str, entry: str | None, inputs: list[InputArg]) -> tuple[Signature, list[np.ndarray], str]:
    from .ort_backend import OrtModel

    if path.endswith(".onnx"):
        if entry:
            raise CliError(f"--entry {entry!r}: an .onnx file has a single entry")
        model = OrtModel.from_onnx_file(path)
        sig = Signature(model.inputs(), model.output_names, None)
    else:
        from .loading import load_graph

        g = load_graph(path, entry)
        model = OrtModel.from_graph(g, path)
        sig = Signature.of_graph(g)
    return sig, model.run_flat(gather_inputs(sig, inputs)), "onnxruntime"


def choose_engine(model: str, backend: str) -> str:
    """Which engine runs `model` for `--backend`: onnxruntime, or castml's runtime with backend
    auto/numpy/native (`auto` means onnxruntime for `.onnx`, and for `.castml` the native runtime
    when it is built and runs every op, else NumPy: `runtime.load` decides).

    >>> choose_engine("m.onnx", "auto"), choose_engine("m.castml", "auto"), choose_engine("m.onnx", "native")
    ('onnxruntime', 'auto', 'native')
    """
    if backend not in BACKENDS:
        raise CliError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto" and model.endswith(".onnx"):
        return "onnxruntime"
    return backend


def run(args: argparse.Namespace) -> int:
    """Run the model, print the backend that ran, each output's shape and summary; write the `.npz`."""
    check_model_path(args.model)
    if args.output and not args.output.endswith(".npz"):
        raise CliError(f"output {args.output!r}: expected an .npz file name")
    engine = choose_engine(args.model, args.backend)
    t0 = time.perf_counter()
    with Progress(f"castml run {os.path.basename(args.model)}", total=1 + bool(args.output)) as bar:
        bar.step(f"loading and running on {engine}")
        if engine == "onnxruntime":
            sig, outs, ran = _run_onnxruntime(args.model, args.entry, args.inputs)
        else:
            sig, outs, ran = _run_castml_runtime(args.model, args.entry, args.inputs, engine)
        seconds = time.perf_counter() - t0
        names = list(sig.output_names) if len(sig.output_names) == len(outs) else [f"output{i}" for i in
                                                                                   range(len(outs))]
        names = [n or f"output{i}" for i, n in enumerate(names)]
        lines = [f"ran {os.path.basename(args.model)} with backend {ran} in {seconds * 1e3:.1f} ms (including load)"]
        lines += [f"  {name}: {summary(out)}" for name, out in zip(names, outs)]
        if args.output:
            bar.step(f"writing {args.output}")
            save_npz(args.output, dict(zip(names, outs)))
            lines.append(f"wrote {args.output} ({len(outs)} array{'s' * (len(outs) != 1)})")
    print("\n".join(lines))
    return 0
