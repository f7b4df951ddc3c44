"""Op groups: how export → import → export gives the same bytes for lowerings of several nodes.

Why a tag and not pattern matching: many lowerings expand one IR op into several ONNX nodes
(integer `//` fixes up a truncating Div, `slice_update` numbers elements and scatters, symbolic
shapes are computed with Shape/Slice/Concat), and the importer, seeing only the nodes, rebuilds
the expansion op by op (or folds it to a constant). Recognising every canonical expansion again
would duplicate each lowering in reverse. Instead the exporter writes, in the `doc_string` of
the first node of such a group, which IR op the group came from: kind, attributes, the ONNX
names of its inputs and outputs, the group's node count and a hash of the group's nodes. The
importer translates the nodes as usual (any model stays importable node by node), then, when
the hash still matches (the nodes were not edited), binds the outputs to that one IR op
instead; the node-by-node ops that end up unused are dropped at the end of the import.
Tools that ignore doc strings (onnxruntime, other importers) see an ordinary model.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx

from ir.graph import Graph, Op, Region
from ir.registry import REGISTRY
from runtime import CastmlError

TAG = "castml.op "


def _encode_attr(v, kind: str):
    if kind == "dtype":
        return np.dtype(v).name
    if kind == "tensor":
        a = np.array(v, order="C")
        return {"dtype": a.dtype.str, "shape": list(a.shape), "hex": a.tobytes().hex()}
    if kind in ("ints", "floats", "dims"):
        return list(v)
    return v


def _decode_attr(v, kind: str):
    if kind == "dtype":
        return np.dtype(v)
    if kind == "tensor":
        return np.frombuffer(bytes.fromhex(v["hex"]), np.dtype(v["dtype"])).reshape(v["shape"]).copy()
    if kind in ("ints", "floats", "dims"):
        return tuple(v)
    return v


def _group_hash(nodes) -> str:
    h = hashlib.sha256()
    for n in nodes:
        bare = onnx.NodeProto()
        bare.CopyFrom(n)
        bare.doc_string = ""
        h.update(bare.SerializeToString(deterministic=True))
    return h.hexdigest()[:16]


def tag_group(nodes: list, op: Op, ins: list[str], outs: list[str], static: dict[int, bool]) -> None:
    """Mark `nodes` (the lowering of `op`) so that the importer can rebuild `op` from them.

    Only groups the importer may not rebuild node for node are tagged: several nodes, one node
    computed from constants only (the importer would fold it), or one node of another name
    (integer `reciprocal` is a truncating `Div`, which imports as a floor division and a
    fix-up). `static` remembers, by `id(Value)`, which values depend on constants only; ops are
    lowered in order, so one pass fills it.

    >>> n = onnx.helper.make_node("Range", ["zero", "three", "one"], ["y"])
    >>> tag_group([n], Op("arange", [], {"n": (3,), "dtype": np.dtype(np.int64)}), [], ["y"], {})
    >>> n.doc_string[:len(TAG) + 34]
    'castml.op {"attrs":{"dtype":"int64","n":[3]}'
    """
    from_constants = op.kind == "constant" or (not op.regions and all(static.get(id(v), False) for v in op.inputs))
    for v in op.outputs:
        static[id(v)] = from_constants
    if not nodes or op.regions or op.kind not in REGISTRY:
        return
    if len(nodes) == 1 and not from_constants and _plain(nodes[0].op_type) == _plain(op.kind):
        return  # (one node named like the op: the importer rebuilds it as it was)
    kinds = REGISTRY[op.kind].attrs
    try:
        attrs = {k: _encode_attr(v, kinds.get(k, "")) for k, v in sorted(op.attrs.items())}
        text = json.dumps({"op": op.kind, "attrs": attrs, "in": list(ins), "out": list(outs), "n": len(nodes),
                           "hash": _group_hash(nodes)}, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):  # an attribute JSON cannot hold: the group imports node by node
        return
    nodes[0].doc_string = TAG + text


def _plain(name: str) -> str:
    return name.replace("_", "").lower()


class Group:
    """A tagged group being imported: the last node's index, the tag, and where its ops start."""

    def __init__(self, last: int, tag: dict, first_op: int):
        self.last, self.tag, self.first_op = last, tag, first_op


def begin_group(b, nodes, i: int) -> Group | None:
    """The group starting at node `i` when its tag is intact (else None: import node by node).

    Example, in `onnx_import.import_nodes`::

        group = begin_group(b, nodes, i) or group
    """
    n = nodes[i]
    if not n.doc_string.startswith(TAG):
        return None
    try:
        tag = json.loads(n.doc_string[len(TAG):])
        count = int(tag["n"])
        if tag["op"] not in REGISTRY or count < 1 or i + count > len(nodes):
            return None
        group = [nodes[k] for k in range(i, i + count)]
        produced = {o for g in group for o in g.output}
        if _group_hash(group) != tag["hash"] or not set(tag["out"]) <= produced:
            return None
        if any(x and x not in b.env for x in tag["in"]):
            return None
    except (ValueError, KeyError, TypeError):
        return None
    return Group(i + count - 1, tag, len(b.g.ops))


def finish_group(b, group: Group) -> None:
    """Bind the group's outputs to its one IR op; the node-by-node ops become scratch.

    Example, in `onnx_import.import_nodes` after node `i` is translated::

        if group is not None and group.last == i:
            finish_group(b, group)
    """
    tag = group.tag
    kinds = REGISTRY[tag["op"]].attrs
    try:
        attrs = {k: _decode_attr(v, kinds.get(k, "")) for k, v in tag["attrs"].items()}
        ins = [b.value(b.env[x]) for x in tag["in"] if x]
        op = b.g.add_op(tag["op"], ins, attrs, loc=f"onnx:{b.node.name or b.node.op_type}")
    except (CastmlError, ValueError, TypeError, KeyError):  # keep the node-by-node translation
        return
    if len(op.outputs) != len(tag["out"]):
        b.g.ops.remove(op)
        return
    b.scratch.extend((b.g, o) for o in b.g.ops[group.first_op:-1])
    for name, v in zip(tag["out"], op.outputs):
        v.name = name
        b.env[name] = v


def drop_scratch(g: Graph, scratch: list[tuple[Region, Op]]) -> None:
    """Remove the scratch ops (node-by-node translations of tagged groups) that nothing uses.

    >>> drop_scratch(Graph(), [])
    """
    uses: dict[int, int] = {}

    def count(values) -> None:
        for v in values:
            uses[id(v)] = uses.get(id(v), 0) + 1

    count(g.outputs)
    live = {id(g)}  # (an importer may build a region twice, e.g. a Loop body with widened types)
    for op in g.walk():
        count(op.inputs)
        for r in op.regions:
            count(r.outputs)
            live.add(id(r))
    for region, op in reversed(scratch):
        if id(region) not in live or any(uses.get(id(v), 0) for v in op.outputs):
            continue
        for k, other in enumerate(region.ops):
            if other is op:
                del region.ops[k]
                break
        for v in op.inputs:
            uses[id(v)] -= 1
