"""Helpers every command shares: `--input` specs, array files, atomic writes, agreement, printing.

Kept in one place so that `trace`, `run` and `demo` read inputs, compare results and write
files the same way: one input syntax, one numerical agreement rule (DESIGN.md), one atomic
write (temp file in the target folder + `os.replace`, so a crash never leaves half a file).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime import CastmlError, pytree
from runtime.format_names import SHORT_NAMES


class CliError(CastmlError):
    """A command-line input the user can fix: a missing file, an unknown name, a bad value."""


# DESIGN.md's one agreement rule: dtype -> (rtol, atol); atol scales with max|ref|.
TOLERANCES = {
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float16): (1e-2, 1e-3),
}

_SHORT_TO_DTYPE = {v: k for k, v in SHORT_NAMES.items()}
_TYPE_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\[(.*)\]\s*$")


@dataclass(frozen=True)
class InputArg:
    """One `--input`: a dotted name (or None when positional) and its raw value text."""

    name: str | None
    text: str


def input_arg(text: str) -> InputArg:
    """argparse `type=` for `--input`: `NAME=VALUE` or just `VALUE` (positional).

    >>> input_arg("x=f32[batch,3]")
    InputArg(name='x', text='f32[batch,3]')
    """
    name, sep, value = text.partition("=")
    if not sep:
        return InputArg(None, text)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", name.strip()):
        raise argparse.ArgumentTypeError(f"bad input name {name!r} in {text!r}; expected NAME=VALUE, e.g. "
                                         f"x=float32[batch,784] or params.fc1.w=w.npy")
    if not value:
        raise argparse.ArgumentTypeError(f"empty value in {text!r}; expected NAME=VALUE")
    return InputArg(name.strip(), value)


def parse_dtype(name: str) -> np.dtype:
    """A NumPy dtype name or an IR short name (`float32`, `f32`, `int64`, `i64`, `bool`, `b1`).

    >>> parse_dtype("f32"), parse_dtype("float64")
    (dtype('float32'), dtype('float64'))
    """
    if name in _SHORT_TO_DTYPE:
        return _SHORT_TO_DTYPE[name]
    try:
        dt = np.dtype(name)
    except TypeError:
        dt = None
    if dt is None or dt not in SHORT_NAMES:
        known = ", ".join(f"{np.dtype(d).name}/{s}" for d, s in SHORT_NAMES.items())
        raise CliError(f"unknown dtype {name!r}; expected one of {known}")
    return dt


def parse_type_spec(text: str) -> tuple[np.dtype, tuple[int | str, ...]] | None:
    """`float32[batch,784]` -> (dtype, shape); None when `text` is not a type spec.

    >>> parse_type_spec("f32[batch,784]")
    (dtype('float32'), ('batch', 784))
    >>> parse_type_spec("i64[]")
    (dtype('int64'), ())
    """
    m = _TYPE_SPEC.match(text)
    if not m:
        return None
    dtype = parse_dtype(m.group(1))
    dims: list[int | str] = []
    body = m.group(2).strip()
    for part in (body.split(",") if body else []):
        part = part.strip()
        if re.fullmatch(r"\d+", part):
            dims.append(int(part))
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            dims.append(part)
        else:
            raise CliError(f"bad dimension {part!r} in {text!r}; expected an integer or a symbol name like batch")
    return dtype, tuple(dims)


def load_array_file(path: str, name: str | None) -> dict[str | None, np.ndarray]:
    """Arrays from a `.npy` (one array, keyed `name`) or `.npz` file.

    A `.npz` holding `name` gives that array; one holding a single unnamed array (`arr_0`) gives
    it; otherwise every array, keyed `name.KEY` (or `KEY` without a name), so one file can feed
    a whole pytree argument (`--input params=weights.npz` with keys `fc1.w`, `fc1.b`).
    """
    if not os.path.isfile(path):
        raise CliError(f"input file {path!r} not found")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if name is not None and name in arrays:
                return {name: arrays[name]}
            if list(arrays) == ["arr_0"]:
                return {name: arrays["arr_0"]}
            return {(f"{name}.{k}" if name else k): v for k, v in arrays.items()}
        return {name: np.load(path, allow_pickle=False)}
    except (ValueError, OSError) as e:
        raise CliError(f"cannot read input file {path!r}: {e}") from None


def parse_literal(text: str) -> np.ndarray | None:
    """A number or nested list literal (`2.0`, `[1,2,3]`) as an array; None when not one.

    >>> parse_literal("2.5")
    array(2.5)
    """
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, (int, float, bool, list, tuple)):
        try:
            return np.asarray(value)
        except ValueError:
            return None
    return None


def is_array_file(text: str) -> bool:
    """Whether an input value names an array file (`.npy`/`.npz`)."""
    return text.endswith((".npy", ".npz"))


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted paths to nested dicts; dicts keyed `0..n-1` become lists.

    >>> nest({"p.fc1.w": 1, "p.fc1.b": 2, "xs.0": 3, "xs.1": 4})
    {'p': {'fc1': {'w': 1, 'b': 2}}, 'xs': [3, 4]}
    """
    root: dict[str, Any] = {}
    for path, value in flat.items():
        parts = path.split(".")
        node = root
        for k in parts[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise CliError(f"input {path!r} conflicts with input {'.'.join(parts[:parts.index(k) + 1])!r}")
            node = child
        if parts[-1] in node:
            raise CliError(f"input {path!r} given twice, or conflicts with a nested input")
        node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: _lists(v) for k, v in node.items()}
    if out and sorted(out) == [str(i) for i in range(len(out))] and all(k.isdigit() for k in out):
        return [out[str(i)] for i in range(len(out))]
    return out


