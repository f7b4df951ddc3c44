"""The `onnxruntime-web` export target: what the WebAssembly build of onnxruntime loads and runs.

Why a target of its own: onnxruntime-web lags the Python package. Measured with 1.30.0, it
refuses models of the IR version onnx 1.23 writes by default ("max supported IR version: 13"),
and its kernels are not the CPU build's. Users export on machines without node, so what the web
build can do is probed once in node (`node web/probe_capabilities.mjs`, which asks this module for
the one-node probe models and runs them in onnxruntime-web) and committed as
`capabilities/onnxruntime-web-<version>.json`: the ops table in the same format as onnxruntime's
plus the highest IR version that loads. `tests/test_web.py` fails when that version and the one
pinned in `web/package.json` disagree.

At export, `WebCapabilities.pin` caps the model's IR version and rejects opsets the table did
not probe; missing (op, dtype) pairs go through the usual fallbacks or raise `ExportError`
naming the op, so a model that exports is one the browser can run.

Random ops (`random_bits`/`random_uniform`/`random_normal`, so Dropout in a training step) run
in the web build bit for bit like our runtime at opset >= 18, where their uint32 hash is
BitwiseXor/BitShift/Mul/Add/Cast (all probed on uint32, wraparound included: `tests/test_web.py`).
Before opset 18 ONNX has no BitwiseXor and each xor is spelled bit by bit, some 5,000 nodes per
random op; onnxruntime-web 1.30.0 creates such sessions far more slowly than the CPU build
(measured in node, one thread, on a loaded 2-core machine: one dropout, 4,840 nodes, 4.6 s;
six random ops, 36,103 nodes, not loaded after 100 s, which onnxruntime CPU loads in 3.4 s), so
`check_random_opset` makes that an `ExportError` naming the op instead of a page that hangs.

Probe models: `python -m exporters.target_web probe-models OUT.json` writes
{"probes": [{"key", "dtype", "opset", "model": base64, "inputs": {name: {dtype, shape, data}}}],
 "ir_probes": [{"ir_version", "model", "inputs"}]}.
"""

from __future__ import annotations

import base64
import json
import os
import sys

import numpy as np

from .capabilities import Capabilities
from .errors import ExportError

NAME = "onnxruntime-web"
_DIR = os.path.join(os.path.dirname(__file__), "capabilities")
IR_PROBE_VERSIONS = tuple(range(7, 15))
MIN_RANDOM_OPSET = 18  # BitwiseXor; see the module docstring


class WebCapabilities(Capabilities):
    """The probed table of onnxruntime-web plus its format ceiling (highest IR version, opsets).

    >>> caps = load_table()
    >>> caps.name.startswith("onnxruntime-web-"), caps.max_ir_version <= 13
    (True, True)
    """

    def __init__(self, name: str, version: str, ops: dict[str, dict[str, list[int]]], opsets: list[int],
                 max_ir_version: int):
        super().__init__(name, ops, opsets)
        self.version = version
        self.max_ir_version = max_ir_version

    def supports(self, key: str, dtype, opset: int) -> bool:
        """Whether `key` runs on `dtype` at `opset`; an opset outside the probed ones is an error.

        >>> load_table().supports("Add", np.float32, 18)
        True
        """
        self.check_opset(opset)
        return super().supports(key, dtype, opset)

    def check_opset(self, opset: int) -> None:
        """Raise `ExportError` unless `opset` is one the table probed.

        >>> load_table().check_opset(18)
        """
        if opset not in self.opsets:
            raise ExportError(f"{self.name}: opset {opset} was not probed for onnxruntime-web; expected one of "
                              f"{min(self.opsets)}..{max(self.opsets)} (opset=18 is the default)")

    def check_random_opset(self, opset: int, kind: str, loc: str | None = None) -> None:
        """Raise `ExportError` naming the random op `kind` (at source line `loc`) below opset 18.

        >>> load_table().check_random_opset(18, "random_uniform")
        >>> try:
        ...     load_table().check_random_opset(13, "random_uniform", "model.py:3")
        ... except ExportError as e:
        ...     print(str(e)[:76])
        onnxruntime-web-1.30.0 cannot run `random_uniform` (model.py:3) at opset 13:
        """
        if opset >= MIN_RANDOM_OPSET:
            return
        where = f" ({loc})" if loc else ""
        raise ExportError(f"{self.name} cannot run `{kind}`{where} at opset {opset}: before opset {MIN_RANDOM_OPSET} "
                          f"ONNX has no BitwiseXor, so its uint32 hash is spelled bit by bit (thousands of nodes per "
                          f"random op), which onnxruntime-web {self.version} takes minutes to load; export at opset "
                          f">= {MIN_RANDOM_OPSET} (the default), where it runs bit for bit like castml's runtime")

    def pin(self, model) -> None:
        """Cap `model.ir_version` at the highest one onnxruntime-web loads (in place).

        >>> import onnx
        >>> m = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []),
        ...                            opset_imports=[onnx.helper.make_opsetid("", 18)])
        >>> m.ir_version > 13, (load_table().pin(m), m.ir_version)[1] <= 13
        (True, True)
        """
        from onnx import helper

        opsets = [op for op in model.opset_import if op.domain in ("", "ai.onnx")]
        for op in opsets:
            self.check_opset(op.version)
        needed = helper.find_min_ir_version_for(list(model.opset_import))
        if needed > self.max_ir_version:
            raise ExportError(f"{self.name}: opset {[o.version for o in opsets]} needs IR version {needed}, but "
                              f"onnxruntime-web {self.version} loads at most IR version {self.max_ir_version}")
        if model.ir_version > self.max_ir_version:
            model.ir_version = self.max_ir_version


