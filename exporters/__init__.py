"""Saving and loading castml graphs: ONNX export/import and the `.castml` format, by file suffix.

Why one entry point: users say where the model goes (`m.onnx`, `m.castml`) and castml picks the
writer, as `torch.save`/`tf.saved_model.save` do. Writes are atomic (temp file in the same
directory, fsync, `os.replace`; see `exporters.atomic`), so a crash never leaves a torn model
behind, and the next save removes temp files a killed save left. Importing this
package attaches every op's ONNX lowering to the registry (`ir.get_op(kind).onnx`).

>>> import numpy as np, tracer, tempfile, os
>>> g = tracer.trace(lambda x: x + 1.0, np.zeros(2, np.float32))
>>> path = os.path.join(tempfile.mkdtemp(), "m.onnx")
>>> save(g, path); load(path) == from_onnx(to_onnx(g))
True
"""

from __future__ import annotations

import os

from ir.graph import Graph

from . import onnx_lowering  # noqa: F401  (fills `OpDef.onnx`)
from .atomic import write_atomic
from .errors import ExportError, UnsupportedOpError
from .onnx_export import to_onnx
from .onnx_import import from_onnx, load_onnx

__all__ = ["ExportError", "UnsupportedOpError", "to_onnx", "from_onnx", "save", "load", "load_all", "write_atomic"]

SUFFIXES = (".onnx", ".castml")


def _suffix(path: str) -> str:
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in SUFFIXES:
        raise ExportError(f"cannot tell the format of {str(path)!r}: expected a file name ending in "
                          f"{' or '.join(SUFFIXES)}")
    return ext


def save(g: Graph | dict[str, Graph], path: str, opset: int = 18, target: str | None = "onnxruntime-cpu",
         external_data: bool = False) -> None:
    """Save a graph (or, for `.castml`, a dict of named graphs) in the format the suffix names.

    `.onnx` takes `opset` and `target` (see `to_onnx`); `external_data=True` stores large
    constants next to the model in a content-named file.

    >>> import numpy as np, tracer, tempfile, os
    >>> g = tracer.trace(lambda x: x * 2.0, np.zeros(2, np.float32))
    >>> save(g, os.path.join(tempfile.mkdtemp(), "m.onnx"))
    """
    ext = _suffix(path)
    if ext == ".castml":
        from . import castml_format

        castml_format.save_castml(g, str(path))
        return
    if isinstance(g, dict):
        raise ExportError(f"an ONNX file holds one graph, got {len(g)} ({', '.join(sorted(g))}); save one, e.g. "
                          f"save(graphs[name], {str(path)!r}), or use a .castml file and load(path, entry=name)")
    model = to_onnx(g, opset=opset, target=target)
    if external_data:
        from .onnx_export import write_external

        write_external(model, str(path), write_atomic)
    write_atomic(str(path), model.SerializeToString())


def load(path: str, entry: str | None = None) -> Graph:
    """Load a graph from a `.onnx` or `.castml` file (`entry` picks one graph of a `.castml`).

    >>> import numpy as np, tracer, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.onnx")
    >>> save(tracer.trace(lambda x: -x, np.zeros(2, np.float32)), p); load(p).inputs
    [Value(%x: f32[2])]
    """
    ext = _suffix(path)
    if ext == ".castml":
        from . import castml_format

        return castml_format.load_castml(str(path), entry=entry)
    if entry is not None:
        raise ExportError(f"{str(path)!r} is an ONNX file with one graph; entry={entry!r} applies to .castml files")
    return load_onnx(str(path))


def load_all(path: str) -> dict[str, Graph]:
    """Every graph of a model file by name (an ONNX file has one, named after its graph).

    >>> import numpy as np, tracer, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.onnx")
    >>> save(tracer.trace(lambda x: -x, np.zeros(2, np.float32)), p); list(load_all(p))
    ['main']
    """
    ext = _suffix(path)
    if ext == ".castml":
        from . import castml_format

        return castml_format.load_castml_all(str(path))
    return {"main": load_onnx(str(path))}
