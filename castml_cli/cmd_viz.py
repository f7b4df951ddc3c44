"""`castml viz`: draw a model's graph as one self-contained HTML page (no network needed).

Like netron or TensorBoard's graph view, but a single file that opens anywhere: nodes are laid
out in layers (a node sits one layer below its deepest input), edges carry the value's type
(`f32[batch,512]`), the regions of `If`/`Loop` ops are drawn as their own diagrams in
collapsible sections, and a search box highlights the ops whose text matches. The layout is
computed here, in Python, so the page needs only inline SVG, CSS and a few lines of script.
`--tensorboard LOGDIR` also writes the graph as a TensorBoard event file (`tensorboard --logdir
LOGDIR`, Graphs tab): ops named `KIND_N` after their `%N` in the IR text, regions as name scopes.
"""

from __future__ import annotations

import argparse
import html
import os
from typing import Any

from .common import CliError, atomic_path, type_text
from .loading import check_model_path, load_graph
from .progress import Progress

EXAMPLES = """\
examples:
  castml viz m.castml -o graph.html
  castml viz m.onnx -o graph.html --entry main
  castml viz m.castml -o graph.html --tensorboard runs/  # then: tensorboard --logdir runs/"""

NODE_H, LAYER_GAP, NODE_GAP, CHAR_W = 34, 70, 28, 7.2

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 13px sans-serif; margin: 16px; color: #222; }}
.node rect {{ fill: #eef3fb; stroke: #5a7bb5; rx: 6; }}
.node.io rect {{ fill: #f4f4f4; stroke: #888; }}
.node.const rect {{ fill: #fbf6e9; stroke: #b59a5a; }}
.node.hit rect {{ fill: #ffe27a; stroke: #c00; stroke-width: 2; }}
.node text {{ font: 12px monospace; }}
.edge {{ stroke: #999; fill: none; marker-end: url(#arrow); }}
.elabel {{ font: 10px monospace; fill: #666; }}
details {{ margin: 8px 0 8px 16px; }}
#search {{ width: 320px; padding: 4px; }}
</style></head><body>
<h2>{title}</h2>
<p><input id="search" placeholder="search ops, values, types"> <span id="count"></span></p>
{body}
<script>
const box = document.getElementById("search"), count = document.getElementById("count");
box.addEventListener("input", () => {{
  const q = box.value.trim().toLowerCase(); let n = 0, first = null;
  document.querySelectorAll(".node").forEach(g => {{
    const hit = q !== "" && g.dataset.search.toLowerCase().includes(q);
    g.classList.toggle("hit", hit);
    if (hit) {{ n++; if (!first) first = g; let d = g.closest("details");
      while (d) {{ d.open = true; d = d.parentElement.closest("details"); }} }}
  }});
  count.textContent = q ? n + " match" + (n === 1 ? "" : "es") : "";
  if (first) first.scrollIntoView({{block: "center"}});
}});
</script></body></html>
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `viz`."""
    p = sub.add_parser("viz", help="draw the graph as a self-contained HTML page",
                       description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file (.castml or .onnx)")
    p.add_argument("-o", "--output", required=True, help="HTML file to write")
    p.add_argument("--entry", help="entry of a multi-entry .castml file")
    p.add_argument("--tensorboard", metavar="LOGDIR",
                   help="also write the graph for TensorBoard into this folder (needs tensorboardX: "
                   "pip install 'castml[train]')")
    return p


class _Names:
    """Stable display names for values: their own name, else %0, %1, ... in definition order."""

    def __init__(self):
        self.names: dict[int, str] = {}

    def __call__(self, v) -> str:
        if id(v) not in self.names:
            self.names[id(v)] = f"%{v.name}" if v.name else f"%{len(self.names)}"
        return self.names[id(v)]


def _op_label(op) -> str:
    attrs = {k: v for k, v in op.attrs.items() if not hasattr(v, "shape") and len(repr(v)) <= 24}
    text = ", ".join(f"{k}={v!r}" for k, v in sorted(attrs.items()))
    return f"{op.kind}[{text}]" if text else op.kind


def layout(region, names: _Names, title: str) -> tuple[str, list]:
    """SVG for one region (inputs, ops, outputs), and the (op, region index, region) to draw below."""
    nodes: list[dict[str, Any]] = []
    producer: dict[int, int] = {}
    edges: list[tuple[int, int, str]] = []

    def node(label: str, kind: str, search: str) -> int:
        nodes.append({"label": label, "kind": kind, "search": search, "layer": 0})
        return len(nodes) - 1

    for v in region.inputs:
        producer[id(v)] = node(f"{names(v)}: {type_text(v.type.dtype, v.type.shape)}", "io", names(v))
    nested = []
    for op in region.ops:
        outs = " ".join(f"{names(o)}: {type_text(o.type.dtype, o.type.shape)}" for o in op.outputs)
        k = node(_op_label(op), "const" if op.kind == "constant" else "op", f"{_op_label(op)} {outs}")
        for v in op.inputs:
            if id(v) not in producer:  # a value from an enclosing region
                producer[id(v)] = node(f"outer {names(v)}", "io", names(v))
            edges.append((producer[id(v)], k, type_text(v.type.dtype, v.type.shape)))
        for v in op.outputs:
            producer[id(v)] = k
        nested.extend((op, i, r) for i, r in enumerate(op.regions))
    for i, v in enumerate(region.outputs):
        k = node(f"return {i}", "io", f"return {names(v)}")
        if id(v) not in producer:
            producer[id(v)] = node(f"outer {names(v)}", "io", names(v))
        edges.append((producer[id(v)], k, type_text(v.type.dtype, v.type.shape)))
    for src, dst, _ in edges:  # nodes are in topological order, so one pass suffices
        nodes[dst]["layer"] = max(nodes[dst]["layer"], nodes[src]["layer"] + 1)
    layers: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        layers.setdefault(n["layer"], []).append(k)
    width = 0.0
    for row in layers.values():
        x = NODE_GAP
        for k in row:
            n = nodes[k]
            n["w"] = max(60.0, CHAR_W * len(n["label"]) + 20)
            n["x"], n["y"] = x, NODE_GAP + n["layer"] * (NODE_H + LAYER_GAP)
            x += n["w"] + NODE_GAP
        width = max(width, x)
    height = NODE_GAP * 2 + (max(layers) + 1) * (NODE_H + LAYER_GAP) if nodes else NODE_GAP
    parts = [f'<svg width="{width:.0f}" height="{height:.0f}" role="img" aria-label="{html.escape(title)}">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#999"/></marker></defs>']
    for src, dst, label in edges:
        a, b = nodes[src], nodes[dst]
        x1, y1 = a["x"] + a["w"] / 2, a["y"] + NODE_H
        x2, y2 = b["x"] + b["w"] / 2, b["y"]
        parts.append(f'<path class="edge" d="M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + 35:.1f} {x2:.1f},{y2 - 35:.1f} '
                     f'{x2:.1f},{y2:.1f}"/>')
        parts.append(f'<text class="elabel" x="{(x1 + x2) / 2 + 4:.1f}" y="{(y1 + y2) / 2:.1f}">'
                     f'{html.escape(label)}</text>')
    for n in nodes:
        parts.append(f'<g class="node {n["kind"]}" data-search="{html.escape(n["search"])}">'
                     f'<rect x="{n["x"]:.1f}" y="{n["y"]:.1f}" width="{n["w"]:.1f}" height="{NODE_H}"/>'
                     f'<text x="{n["x"] + 10:.1f}" y="{n["y"] + 21:.1f}">{html.escape(n["label"])}</text>'
                     f'<title>{html.escape(n["search"])}</title></g>')
    parts.append("</svg>")
    return "\n".join(parts), nested


def render(g, title: str) -> str:
    """The whole page for one graph (regions nested in collapsible sections).

    >>> import tracer, numpy as np
    >>> page = render(tracer.trace(lambda x: np.exp(x) + 1.0, np.ones(2)), "demo")
    >>> "exp" in page and "f64[2]" in page and "http" not in page.lower()
    True
    """
    names = _Names()

    def section(region, heading: str, depth: int) -> str:
        svg, nested = layout(region, names, heading)
        inner = "".join(
            f"<details open><summary>region {i} of {html.escape(op.kind)}</summary>"
            f"{section(r, f'{op.kind} region {i}', depth + 1)}</details>" for op, i, r in nested)
        return f'<div class="region">{svg}{inner}</div>'

    return PAGE.format(title=html.escape(title), body=section(g, title, 0))


def run(args: argparse.Namespace) -> int:
    """Load, lay out, write the page atomically."""
    check_model_path(args.model)
    if not args.output.endswith((".html", ".htm")):
        raise CliError(f"output {args.output!r}: expected an .html file name")
    if args.tensorboard:
        from .tensorboard import _protos

        _protos()  # a missing tensorboardX is reported before any work
    title = f"{os.path.basename(args.model)}{' / ' + args.entry if args.entry else ''}"
    with Progress(f"castml viz {os.path.basename(args.model)}", total=3 + bool(args.tensorboard)) as bar:
        bar.step("loading")
        g = load_graph(args.model, args.entry)
        bar.step("laying out")
        page = render(g, title)
        bar.step(f"writing {args.output}")
        with atomic_path(args.output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
        event_file = None
        if args.tensorboard:
            from .tensorboard import write_graph

            bar.step(f"writing the TensorBoard graph to {args.tensorboard}")
            run_name = os.path.splitext(os.path.basename(args.model))[0] + (f".{args.entry}" if args.entry else "")
            event_file = write_graph(g, args.tensorboard, run_name)
    print(f"wrote {args.output} ({len(page):,} bytes, {sum(1 for _ in g.walk())} ops)")
    if event_file:
        print(f"wrote {event_file}; view it with `tensorboard --logdir {args.tensorboard}` (Graphs tab)")
    return 0
