"""Loading a model never executes code and never reads outside the model's folder.

The code that reads model files (`runtime/`, `exporters/`) must not contain the ways Python runs
data as code — pickle/marshal/shelve, eval/exec/compile, __import__/importlib, NumPy's
allow_pickle — so a walk over their AST forbids them. ONNX external data is the other classic
hole (a tensor whose `location` is `../../etc/passwd`): `..`, absolute paths and symlinks that
resolve outside the model's folder are refused, and so are files over `max_file_bytes`.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import external_data_helper

import exporters
import runtime
import tracer
from exporters.castml_format import to_bytes
from runtime import CastmlError, limits
from tests.helpers import assert_agree

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "importlib", "dill", "cloudpickle"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "exec_module", "import_module", "load_module"}
# build tooling that locates installed tools (flatc, OpenBLAS) with importlib and is never run by
# a loader; it still may not call exec_module/import_module/load_module
ALLOWED_IMPORTS = {("runtime/native/build.py", "importlib.metadata"), ("runtime/native/build.py", "importlib.util")}


def forbidden_constructs(source: str, filename: str = "<string>") -> list[str]:
    """Every import of a code-loading module, call of eval/exec/compile/__import__ (by name or as
    an attribute, e.g. `builtins.eval`) and `allow_pickle=True` in `source`, as `file:line: what`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else None
            if name in FORBIDDEN_CALLS and not (isinstance(fn, ast.Attribute) and name == "compile"
                                                and _is_re(fn.value)):
                found.append(f"{where}: call of {name}")
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{where}: allow_pickle={ast.unparse(kw.value)}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_CALLS - {"compile"} and isinstance(node.ctx, ast.Load):
            found.append(f"{where}: reference to {node.id}")  # e.g. `f = eval; f(s)`
    return found


def _is_re(node: ast.AST) -> bool:
    """`re.compile` compiles a regular expression, not Python code."""
    return isinstance(node, ast.Name) and node.id == "re"


def test_the_checker_finds_every_construct():
    bad = """
import pickle
import importlib.util
from marshal import loads
x = eval("1")
exec("y = 2")
builtins.__import__("os")
compile("1", "f", "eval")
g = eval
np.load("a.npy", allow_pickle=True)
importlib.util.spec_from_file_location("m", "m.py").loader.exec_module(m)
"""
    found = forbidden_constructs(bad)
    for what in ("import pickle", "import importlib.util", "from marshal", "call of eval", "call of exec",
                 "call of __import__", "call of compile", "reference to eval", "allow_pickle=True",
                 "call of exec_module"):
        assert any(what in f for f in found), (what, found)
    assert forbidden_constructs("import re\nre.compile('a+')\nnp.load('a.npy', allow_pickle=False)\n") == []


@pytest.mark.parametrize("package", ["runtime", "exporters"])
def test_no_code_execution_in_the_loaders(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert len(files) > 5
    found = [f for p in files for f in forbidden_constructs(p.read_text(), str(p.relative_to(ROOT)))
             if not any(f.startswith(f"{path}:") and f.endswith(f"import {mod}") for path, mod in ALLOWED_IMPORTS)]
    assert found == []


# ---- ONNX external data ---------------------------------------------------------------------------
W = np.arange(64 * 4, dtype=np.float32).reshape(64, 4) / 100.0


def _external_model(folder: Path, location: str) -> Path:
    """An ONNX model in `folder` whose weight lives in external data at `location` (offset 0)."""
    g = tracer.trace(lambda x: x @ W, np.zeros((2, 64), np.float32))
    model = exporters.to_onnx(g)
    [t] = [t for t in model.graph.initializer if t.dims == [64, 4]]
    external_data_helper.set_external_data(t, location=location, offset=0, length=W.nbytes)
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("raw_data")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    path = _external_model(tmp_path / "m", "weights.bin")
    (tmp_path / "m" / "weights.bin").write_bytes(W.tobytes())
    x = np.ones((2, 64), np.float32)
    assert_agree(runtime.load(to_bytes(exporters.load(str(path)))).run(x), x @ W)


@pytest.mark.parametrize("how", ["dotdot", "dotdot_nested", "absolute", "symlink_file", "symlink_dir"])
def test_external_data_outside_the_folder_is_refused(tmp_path, how):
    secret = tmp_path / "outside" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(W.tobytes())  # readable, well-formed data: only the path check can refuse it
    folder = tmp_path / "m"
    folder.mkdir()
    location = {"dotdot": "../outside/secret.bin", "dotdot_nested": "sub/../../outside/secret.bin",
                "absolute": str(secret), "symlink_file": "weights.bin", "symlink_dir": "data/secret.bin"}[how]
    if how == "symlink_file":
        os.symlink(secret, folder / "weights.bin")
    if how == "symlink_dir":
        os.symlink(secret.parent, folder / "data")
    path = _external_model(folder, location)
    with pytest.raises(CastmlError, match="outside|relative path inside"):
        exporters.load(str(path))


def test_files_over_the_size_limit_are_refused(tmp_path):
    g = tracer.trace(lambda x: x @ W, np.zeros((2, 64), np.float32))
    data = to_bytes(g)
    with limits.limits(max_file_bytes=len(data) - 1):
        with pytest.raises(runtime.ModelFormatError, match="max_file_bytes.*set_limits"):
            runtime.load(data)
    p = tmp_path / "m.castml"
    p.write_bytes(data)
    with limits.limits(max_file_bytes=len(data)):
        assert runtime.load(p).run(np.ones((2, 64), np.float32)).shape == (2, 4)
