"""`castml diff`: find the first op where the exported model stops agreeing with the Python code.

Runs the Python function in float64 (the reference), the IR interpreter, castml's runtime and
onnxruntime on the same inputs, compares every intermediate value op by op, and names the first
op whose error exceeds tolerance, with its source line. With only a model file, compares castml's
runtime and onnxruntime on that model. Exit code 0: all agree; 3: a divergence; 1: bad model or
input; 2: usage.
"""

from __future__ import annotations

import argparse
import sys

from .cmd_trace import build_args
from .common import CliError, input_arg, is_array_file, load_array_file, parse_literal
from .loading import check_model_path, resolve_function

EXAMPLES = """\
examples:
  castml diff mymodel.py:predict m.onnx --input x=float32[batch,784]
  castml diff mypkg.nets:mlp m.castml --input x=x.npy --input params=weights.npz --all
  castml diff imported.onnx --input x=x.npy"""

DIVERGED = 3
USAGE = 2


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `diff`."""
    p = sub.add_parser("diff", help="find the first op where engines disagree (Python/IR/runtime/onnxruntime)",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("function", help="pkg.module:fn or path/to/file.py:fn (omit to compare a model file alone)")
    p.add_argument("model", nargs="?", help="the model file (.onnx or .castml)")
    p.add_argument("-i", "--input", dest="inputs", action="append", type=input_arg, default=[],
                   metavar="NAME=SPEC", help="an argument as for `castml trace`: NAME=DTYPE[dims] (random values, "
                   "symbolic dims = 3), NAME=file.npy|file.npz, or NAME=literal")
    p.add_argument("--seed", type=int, default=0, help="random seed for generated inputs (default 0)")
    p.add_argument("--entry", help="entry of a .castml file (default main)")
    p.add_argument("--all", action="store_true", help="list every diverging op, not only the first")
    return p


def _model_inputs(path: str, entry: str | None, inputs: list) -> list:
    """Flat inputs of a model file from `--input NAME=...` (by input name; type specs mean random)."""
    import exporters

    g = exporters.load(path, entry=entry) if entry else exporters.load(path)
    from ir.graph import input_names

    names = input_names(g)
    given: dict[str, object] = {}
    for arg in inputs:
        if arg.name is None:
            raise CliError(f"input {arg.text!r}: name it, e.g. {names[0] if names else 'x'}={arg.text}")
        if is_array_file(arg.text):
            given.update(load_array_file(arg.text, arg.name))
        elif (value := parse_literal(arg.text)) is not None:
            given[arg.name] = value
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise CliError(f"input(s) {', '.join(unknown)} are not inputs of {path}; it has {', '.join(names)}")
    return [given.get(n) for n in names]


def run(args: argparse.Namespace) -> int:
    """Diff, print the report; 3 when a divergence was found."""
    from .diff import diff

    if args.model is None:
        if not args.function.endswith((".onnx", ".castml")):
            print(f"castml diff: error: {args.function!r} is not a model file; give a function and a model file "
                  f"(castml diff model.py:fn m.onnx --input x=float32[batch,784]) or a model file alone",
                  file=sys.stderr)
            return USAGE
        check_model_path(args.function)
        report = diff(None, args.function, seed=args.seed, entry=args.entry,
                      inputs=_model_inputs(args.function, args.entry, args.inputs))
    else:
        check_model_path(args.model)
        fn = resolve_function(args.function)
        call_args, _ = build_args(fn, args.inputs)
        report = diff(fn, args.model, *call_args, seed=args.seed, entry=args.entry)
    print(report.format(show_all=args.all))
    return 0 if report.ok else DIVERGED
