"""The `castml` command line: trace, convert, run, inspect, grad and demo.

Every command is one small module (`cmd_*.py`) exposing `add_parser(subparsers)` and
`run(args) -> int`; `main.py` wires them into one argparse program. Commands build only on the
public APIs (`tracer`, `ir`, `exporters`, `runtime`), so the command line exercises exactly what
a user's script would. The onnxruntime backend lives here (`ort_backend.py`) because `runtime`
never imports onnxruntime.
"""

from .diff import diff  # noqa: E402,F401  (castml_cli.diff(fn, path, *args): the first diverging op)
