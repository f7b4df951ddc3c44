"""`castml convert`: ONNX to `.castml` and back (or `.castml` to `.castml`), optionally optimized.

Reading goes through `exporters.load`, so an ONNX model from any producer becomes castml IR
that our runtime, `ir.optimize` and `ir.grad` understand; writing picks the format by suffix.
A multi-entry `.castml` file converts whole to `.castml`; to ONNX, one entry (`--entry`).
"""

from __future__ import annotations

import argparse
import os

from .common import CliError, save_model
from .loading import check_model_path, load_graph, load_graphs, optimize
from .progress import Progress

EXAMPLES = """\
examples:
  castml convert resnet.onnx resnet.castml
  castml convert m.castml -o m.onnx --optimize
  castml convert multi.castml train.onnx --entry train"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `convert`."""
    p = sub.add_parser("convert", help="convert between .onnx and .castml (optionally optimizing)",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="input model (.onnx or .castml)")
    p.add_argument("destination", nargs="?", help="output model (.castml or .onnx)")
    p.add_argument("-o", "--output", help="output model (alternative to the positional destination)")
    p.add_argument("--optimize", action="store_true", help="run ir.optimize on every entry")
    p.add_argument("--entry", help="convert only this entry of a multi-entry .castml file")
    return p


def run(args: argparse.Namespace) -> int:
    """Load, (optimize), save."""
    if args.destination and args.output and args.destination != args.output:
        raise CliError(f"two outputs given ({args.destination!r} and -o {args.output!r}); give one")
    dest = args.output or args.destination
    if not dest:
        raise CliError("no output file: give `castml convert IN OUT` or `-o OUT`")
    check_model_path(args.source)
    out_suffix = check_model_path(dest, must_exist=False)
    with Progress(f"castml convert {os.path.basename(args.source)}", total=2 + bool(args.optimize)) as bar:
        bar.step(f"importing {args.source}")
        if args.entry:
            graphs = {args.entry: load_graph(args.source, args.entry)}
        else:
            graphs = load_graphs(args.source)
        if args.optimize:
            bar.step("optimizing")
            graphs = {name: optimize(g) for name, g in graphs.items()}
        if out_suffix == ".onnx":
            if len(graphs) != 1:
                raise CliError(f"{args.source} has {len(graphs)} entries ({', '.join(graphs)}); ONNX holds one: "
                               f"choose it with --entry")
            payload = next(iter(graphs.values()))
        else:
            payload = graphs if list(graphs) != ["main"] else graphs["main"]
        bar.step(f"exporting {dest}")
        save_model(payload, dest)
    ops = sum(sum(1 for _ in g.walk()) for g in graphs.values())
    print(f"converted {args.source} -> {dest} ({os.path.getsize(dest):,} bytes, {len(graphs)} "
          f"entr{'y' if len(graphs) == 1 else 'ies'}, {ops} ops{', optimized' if args.optimize else ''})")
    return 0
