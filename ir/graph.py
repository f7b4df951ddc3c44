"""The SSA graph: `Value`s defined once, `Op`s in topological order, `Region`s for control flow.

Three classes, three jobs, as in torch.fx: a `Value` is one definition, an `Op` one operation
(kind, inputs, typed attributes, nested regions, source line), a `Region` a list of ops with its
own inputs and outputs. A `Graph` is the top-level region plus what callers need to rebuild the
Python signature: argument/result pytree structures and names. Output types are inferred from the
op registry when an op is created, so every value is typed at all times.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from runtime import pytree

from .registry import get_op
from .types import TensorType


class Value:
    """One SSA definition: a graph/region input or one output of an op.

    >>> g = Graph.from_inputs([("x", TensorType(np.float32, (3,)))])
    >>> g.inputs[0]
    Value(%x: f32[3])
    """

    __slots__ = ("type", "name", "producer", "index")

    def __init__(self, type: TensorType, name: str | None = None, producer: Op | None = None,
                 index: int = 0):
        self.type = type
        self.name = name
        self.producer = producer
        self.index = index

    @property
    def dtype(self) -> np.dtype:
        """The value's dtype."""
        return self.type.dtype

    @property
    def shape(self) -> tuple:
        """The value's shape (ints and symbolic dims)."""
        return self.type.shape

    def __repr__(self) -> str:
        return f"Value(%{self.name or '?'}: {self.type})"


class Op:
    """One operation: `kind` names a registry entry; outputs are created typed by its rule.

    >>> g = Graph.from_inputs([("x", TensorType(np.float32, (2, 3)))])
    >>> Op("transpose", g.inputs, {"perm": (1, 0)}).output
    Value(%?: f32[3,2])
    """

    __slots__ = ("kind", "inputs", "outputs", "attrs", "regions", "loc")

    def __init__(self, kind: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None,
                 regions: Sequence[Region] = (), loc: str | None = None,
                 output_types: Sequence[TensorType] | None = None):
        self.kind = kind
        self.inputs = tuple(inputs)
        self.attrs = dict(attrs or {})
        self.regions = tuple(regions)
        self.loc = loc
        if output_types is None:
            output_types = get_op(kind).infer_types(self)
        self.outputs = tuple(Value(t, None, self, i) for i, t in enumerate(output_types))

    @property
    def output(self) -> Value:
        """The single output of a one-output op."""
        if len(self.outputs) != 1:
            raise ValueError(f"{self.kind} has {len(self.outputs)} outputs, not 1")
        return self.outputs[0]

    def __repr__(self) -> str:
        from .printer import format_op

        return f"Op({format_op(self)})"


class Region:
    """A list of ops with inputs and outputs; the body of a graph or of an If/Loop op.

    Ops inside a region may use values defined in enclosing regions (as in ONNX and MLIR).

    >>> body = Region([Value(TensorType(np.float32, ()), "t")])
    >>> body.outputs = [body.add_op("neg", body.inputs).output]
    >>> [op.kind for op in body.ops], body.outputs[0].type == body.inputs[0].type
    (['neg'], True)
    """

    def __init__(self, inputs: Sequence[Value] = (), ops: Sequence[Op] = (),
                 outputs: Sequence[Value] = ()):
        self.inputs = list(inputs)
        self.ops = list(ops)
        self.outputs = list(outputs)

    def add_op(self, kind: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None,
               regions: Sequence[Region] = (), loc: str | None = None) -> Op:
        """Create an op (types inferred), append it, and return it.

        >>> g = Graph.from_inputs([("x", TensorType(np.float32, (3,)))])
        >>> str(g.add_op("exp", g.inputs).output.type)
        'f32[3]'
        """
        op = Op(kind, inputs, attrs, regions, loc)
        self.ops.append(op)
        return op

    def walk(self) -> Iterator[Op]:
        """Every op of this region and of nested regions, outer before inner.

        >>> import tracer
        >>> from ir.passes import FuseElementwise
        >>> g = FuseElementwise().run(tracer.trace(lambda x: np.exp(-x), np.zeros(3, np.float32))).graph
        >>> [op.kind for op in g.walk()]
        ['fused_elementwise', 'neg', 'exp']
        """
        for op in self.ops:
            yield op
            for r in op.regions:
                yield from r.walk()


