"""`castml check`: list every (op, dtype, opset) of a model that a target cannot run, with fixes.

Reads the probed capability tables in `exporters/capabilities/`. Targets: onnxruntime-cpu (or any
probed table), castml (our runtime), onnx-opset-N. Exit code 0: compatible; 3: something is
not; 1: bad model; 2: usage.
"""

from __future__ import annotations

import argparse
import sys

from .loading import check_model_path
from .progress import Progress

EXAMPLES = """\
examples:
  castml check m.onnx --target onnxruntime-cpu
  castml check m.castml --target onnx-opset-13
  castml check imported.onnx --target castml"""

INCOMPATIBLE = 3
USAGE = 2


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `check`."""
    p = sub.add_parser("check", help="list the ops of a model that a target runtime or opset cannot run",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the model file (.onnx or .castml)")
    p.add_argument("--target", default="onnxruntime-cpu",
                   help="onnxruntime-cpu (default), castml, or onnx-opset-N")
    return p


def run(args: argparse.Namespace) -> int:
    """Check and print the report; 3 when anything is incompatible."""
    from exporters import ExportError
    from exporters.check import check_file, parse_target

    try:
        parse_target(args.target)
    except ExportError as e:
        print(f"castml check: error: {e}", file=sys.stderr)
        return USAGE
    check_model_path(args.model)
    with Progress(f"castml check {args.model}") as bar:
        bar.describe(f"checking every op against {args.target}")
        report = check_file(args.model, args.target)
    print(report.format())
    return 0 if report.ok else INCOMPATIBLE
