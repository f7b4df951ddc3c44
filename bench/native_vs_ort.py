"""Native C++ runtime vs the NumPy runtime vs onnxruntime on the same models, in one run.

    PYTHONPATH=. python bench/native_vs_ort.py [--repeats 20] [--threads 1] [--clock wall|cpu]
                                               [--only mlp,lenet,transformer,resnet_tiny,resnet50_onnx]

Each model is traced once with its weights as constants and `ir.optimize`d (gemm/fused_conv
fusion, BatchNorm folded), saved as .castml and loaded by both castml backends
(`runtime.load(..., backend="native")` and `backend="numpy"`); onnxruntime runs
`exporters.to_onnx` of the traced graph with all its graph optimizations. ResNet-50 (built in
runtime_vs_ort.py) runs, on the castml side, the graph exported to ONNX and imported back, as a
deployment from an ONNX file would. The native library is built first if needed
(`runtime.native.build`) unless `$CASTML_NATIVE_LIB` names one. All three use the same thread
count (OpenBLAS or castml's own GEMM, NumPy's OpenBLAS, onnxruntime intra-op threads) and are
timed in rotating blocks in one process, median after warm-up; times include each engine's
Python call overhead (ctypes for native), except the "raw C" column: `castml_run` on prebuilt
ctypes arguments, the native runtime without `NativeSession.run`'s Python work. `--clock cpu`
times process CPU time, steadier on a machine shared with other jobs (single-threaded runs only).
The header line says which GEMM the native library runs (castml's AVX-512 GEMM on CPUs that
have it; `CASTML_NATIVE_GEMM=blas` picks OpenBLAS, whose kernels `OPENBLAS_CORETYPE` chooses).
Prints a table with the ratios native/ort and numpy/ort. Not a test: nothing asserts a threshold.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import time
from collections.abc import Callable

import numpy as np

import ir
import runtime
from exporters.castml_format import to_bytes
from runtime import native_backend
from runtime.native.build import build
from runtime.session import set_blas_threads


def _load_sibling(name: str):
    """A module of bench/ by file name (bench/ is not a package): the model builders and timing
    helpers of runtime_vs_ort.py, so both benchmarks time the very same models the same way."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ort_bench = _load_sibling("runtime_vs_ort")
_median_times, _ort_session = _ort_bench._median_times, _ort_bench._ort_session
lenet_model, mlp_model, zoo_model = _ort_bench.lenet_model, _ort_bench.mlp_model, _ort_bench.zoo_model
resnet50_model, via_onnx = _ort_bench.resnet50_model, _ort_bench._via_onnx

MODELS = {  # key -> (row name, build, batch sizes, input shape)
    "mlp": ("MLP 784-512-512-10", mlp_model, (1, 64), (784,)),
    "lenet": ("LeNet CNN", lenet_model, (1, 64), (1, 28, 28)),
    "transformer": ("transformer enc 6x256 seq128", lambda: zoo_model("transformer_encoder"), (1, 4), (128, 256)),
    "resnet_tiny": ("resnet_tiny 3x32x32", lambda: zoo_model("resnet_tiny"), (1, 16), (3, 32, 32)),
    "resnet50_onnx": ("ResNet-50 via ONNX import", resnet50_model, (1,), (3, 224, 224)),
}


def _raw_call(session: native_backend.NativeSession, x: np.ndarray) -> Callable[[], None]:
    """`castml_run` + `castml_result_free` on prebuilt ctypes arguments: the native runtime's own
    time plus one ctypes call (~1 us), without the per-call Python work of `NativeSession.run`
    (argument matching, ctypes structs, wrapping outputs as arrays)."""
    lib, handle, entry = session._model.lib, session._model.handle, session._entry.bname
    shape = (ctypes.c_int64 * x.ndim)(*x.shape)
    arg = native_backend._CTensor(native_backend._CODES[x.dtype], x.ndim, shape, x.ctypes.data)
    tensors = (native_backend._CTensor * 1)(arg)

    def call():
        res = lib.castml_run(handle, entry, 1, tensors)
        if not res:
            raise RuntimeError(lib.castml_last_error().decode())
        lib.castml_result_free(res)

    call.keep = (x, shape, tensors)  # the buffers the pointers refer to
    return call


def rows(repeats: int, threads: int, only: list[str]) -> list[tuple]:
    """(name, native ms, native raw C call ms, numpy ms, ort ms, note) per model and batch size."""
    rng = np.random.default_rng(0)
    out = []
    for key in only:
        name, make, batches, shape = MODELS[key]
        g = make()
        # elementwise=False: libcastml inlines fused_elementwise regions, nothing gained by them
        data = to_bytes(ir.optimize(via_onnx(g) if key.endswith("_onnx") else g, elementwise=False))
        native = runtime.load(data, backend="native")
        numpy_sess = runtime.load(data, backend="numpy")
        ort_sess, note = _ort_session(g, threads)
        for batch in batches:
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            ref = numpy_sess.run(x)
            err = float(np.max(np.abs(native.run(x) - ref)) / max(float(np.max(np.abs(ref))), 1e-30))
            row_note = note if err <= 1e-4 else f"native differs from numpy: max rel err {err:.2e}"
            fns = {"native": lambda x=x: native.run(x), "raw": _raw_call(native, x),
                   "numpy": lambda x=x: numpy_sess.run(x)}
            if ort_sess is not None:
                feed = {ort_sess.get_inputs()[0].name: x}
                fns["ort"] = lambda feed=feed: ort_sess.run(None, feed)
            t = _median_times(fns, repeats)
            out.append((f"{name}, batch {batch}", t["native"] * 1e3, t["raw"] * 1e3, t["numpy"] * 1e3,
                        t.get("ort", float("nan")) * 1e3, row_note))
            print(_format(out[-1]), flush=True)
    return out


def _format(row: tuple) -> str:
    name, nat, raw, npy, ort, note = row
    return (f"{name:<36} {nat:>10.3f} {raw:>10.3f} {npy:>10.3f} {ort:>10.3f} {nat / ort:>11.2f} {raw / ort:>8.2f} "
            f"{npy / ort:>10.2f}" + (f"  ({note})" if note else ""))


def main() -> None:
    """Build the library if needed, then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="BLAS / intra-op threads of every engine")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: time.process_time, robust on a loaded machine for single-threaded runs")
    parser.add_argument("--only", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    args = parser.parse_args()
    if args.clock == "cpu":
        _ort_bench.CLOCK = time.process_time
    only = [k for k in args.only.split(",") if k]
    unknown = sorted(set(only) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    if not os.environ.get("CASTML_NATIVE_LIB"):  # a library of one's own is used as it is
        build()
    native_backend.set_threads(args.threads)
    set_blas_threads(args.threads)
    env = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_CORETYPE", "CASTML_NATIVE_GEMM")}
    own = env["CASTML_NATIVE_GEMM"] != "blas" and args.threads == 1
    print(f"threads {args.threads} for every engine; native GEMM: "
          f"{'castml AVX-512 where the CPU has it, else ' if own else ''}{native_backend.blas()} "
          f"(OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}, CASTML_NATIVE_GEMM={env['CASTML_NATIVE_GEMM']}); "
          f"median of >= {args.repeats} runs ({args.clock} clock), engines rotating in blocks of 3")
    print(f"{'model':<36} {'native ms':>10} {'raw C ms':>10} {'numpy ms':>10} {'ort ms':>10} {'native/ort':>11} "
          f"{'raw/ort':>8} {'numpy/ort':>10}")
    rows(args.repeats, args.threads, only)


if __name__ == "__main__":
    main()
