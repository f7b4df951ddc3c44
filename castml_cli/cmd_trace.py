"""`castml trace`: trace a Python function named on the command line and save the model.

Each `--input` gives one argument (or one leaf of a pytree argument, by dotted path) either as
a type (`float32[batch,784]`, `f32[batch,784]`: an abstract input with symbolic dims) or as
values (`w.npy`, `params=weights.npz`, `2.0`). Arguments are matched to the function's
parameters by name; the output format follows the suffix. `--check` runs the saved file on
random inputs against the Python function, so a user sees at once whether the export is right.
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from runtime import pytree

from .common import (
    CliError,
    InputArg,
    input_arg,
    is_array_file,
    load_array_file,
    max_abs_error,
    nest,
    parse_literal,
    parse_type_spec,
    random_array,
    save_model,
    type_text,
)
from .loading import check_model_path, optimize, resolve_function
from .progress import Progress

EXAMPLES = """\
examples:
  castml trace mymodel.py:predict -o m.castml --input x=float32[batch,784]
  castml trace mypkg.nets:mlp -o m.onnx --input x=f32[batch,784] --input params=weights.npz --check
  castml trace mymodel.py:loss -o l.castml --input params.fc1.w=w1.npy --input params.fc1.b=b1.npy \\
      --input x=f32[batch,784] --optimize"""

CHECK_DIM = 3  # size given to every symbolic dim by --check


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `trace`."""
    p = sub.add_parser("trace", help="trace a Python function into a .castml or .onnx model",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("function", help="pkg.module:fn or path/to/file.py:fn")
    p.add_argument("-o", "--output", required=True, help="output model file (.castml or .onnx)")
    p.add_argument("-i", "--input", dest="inputs", action="append", type=input_arg, default=[],
                   metavar="NAME=SPEC", help="an argument: NAME=DTYPE[dims] (e.g. x=float32[batch,784]), "
                   "NAME=file.npy|file.npz, or NAME=literal; NAME may be a pytree path (params.fc1.w)")
    p.add_argument("--optimize", action="store_true", help="run ir.optimize before saving")
    p.add_argument("--check", action="store_true",
                   help="run the saved model on random inputs against the Python function; print the max error")
    p.add_argument("--seed", type=int, default=0, help="random seed for --check (default 0)")
    p.add_argument("--print-ir", action="store_true", help="print the traced graph")
    p.add_argument("--target", help="print what this target cannot run (onnxruntime-cpu, castml, onnx-opset-N); "
                   "exit 3 when anything")
    return p


def _leaf(arg: InputArg) -> dict[str | None, Any]:
    """One `--input` as {name: TensorSpec or array} (an `.npz` may give several)."""
    import tracer

    spec = parse_type_spec(arg.text)
    if spec is not None:
        return {arg.name: tracer.TensorSpec(spec[1], spec[0])}
    if is_array_file(arg.text):
        return load_array_file(arg.text, arg.name)
    value = parse_literal(arg.text)
    if value is None:
        raise CliError(f"input {arg.name or arg.text!r}: {arg.text!r} is neither a type like float32[batch,784], "
                       f"an .npy/.npz file, nor a number")
    return {arg.name: value}


def build_args(fn: Callable, inputs: list[InputArg]) -> tuple[list[Any], list[str]]:
    """Positional arguments for `fn` from `--input`s, matched to its parameters by name.

    Returns (args, parameter names used).
    """
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params]
    positional: list[Any] = []
    named: dict[str, Any] = {}
    for arg in inputs:
        for name, value in _leaf(arg).items():
            if name is None:
                if named:
                    raise CliError(f"positional input {arg.text!r} after named inputs; name it NAME={arg.text}")
                positional.append(value)
            else:
                named[name] = value
    tree = nest(named) if named else {}
    args = list(positional)
    for p in params[len(positional):]:
        if p.name in tree:
            args.append(tree.pop(p.name))
        elif p.default is inspect.Parameter.empty:
            raise CliError(f"missing --input for parameter {p.name!r} of {getattr(fn, '__name__', 'the function')}"
                           f"({', '.join(names)})")
        else:
            break  # the rest keep their Python defaults
    if tree:
        raise CliError(f"input(s) {', '.join(sorted(tree))} match no parameter before a defaulted one; "
                       f"the parameters are ({', '.join(names)})")
    return args, names[:len(args)]


