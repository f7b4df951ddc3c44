"""`castml bench`: latency percentiles of castml's runtime vs onnxruntime on the same model.

Both engines get the same inputs (random ones built from the model's signature, symbolic dims
set with `--dim batch=32`, or arrays from `--input`), their outputs are compared first with the
agreement rule (a fast wrong answer is no benchmark), then each runs `--warmup` untimed and
`--runs` timed calls. A `.castml` file goes to onnxruntime through `exporters.to_onnx`; an `.onnx`
file comes to our runtime through `exporters.load`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np

from runtime import pytree

from .cmd_run import Signature, gather_inputs
from .common import CliError, input_arg, max_abs_error, random_array, type_text
from .loading import check_model_path, load_graph
from .progress import Progress

EXAMPLES = """\
examples:
  castml bench m.castml --dim batch=32
  castml bench m.onnx --input x=x.npy --runs 200 --json"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `bench`."""
    p = sub.add_parser("bench", help="latency of castml's runtime vs onnxruntime on one model",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file (.castml or .onnx)")
    p.add_argument("-i", "--input", dest="inputs", action="append", type=input_arg, default=[],
                   metavar="[NAME=]VALUE", help="inputs as for `castml run` (default: random from the signature)")
    p.add_argument("--dim", action="append", default=[], metavar="SYMBOL=N",
                   help="size of a symbolic dim for random inputs (default 1)")
    p.add_argument("--runs", type=int, default=100, help="timed calls per engine (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--entry", help="entry of a multi-entry .castml file")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    return p


def parse_dims(items: list[str]) -> dict[str, int]:
    """`["batch=32"]` -> {"batch": 32}.

    >>> parse_dims(["batch=32", "seq=7"])
    {'batch': 32, 'seq': 7}
    """
    dims = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value.isdigit():
            raise CliError(f"--dim {item!r}: expected SYMBOL=N, e.g. batch=32")
        dims[name.strip()] = int(value)
    return dims


def time_calls(call: Callable[[], object], runs: int, warmup: int,
               progress: Progress | None = None) -> dict[str, float]:
    """Milliseconds per call: p50, p90, p99, mean, min over `runs` timed calls.

    `progress` (if given) counts every call, warmup included, outside the timed region.

    >>> sorted(time_calls(lambda: None, 3, 0))
    ['mean', 'min', 'p50', 'p90', 'p99']
    """
    for _ in range(warmup):
        call()
        if progress is not None:
            progress.advance()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        call()
        times[i] = time.perf_counter() - t0
        if progress is not None:
            progress.advance()
    ms = times * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min())}


def _timed(name: str, model: str, call: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    with Progress(f"castml bench {model}: {name}", total=warmup + runs, unit=" calls") as bar:
        return time_calls(call, runs, warmup, bar)


def run(args: argparse.Namespace) -> int:
    """Check agreement, then time both engines."""
    import runtime
    from exporters.castml_format import to_bytes

    from .ort_backend import OrtModel

    check_model_path(args.model)
    if args.runs < 1 or args.warmup < 0:
        raise CliError(f"--runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}")
    model = os.path.basename(args.model)
    with Progress(f"castml bench {model}", total=4) as bar:
        bar.step(f"loading {args.model}")
        g = load_graph(args.model, args.entry)
        sig = Signature.of_graph(g)
        if args.inputs:
            leaves = gather_inputs(sig, args.inputs)
        else:
            dims = parse_dims(args.dim)
            rng = np.random.default_rng(args.seed)
            leaves = [random_array(dt, tuple(d if isinstance(d, int) else dims.get(str(d), 1) for d in shape), rng)
                      for _, dt, shape in sig.inputs]
        bar.step("loading into castml's runtime")
        ours = runtime.load(to_bytes(g), backend="numpy")  # the label says numpy
        call_args = pytree.unflatten(sig.in_tree, leaves)
        bar.step("loading into onnxruntime")
        if args.model.endswith(".onnx"):
            ort = OrtModel.from_onnx_file(args.model)
        else:
            ort = OrtModel.from_graph(g, args.model)
        bar.step("checking that both agree")
        got = [np.asarray(o) for o in pytree.flatten(ours.run(*call_args))[0]]
        ref = ort.run_flat(leaves)
        err, ok = max_abs_error(got, ref)
    results = {
        "model": model,
        "inputs": [f"{n}: {type_text(a.dtype, a.shape)}" for (n, _, _), a in zip(sig.inputs, leaves)],
        "max_abs_difference": err,
        "agree": ok,
        "castml_numpy_ms": _timed("castml numpy", model, lambda: ours.run(*call_args), args.runs, args.warmup),
        "onnxruntime_ms": _timed("onnxruntime", model, lambda: ort.run_flat(leaves), args.runs, args.warmup),
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"bench {results['model']} ({', '.join(results['inputs'])}), {args.runs} runs after {args.warmup} "
              f"warmup; max|castml - onnxruntime| {err:.3g} ({'agree' if ok else 'MISMATCH'})")
        print(f"  {'engine':<14}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
        for name, key in (("castml numpy", "castml_numpy_ms"), ("onnxruntime", "onnxruntime_ms")):
            r = results[key]
            print(f"  {name:<14}{r['p50']:>10.3f}{r['p90']:>10.3f}{r['p99']:>10.3f}{r['mean']:>10.3f}")
        ratio = results["castml_numpy_ms"]["p50"] / max(results["onnxruntime_ms"]["p50"], 1e-9)
        print(f"  castml / onnxruntime at p50: {ratio:.2f}x")
    return 0 if ok else 1
