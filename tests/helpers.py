"""Shared test helpers: the one numerical agreement rule of DESIGN.md, and threads."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from runtime import pytree

TOLERANCES = {  # dtype kind/size -> (rtol, atol)
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float16): (1e-2, 1e-3),
}


def agree(got, ref, dtype=None) -> tuple[bool, str]:
    """Whether `got` agrees with `ref` under DESIGN.md's rule, and a message when not.

    |got - ref| <= rtol*|ref| + atol*max|ref| elementwise; ints and bools exactly; NaN == NaN.
    """
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return False, f"shape {got.shape} != {ref.shape}"
    dt = np.dtype(dtype) if dtype is not None else ref.dtype
    if dt.kind not in "f":
        ok = np.array_equal(got, ref)
        return ok, "" if ok else f"values differ: {got!r} vs {ref!r}"
    rtol, atol = TOLERANCES.get(dt, TOLERANCES[np.dtype(np.float32)])
    g, r = got.astype(np.float64), ref.astype(np.float64)
    finite = np.isfinite(r)
    scale = np.max(np.abs(r[finite])) if finite.any() else 0.0
    both_nan = np.isnan(g) & np.isnan(r)
    same_inf = np.isinf(r) & (g == r)
    with np.errstate(invalid="ignore"):
        close = np.abs(g - r) <= rtol * np.abs(r) + atol * scale
    ok_mask = close | both_nan | same_inf
    if ok_mask.all():
        return True, ""
    bad = np.argwhere(~ok_mask)[0]
    i = tuple(bad)
    return False, (f"{(~ok_mask).sum()} of {ok_mask.size} elements differ beyond rtol={rtol}, atol={atol}*{scale:.3g};"
                   f" first at {i}: got {g[i]!r}, ref {r[i]!r}")


def assert_agree(got, ref, dtype=None) -> None:
    """Assert agreement of two pytrees of arrays (structure, dtypes and values)."""
    gl, gt = pytree.flatten(got)
    rl, rt = pytree.flatten(ref)
    assert gt == rt, f"structure {gt} != {rt}"
    for k, (a, b) in enumerate(zip(gl, rl)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype, f"leaf {k}: dtype {a.dtype} != {b.dtype}"
        ok, msg = agree(a, b, dtype)
        assert ok, f"leaf {k}: {msg}"


def build_native() -> str:
    """Build (or find up to date) the native runtime and check it loads; a failure fails the test
    that needs it (CI has cmake and g++), it is never skipped. Returns the library's path.
    With $CASTML_NATIVE_LIB set, that library is used as it is."""
    import os

    import pytest

    from runtime import native_backend
    from runtime.native.build import NativeBuildError, build

    if os.environ.get("CASTML_NATIVE_LIB"):  # a library built elsewhere (e.g. a side build tree)
        assert native_backend.available(), f"$CASTML_NATIVE_LIB={os.environ['CASTML_NATIVE_LIB']} does not load"
        return native_backend.library_path()
    try:
        path = build()
    except NativeBuildError as e:
        pytest.fail(f"cannot build the native runtime (CI has cmake and g++): {e}")
    assert native_backend.available(), f"built {path} but it does not load"
    return path


def run_in_threads(work: Callable[[int], None], n: int) -> list[BaseException]:
    """Run `work(k)` for k in range(n), each in a thread of its own, all at once; returns what
    they raised (a thread's exception, assertions included, would otherwise vanish)."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            work(k)
        except BaseException as e:  # handed to the caller, who asserts there are none
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