def random_array(dtype: Any, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random test data: standard normal floats, integers in [0, 10), fair bools.

    >>> random_array(np.int32, (2,), np.random.default_rng(0)).dtype
    dtype('int32')
    """
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(0, 10, size=shape).astype(dt)


def max_abs_error(got: Any, ref: Any) -> tuple[float, bool]:
    """Largest |got-ref| over the leaves of two pytrees and whether all agree (DESIGN.md rule).

    >>> max_abs_error(np.float32([1, 2]), np.float32([1, 2.00001]))[1]
    True
    """
    gl, gt = pytree.flatten(got)
    rl, rt = pytree.flatten(ref)
    if gt != rt or len(gl) != len(rl):
        return float("inf"), False
    worst, ok = 0.0, True
    for g, r in zip(gl, rl):
        g, r = np.asarray(g), np.asarray(r)
        if g.shape != r.shape:
            return float("inf"), False
        if r.dtype.kind not in "fc":
            ok &= bool(np.array_equal(g, r))
            if g.size:
                worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))))
            continue
        rtol, atol = TOLERANCES.get(r.dtype, TOLERANCES[np.dtype(np.float32)])
        g64, r64 = g.astype(np.float64), r.astype(np.float64)
        finite = np.isfinite(r64)
        scale = float(np.max(np.abs(r64[finite]))) if finite.any() else 0.0
        same = (np.isnan(g64) & np.isnan(r64)) | (np.isinf(r64) & (g64 == r64))
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(g64 - r64))
        diff = np.where(np.isnan(diff), np.inf, diff)
        ok &= bool(np.all(diff <= rtol * np.abs(np.where(same, 0.0, r64)) + atol * scale))
        if diff.size:
            worst = max(worst, float(np.max(diff)))
    return worst, ok


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temp path next to `path`; on success it replaces `path` atomically.

    >>> import tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with atomic_path(target) as tmp, open(tmp, "w") as f:
    ...     _ = f.write("done")
    >>> open(target).read()
    'done'
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"output folder {folder!r} does not exist")
    from exporters.atomic import atomic_path as exporters_atomic_path  # one writer for all; lazy: exporters is heavy

    with exporters_atomic_path(path) as tmp:
        yield tmp


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays to an `.npz` file atomically.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "o.npz"); save_npz(path, {"y": np.ones(2)})
    >>> np.load(path)["y"].tolist()
    [1.0, 1.0]
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def save_model(graphs: Any, path: str) -> None:
    """Save a model by suffix; `exporters.save` writes atomically (temp file, fsync, rename).

    >>> save_model(tracer.trace(lambda x: x * x, 2.0), "/tmp/sq.castml")  # doctest: +SKIP
    """
    import exporters

    if not path.endswith((".castml", ".onnx")):
        raise CliError(f"output {path!r}: expected a .castml or .onnx file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"output folder {folder!r} does not exist")
    exporters.save(graphs, path)


def type_text(dtype: Any, shape: tuple) -> str:
    """`f32[batch,784]` for a dtype and a shape of ints and symbols.

    >>> type_text(np.float32, ("batch", 784))
    'f32[batch,784]'
    """
    return f"{SHORT_NAMES.get(np.dtype(dtype), str(dtype))}[{','.join(str(d) for d in shape)}]"


def summary(a: np.ndarray) -> str:
    """A one-line summary of an array: type, and min/mean/max for numbers.

    >>> summary(np.float32([1, 2, 3]))
    'f32[3] min 1 mean 2 max 3'
    """
    a = np.asarray(a)
    head = type_text(a.dtype, a.shape)
    if a.size == 0 or a.dtype.kind not in "biuf":
        return head
    x = a.astype(np.float64)
    return f"{head} min {x.min():.6g} mean {x.mean():.6g} max {x.max():.6g}"
