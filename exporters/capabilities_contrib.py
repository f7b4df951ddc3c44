"""The `onnxruntime-cpu-contrib` export target: onnxruntime's CPU kernels plus its contrib ops.

Why a target of its own: with `ORT_ENABLE_EXTENDED`, onnxruntime rewrites Conv+Relu into its
`com.microsoft` FusedConv, Gemm+Relu into FusedGemm and a decomposed GELU into FastGelu while it
loads a model. Those rewrites are what `castml`'s fused ops (`fused_conv`, `gemm` with an
activation) already say, but plain ONNX has no node for them, so the default export spells them
as Conv + Relu and a session with graph optimizations disabled (the fastest to create, and what a
pre-optimized deployment uses) runs two kernels and an extra pass over memory. This target lowers
the fused ops to the contrib nodes directly. Only onnxruntime can load the result, so it is never
the default: `to_onnx(g, target="onnxruntime-cpu-contrib")` or `save(..., target=...)` asks for it.

What the contrib kernels accept is probed, as for the standard ops: `python -m
exporters.capabilities_contrib` builds a one-node model for every (contrib op, activation,
dtype, opset), runs it in the installed onnxruntime, checks the result against a float64 NumPy
reference under DESIGN.md's tolerance for the dtype (float64 FastGelu runs, but only to about
1e-7, so it is not listed), and writes
`capabilities/contrib-onnxruntime-<version>.json` (committed; keys are `com.microsoft.<Op>` with
the activation as variant, e.g. `com.microsoft.FusedConv.Relu`). A fused op whose (key, dtype)
the table lacks is lowered as for `onnxruntime-cpu`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .capabilities import Capabilities
from .errors import ExportError

NAME = "onnxruntime-cpu-contrib"
DOMAIN = "com.microsoft"
DOMAIN_VERSION = 1
_DIR = os.path.join(os.path.dirname(__file__), "capabilities")
_PREFIX = "contrib-onnxruntime-"

# IR activation name -> the `activation` attribute of FusedConv/FusedGemm (MLAS activations)
ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
# IR activation name -> contrib GELU node (FastGelu is the tanh approximation)
GELUS = {"gelu": "Gelu", "gelu_tanh": "FastGelu"}


class ContribCapabilities(Capabilities):
    """onnxruntime-cpu's probed table plus the probed contrib rows (`com.microsoft.*` keys).

    >>> caps = load_contrib()
    >>> caps.has_contrib("com.microsoft.FusedConv.Relu", np.float32, 18)
    True
    >>> caps.has_contrib("com.microsoft.FusedConv.Relu", np.float64, 18), caps.supports("Add", np.float32, 18)
    (False, True)
    """

    def __init__(self, base: Capabilities, contrib: dict[str, dict[str, list[int]]], version: str):
        super().__init__(f"{base.name}+contrib", {**base.ops, **contrib}, list(base.opsets))
        self.contrib = contrib
        self.version = version

    def has_contrib(self, key: str, dtype, opset: int) -> bool:
        """Whether the contrib op `key` was probed to run on `dtype` at `opset` (unprobed: no).

        >>> load_contrib().has_contrib("com.microsoft.NoSuchOp", np.float32, 18)
        False
        """
        row = self.contrib.get(key)
        return row is not None and opset in row.get(np.dtype(dtype).name, ())

    def pin(self, model) -> None:
        """Declare the contrib domain in `model.opset_import` when a node (subgraphs too) uses it.

        >>> import onnx
        >>> n = onnx.helper.make_node("FastGelu", ["x"], ["y"], domain=DOMAIN)
        >>> m = onnx.helper.make_model(onnx.helper.make_graph([n], "g", [], []),
        ...                            opset_imports=[onnx.helper.make_opsetid("", 18)])
        >>> load_contrib().pin(m); [(o.domain, o.version) for o in m.opset_import]
        [('', 18), ('com.microsoft', 1)]
        """
        from onnx import helper

        if any(o.domain == DOMAIN for o in model.opset_import):
            return
        if any(n.domain == DOMAIN for n in _all_nodes(model.graph)):
            model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))


def _all_nodes(graph):
    from onnx import AttributeProto

    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _all_nodes(sub)


def contrib_key(op: str, variant: str | None = None) -> str:
    """The table key of a contrib op (with its activation variant).

    >>> contrib_key("FusedConv", "Relu"), contrib_key("FastGelu")
    ('com.microsoft.FusedConv.Relu', 'com.microsoft.FastGelu')
    """
    return f"{DOMAIN}.{op}" + (f".{variant}" if variant else "")


def table_files() -> list[str]:
    """The committed contrib tables, oldest onnxruntime version first.

    >>> table_files()[-1].startswith("contrib-onnxruntime-")
    True
    """
    names = [f for f in os.listdir(_DIR) if f.startswith(_PREFIX) and f.endswith(".json")]
    return sorted(names, key=lambda f: tuple(int(p) if p.isdigit() else -1
                                             for p in f[len(_PREFIX):-len(".json")].split(".")))


def load_contrib() -> ContribCapabilities:
    """The target's table for the installed onnxruntime (or the newest probed one).

    >>> load_contrib().name.endswith("+contrib")
    True
    """
    from .capabilities import _installed_ort_version, load_target

    files = table_files()
    if not files:
        raise ExportError(f"no contrib capability table ({_PREFIX}<version>.json) in {_DIR}; generate one with "
                          f"`python -m exporters.capabilities_contrib`")
    wanted = f"{_PREFIX}{_installed_ort_version()}.json"
    chosen = wanted if wanted in files else files[-1]
    with open(os.path.join(_DIR, chosen)) as f:
        data = json.load(f)
    return ContribCapabilities(load_target("onnxruntime-cpu"), data["ops"], data["onnxruntime"])


# --- probing -------------------------------------------------------------------------------------

DTYPES = ("float16", "float32", "float64")


# DESIGN.md's agreement rule: dtype -> (rtol, atol relative to max|ref|)
TOLERANCES = {"float16": (1e-2, 1e-3), "float32": (1e-4, 1e-5), "float64": (1e-10, 1e-12)}
_ACT_REF = {"Relu": lambda y: np.maximum(y, 0.0), "Sigmoid": lambda y: 1.0 / (1.0 + np.exp(-y)), "Tanh": np.tanh}


def _gelu_ref(x: np.ndarray, tanh: bool) -> np.ndarray:
    import math

    if tanh:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _probe_case(key: str, dt: np.dtype) -> tuple[list[np.ndarray], dict, np.ndarray]:
    """Inputs, attributes and the float64 reference result of one probe."""
    op, _, variant = key[len(DOMAIN) + 1:].partition(".")
    x = (((np.arange(18) % 7) - 3) * 0.375).astype(dt)
    attrs = {"activation": variant} if variant else {}
    if op == "FusedConv":
        xs, w, b = x[:9].reshape(1, 1, 3, 3), x[4:8].reshape(1, 1, 2, 2), x[5:6]
        wins = np.lib.stride_tricks.sliding_window_view(xs[0, 0].astype(np.float64), (2, 2))
        y = np.einsum("ijkl,kl->ij", wins, w[0, 0].astype(np.float64)) + float(b[0])
        return [xs, w, b], attrs, _ACT_REF[variant](y.reshape(1, 1, 2, 2))
    if op == "FusedGemm":
        a, b, c = x[:6].reshape(2, 3), x[6:12].reshape(3, 2), x[3:5]
        y = a.astype(np.float64) @ b.astype(np.float64) + c.astype(np.float64)
        return [a, b, c], attrs, _ACT_REF[variant](y)
    a = x[:6].reshape(2, 3)
    return [a], attrs, _gelu_ref(a.astype(np.float64), tanh=op == "FastGelu")


def _agrees(got: np.ndarray, ref: np.ndarray, dtype: np.dtype) -> bool:
    rtol, atol = TOLERANCES[dtype.name]
    got = np.asarray(got, np.float64)
    return got.shape == ref.shape and bool(np.all(np.abs(got - ref) <= rtol * np.abs(ref)
                                                  + atol * np.max(np.abs(ref))))


def probe_keys() -> list[str]:
    """Every contrib key the lowerings may emit.

    >>> probe_keys()[:2]
    ['com.microsoft.FastGelu', 'com.microsoft.FusedConv.Relu']
    """
    keys = [contrib_key(op, act) for op in ("FusedConv", "FusedGemm") for act in ACTIVATIONS.values()]
    return sorted(keys + [contrib_key(op) for op in GELUS.values()])


def probe_one(key: str, dt: np.dtype, opset: int) -> bool:
    """Whether onnxruntime runs a one-node model of contrib `key` on `dt` at `opset` and gets the
    reference result (DESIGN.md's tolerance for `dt`).

    >>> probe_one("com.microsoft.FusedGemm.Relu", np.dtype(np.float32), 18)
    True
    """
    import onnxruntime as ort
    from onnx import helper

    arrays, attrs, ref = _probe_case(key, dt)
    op = key[len(DOMAIN) + 1:].partition(".")[0]
    names = [f"in{i}" for i in range(len(arrays))]
    elem = helper.np_dtype_to_tensor_dtype(dt)
    node = helper.make_node(op, names, ["out0"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info(n, elem, a.shape)
                                                for n, a in zip(names, arrays)],
                              [helper.make_tensor_value_info("out0", elem, None)])
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets[:1]))
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = sess.run(None, dict(zip(names, arrays)))[0]
    except Exception:  # noqa: BLE001 - any failure (load, missing kernel, run) means "not supported"
        return False
    return got.dtype == dt and _agrees(got, ref, dt)


def probe_all() -> dict:
    """The contrib table of the installed onnxruntime: {"onnxruntime", "opsets", "ops"}."""
    from .probe_capabilities import probe_table

    return probe_table(probe_keys(), probe_one, DTYPES)


def main() -> None:
    """Probe and write `exporters/capabilities/contrib-onnxruntime-<version>.json`."""
    from .probe_capabilities import write_table

    data = probe_all()
    write_table(data, os.path.join(_DIR, f"{_PREFIX}{data['onnxruntime']}.json"))


if __name__ == "__main__":
    main()
