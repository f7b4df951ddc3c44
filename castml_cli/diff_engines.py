"""The engines `castml diff` compares, each returning {ONNX tensor name: array} for one input set.

Why ONNX names are the common key: they are the one naming every engine can see. `to_onnx` names
values deterministically (`value_names=` hands the mapping out), an imported ONNX model keeps
its tensor names on its IR values, and onnxruntime reports any tensor we add as a graph output.
So the float64 reference and the IR interpreter (running the traced graph), our runtime (running
the model file's graph) and onnxruntime (running the ONNX model, with every intermediate exposed
as an extra output in a temporary copy) all meet at the same names.

The float64 reference interprets the traced graph with every float16/float32 type, attribute
and constant widened to float64: op for op the same program, so every intermediate has a
reference value, and the same computation the Python function does on float64 inputs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime import dims as D
from runtime.executor import Program, ProgramSpec, StepSpec, TypeSpec

from .common import CliError


@dataclass
class Engine:
    """One engine's view of a graph: the program it runs, aligned op for op with `graph`.

    `names` maps the graph's values to ONNX tensor names; `labels` holds each top-level op as
    `print(graph)` shows it.
    """

    name: str
    graph: Any
    program: Program
    names: dict
    env: dict = field(default_factory=dict)  # symbol sizes of the last `capture`
    by_value: dict = field(default_factory=dict)  # every value of the last `capture`, named or not

    def run_op(self, i: int, inputs: Sequence[np.ndarray]) -> tuple | None:
        """Op `i` alone on the given inputs (symbols as the last `capture` bound them); None for
        ops with regions, whose bodies are not separate steps."""
        step = self.program.steps[i]
        if step.regions:
            return None
        attrs = dict(step.attrs)
        for k in step.sym_attrs:
            attrs[k] = tuple(D.evaluate(d, self.env) for d in attrs[k])
        with np.errstate(all="ignore"):
            out = step.kernel(*inputs, **attrs)
        return (out,) if len(step.outputs) == 1 else tuple(out)

    def capture(self, leaves: Sequence[np.ndarray]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """Run on flat inputs; returns ({ONNX name: value} of every op output, constants too; flat outputs).

        >>> import tracer; from ir.interpret import to_program_spec
        >>> g = tracer.trace(lambda x: x * 2.0 + 1.0, np.float32([1, 2]))
        >>> e = Engine("interpreter", g, Program(to_program_spec(g)), traced_names(g))
        >>> sorted(e.capture([np.float32([1, 2])])[0])
        ['const_0', 'const_1', 'output', 'v_1']
        """
        index = {id(s): i for i, s in enumerate(self.program.steps)}
        ops = self.graph.ops
        values: dict[str, np.ndarray] = {}
        self.by_value = dict(zip(self.graph.inputs, leaves))

        def hook(step, out) -> None:
            i = index.get(id(step))
            if i is None:
                return
            for v, a in zip(ops[i].outputs, out):
                self.by_value[v] = a = np.array(a, copy=True)
                name = self.names.get(v)
                if name is not None:
                    values[name] = a

        try:
            arrays, self.env = self.program.bind(list(leaves))
            outs = self.program.execute(arrays, self.env, hook=hook)  # binds data-dependent symbols too
        except Exception as e:  # a failing engine is a finding, reported as one line
            raise CliError(f"{self.name} failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        return values, [np.asarray(o) for o in outs]


def aligned(name: str, graph: Any, program: Program, names: dict) -> Engine:
    """An `Engine`, after checking that the program's steps are the graph's ops in order."""
    kinds = [op.kind for op in graph.ops]
    steps = [s.kind for s in program.steps]
    if kinds != steps:
        raise CliError(f"{name}: the program's {len(steps)} steps do not match the graph's {len(kinds)} ops")
    return Engine(name, graph, program, names)


def traced_names(g: Any, opset: int = 18, produced: set[str] | None = None) -> dict:
    """{Value: ONNX name} for the graph's inputs and op outputs, as `to_onnx` names them.

    The target changes names (its rewrites take fresh names), so with `produced` (the tensor
    names of the model file) the export that matches more of them wins.

    >>> import tracer
    >>> g = tracer.trace(lambda x: -x, np.float32([1]))
    >>> sorted(traced_names(g).values())
    ['output', 'x']
    """
    best: dict = {}
    for target in ("onnxruntime-cpu", None):
        names, _ = export_named(g, opset, target)
        if names is None:
            continue
        if produced is None:
            return names
        if sum(n in produced for n in names.values()) > sum(n in produced for n in best.values()) or not best:
            best = names
    return best


def export_named(g: Any, opset: int, target: str | None) -> tuple[dict | None, Any]:
    """(names, ONNX model) of `to_onnx(g, opset, target)`; (None, None) when the target refuses `g`."""
    import exporters

    names: dict = {}
    try:
        model = exporters.to_onnx(g, opset=opset, target=target, value_names=names)
    except exporters.ExportError:
        return None, None
    return names, model


# --- the float64 reference ------------------------------------------------------------------------
def widen(dtype: Any) -> np.dtype:
    """float16/float32 -> float64; other dtypes unchanged.

    >>> widen(np.float32), widen(np.int32)
    (dtype('float64'), dtype('int32'))
    """
    dt = np.dtype(dtype)
    return np.dtype(np.float64) if dt.kind == "f" and dt.itemsize < 8 else dt


def _widen_attr(v: Any) -> Any:
    if isinstance(v, np.dtype):
        return widen(v)
    if isinstance(v, type) and issubclass(v, np.generic):
        return widen(v).type
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return v.astype(widen(v.dtype))
    if isinstance(v, np.floating):
        return np.float64(v)
    return v


def widen_spec(spec: ProgramSpec) -> ProgramSpec:
    """The same program with float16/float32 types, attributes and constants as float64.

    >>> t = TypeSpec(np.dtype(np.float32), ())
    >>> widen_spec(ProgramSpec([0], [t], [StepSpec("neg", [0], [1], {}, [t])], [1])).input_types[0].dtype
    dtype('float64')
    """
    def typ(t: TypeSpec) -> TypeSpec:
        return TypeSpec(widen(t.dtype), t.shape)

    steps = [StepSpec(s.kind, s.inputs, s.outputs, {k: _widen_attr(v) for k, v in s.attrs.items()},
                      [typ(t) for t in s.out_types], s.label, [widen_spec(r) for r in s.regions])
             for s in spec.steps]
    return ProgramSpec(spec.inputs, [typ(t) for t in spec.input_types], steps, spec.outputs, spec.input_names)


def widen_leaves(leaves: Sequence[Any]) -> list[np.ndarray]:
    """Inputs cast up: float leaves to float64, others unchanged."""
    return [np.asarray(a).astype(widen(np.asarray(a).dtype)) for a in leaves]


def interpreter_engines(g: Any, names: dict) -> tuple[Engine, Engine]:
    """(float64 reference, float32 IR interpreter) over the traced graph `g`."""
    from ir.interpret import to_program_spec

    spec = to_program_spec(g)
    return (aligned("reference (float64)", g, Program(widen_spec(spec)), names),
            aligned("interpreter", g, Program(spec), names))


# --- our runtime on the model file --------------------------------------------------------------------
def runtime_engine(path: str, entry: str | None = None) -> tuple[Engine, Any, Any]:
    """Our runtime on the model file: (engine, the file's graph, the ONNX model onnxruntime runs).

    A `.castml` file runs as `runtime.load` runs it (its own program, from the file); an `.onnx`
    file is imported and written to `.castml` bytes in memory first, as `castml convert` does.
    """
    import onnx

    import exporters
    from exporters.castml_format import to_bytes
    from runtime.loader import load_model, program_spec

    if path.endswith(".onnx"):
        g = exporters.load(path)
        model = load_model(to_bytes(g))
        onnx_model = onnx.load(path)
        produced = {o for n in onnx_model.graph.node for o in n.output}
        names = {v: v.name for v in g.inputs}
        names.update({v: v.name for op in g.ops for v in op.outputs if v.name in produced})
    else:
        g = exporters.load(path, entry=entry)
        model = load_model(path)
        names, onnx_model = export_named(g, 18, "onnxruntime-cpu")
        if names is None:  # a model onnxruntime cannot run as is: export it plainly, onnxruntime will say why
            names, onnx_model = export_named(g, 18, None)
    entries = model.entries
    key = entry or ("main" if "main" in entries else sorted(entries)[0])
    return aligned("runtime", g, Program(program_spec(entries[key])), names), g, onnx_model


# --- onnxruntime --------------------------------------------------------------------------------------
def ort_capture(model: Any, leaves: Sequence[np.ndarray], dtypes: dict[str, np.dtype],
                where: str) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Run an ONNX model in onnxruntime with every tensor in `dtypes` exposed as an extra output.

    The model is copied, never changed. Returns ({name: value}, the model's own outputs).
    """
    import onnx
    from onnx import helper

    from exporters.onnx_export import onnx_dtype

    from .ort_backend import OrtModel

    m = onnx.ModelProto()
    m.CopyFrom(model)
    own = [o.name for o in m.graph.output]
    produced = {o for n in m.graph.node for o in n.output}
    try:
        inferred = {vi.name: vi.type.tensor_type.elem_type
                    for vi in onnx.shape_inference.infer_shapes(m).graph.value_info}
    except Exception:  # inference is only a better source of types; ours are the fallback
        inferred = {}
    extra = [n for n in dtypes if n in produced and n not in own]
    m.graph.output.extend(helper.make_tensor_value_info(n, inferred.get(n) or onnx_dtype(dtypes[n]), None)
                          for n in extra)
    session = OrtModel(m.SerializeToString(), where)
    outs = session.run_flat(list(leaves))
    values = dict(zip(session.output_names, outs))
    return values, outs[:len(own)]


# --- labels ------------------------------------------------------------------------------------------
_VALUE = re.compile(r"%[A-Za-z0-9_.]+")


def op_labels(program: Program, graph: Any) -> dict:
    """{Value: printed name (`%4`, `%x`)} from the printed ops the program carries.

    >>> import tracer; from ir.interpret import to_program_spec
    >>> g = tracer.trace(lambda x: x * 2.0, np.float32([1]))
    >>> list(op_labels(Program(to_program_spec(g)), g).values())
    ['%x', '%0', '%1']
    """
    from ir.graph import input_names

    labels = {v: f"%{n}" for v, n in zip(graph.inputs, input_names(graph))}
    for i, (op, step) in enumerate(zip(graph.ops, program.steps)):
        lhs, _, rhs = step.label.partition(" = ")
        outs = _VALUE.findall(lhs)
        ins = _VALUE.findall(rhs.split("(", 1)[1] if "(" in rhs else "")
        for k, v in enumerate(op.outputs):
            labels[v] = outs[k] if k < len(outs) else f"%op{i}.{k}"
        for v, text in zip(op.inputs, ins):
            labels.setdefault(v, text)
    return labels