def random_inputs(args: list[Any], seed: int) -> list[Any]:
    """Concrete arrays for every TensorSpec leaf (symbolic dims -> CHECK_DIM); arrays kept.

    >>> import tracer
    >>> random_inputs([tracer.TensorSpec(("batch", 2), np.float32)], 0)[0].shape
    (3, 2)
    """
    import tracer

    rng = np.random.default_rng(seed)
    leaves, tree = pytree.flatten(args)
    out = []
    for leaf in leaves:
        if not isinstance(leaf, tracer.TensorSpec):
            out.append(np.asarray(leaf))
            continue
        shape = tuple(d if isinstance(d, int) else CHECK_DIM for d in leaf.shape)
        out.append(random_array(leaf.dtype, shape, rng))
    return pytree.unflatten(tree, out)


def check_saved(path: str, fn: Callable, args: list[Any], seed: int) -> tuple[float, bool]:
    """Run the saved model and `fn` on the same random inputs; (max abs error, agree)."""
    concrete = random_inputs(args, seed)
    ref = fn(*concrete)
    ref_leaves = [np.asarray(r) for r in pytree.flatten(ref)[0]]
    if path.endswith(".onnx"):
        from .ort_backend import OrtModel

        got_leaves = OrtModel.from_onnx_file(path).run_flat(pytree.flatten(concrete)[0])
    else:
        import runtime

        got_leaves = [np.asarray(r) for r in pytree.flatten(runtime.load(path).run(*concrete))[0]]
    return max_abs_error(got_leaves, ref_leaves)


def run(args: argparse.Namespace) -> int:
    """Trace, (optimize), save and (check), with a progress line on stderr for slow steps."""
    import tracer

    check_model_path(args.output, must_exist=False)
    steps = 3 + bool(args.optimize) + bool(args.target) + bool(args.check)
    with Progress(f"castml trace {args.function}", total=steps) as bar:
        bar.step("importing")
        fn = resolve_function(args.function)
        call_args, names = build_args(fn, args.inputs)
        bar.step("tracing")
        g = tracer.trace(fn, *call_args)
        if args.optimize:
            bar.step("optimizing")
            g = optimize(g)
        if args.print_ir:
            bar.print(g)
        report = None
        if args.target:  # before saving: an ONNX save fails on the first op the target lacks
            from exporters.check import check_graph

            bar.step(f"checking target {args.target}")
            report = check_graph(g, args.target, args.function)
            bar.print(report.format())
        bar.step(f"saving {args.output}")
        save_model(g, args.output)
        ins = ", ".join(f"{v.name}: {type_text(v.type.dtype, v.type.shape)}" for v in g.inputs)
        outs = ", ".join(type_text(v.type.dtype, v.type.shape) for v in g.outputs)
        n_ops = sum(1 for _ in g.walk())
        bar.print(f"traced {args.function}({', '.join(names)}) -> {args.output} "
                  f"({os.path.getsize(args.output):,} bytes, {n_ops} ops)")
        bar.print(f"  inputs:  {ins}")
        bar.print(f"  outputs: {outs}")
        if args.check:
            bar.step("checking against the Python function")
            err, ok = check_saved(args.output, fn, call_args, args.seed)
    if args.check:
        verdict = "ok" if ok else "MISMATCH beyond tolerance"
        print(f"check: max abs error {err:.3g} vs the Python function on random inputs "
              f"(symbolic dims = {CHECK_DIM}): {verdict}")
        return 0 if ok else 1
    return 3 if report is not None and not report.ok else 0
