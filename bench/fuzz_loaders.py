"""Mutation fuzzer for the model loaders: `.castml` (runtime.load, exporters' reader) and `.onnx`.

Why: a model file is untrusted input, and castml promises that loading and running one either
works or raises a `CastmlError` subclass — never another exception type, a crash, a hang or a
runaway allocation. This takes valid files (traced graphs and zoo models), mutates them (every
byte of the FlatBuffers/protobuf structure x bit flips, 0x00/0xFF, +-1; copy/insert/delete/
truncate; sampled tensor-data bytes; multi-byte splices of boundary integers), then loads and
runs each case in a worker process under a per-case watchdog and an address-space limit.

    PYTHONPATH=. python bench/fuzz_loaders.py --cases 20000 --seed 0 --jobs 8 --time-limit 2
    PYTHONPATH=. python bench/fuzz_loaders.py --exhaustive --jobs 16   # every structure byte x 12

Prints cases/s, the outcome histogram (ok / error type) and every finding with its case id;
`--replay ID` reruns one case in-process with its traceback.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import runtime
from runtime import dims as D
from runtime import limits, native_backend, pytree

# byte mutations applied systematically to every structure byte
BYTE_OPS = ("bit0", "bit1", "bit2", "bit3", "bit4", "bit5", "bit6", "bit7", "zero", "ones", "inc", "dec")
# integers that sit on boundaries the loader must check (little-endian when spliced in)
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**62, 2**63 - 1,
               2**64 - 1, 64, 4096)
# what the worker runs under: small limits, so a check that is bypassed shows up as MemoryError
FUZZ_LIMITS = dict(max_tensor_bytes=64 << 20, max_intermediate_bytes=256 << 20, max_loop_iterations=10_000)
ADDRESS_SPACE_HEADROOM = 2 << 30
PEAK_RSS_MARGIN = 256 << 20  # the interpreter's own growth (imports, caches) over a run
# the runtimes each .castml case runs on (a crash of the C++ loader shows as a worker crash)
# a worker is replaced after this many cases: the peak-RSS check reads a lifetime high-water mark,
# and the allocator keeps freed memory (glibc raises its mmap threshold after big frees), so a
# long-lived worker drifts up by ~100 KiB a case on large models without any case using more
CASES_PER_WORKER = 500
BACKENDS = ("numpy", "native") if native_backend.available() else ("numpy",)


@dataclass
class SeedFile:
    """A valid model file to mutate: bytes, where its structure lies, and its argument trees."""

    name: str
    kind: str  # "castml" | "onnx"
    data: bytes
    structure: list[tuple[int, int]]  # byte ranges mutated systematically
    tensor_data: list[tuple[int, int]]  # byte ranges of weights (sampled)
    trees: dict[str, Any] = field(default_factory=dict)  # entry -> in_tree of the traced function

    def structure_positions(self) -> int:
        return sum(b - a for a, b in self.structure)

    def position(self, k: int) -> int:
        for a, b in self.structure:
            if k < b - a:
                return a + k
            k -= b - a
        raise IndexError(k)


# -- the corpus ---------------------------------------------------------------------------------
def _halve_or_grow(x, n):  # a scripted loop with a branch (module level: tracer.script reads the source)
    y = x
    for _ in range(n):
        if y.sum() > 0:
            y = y * 0.5
        else:
            y = y + 1.0
    return y


def _traced_graphs() -> dict[str, Any]:
    import tracer
    from tracer import TensorSpec
    from tracer import ops as nn

    rng = np.random.default_rng(0)

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w1, b1, w2 = w(6, 5), w(5), w(5, 3)
    cw, cb, lw, lb = w(2, 3, 3, 3), w(2), w(6), w(6)
    graphs = {
        "mlp": tracer.trace(lambda x: np.maximum(x @ w1 + b1, 0.0) @ w2, TensorSpec(("batch", 6))),
        "cnn": tracer.trace(lambda x: nn.max_pool2d(np.maximum(nn.conv2d(x, cw, cb, padding=1), 0.0), 2),
                            TensorSpec(("batch", 3, 4, 4))),
        "ln_softmax": tracer.trace(lambda x: nn.softmax(nn.layer_norm(x, lw, lb), axis=-1) * 2.0,
                                   TensorSpec(("batch", 6))),
        "pytree": tracer.trace(lambda p, x: {"h": np.tanh(x @ p["w"] + p["b"]), "s": x.sum(axis=1)},
                               {"w": w1, "b": b1}, TensorSpec(("batch", 6))),
        "shapes": tracer.trace(lambda x, i: (np.tile(x, (2, 1)), np.concatenate([x, x[:, ::-1]], axis=1),
                                             x.reshape(-1, 3, 2).transpose(0, 2, 1), i // 2 + i % 3),
                               TensorSpec(("batch", 6)), TensorSpec(("batch", 2), np.int64)),
    }
    try:
        graphs["loop"] = tracer.trace(tracer.script(_halve_or_grow), np.ones(3, np.float32), np.int64(3))
    except Exception as e:  # script mode is optional for the corpus
        print(f"fuzz corpus: no loop model ({type(e).__name__}: {e})", file=sys.stderr)
    return graphs


def _zoo_graphs() -> dict[str, Any]:
    import tracer
    from tracer import TensorSpec

    try:
        from models import zoo
    except Exception as e:
        print(f"fuzz corpus: no zoo ({type(e).__name__}: {e})", file=sys.stderr)
        return {}
    out = {}
    for name in ("mlp", "lenet"):
        fn, (x, params) = zoo.MODELS[name].build(seed=0)
        out[f"zoo_{name}"] = tracer.trace(lambda x, fn=fn, params=params: fn(x, params),
                                          TensorSpec(("batch",) + x.shape[1:], x.dtype))
    return out


def _castml_seed(name: str, g: Any) -> SeedFile:
    from exporters.castml_format import to_bytes
    from runtime.format.castml_fb.Model import Model

    data = to_bytes(g)
    m = Model.GetRootAs(data, 0)
    start = int(m.DataOffset())
    tensors = []
    for t in range(m.TensorsLength()):
        tt = m.Tensors(t)
        if tt.Length():
            tensors.append((start + int(tt.Offset()), start + int(tt.Offset()) + int(tt.Length())))
    return SeedFile(name, "castml", data, [(0, start)], tensors, {"main": g.in_tree})


def _onnx_seed(name: str, g: Any) -> SeedFile | None:
    try:
        import exporters

        model = exporters.to_onnx(g)
    except Exception as e:
        print(f"fuzz corpus: no ONNX for {name} ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    data = model.SerializeToString()
    weights = sorted((data.find(t.raw_data), data.find(t.raw_data) + len(t.raw_data))
                     for t in model.graph.initializer if len(t.raw_data) >= 16 and data.find(t.raw_data) >= 0)
    structure, pos = [], 0
    for a, b in weights:
        if a > pos:
            structure.append((pos, a))
        pos = max(pos, b)
    structure.append((pos, len(data)))
    return SeedFile(name, "onnx", data, structure, weights, {"main": g.in_tree})


def build_corpus(onnx: bool = True, zoo: bool = True) -> list[SeedFile]:
    """Valid seed files: traced MLP/CNN/layer-norm/pytree/shape/loop graphs and zoo models, as
    `.castml` and (when `onnx` and the exporter works) `.onnx`.

    >>> sorted({s.kind for s in build_corpus(onnx=False, zoo=False)})
    ['castml']
    """
    graphs = _traced_graphs()
    if zoo:
        graphs.update(_zoo_graphs())
    seeds = [_castml_seed(n, g) for n, g in graphs.items()]
    if onnx:
        seeds += [s for s in (_onnx_seed(n, g) for n, g in graphs.items()) if s is not None]
    return seeds


# -- mutations ----------------------------------------------------------------------------------
def mutate_byte(data: bytes, pos: int, op: str) -> bytes:
    """`data` with the byte at `pos` changed by `op` (one of `BYTE_OPS`).

    >>> mutate_byte(b"\\x01\\x02", 1, "inc"), mutate_byte(b"\\x01", 0, "bit7")
    (b'\\x01\\x03', b'\\x81')
    """
    b = data[pos]
    if op.startswith("bit"):
        b ^= 1 << int(op[3:])
    else:
        b = {"zero": 0, "ones": 0xFF, "inc": (b + 1) & 0xFF, "dec": (b - 1) & 0xFF}[op]
    return data[:pos] + bytes([b]) + data[pos + 1:]


def random_mutation(seed: SeedFile, rng: random.Random) -> tuple[str, bytes]:
    """One structural or data mutation drawn from `rng`: (description, mutated bytes)."""
    data = seed.data
    n = len(data)
    kind = rng.choice(("copy", "insert", "delete", "truncate", "splice", "splice", "data", "data", "multi"))
    if kind == "data" and seed.tensor_data:
        a, b = rng.choice(seed.tensor_data)
        pos = rng.randrange(a, b)
        return f"data@{pos}", data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1:]
    if kind == "copy":
        length = rng.randint(1, 32)
        src, dst = rng.randrange(n), rng.randrange(n)
        chunk = data[src:src + length]
        return f"copy {src}+{length}->{dst}", data[:dst] + chunk + data[dst + len(chunk):]
    if kind == "insert":
        pos, length = rng.randrange(n + 1), rng.randint(1, 16)
        return f"insert {length}@{pos}", data[:pos] + rng.randbytes(length) + data[pos:]
    if kind == "delete":
        pos, length = rng.randrange(n), rng.randint(1, 16)
        return f"delete {length}@{pos}", data[:pos] + data[pos + length:]
    if kind == "truncate":
        pos = rng.randrange(n)
        return f"truncate@{pos}", data[:pos]
    if kind == "multi":
        out = bytearray(data)
        for _ in range(rng.randint(2, 8)):
            out[seed.position(rng.randrange(seed.structure_positions()))] = rng.randrange(256)
        return "multi", bytes(out)
    value = rng.choice(INTERESTING)
    width = rng.choice((1, 2, 4, 8))
    pos = seed.position(rng.randrange(seed.structure_positions()))
    raw = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    return f"splice {value:#x}/{width}@{pos}", data[:pos] + raw + data[pos + len(raw):]


class CaseSpace:
    """Numbers every case: `exhaustive` enumerates every structure byte x `BYTE_OPS` of every seed
    first; other ids (and every id when not exhaustive) are random draws from `(seed, id)`."""

    def __init__(self, seeds: list[SeedFile], seed: int, exhaustive: bool = False):
        self.seeds, self.seed, self.exhaustive = seeds, seed, exhaustive
        self.systematic = [s.structure_positions() * len(BYTE_OPS) for s in seeds]

    @property
    def n_systematic(self) -> int:
        return sum(self.systematic) if self.exhaustive else 0

    def case(self, i: int) -> tuple[SeedFile, str, bytes]:
        """(seed file, description, mutated bytes) of case `i`."""
        if i < self.n_systematic:
            for s, n in zip(self.seeds, self.systematic):
                if i < n:
                    pos, op = divmod(i, len(BYTE_OPS))
                    p = s.position(pos)
                    return s, f"{BYTE_OPS[op]}@{p}", mutate_byte(s.data, p, BYTE_OPS[op])
                i -= n
        rng = random.Random(f"{self.seed}:{i}")
        s = rng.choice(self.seeds)
        if rng.random() < 0.6:  # a single-byte mutation of the structure
            p = s.position(rng.randrange(s.structure_positions()))
            op = rng.choice(BYTE_OPS)
            return s, f"{op}@{p}", mutate_byte(s.data, p, op)
        desc, data = random_mutation(s, rng)
        return s, desc, data


# -- running one case ---------------------------------------------------------------------------
def make_args(infos: list, tree: Any, rng: np.random.Generator) -> tuple:
    """Arguments for an entry from its `inputs` (symbols bound to 2; oversized shapes shrunk, so
    the runtime's input check answers them) structured like the traced call when counts match."""
    env: dict[str, int] = {}
    leaves = []
    for info in infos:
        shape = []
        for d in info.shape:
            if D.is_symbol(d):
                shape.append(env.setdefault(d, 2))
                continue
            try:
                shape.append(int(D.evaluate(d, env)))
            except (D.DimError, ValueError, TypeError, OverflowError):
                shape.append(1)
        if any(s < 0 for s in shape) or int(np.prod(shape, dtype=np.float64)) > 1 << 16:
            shape = [1] * len(shape)
        kind = np.dtype(info.dtype).kind
        if kind == "f":
            leaves.append(rng.standard_normal(shape).astype(info.dtype))
        elif kind == "b":
            leaves.append(rng.random(shape) < 0.5)
        else:
            leaves.append(rng.integers(0, 4, shape).astype(info.dtype))
    if tree is not None and pytree.num_leaves(tree) == len(leaves):
        return tuple(pytree.unflatten(tree, leaves))
    return tuple(leaves)


def run_castml(seed: SeedFile, data: bytes, rng: np.random.Generator) -> None:
    """Load with the NumPy runtime (and the native one, when built) and run every entry; then read
    the file back into the IR."""
    from exporters.castml_format import load_castml_all

    for backend in BACKENDS:
        try:
            sess = runtime.load(data, backend=backend)
        except native_backend.NativeUnsupportedError:  # an op without a native kernel: auto uses NumPy
            continue
        for name in sess.entries:
            entry = sess[name]
            entry.run(*make_args(entry.inputs, seed.trees.get(name), rng))
    load_castml_all(data)


def run_onnx(seed: SeedFile, data: bytes, rng: np.random.Generator, scratch: str) -> None:
    """Import with `exporters.load` (from a file, as users do), then deploy it as users do: write
    it as `.castml` and run it with the runtime."""
    import exporters
    from exporters.castml_format import to_bytes

    with open(scratch, "wb") as f:
        f.write(data)
    sess = runtime.load(to_bytes(exporters.load(scratch)))
    sess.run(*make_args(sess.inputs, seed.trees.get("main"), rng))


def classify(exc: BaseException | None) -> tuple[str, bool]:
    """(outcome label, is it a finding). A `CastmlError` caused by `MemoryError` is a finding: an
    allocation got past the limits (the worker's address space is capped just above them)."""
    if exc is None:
        return "ok", False
    chain, e = [], exc
    while e is not None and len(chain) < 16:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(isinstance(c, MemoryError) for c in chain):
        return f"MemoryError via {type(exc).__name__}", True
    if isinstance(exc, runtime.CastmlError):
        return type(exc).__name__, False
    return type(exc).__name__, True


def run_case(space: CaseSpace, i: int, scratch: str) -> tuple[str, bool, str, str]:
    """Run case `i`: (outcome, finding?, description, traceback when a finding)."""
    seed, desc, data = space.case(i)
    rng = np.random.default_rng(i)
    try:
        if seed.kind == "castml":
            run_castml(seed, data, rng)
        else:
            run_onnx(seed, data, rng, scratch)
        exc = None
    except (Exception, RecursionError) as e:  # classify everything; KeyboardInterrupt still stops
        exc = e
    label, bad = classify(exc)
    tb = "".join(traceback.format_exception(exc)) if bad else ""
    return label, bad, f"{seed.kind}:{seed.name} {desc}", tb[-3000:]


# -- workers with a watchdog --------------------------------------------------------------------
def _cap_address_space() -> None:
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = vm + ADDRESS_SPACE_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _worker(conn: Any, space: CaseSpace) -> None:
    limits.set_limits(**FUZZ_LIMITS)
    try:  # one BLAS thread per worker: workers are the parallelism, and spinning threads contend
        runtime.session.set_blas_threads(1)
    except runtime.CastmlError:
        pass
    _cap_address_space()
    scratch = os.path.join(tempfile.mkdtemp(prefix="castml-fuzz-"), "case.onnx")
    # a case that allocated past the limits without reaching the address-space cap still shows in
    # the peak resident size (a high-water mark: the worker is replaced after reporting it)
    peak_cap_kib = _peak_rss_kib() + (FUZZ_LIMITS["max_intermediate_bytes"] + PEAK_RSS_MARGIN) // 1024
    while True:
        i = conn.recv()
        if i is None:
            return
        result = run_case(space, i, scratch)
        peak = _peak_rss_kib()
        if peak > peak_cap_kib and not result[1]:
            result = (f"memory (peak RSS {peak // 1024} MiB)", True, result[2], "")
        conn.send((i, *result))


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _Worker:
    def __init__(self, ctx: Any, space: CaseSpace):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, space), daemon=True)
        self.proc.start()
        child.close()
        self.case: int | None = None
        self.started = 0.0
        self.done = 0

    def submit(self, i: int) -> None:
        self.case, self.started = i, time.monotonic()
        self.conn.send(i)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


