"""Pytrees: nested dict/list/tuple containers of array leaves, and a JSON-able structure codec.

Graphs take and return pytrees, so the structure must survive a file: `TreeDef` is a plain
nested tuple that `treedef_to_json`/`treedef_from_json` turn into text and back. Dict keys are
kept in insertion order (as the user wrote them), like `jax.tree_util` keeps sorted keys only
for its own determinism; we sort nothing so names match the Python function.
"""

from __future__ import annotations

import json
from typing import Any

# A TreeDef is one of:
#   ("*",)                       a leaf
#   ("tuple", (child, ...))      a tuple
#   ("list", (child, ...))       a list
#   ("dict", (key, ...), (child, ...))  a dict with string keys
#   ("none",)                    None (no leaf)
TreeDef = tuple

LEAF: TreeDef = ("*",)


def flatten(tree: Any) -> tuple[list[Any], TreeDef]:
    """Split a pytree into its leaves (depth first) and its structure.

    >>> flatten({"a": 1, "b": (2, 3)})
    ([1, 2, 3], ('dict', ('a', 'b'), (('*',), ('tuple', (('*',), ('*',))))))
    """
    leaves: list[Any] = []
    return leaves, _flatten(tree, leaves)


def _flatten(tree: Any, leaves: list[Any]) -> TreeDef:
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return ("tuple", tuple(_flatten(t, leaves) for t in tree))
    if isinstance(tree, list):
        return ("list", tuple(_flatten(t, leaves) for t in tree))
    if isinstance(tree, dict):
        keys = tuple(tree)
        for k in keys:
            if not isinstance(k, str):
                raise TypeError(f"pytree dict keys must be str, got {type(k).__name__} {k!r}")
        return ("dict", keys, tuple(_flatten(tree[k], leaves) for k in keys))
    if tree is None:
        return ("none",)
    leaves.append(tree)
    return LEAF


def unflatten(treedef: TreeDef, leaves: list[Any]) -> Any:
    """Rebuild a pytree from `flatten`'s output.

    >>> unflatten(*reversed(flatten([1, {"x": 2}])))
    [1, {'x': 2}]
    """
    it = iter(leaves)
    out = _unflatten(treedef, it)
    if next(it, _END) is not _END:
        raise ValueError("too many leaves for the tree structure")
    return out


_END = object()


def _unflatten(td: TreeDef, it) -> Any:
    kind = td[0]
    if kind == "*":
        leaf = next(it, _END)
        if leaf is _END:
            raise ValueError("too few leaves for the tree structure")
        return leaf
    if kind == "none":
        return None
    if kind == "tuple":
        return tuple(_unflatten(c, it) for c in td[1])
    if kind == "list":
        return [_unflatten(c, it) for c in td[1]]
    if kind == "dict":
        return {k: _unflatten(c, it) for k, c in zip(td[1], td[2])}
    raise ValueError(f"unknown tree node kind {kind!r}")


def num_leaves(treedef: TreeDef) -> int:
    """Count the leaves of a structure.

    >>> num_leaves(flatten((1, [2, 3]))[1])
    3
    """
    kind = treedef[0]
    if kind == "*":
        return 1
    if kind == "none":
        return 0
    children = treedef[2] if kind == "dict" else treedef[1]
    return sum(num_leaves(c) for c in children)


def leaf_paths(treedef: TreeDef, prefix: str = "") -> list[str]:
    """Dotted names of the leaves (`params.fc1.w`, `xs.0`), in flattening order.

    >>> leaf_paths(flatten({"fc1": {"w": 0, "b": 0}})[1], "params")
    ['params.fc1.w', 'params.fc1.b']
    """
    kind = treedef[0]
    if kind == "*":
        return [prefix]
    if kind == "none":
        return []
    if kind == "dict":
        items = zip(treedef[1], treedef[2])
    else:
        items = ((str(i), c) for i, c in enumerate(treedef[1]))
    out: list[str] = []
    for key, child in items:
        out.extend(leaf_paths(child, f"{prefix}.{key}" if prefix else key))
    return out


def treedef_to_json(treedef: TreeDef) -> str:
    """Serialize a structure to compact, deterministic JSON.

    >>> treedef_to_json(flatten((1, 2))[1])
    '["tuple",[["*"],["*"]]]'
    """
    return json.dumps(treedef, separators=(",", ":"))


def treedef_from_json(text: str) -> TreeDef:
    """Parse `treedef_to_json` output back, validating it (raises ValueError when malformed).

    >>> treedef_from_json('["tuple",[["*"],["*"]]]')
    ('tuple', (('*',), ('*',)))
    """
    return _from_obj(json.loads(text), 0)


def _from_obj(obj: Any, depth: int) -> TreeDef:
    if depth > 64:
        raise ValueError("tree structure nested deeper than 64")
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], str):
        raise ValueError(f"malformed tree node {obj!r:.80}")
    kind = obj[0]
    if kind in ("*", "none") and len(obj) == 1:
        return (kind,)
    if kind in ("tuple", "list") and len(obj) == 2 and isinstance(obj[1], list):
        return (kind, tuple(_from_obj(c, depth + 1) for c in obj[1]))
    if (kind == "dict" and len(obj) == 3 and isinstance(obj[1], list) and isinstance(obj[2], list)
            and len(obj[1]) == len(obj[2]) and all(isinstance(k, str) for k in obj[1])):
        return (kind, tuple(obj[1]), tuple(_from_obj(c, depth + 1) for c in obj[2]))
    raise ValueError(f"malformed tree node {obj!r:.80}")
