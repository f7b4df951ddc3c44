"""Target compatibility reports: every (op, dtype, opset) in a model that a target cannot run.

Why a report and not the first error: a model that exports fine and fails to load on the
deployment machine ("NOT_IMPLEMENTED", "no kernel for Conv(double)") is found one op at a time
otherwise. This module lists all of them at once, each with the user's source line and a fix,
from the same probed capability tables (`capabilities.py`) the exporter uses to pick lowerings.

Targets: `onnxruntime-cpu` (and every other probed table in `capabilities.TARGETS`) checks each
ONNX node's (op, input dtype) at the model's opset; `onnx-opset-N` checks that each node's op
exists in ONNX opset N in the same form; `castml` checks that our runtime has a kernel for every
op (an ONNX model is imported first). A `.castml` model is checked through the ONNX it exports
to (`to_onnx(g, target=None)`, so nothing is rewritten away before it is looked at).

>>> import numpy as np, tracer
>>> g = tracer.trace(lambda x: x + 1.0, np.zeros(2, np.float32))
>>> check_graph(g, "onnxruntime-cpu").ok
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .capabilities import TARGETS, load_target
from .errors import ExportError

# the input whose dtype keys the capability table, where it is not input 0 (as the probes do)
KEY_INPUT = {"Where": 1}


@dataclass(frozen=True)
class Issue:
    """One thing the target cannot run: the table key (op and variant), dtype, opset, where, fix."""

    op: str
    dtype: str
    opset: int
    where: str
    fix: str

    def __str__(self) -> str:
        return f"{self.op} on {self.dtype or '-'} at opset {self.opset} ({self.where}): {self.fix}"


@dataclass
class CheckReport:
    """Every issue of one model against one target; `ok` when there are none."""

    model: str
    target: str
    checked: int
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the target can run every op of the model."""
        return not self.issues

    def format(self) -> str:
        """The report as `castml check` prints it."""
        if self.ok:
            return f"{self.model}: every one of {self.checked} ops runs on {self.target}"
        lines = [f"{self.model}: {len(self.issues)} of {self.checked} ops cannot run on {self.target}:"]
        lines += [f"  {i}" for i in self.issues]
        return "\n".join(lines)


def parse_target(target: str) -> tuple[str, int | None]:
    """('onnx-opset', N), ('castml', None) or (a capability-table target, None).

    >>> parse_target("onnx-opset-13"), parse_target("onnxruntime-cpu")
    (('onnx-opset', 13), ('onnxruntime-cpu', None))
    """
    m = re.fullmatch(r"onnx-opset-(\d+)", target)
    if m:
        return "onnx-opset", int(m.group(1))
    if target == "castml" or target in TARGETS:
        return target, None
    raise ExportError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}, castml, or onnx-opset-N "
                      f"(e.g. onnx-opset-13)")


# --- node facts ---------------------------------------------------------------------------------------
def _dtypes(model: Any) -> dict[str, np.dtype]:
    """Element types of every tensor of an ONNX model, from its declarations and shape inference."""
    import onnx
    from onnx import helper

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a model ONNX cannot infer still has its declared types
        inferred = model
    out: dict[str, np.dtype] = {}
    for g in _graphs(inferred.graph):
        for vi in [*g.input, *g.value_info, *g.output]:
            et = vi.type.tensor_type.elem_type
            if et:
                out[vi.name] = np.dtype(helper.tensor_dtype_to_np_dtype(et))
        for t in g.initializer:
            out[t.name] = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    return out


def _graphs(graph: Any) -> list:
    """A graph and every subgraph (If branches, Loop bodies) nested in it, outermost first."""
    from onnx import AttributeProto

    out = [graph]
    for node in graph.node:
        for a in node.attribute:
            subs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
            for sub in subs if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) else []:
                out.extend(_graphs(sub))
    return out


def all_nodes(model: Any) -> list:
    """Every node of an ONNX model, subgraphs included, in a fixed order (graph by graph).

    >>> from onnx import helper
    >>> len(all_nodes(helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [], []))))
    1
    """
    return [n for g in _graphs(model.graph) for n in g.node]


