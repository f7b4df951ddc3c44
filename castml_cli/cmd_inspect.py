"""`castml inspect`: what a model file holds, without running it.

For each entry: inputs and outputs with dtypes and symbolic shapes, an op histogram (nested
regions included), the parameter count and bytes (every constant tensor), and metadata; for
ONNX files also the opset and producer. `--json` prints the same as one JSON object for
scripts; `--ir` prints the SSA text of each entry.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from typing import Any

import numpy as np

from .common import type_text
from .loading import check_model_path, load_graphs

EXAMPLES = """\
examples:
  castml inspect m.castml
  castml inspect m.onnx --json | jq .entries.main.inputs
  castml inspect m.castml --ir"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `inspect`."""
    p = sub.add_parser("inspect", help="show a model's inputs, outputs, ops, parameters and metadata",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file (.castml or .onnx)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--ir", action="store_true", help="print each entry's IR text")
    return p


def _tensor(name: str, value) -> dict[str, Any]:
    t = value.type
    return {"name": name, "dtype": np.dtype(t.dtype).name, "shape": [d if isinstance(d, int) else str(d)
                                                                      for d in t.shape],
            "type": type_text(t.dtype, t.shape)}


def describe_graph(g) -> dict[str, Any]:
    """A JSON-able description of one `ir.Graph`.

    >>> import tracer
    >>> describe_graph(tracer.trace(lambda x: x * 2.0, np.ones(3)))["ops"]
    {'constant': 1, 'mul': 1}
    """
    from ir.graph import input_names

    ops = Counter(op.kind for op in g.walk())
    params = count = 0
    nbytes = 0
    for op in g.walk():
        for value in op.attrs.values():
            if isinstance(value, np.ndarray):
                count += 1
                params += int(value.size)
                nbytes += int(value.nbytes)
    return {
        "inputs": [_tensor(n, v) for n, v in zip(input_names(g), g.inputs)],
        "outputs": [_tensor(n or f"output{i}", v) for i, (n, v) in enumerate(zip(g.output_names, g.outputs))],
        "ops": dict(sorted(ops.items())),
        "num_ops": sum(ops.values()),
        "constants": count,
        "parameters": params,
        "parameter_bytes": nbytes,
        "metadata": {str(k): str(v) for k, v in g.metadata.items()},
    }


def describe_file(path: str) -> dict[str, Any]:
    """A JSON-able description of a model file (all entries)."""
    info: dict[str, Any] = {"file": path, "format": os.path.splitext(path)[1][1:], "bytes": os.path.getsize(path)}
    if path.endswith(".onnx"):
        import onnx

        m = onnx.load(path, load_external_data=False)
        info["onnx"] = {"ir_version": m.ir_version, "producer": f"{m.producer_name} {m.producer_version}".strip(),
                        "opsets": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
                        "metadata": {p.key: p.value for p in m.metadata_props}}
    info["entries"] = {name: describe_graph(g) for name, g in load_graphs(path).items()}
    return info


def _print_text(info: dict[str, Any]) -> None:
    print(f"{info['file']}: {info['format']}, {info['bytes']:,} bytes, {len(info['entries'])} "
          f"entr{'y' if len(info['entries']) == 1 else 'ies'}")
    if "onnx" in info:
        o = info["onnx"]
        opsets = ", ".join(f"{k} {v}" for k, v in o["opsets"].items())
        print(f"  onnx ir_version {o['ir_version']}, opsets {opsets}, producer {o['producer'] or '-'}")
    for name, e in info["entries"].items():
        print(f"entry {name}:")
        for label in ("inputs", "outputs"):
            print(f"  {label}:")
            for t in e[label]:
                print(f"    {t['name']}: {t['type']}")
        print(f"  parameters: {e['parameters']:,} in {e['constants']} constants, {e['parameter_bytes']:,} bytes")
        hist = ", ".join(f"{k} {v}" for k, v in sorted(e["ops"].items(), key=lambda kv: (-kv[1], kv[0])))
        print(f"  ops ({e['num_ops']}): {hist}")
        if e["metadata"]:
            print("  metadata:")
            for k, v in e["metadata"].items():
                print(f"    {k}: {v if len(v) <= 100 else v[:97] + '...'}")


def run(args: argparse.Namespace) -> int:
    """Print the description (text or JSON), then the IR if asked."""
    check_model_path(args.model)
    info = describe_file(args.model)
    graphs = load_graphs(args.model) if args.ir else {}
    if args.json:
        for name, g in graphs.items():
            info["entries"][name]["ir"] = str(g)
        print(json.dumps(info, indent=2))
        return 0
    _print_text(info)
    for name, g in graphs.items():
        print(f"\n// entry {name}")
        print(g)
    return 0
