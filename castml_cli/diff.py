"""`castml_cli.diff`: run a model on every engine and name the first op where they part ways.

Why: a model that exports fine and then gives different numbers is the most common exporter
complaint, and users bisect it layer by layer by hand. Here one call runs the original Python
function in float64 (inputs cast up) as the reference, the IR interpreter on the traced graph,
our runtime on the model file and onnxruntime on its ONNX form; compares every intermediate
value that maps between them (by ONNX tensor name, see `diff_engines`), in op order, under
DESIGN.md's one agreement rule; and reports the first op whose error exceeds it, with the
user's source line, shapes, max abs/rel error and ULPs, and the values that feed it.

Without a function (an imported ONNX model), the float64 reference interprets the model's own
graph, so our runtime and onnxruntime are still compared op by op.

>>> import numpy as np, tracer, exporters, tempfile, os
>>> fn = lambda x: np.tanh(x) * 2.0
>>> path = os.path.join(tempfile.mkdtemp(), "m.onnx")
>>> exporters.save(tracer.trace(fn, tracer.TensorSpec(("batch", 3), np.float32)), path)
>>> diff(fn, path, tracer.TensorSpec(("batch", 3), np.float32)).ok
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime import dims as D
from runtime import pytree

from . import diff_engines as E
from .common import TOLERANCES, summary, type_text
from .progress import Progress

SYMBOLIC_DIM = 3  # size of every symbolic dim in generated inputs (as `castml trace --check`)


@dataclass
class Mismatch:
    """How one engine's value differs from the reference at one op output."""

    engine: str
    shape: tuple
    dtype: str
    bad: int
    total: int
    max_abs: float
    max_rel: float
    max_ulp: float
    first: str  # where the first bad element is and its two values

    def __str__(self) -> str:
        return (f"{self.engine}: {self.bad} of {self.total} elements beyond tolerance; max abs err "
                f"{self.max_abs:.3g}, max rel err {self.max_rel:.3g}, max {self.max_ulp:.3g} ULP; {self.first}")


@dataclass
class Divergence:
    """The op where engines part ways: what it is, where it came from, who disagrees, its inputs."""

    index: int
    op: str  # the op as `print(graph)` shows it
    kind: str
    loc: str
    onnx_name: str
    mismatches: list[Mismatch]
    agreeing: list[str]
    inputs: list[str]
    accumulated: bool = False  # no engine is wrong here alone: rounding from earlier ops grew past tolerance