def _keys(node: Any, dtypes: dict[str, np.dtype]) -> list[tuple[str, np.dtype | None]]:
    """(table key, dtype) pairs a node needs, as the probes key them (variants included)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    k = KEY_INPUT.get(op, 0)
    dt = dtypes.get(node.input[k]) if len(node.input) > k and node.input[k] else None
    if op == "Cast":
        return [("Cast", dt), ("Cast.to", np.dtype(helper.tensor_dtype_to_np_dtype(attrs["to"])))]
    if op == "Mod" and attrs.get("fmod"):
        return [("Mod.fmod", dt)]
    if op == "Pad":
        mode = attrs.get("mode", b"constant")
        return [(f"Pad.{mode.decode() if isinstance(mode, bytes) else mode}", dt)]
    if op == "ConstantOfShape" and "value" in attrs:
        return [(op, np.dtype(helper.tensor_dtype_to_np_dtype(attrs["value"].data_type)))]
    return [(op, dt)]


def _cap_fix(caps: Any, key: str, dt: np.dtype, opset: int) -> str:
    """What to do about (key, dt) missing at `opset`: another opset, a cast, another lowering."""
    from .onnx_lowering_fallbacks import DECOMPOSITIONS, WIDENABLE, WIDER

    op = key.split(".")[0]
    row = caps.ops.get(key, {})
    other = row.get(dt.name, [])
    if other:
        return f"export with opset in {other[0]}..{other[-1]} (exporters.save(g, path, opset={other[-1]}))"
    if op in WIDENABLE and any(caps.supports(key, w, opset) for w in WIDER.get(dt.name, ())):
        wide = next(w for w in WIDER[dt.name] if caps.supports(key, w, opset))
        return f"cast to {wide} around it (exporters.save(..., target={caps_target(caps)!r}) does this)"
    if op in DECOMPOSITIONS:
        return f"lower to other ops (exporters.save(..., target={caps_target(caps)!r}) decomposes {op})"
    runs = [d for d in ("float32", "float64", "int64", "int32") if opset in row.get(d, ())]
    if runs:
        return (f"cast the inputs to {runs[0]} (e.g. x.astype(np.{runs[0]}) in the model); {caps.name} runs "
                f"{op} on {', '.join(sorted(row))}")
    return f"lower {op} to other ops, or run the model with castml's runtime"


def caps_target(caps: Any) -> str:
    """The target name of a capability table (`onnxruntime-1.32.0` -> `onnxruntime-cpu`)."""
    return "onnxruntime-web" if caps.name.startswith("onnxruntime-web") else "onnxruntime-cpu"


# --- the checks ---------------------------------------------------------------------------------------
def check_onnx(model: Any, target: str, where: dict[str, str] | None = None, name: str = "model") -> CheckReport:
    """Check an ONNX `ModelProto` against an ONNX-consuming target.

    `where` maps node output names to source lines (from the IR); other nodes are named by
    their ONNX name and position.
    """
    kind, version = parse_target(target)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    where = where or {}
    report = CheckReport(name, target, len(all_nodes(model)))

    def place(i: int, node: Any) -> str:
        for o in node.output:
            if o in where:
                return where[o]
        return f"node {node.name or i} ({node.op_type} -> {', '.join(node.output)})"

    if kind == "onnx-opset":
        _check_opset(model, version, opset, place, report)
        return report
    caps = load_target(target)
    dtypes = _dtypes(model)
    seen: set = set()
    for i, node in enumerate(all_nodes(model)):
        if node.domain not in ("", "ai.onnx"):
            report.issues.append(Issue(node.op_type, "", opset, place(i, node),
                                       f"domain {node.domain!r} is not one {caps.name} was probed for"))
            continue
        for key, dt in _keys(node, dtypes):
            if dt is None or caps.supports(key, dt, opset):
                continue
            item = (key, dt.name, place(i, node))
            if item not in seen:
                seen.add(item)
                report.issues.append(Issue(key, dt.name, opset, item[2], _cap_fix(caps, key, dt, opset)))
    return report


def _check_opset(model: Any, version: int, opset: int, place: Any, report: CheckReport) -> None:
    """Every node that ONNX opset `version` does not define in the form the model uses: an op
    added later, an attribute or input it does not take yet (axes moved from attribute to input,
    say), or an input dtype its type constraints do not allow."""
    import onnx

    from .onnx_export import MAX_OPSET, MIN_OPSET

    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = model.ir_version
    ctx.opset_imports = {"": version}
    dtypes = _dtypes(model)
    reexport = (f"re-export with exporters.save(g, path, opset={version}), which lowers it to opset-{version} ops"
                if MIN_OPSET <= version <= MAX_OPSET else "convert the model with onnx.version_converter")
    for i, node in enumerate(all_nodes(model)):
        dt = dtypes.get(node.input[0]) if node.input and node.input[0] else None
        dname = dt.name if dt is not None else ""
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, version, node.domain)
        except onnx.defs.SchemaError:
            first = min((s.since_version for s in onnx.defs.get_all_schemas_with_history()
                         if s.name == node.op_type and s.domain == node.domain), default=None)
            added = f"added in opset {first}" if first else "not an ONNX op"
            report.issues.append(Issue(node.op_type, dname, version, place(i, node),
                                       f"{node.op_type} is {added}; {reexport}, or target opset >= {first or opset}"))
            continue
        problem = _form_problem(node, schema, ctx, dtypes)
        if problem:
            report.issues.append(Issue(node.op_type, dname, version, place(i, node), f"{problem}; {reexport}"))


def _form_problem(node: Any, schema: Any, ctx: Any, dtypes: dict[str, np.dtype]) -> str | None:
    """Why `node` does not fit `schema` (ONNX's own node checker, then the type constraints)."""
    import onnx

    try:
        onnx.checker.check_node(node, ctx)
    except onnx.checker.ValidationError as e:
        return f"opset {schema.since_version} form: {str(e).splitlines()[0]}"
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for k, name in enumerate(node.input):
        if not name or name not in dtypes or not schema.inputs:
            continue
        formal = schema.inputs[min(k, len(schema.inputs) - 1)]
        onnx_name = onnx.TensorProto.DataType.Name(onnx.helper.np_dtype_to_tensor_dtype(dtypes[name])).lower()
        if formal.type_str in allowed and f"tensor({onnx_name})" not in allowed[formal.type_str]:
            return (f"{node.op_type} (opset {schema.since_version} form) does not take {dtypes[name].name} for "
                    f"input {formal.name!r}")
    return None


def check_graph(g: Any, target: str, name: str = "graph", opset: int | None = None) -> CheckReport:
    """Check an `ir.Graph` against a target (ONNX targets through its exported ONNX model).

    >>> import numpy as np, tracer
    >>> g = tracer.trace(lambda x: np.exp(x), np.zeros(2, np.float64))
    >>> check_graph(g, "onnx-opset-13").ok
    True
    """
    kind, version = parse_target(target)
    if kind == "castml":
        from runtime.kernels import KERNELS, REGION_KERNELS

        report = CheckReport(name, target, sum(1 for _ in g.walk()))
        for op in g.walk():
            if op.kind not in KERNELS and op.kind not in REGION_KERNELS:
                report.issues.append(Issue(op.kind, "", 0, op.loc or "?",
                                           "castml's runtime has no kernel for it; rewrite with supported ops"))
        return report
    from .onnx_export import MAX_OPSET, MIN_OPSET, to_onnx

    export_opset = opset or (min(max(version, MIN_OPSET), MAX_OPSET) if kind == "onnx-opset" else 18)
    names: dict = {}
    model = to_onnx(g, opset=export_opset, target=None, value_names=names)
    where = {n: v.producer.loc for v, n in names.items() if v.producer is not None and v.producer.loc}
    return check_onnx(model, target, where, name)


def check_file(path: str, target: str) -> CheckReport:
    """Check a `.onnx` or `.castml` model file against `target`.

    >>> check_file("m.onnx", "onnxruntime-cpu").format()  # doctest: +SKIP
    'm.onnx: 1 of 3 ops cannot run on onnxruntime-cpu: ...'
    """
    kind, _ = parse_target(target)
    from . import load

    if not str(path).endswith(".onnx"):
        return check_graph(load(path), target, str(path))
    import onnx

    model = onnx.load(path)
    if kind != "castml":
        return check_onnx(model, target, name=str(path))
    report = _check_importable(model, str(path))
    if report.ok:  # every node has an importer: import, then every IR op needs a kernel
        from .errors import UnsupportedOpError

        try:
            g = load(path)
        except UnsupportedOpError as e:
            report.issues.append(Issue("import", "", 0, str(path), f"{e}; castml's runtime cannot run what castml "
                                                                    f"cannot import"))
            return report
        return check_graph(g, target, str(path))
    return report


def _check_importable(model: Any, name: str) -> CheckReport:
    """Every ONNX node castml's importer has no translation for (so its runtime cannot run it)."""
    from .onnx_import_ops import IMPORTERS

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    dtypes = _dtypes(model)
    report = CheckReport(name, "castml", len(all_nodes(model)))
    for i, node in enumerate(all_nodes(model)):
        if node.domain in ("", "ai.onnx") and node.op_type in IMPORTERS:
            continue
        dt = dtypes.get(node.input[0]) if node.input and node.input[0] else None
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        report.issues.append(Issue(op, dt.name if dt is not None else "", opset,
                                   f"node {node.name or i} ({node.op_type} -> {', '.join(node.output)})",
                                   "castml cannot import this op; run the model in onnxruntime, or export it "
                                   "from the source model without it"))
    return report
