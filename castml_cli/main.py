"""`castml` entry point: one argparse program, one subcommand module per command.

Exit codes follow the usual CLI contract: 0 on success, 2 on usage errors (argparse), 1 on a
model or input error, reported as one line (`castml: error: ...`); `--debug` shows the
traceback instead, for bug reports.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from . import (
    cmd_bench,
    cmd_check,
    cmd_convert,
    cmd_demo,
    cmd_diff,
    cmd_grad,
    cmd_inspect,
    cmd_run,
    cmd_serve,
    cmd_trace,
    cmd_viz,
    cmd_web,
    progress,
)
from .common import CliError

COMMANDS = (cmd_demo, cmd_trace, cmd_run, cmd_inspect, cmd_convert, cmd_grad, cmd_viz, cmd_serve, cmd_bench, cmd_web,
            cmd_diff, cmd_check)

EPILOG = """\
examples:
  castml demo
  castml trace mymodel.py:predict -o m.castml --input x=float32[batch,784] --check
  castml run m.castml --input x=x.npy -o out.npz
  castml inspect m.castml
  castml convert m.castml m.onnx
  castml grad m.castml -o dm.castml --wrt x
  castml viz m.castml -o graph.html
  castml serve m.castml --port 8500
  castml bench m.castml --dim batch=32
  castml web m.castml -o site/

run `castml COMMAND --help` for each command's options and examples.

progress bars go to stderr, only when it is a terminal and a step takes over half a second;
CASTML_PROGRESS=plain prints sparse plain lines instead (for logs), CASTML_PROGRESS=off or
--quiet silences them."""

QUIET_HELP = "no progress bars (same as CASTML_PROGRESS=off)"


def one_line(e: BaseException, limit: int = 400) -> str:
    """An exception as one line: `Type: message`, short multi-line messages joined with `; `.

    >>> one_line(ValueError("bad shape\\n  expected f32[3]"))
    'ValueError: bad shape; expected f32[3]'
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    message = "; ".join(lines) or type(e).__name__
    if len(message) > limit:
        message = lines[0][:limit] + " (more with --debug)"
    return message if isinstance(e, CliError) else f"{type(e).__name__}: {message}"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all subcommands).

    >>> build_parser().parse_args(["demo"]).command
    'demo'
    """
    parser = argparse.ArgumentParser(
        prog="castml", description="castml: trace NumPy code to an IR, export to ONNX or .castml, run it anywhere.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        p = module.add_parser(sub)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback on errors")
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
        p.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    >>> main(["inspect", "missing.castml"])  # doctest: +SKIP
    1
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    progress.configure("off" if args.quiet else None)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("castml: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every failure becomes one line; --debug keeps the traceback
        if args.debug:
            traceback.print_exc()
        else:
            print(f"castml: error: {one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