@dataclass
class DiffReport:
    """The result of `diff`: `ok` when every compared value agrees; `first` names the divergence."""

    model: str
    engines: list[str]
    compared: int
    ops: int
    divergences: list[Divergence] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether all engines agree within tolerance."""
        return not self.divergences

    @property
    def first(self) -> Divergence | None:
        """The first diverging op in graph order, or None."""
        return self.divergences[0] if self.divergences else None

    def format(self, show_all: bool = False) -> str:
        """The report as text, as `castml diff` prints it."""
        lines = [f"diff {self.model}: engines {', '.join(self.engines)}",
                 f"compared {self.compared} values at {self.ops} ops"]
        lines += [f"note: {n}" for n in self.notes]
        if self.ok:
            lines.append("all engines agree within tolerance")
            return "\n".join(lines)
        for k, d in enumerate(self.divergences if show_all else self.divergences[:1]):
            head = "FIRST DIVERGENCE" if k == 0 else "divergence"
            lines.append(f"{head} at op #{d.index} `{d.kind}` ({d.loc or 'no source line'}), ONNX tensor "
                         f"{d.onnx_name!r}:")
            lines.append(f"  {d.op}")
            if not d.accumulated and d.kind != "input" and not d.op.startswith("output "):
                lines.append("  (each engine's output vs the float64 op applied to that engine's own inputs)")
            if d.accumulated:
                lines.append("  (each op agrees given its own inputs; rounding from earlier ops grew past tolerance "
                             "here, vs the float64 reference)")
            lines += [f"  {m}" for m in d.mismatches]
            if d.agreeing:
                lines.append(f"  agrees with the reference: {', '.join(d.agreeing)}")
            lines.append("  fed by (reference values):")
            lines += [f"    {i}" for i in d.inputs]
        if not show_all and len(self.divergences) > 1:
            lines.append(f"({len(self.divergences) - 1} later ops diverge too; --all lists them)")
        return "\n".join(lines)


def compare(got: Any, ref: Any, engine: str) -> Mismatch | None:
    """None when `got` agrees with `ref` under DESIGN.md's rule (tolerance of got's dtype), else how not.

    >>> compare(np.float32([1, 2]), np.float64([1, 2]), "x") is None
    True
    >>> compare(np.int32([1, -1]), np.int32([1, -2]), "x").max_abs
    1.0
    """
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return Mismatch(engine, got.shape, got.dtype.name, got.size, ref.size, np.inf, np.inf, np.inf,
                        f"shape {got.shape}, reference shape {ref.shape}")
    g, r = got.astype(np.float64), ref.astype(np.float64)
    same = (np.isnan(g) & np.isnan(r)) | (np.isinf(r) & (g == r))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(g - r))
    diff = np.where(np.isnan(diff), np.inf, diff)
    if got.dtype.kind in "fc" and ref.dtype.kind in "fc":
        rtol, atol = TOLERANCES.get(got.dtype, TOLERANCES[np.dtype(np.float32)])
        finite = np.isfinite(r)
        scale = float(np.max(np.abs(r[finite]))) if finite.any() else 0.0
        bad = diff > rtol * np.abs(np.where(same, 0.0, r)) + atol * scale
        with np.errstate(all="ignore"):
            cast = r.astype(got.dtype)
            ulp = np.where(same, 0.0, np.abs(g - cast.astype(np.float64)) / np.spacing(np.abs(cast)).astype(np.float64))
    else:
        bad = diff > 0
        ulp = diff
    if not bad.any():
        return None
    with np.errstate(all="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(r))
    at = tuple(int(i) for i in np.argwhere(bad)[0])
    first = f"first at {list(at)}: got {_num(got[at])}, expected {_num(ref[at])}"
    return Mismatch(engine, got.shape, got.dtype.name, int(bad.sum()), int(bad.size), float(diff.max()),
                    float(np.nanmax(rel)), float(np.nanmax(ulp)), first)


def _num(x: Any) -> str:
    x = np.asarray(x).item()
    return f"{x:.9g}" if isinstance(x, float) else repr(x)


def concrete_leaves(types: list[tuple[np.dtype, tuple]], given: list[Any] | None, seed: int) -> list[np.ndarray]:
    """Input arrays: `given` ones where not None, random ones (symbolic dims = 3) elsewhere.

    >>> [a.shape for a in concrete_leaves([(np.dtype(np.float32), ("b", 2))], None, 0)]
    [(3, 2)]
    """
    from .common import random_array

    rng = np.random.default_rng(seed)
    out = []
    for k, (dtype, shape) in enumerate(types):
        if given is not None and given[k] is not None:
            out.append(np.asarray(given[k]))
            continue
        env = {s: SYMBOLIC_DIM for d in shape if isinstance(d, str) for s in D.symbols(d)}
        out.append(random_array(dtype, tuple(D.evaluate(d, env) for d in shape), rng))
    return out


def _spec_leaves(example_args: tuple, file_graph: Any) -> tuple[list, list]:
    """(leaves to trace with, concrete values or None per leaf) from the example arguments.

    Array leaves are traced with the model file's input types when the leaf counts match, so a
    trace with concrete example arrays names the ONNX tensors as the exported (symbolic) one did.
    """
    import tracer

    leaves, tree = pytree.flatten(tuple(example_args))
    given = [None if isinstance(a, tracer.TensorSpec) else np.asarray(a) for a in leaves]
    specs = [a if isinstance(a, tracer.TensorSpec) else tracer.TensorSpec(np.shape(a), np.asarray(a).dtype)
             for a in leaves]
    if len(file_graph.inputs) == len(specs):
        for k, v in enumerate(file_graph.inputs):
            if np.dtype(v.dtype) == np.dtype(specs[k].dtype) and len(v.shape) == len(specs[k].shape):
                specs[k] = tracer.TensorSpec(v.shape, v.dtype)
    return pytree.unflatten(tree, specs), given


def _feeds(op: Any, labels: dict, names: dict, ref: dict, inputs: dict) -> list[str]:
    out = []
    for v in op.inputs:
        text = labels.get(v, "%?")
        value = ref.get(names.get(v), inputs.get(names.get(v)))
        if value is None and v.producer is not None and v.producer.kind == "constant":
            value = v.producer.attrs.get("value")
        origin = ("graph input" if v.producer is None else f"`{v.producer.kind}`"
                  + (f" at {v.producer.loc}" if v.producer.loc else ""))
        if value is None:
            shown = type_text(v.dtype, v.shape)
        else:  # the declared dtype, the reference's values
            shown = type_text(v.dtype, np.shape(value)) + summary(np.asarray(value)).partition("]")[2]
        out.append(f"{text}: {shown}, from {origin}")
    return out


def diff(fn: Callable | None, path: str, *example_args: Any, seed: int = 0, entry: str | None = None,
         inputs: list[Any] | None = None) -> DiffReport:
    """Compare the float64 reference, interpreter, runtime and onnxruntime op by op on one input set.

    `example_args` are the function's arguments: `tracer.TensorSpec`s (filled with random data,
    symbolic dims = 3) or arrays (used as given). With `fn=None` the model file's own graph is the
    reference and `inputs` (flat, in the model's input order; None entries random) its inputs.

    >>> report = diff(my_fn, "m.onnx", tracer.TensorSpec(("batch", 784), np.float32))  # doctest: +SKIP
    >>> report.ok, report.first.loc  # doctest: +SKIP
    (False, 'model.py:12')
    """
    with Progress(f"castml diff {path}", total=5 if fn is not None else 4) as bar:
        bar.step(f"loading {path}")
        runtime_eng, file_graph, onnx_model = E.runtime_engine(path, entry)
        opset = next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), 18)
        notes: list[str] = []
        py_out = None
        if fn is not None:
            import tracer

            bar.step("tracing the Python function")
            trace_args, given = _spec_leaves(example_args, file_graph)
            g = tracer.trace(fn, *trace_args)
            names = E.traced_names(g, opset, {o for n in onnx_model.graph.node for o in n.output})
            types = [(np.dtype(v.dtype), v.shape) for v in g.inputs]
            leaves = concrete_leaves(types, given, seed)
            try:
                with np.errstate(all="ignore"):
                    py_out = pytree.flatten(fn(*pytree.unflatten(g.in_tree, E.widen_leaves(leaves))))[0]
            except Exception as e:  # noqa: BLE001 - a function that rejects float64 still gets the op-level diff
                notes.append(f"the Python function failed on float64 inputs ({type(e).__name__}: {e}); "
                             f"the reference is the float64 interpretation of its traced graph only")
            reference, interpreter = E.interpreter_engines(g, names)
            engines = [interpreter, runtime_eng]
        else:
            g, names = file_graph, runtime_eng.names
            reference, _ = E.interpreter_engines(g, names)
            leaves = concrete_leaves([(np.dtype(v.dtype), v.shape) for v in g.inputs], inputs, seed)
            engines = [runtime_eng]
        bar.step("running the float64 reference")
        ref, ref_out = reference.capture(E.widen_leaves(leaves))
        bar.step(f"running {', '.join(e.name for e in engines)}")
        results = {e.name: e.capture(leaves) for e in engines}
        wanted = {n: np.dtype(v.dtype) for table in (runtime_eng.names, names) for v, n in table.items()
                  if v.producer is not None and v.producer.kind != "constant"}
        bar.step("running onnxruntime")
        results["onnxruntime"] = E.ort_capture(onnx_model, leaves, wanted, path)
    if fn is not None:
        top = [v for op in g.ops if op.kind != "constant" for v in op.outputs]  # region bodies are not exposed
        matched = sum(1 for v in top if names.get(v) in results["onnxruntime"][0])
        produced = len(top)
        if matched < produced:
            notes.append(f"{produced - matched} of {produced} traced values have no tensor of the same name in "
                         f"{path} (exported differently?); they are compared where they exist")
    report = DiffReport(path if fn is None else f"{getattr(fn, '__name__', 'fn')} vs {path}",
                        [reference.name, *results], 0, 0, notes=notes)
    _compare_ops(report, g, names, reference, ref, results, leaves)
    if py_out is not None:
        _check_python(report, g, py_out, ref_out, names)
    return report


def _compare_ops(report: DiffReport, g: Any, names: dict, reference: E.Engine, ref: dict, results: dict,
                 leaves: list) -> None:
    """Fill `report` op by op. An op diverges when an engine's output differs from the float64
    op applied to that engine's own inputs (its local error), so rounding that only accumulates
    from earlier ops is not blamed on an ill-conditioned op such as a softmax over large logits.
    When no op is locally wrong but an output still differs from the reference, the first op
    whose accumulated error exceeds tolerance is reported instead."""
    labels = E.op_labels(reference.program, g)
    inputs = {names[v]: a for v, a in zip(g.inputs, leaves) if v in names}
    accumulated: list[Divergence] = []
    outputs = {names.get(v) for v in g.outputs}
    drifted_outputs = False
    with Progress("castml diff: comparing", total=sum(op.kind != "constant" for op in g.ops), unit=" ops") as bar:
        for i, op in enumerate(g.ops):
            if op.kind == "constant":
                continue
            report.ops += 1
            local_cache: dict[str, tuple | None] = {}
            for k, v in enumerate(op.outputs):
                name = names.get(v)
                if name is None or name not in ref:
                    continue
                local, drift, agreeing = [], [], []
                for engine, (values, _) in results.items():
                    if name not in values:
                        continue
                    report.compared += 1
                    m_drift = compare(values[name], ref[name], engine)
                    if m_drift is None:
                        agreeing.append(engine)
                        continue
                    if engine not in local_cache:  # only where it differs: re-running an op costs as much as the op
                        feed = [values.get(names.get(u), reference.by_value[u]) for u in op.inputs]
                        local_cache[engine] = reference.run_op(i, E.widen_leaves(feed))
                    own = local_cache[engine]
                    m_local = compare(values[name], own[k], engine) if own is not None else m_drift
                    if m_local is not None:
                        local.append(m_local)
                    else:
                        drift.append(m_drift)
                        drifted_outputs |= name in outputs
                if local or drift:
                    d = Divergence(i, reference.program.steps[i].label, op.kind, op.loc or "", name, local or drift,
                                   agreeing, _feeds(op, labels, names, ref, inputs), accumulated=not local)
                    (report.divergences if local else accumulated).append(d)
            bar.advance()
    if not report.divergences and drifted_outputs:
        report.divergences.extend(accumulated)


def _check_python(report: DiffReport, g: Any, py_out: list, ref_out: list, names: dict) -> None:
    """Compare the traced graph (float64) with the Python function itself (float64).

    A difference here is not an export fault but a tracing or kernel one: every engine runs the
    traced graph. It is reported at the output's op, after any op-level divergence.
    """
    if len(py_out) != len(ref_out):
        report.notes.append(f"the Python function returned {len(py_out)} values, the graph {len(ref_out)}")
        return
    for k, (p, r) in enumerate(zip(py_out, ref_out)):
        m = compare(r, np.asarray(p), "traced graph in float64 vs the Python function")
        report.compared += 1
        if m is None:
            continue
        v = g.outputs[k]
        op = v.producer
        index = next((i for i, o in enumerate(g.ops) if o is op), -1)
        report.divergences.append(Divergence(
            index, f"output {k}", op.kind if op is not None else "input",
            (op.loc or "") if op is not None else "", names.get(v, f"output {k}"), [m], [],
            ["the traced graph itself disagrees with the Python function (a tracer or kernel fault, not export)"]))