class Graph(Region):
    """A traced function: a top-level `Region` plus its signature.

    `in_tree`/`out_tree` are pytree structures of the arguments (a tuple of positional args)
    and of the result; `arg_names` the Python parameter names; `metadata` free-form strings.

    >>> import tracer
    >>> g = tracer.trace(lambda x: x * x, 2.0)
    >>> print(g, end="")
    graph(%x: f64[]) {
      %0: f64[] = mul(%x, %x)
      return %0
    }
    """

    def __init__(self, inputs: Sequence[Value] = (), ops: Sequence[Op] = (),
                 outputs: Sequence[Value] = (), in_tree: pytree.TreeDef | None = None,
                 out_tree: pytree.TreeDef | None = None, arg_names: Sequence[str] | None = None,
                 metadata: dict[str, str] | None = None):
        super().__init__(inputs, ops, outputs)
        self.in_tree = in_tree if in_tree is not None else ("tuple", (pytree.LEAF,) * len(self.inputs))
        if out_tree is None:
            out_tree = pytree.LEAF if len(self.outputs) == 1 else ("tuple", (pytree.LEAF,) * len(self.outputs))
        self.out_tree = out_tree
        self.arg_names = list(arg_names) if arg_names is not None else _default_arg_names(self.in_tree)
        self.metadata = dict(metadata or {})

    @classmethod
    def from_inputs(cls, inputs: Iterable[tuple[str, TensorType]]) -> Graph:
        """A graph with the given named inputs and no ops yet (outputs set by the caller).

        >>> Graph.from_inputs([("x", TensorType(np.float32, (2,)))]).inputs
        [Value(%x: f32[2])]
        """
        vals = [Value(t, name) for name, t in inputs]
        return cls(vals, arg_names=[v.name for v in vals])

    @property
    def output_names(self) -> list[str]:
        """Names of the result leaves: `output` for one, `output.0`, `output.key` … for pytrees."""
        return pytree.leaf_paths(self.out_tree, "output")

    def copy(self) -> Graph:
        """A deep copy (new Values and Ops; constants' arrays shared, they are immutable).

        >>> import tracer
        >>> g = tracer.trace(lambda x: x + 1.0, 2.0)
        >>> h = g.copy()
        >>> h == g, h.ops[0] is g.ops[0]
        (True, False)
        """
        from .parser import parse
        from .printer import to_text

        return parse(to_text(self))

    def to_text(self) -> str:
        """Lossless text: `ir.parse(g.to_text()) == g` (constants included as base64).

        >>> import tracer, ir
        >>> g = tracer.trace(lambda x: x + 1.0, 2.0)
        >>> ir.parse(g.to_text()) == g
        True
        """
        from .printer import to_text

        return to_text(self)

    def __str__(self) -> str:
        from .printer import to_text

        return to_text(self, elide=True)

    def __repr__(self) -> str:
        return f"<ir.Graph {len(self.inputs)} inputs, {sum(1 for _ in self.walk())} ops>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return self.to_text() == other.to_text()

    __hash__ = None  # type: ignore[assignment]


def _default_arg_names(in_tree: pytree.TreeDef) -> list[str]:
    n = len(in_tree[1]) if in_tree[0] == "tuple" else 1
    return [f"arg{i}" for i in range(n)]


def input_names(graph: Graph) -> list[str]:
    """Dotted names of the graph's input leaves from the signature and pytree paths."""
    names: list[str] = []
    children = graph.in_tree[1] if graph.in_tree[0] == "tuple" else (graph.in_tree,)
    for arg, child in zip(graph.arg_names, children):
        names.extend(pytree.leaf_paths(child, arg))
    return names


def np_array_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of two constants (dtype, shape and bytes; NaN payloads included)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
