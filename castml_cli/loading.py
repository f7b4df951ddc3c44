"""Loading what the commands work on: Python functions named on the command line, and models.

`pkg.module:fn` is imported like `python -m` would (the current folder first on `sys.path`);
`path/to/file.py:fn` is loaded from its file with its folder on `sys.path`, so sibling imports
work. Models are read through `exporters` by suffix; `--optimize` goes through `ir.optimize`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

from .common import CliError

MODEL_SUFFIXES = (".castml", ".onnx")


def resolve_function(target: str) -> Callable:
    """The function named by `pkg.module:fn` or `path/to/file.py:fn` (`fn` may be dotted).

    >>> resolve_function("numpy:tanh").__name__
    'tanh'
    """
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise CliError(f"bad function {target!r}; expected pkg.module:fn or path/to/file.py:fn")
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        path = os.path.abspath(module_part)
        if not os.path.isfile(path):
            raise CliError(f"file {module_part!r} not found (from {target!r})")
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = "_castml_user_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise CliError(f"cannot import {module_part!r}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as e:
            raise CliError(f"cannot import module {module_part!r} (from {target!r}): {e}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CliError(f"{module_part!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CliError(f"{target!r} is a {type(obj).__name__}, not a function")
    return obj


def check_model_path(path: str, must_exist: bool = True) -> str:
    """Validate a model file name's suffix (and existence); returns the suffix.

    >>> check_model_path("m.onnx", must_exist=False)
    '.onnx'
    """
    suffix = os.path.splitext(path)[1]
    if suffix not in MODEL_SUFFIXES:
        raise CliError(f"{path!r}: expected a .castml or .onnx file")
    if must_exist and not os.path.isfile(path):
        raise CliError(f"model file {path!r} not found")
    return suffix


def load_graph(path: str, entry: str | None = None):
    """One entry of a model file as an `ir.Graph`.

    >>> load_graph("m.castml").inputs  # doctest: +SKIP
    """
    import exporters

    check_model_path(path)
    return exporters.load(path, entry=entry) if entry else exporters.load(path)


def load_graphs(path: str) -> dict[str, Any]:
    """Every entry of a model file, by name (an `.onnx` file has the one entry `main`)."""
    import exporters

    if check_model_path(path) == ".onnx":
        return {"main": exporters.load(path)}
    return dict(exporters.load_all(path))


def optimize(g):
    """`ir.optimize(g)`, with a clear error where this build has no optimizer yet."""
    import ir

    if not hasattr(ir, "optimize"):
        raise CliError("--optimize needs ir.optimize, which this build of castml does not have yet")
    result = ir.optimize(g)
    return getattr(result, "graph", result)
