"""Which (ONNX op, dtype, opset) triples an export target can run, read from probed tables.

Why a table and not a list in code: the tables are measured by `exporters/probe_capabilities.py`
against the installed onnxruntime and committed per version (`capabilities/onnxruntime-X.json`),
so a new onnxruntime release is one probe run away instead of a hunt through its kernel registry.
Keys are ONNX op types, optionally with a variant suffix the lowering cares about
(`Mod.fmod`, `Pad.reflect`, `Cast.to` keyed by the destination dtype).
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from .errors import ExportError

# onnxruntime-cpu-contrib: onnxruntime-cpu plus its com.microsoft fused ops (exporters/capabilities_contrib.py)
TARGETS = ("onnxruntime-cpu", "onnxruntime-web", "onnxruntime-cpu-contrib")
_DIR = os.path.join(os.path.dirname(__file__), "capabilities")


class Capabilities:
    """A probed capability table for one target.

    >>> caps = load_target("onnxruntime-cpu")
    >>> caps.supports("Add", np.float32, 18), caps.supports("Conv", np.float64, 18)
    (True, False)
    """

    def __init__(self, name: str, ops: dict[str, dict[str, list[int]]], opsets: list[int]):
        self.name = name
        self.ops = ops
        self.opsets = tuple(opsets)

    def supports(self, key: str, dtype, opset: int) -> bool:
        """Whether `key` (an ONNX op type, maybe with a `.variant`) runs on `dtype` at `opset`.

        Ops the table never probed are assumed supported (they are dtype-agnostic plumbing).
        """
        row = self.ops.get(key)
        if row is None:
            return True
        return opset in row.get(np.dtype(dtype).name, ())


def _installed_ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


@functools.cache
def load_target(target: str) -> Capabilities:
    """The capability table of `target` for the installed onnxruntime (or the newest probed one).

    >>> load_target("onnxruntime-cpu").name.startswith("onnxruntime-")
    True
    """
    if target not in TARGETS:
        raise ExportError(f"unknown export target {target!r}; expected one of {TARGETS} or None")
    if target == "onnxruntime-web":  # its own tables and format ceiling: exporters/target_web.py
        from .target_web import load_table

        return load_table()
    if target == "onnxruntime-cpu-contrib":  # the CPU table plus probed contrib ops
        from .capabilities_contrib import load_contrib

        return load_contrib()
    tables = sorted(f for f in os.listdir(_DIR) if f.startswith("onnxruntime-") and f.endswith(".json"))
    if not tables:
        raise ExportError(f"no capability tables in {_DIR}; run `python -m exporters.probe_capabilities`")
    version = _installed_ort_version()
    wanted = f"onnxruntime-{version}.json"
    chosen = wanted if wanted in tables else max(tables, key=_version_key)
    with open(os.path.join(_DIR, chosen)) as f:
        data = json.load(f)
    return Capabilities(chosen[:-5], data["ops"], data["opsets"])


def _version_key(filename: str) -> tuple:
    parts = filename[len("onnxruntime-"):-len(".json")].split(".")
    return tuple(int(p) if p.isdigit() else 0 for p in parts)