@dataclass
class Report:
    """What a run found: outcome histogram, findings (case id, label, description, traceback)."""

    cases: int = 0
    seconds: float = 0.0
    histogram: collections.Counter = field(default_factory=collections.Counter)
    findings: list[tuple[int, str, str, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        lines = [f"{self.cases} cases in {self.seconds:.1f} s ({self.rate:.0f} cases/s), "
                 f"{len(self.findings)} findings", "outcomes:"]
        lines += [f"  {n:8d}  {label}" for label, n in self.histogram.most_common()]
        groups: dict[tuple[str, str], list] = {}
        for finding in self.findings:
            groups.setdefault((finding[1], _innermost(finding[3])), []).append(finding)
        lines.append(f"{len(groups)} distinct findings (outcome, innermost frame):")
        for (label, where), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            i, _, desc, tb = items[0]
            lines.append(f"FINDING x{len(items)} {label} at {where}; e.g. case {i} ({desc})\n{tb}")
        return "\n".join(lines)


def _innermost(tb: str) -> str:
    """The last `File "...", line N` of a traceback inside this repository (how findings group)."""
    frames = [line.strip() for line in tb.splitlines() if line.strip().startswith("File ")]
    ours = [f for f in frames if "site-packages" not in f and "fuzz_loaders" not in f]
    return (ours or frames or ["?"])[-1]


def fuzz(seeds: list[SeedFile], cases: int, seed: int = 0, time_limit: float = 2.0, jobs: int = 1,
         exhaustive: bool = False, ids: list[int] | None = None, progress: float = 0.0) -> Report:
    """Run `cases` cases (ids 0..cases-1, or `ids`) on `jobs` worker processes, each case under a
    `time_limit`-second watchdog (a hung worker is killed, reported, and replaced); `progress`
    prints a status line to stderr every that many seconds.

    >>> r = fuzz(build_corpus(onnx=False, zoo=False), 20, seed=1)
    >>> r.cases, r.findings
    (20, [])
    """
    space = CaseSpace(seeds, seed, exhaustive)
    todo = collections.deque(ids if ids is not None else range(cases))
    ctx = mp.get_context("fork")
    report = Report()
    t0 = time.monotonic()
    workers = [_Worker(ctx, space) for _ in range(max(1, min(jobs, len(todo))))]
    try:
        for w in workers:
            if todo:
                w.submit(todo.popleft())
        shown = t0
        while any(w.case is not None for w in workers):
            if progress and time.monotonic() - shown > progress:
                shown = time.monotonic()
                print(f"  {report.cases} cases, {report.cases / (shown - t0):.0f}/s, {len(report.findings)} findings",
                      file=sys.stderr, flush=True)
            busy = [w for w in workers if w.case is not None]
            ready = mp.connection.wait([w.conn for w in busy], timeout=0.05)
            for w in busy:
                result = None
                if w.conn in ready:
                    try:
                        result = w.conn.recv()
                    except (EOFError, OSError):
                        result = (w.case, f"crash (exit {w.proc.exitcode})", True, "", "")
                elif time.monotonic() - w.started > time_limit:
                    result = (w.case, f"hang (> {time_limit} s)", True, "", "")
                elif not w.proc.is_alive():
                    result = (w.case, f"crash (exit {w.proc.exitcode})", True, "", "")
                if result is None:
                    continue
                i, label, bad, desc, tb = result
                if bad and not desc:
                    s, what, _ = space.case(i)
                    desc = f"{s.kind}:{s.name} {what}"
                report.cases += 1
                report.histogram[label] += 1
                if bad:
                    report.findings.append((i, label, desc, tb))
                w.done += 1
                if label.startswith(("crash", "hang", "memory")) or w.done >= CASES_PER_WORKER:
                    w.kill()
                    workers[workers.index(w)] = w = _Worker(ctx, space)
                w.case = None
                if todo:
                    w.submit(todo.popleft())
    finally:
        for w in workers:
            if w.proc.is_alive():
                try:
                    w.conn.send(None)
                except OSError:
                    pass
                w.proc.join(timeout=1)
            if w.proc.is_alive():
                w.kill()
    report.seconds = time.monotonic() - t0
    return report


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10_000, help="random cases to run (after --exhaustive ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=2.0, help="per-case watchdog, seconds")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--exhaustive", action="store_true", help="every structure byte x every byte mutation first")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--no-zoo", action="store_true")
    p.add_argument("--replay", type=int, help="run one case in this process and print its traceback")
    a = p.parse_args(argv)
    seeds = build_corpus(onnx=not a.no_onnx, zoo=not a.no_zoo)
    space = CaseSpace(seeds, a.seed, a.exhaustive)
    print(f"corpus: {', '.join(f'{s.kind}:{s.name} ({len(s.data)} B)' for s in seeds)}")
    if a.replay is not None:
        limits.set_limits(**FUZZ_LIMITS)
        s, desc, data = space.case(a.replay)
        print(f"case {a.replay}: {s.kind}:{s.name} {desc}")
        (run_castml(s, data, np.random.default_rng(a.replay)) if s.kind == "castml"
         else run_onnx(s, data, np.random.default_rng(a.replay), os.path.join(tempfile.mkdtemp(), "case.onnx")))
        print("ok")
        return 0
    report = fuzz(seeds, space.n_systematic + a.cases, a.seed, a.time_limit, a.jobs, a.exhaustive, progress=30)
    print(report)
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(_main())

