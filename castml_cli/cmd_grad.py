"""`castml grad`: differentiate a saved model with `ir.grad` and save the gradient model.

`--wrt` names the arguments to differentiate against (by name or position; repeat it or
separate with commas for several); `--output` picks the scalar output leaf (by name or index);
`--with-value` makes the new model return `(value, gradients)`. The result takes the same
arguments as the original, so `castml run` feeds it the same inputs.
"""

from __future__ import annotations

import argparse
import os

from .common import CliError, save_model
from .loading import check_model_path, load_graph
from .progress import Progress

EXAMPLES = """\
examples:
  castml grad loss.castml -o dloss.castml --wrt params
  castml grad loss.onnx -o dloss.castml --wrt w,b --with-value
  castml grad multi.castml --entry loss -o dloss.onnx --wrt 0 --output output.1"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `grad`."""
    p = sub.add_parser("grad", help="differentiate a saved model (reverse mode) into a new model",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file (.castml or .onnx)")
    p.add_argument("-o", "--output-file", dest="output_file", required=True,
                   help="gradient model to write (.castml or .onnx)")
    p.add_argument("--wrt", action="append", default=[], metavar="ARG",
                   help="argument(s) to differentiate against, by name or index (default: the first)")
    p.add_argument("--output", help="scalar output leaf to differentiate, by name or index (default: the first)")
    p.add_argument("--with-value", action="store_true", help="the new model returns (value, gradients)")
    p.add_argument("--entry", help="entry of a multi-entry .castml file")
    return p


def resolve_wrt(arg_names: list[str], wrt: list[str]) -> int | tuple[int, ...]:
    """Argument indices for `--wrt` values (names or integers); one int for a single argument.

    >>> resolve_wrt(["x", "w"], ["w"]), resolve_wrt(["x", "w"], ["x,1"])
    (1, (0, 1))
    """
    items = [s.strip() for w in wrt for s in w.split(",") if s.strip()]
    if not items:
        return 0
    out = []
    for item in items:
        if item in arg_names:
            out.append(arg_names.index(item))
        elif item.lstrip("-").isdigit() and -len(arg_names) <= int(item) < len(arg_names):
            out.append(int(item) % len(arg_names))
        else:
            raise CliError(f"--wrt {item!r}: the model's arguments are ({', '.join(arg_names)})")
    return out[0] if len(out) == 1 else tuple(out)


def resolve_output(output_names: list[str], output: str | None) -> int:
    """Output leaf index for `--output` (a name like `output.1` or an integer).

    >>> resolve_output(["output.0", "output.1"], "output.1")
    1
    """
    if output is None:
        return 0
    if output in output_names:
        return output_names.index(output)
    if output.isdigit() and int(output) < len(output_names):
        return int(output)
    raise CliError(f"--output {output!r}: the model's outputs are ({', '.join(output_names)})")


def run(args: argparse.Namespace) -> int:
    """Load, differentiate, save."""
    import ir

    check_model_path(args.model)
    check_model_path(args.output_file, must_exist=False)
    if not hasattr(ir, "grad"):
        raise CliError("castml grad needs ir.grad, which this build of castml does not have yet")
    with Progress(f"castml grad {os.path.basename(args.model)}", total=3) as bar:
        bar.step(f"loading {args.model}")
        g = load_graph(args.model, args.entry)
        wrt = resolve_wrt(list(g.arg_names), args.wrt)
        output = resolve_output(list(g.output_names), args.output)
        bar.step("differentiating")
        dg = ir.grad(g, wrt=wrt, output=output, with_value=args.with_value)
        bar.step(f"saving {args.output_file}")
        save_model(dg, args.output_file)
    names = [g.arg_names[i] for i in ((wrt,) if isinstance(wrt, int) else wrt)]
    print(f"d {g.output_names[output]} / d ({', '.join(names)}) -> {args.output_file} "
          f"({os.path.getsize(args.output_file):,} bytes, {sum(1 for _ in dg.walk())} ops)")
    return 0