def table_files() -> list[str]:
    """The committed onnxruntime-web tables, oldest version first.

    >>> table_files()[-1].startswith("onnxruntime-web-")
    True
    """
    names = [f for f in os.listdir(_DIR) if f.startswith(NAME + "-") and f.endswith(".json")]
    return sorted(names, key=lambda f: tuple(int(p) if p.isdigit() else -1
                                             for p in f[len(NAME) + 1:-len(".json")].split(".")))


def load_table(version: str | None = None) -> WebCapabilities:
    """The table for onnxruntime-web `version` (default: the newest committed one).

    >>> load_table().version.count(".")
    2
    """
    files = table_files()
    if version is not None:
        files = [f for f in files if f == f"{NAME}-{version}.json"]
    if not files:
        wanted = f" for version {version}" if version else ""
        raise ExportError(f"no onnxruntime-web capability table{wanted} in {_DIR}; generate one with "
                          f"`node web/probe_capabilities.mjs` (after scripts/install_web.sh)")
    with open(os.path.join(_DIR, files[-1])) as f:
        data = json.load(f)
    return WebCapabilities(files[-1][:-len(".json")], data[NAME], data["ops"], data["opsets"],
                           data["max_ir_version"])


# --- probe models for web/probe_capabilities.mjs -----------------------------------------------

def _spec(a: np.ndarray) -> dict:
    a = np.asarray(a)
    flat = a.reshape(-1)
    if a.dtype.kind in "iu":
        data = [str(int(v)) for v in flat] if a.dtype.itemsize == 8 else [int(v) for v in flat]
    elif a.dtype == np.bool_:
        data = [bool(v) for v in flat]
    elif a.dtype == np.float16:
        data = [int(v) for v in flat.view(np.uint16)]  # onnxruntime-web takes float16 as raw bits
    else:
        data = [float(v) for v in flat]
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": data}


def probe_models() -> dict:
    """Every one-node probe model of `exporters.probe_capabilities` with its inputs, plus IR probes.

    >>> d = probe_models(); len(d["probes"]) > 1000, [p["ir_version"] for p in d["ir_probes"]][:2]
    (True, [7, 8])
    """
    from onnx import helper

    from . import probe_capabilities as P

    probes = []
    for key in sorted(P.PROBES):
        op = key.split(".")[0]
        for dname in P.DTYPES:
            dt = np.dtype(dname)
            for opset in P.OPSETS:
                try:
                    m = P._model(key, dt, opset)
                except Exception:  # noqa: BLE001 - ONNX itself forbids this (op, dtype, opset)
                    continue
                arrays, _ = P.PROBES[key](dt)
                if op in P.INPUT_SINCE and opset < P.INPUT_SINCE[op]:
                    arrays = arrays[:1]
                probes.append({"key": key, "dtype": dname, "opset": opset,
                               "model": base64.b64encode(m.SerializeToString()).decode("ascii"),
                               "inputs": {f"in{i}": _spec(a) for i, a in enumerate(arrays)}})
    ir_probes = []
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for ir in IR_PROBE_VERSIONS:
        node = helper.make_node("Add", ["in0", "in0"], ["out0"])
        graph = helper.make_graph([node], "ir_probe", [helper.make_tensor_value_info("in0", 1, [2, 3])],
                                  [helper.make_tensor_value_info("out0", 1, [2, 3])])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
        ir_probes.append({"ir_version": ir, "model": base64.b64encode(m.SerializeToString()).decode("ascii"),
                          "inputs": {"in0": _spec(x)}})
    return {"opsets": list(P.OPSETS), "probes": probes, "ir_probes": ir_probes}


def main(argv: list[str]) -> int:
    """`python -m exporters.target_web probe-models OUT.json`: write the probe models for node."""
    if len(argv) != 2 or argv[0] != "probe-models":
        print("usage: python -m exporters.target_web probe-models OUT.json", file=sys.stderr)
        return 2
    with open(argv[1], "w") as f:
        json.dump(probe_models(), f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
