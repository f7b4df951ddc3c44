"""Resource limits of the loader and the runtime, in one place, with documented defaults.

Why: a model file is untrusted input. Without limits a few flipped bytes can ask for a rank-60
tensor, a 2**62-element `full`, a loop of 2**62 trips or regions nested a thousand deep, and the
process hangs or is killed for memory. Every check reads the limits from here, so a deployment
raises one number instead of patching code (docs/limits.md lists them all):

- load time (`ModelFormatError`): `max_file_bytes`, `max_rank`, `max_ops`, `max_region_depth`;
- run time (`RuntimeInputError`, checked before allocating): `max_tensor_bytes` (one value),
  `max_intermediate_bytes` (values alive at once, from the declared types with the symbols of
  the call bound), `max_loop_iterations` (trips of one `loop` op).

Limits are process-wide. Set them with `set_limits(...)`, for a block with `with limits(...)`,
or before start-up with environment variables `CASTML_MAX_<NAME>` (e.g. `CASTML_MAX_TENSOR_BYTES`).
The native runtime (runtime/native) checks the same limits with the same messages:
`runtime.native_backend` hands `current()` to it before every load and run, and `castml-run`
reads the same environment variables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from . import format as F
from .errors import CastmlError, KernelError, RuntimeInputError

GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """The limits in force; see the module docstring for what each one bounds.

    >>> Limits().max_rank
    8
    """

    max_rank: int = F.MAX_RANK
    max_ops: int = F.MAX_OPS
    max_region_depth: int = F.MAX_REGION_DEPTH
    max_file_bytes: int = 256 * GiB
    max_tensor_bytes: int = 16 * GiB
    max_intermediate_bytes: int = 64 * GiB
    max_loop_iterations: int = 100_000_000


_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))
_lock = threading.Lock()


def _from_environ() -> Limits:
    values = {}
    for name in _FIELDS:
        raw = os.environ.get("CASTML_" + name.upper())
        if raw is not None:
            try:
                values[name] = int(raw.replace("_", ""))
            except ValueError:
                values[name] = -1
            if values[name] < 0:
                raise CastmlError(f"environment variable CASTML_{name.upper()}: expected a non-negative "
                                  f"integer, got {raw!r}")
    return _checked(Limits(), values)


def _checked(base: Limits, values: dict) -> Limits:
    for name, v in values.items():
        if name not in _FIELDS:
            raise TypeError(f"unknown limit {name!r}; limits are {', '.join(_FIELDS)}")
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"limit {name} must be a non-negative int, got {v!r}")
    return dataclasses.replace(base, **values)


_current = _from_environ()


def current() -> Limits:
    """The limits in force now.

    >>> current().max_region_depth >= 1
    True
    """
    return _current


def set_limits(**values: int) -> Limits:
    """Change some limits process-wide; returns the previous `Limits` (pass it to `restore`).

    >>> old = set_limits(max_tensor_bytes=1 << 20); current().max_tensor_bytes
    1048576
    >>> restore(old)
    """
    global _current
    with _lock:
        old = _current
        _current = _checked(old, values)
    return old


def restore(saved: Limits) -> None:
    """Put back limits returned by `set_limits`.

    >>> old = set_limits(max_rank=3)
    >>> restore(old); current() == old
    True
    """
    global _current
    with _lock:
        _current = saved


@contextlib.contextmanager
def limits(**values: int) -> Iterator[Limits]:
    """Change some limits for the duration of a `with` block (process-wide, not per thread).

    >>> with limits(max_loop_iterations=10) as lim:
    ...     lim.max_loop_iterations
    10
    """
    old = set_limits(**values)
    try:
        yield _current
    finally:
        restore(old)


def how_to_raise(name: str) -> str:
    """The hint every limit error ends with.

    >>> how_to_raise("max_rank")
    'raise it with runtime.limits.set_limits(max_rank=...) or CASTML_MAX_RANK'
    """
    return f"raise it with runtime.limits.set_limits({name}=...) or CASTML_{name.upper()}"


# -- run-time checks before allocating ------------------------------------------------------------
def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= max(int(x), 0)
    return n


def _spatial_upper(x, attrs: dict) -> int:
    """Upper bound of a conv/pool output: N x C x every spatial dim padded (stride >= 1)."""
    nd = max(np.ndim(x) - 2, 0)
    pads = tuple(attrs.get("pads") or (0,) * (2 * nd))
    shape = np.shape(x)
    spatial = [shape[2 + i] + abs(int(pads[i])) + abs(int(pads[nd + i])) for i in range(nd)]
    return _prod(shape[:2]) * _prod(spatial)


def _conv_upper(ins, attrs: dict) -> int:
    """The larger of the output and the im2col workspace (N x C*prod(kernel) x output positions),
    both bounded through the padded input: pads in a mutated file must not reach either."""
    padded = _spatial_upper(ins[0], attrs)
    taps = _prod(np.shape(ins[1])[2:])
    return max(padded // max(np.shape(ins[0])[1], 1) * np.shape(ins[1])[0], padded * taps)


def _einsum_upper(ins, attrs: dict) -> int:
    """The exact output size: every output label's size, read from the inputs' labels."""
    lhs, _, out = attrs["equation"].replace(" ", "").partition("->")
    sizes: dict[str, int] = {}
    for labels, x in zip(lhs.split(","), ins):
        shape = np.shape(x)
        if "." in labels:  # an ellipsis: bound by the product of the inputs instead
            return _prod(getattr(x, "size", 1) for x in ins)
        for label, n in zip(labels, shape):
            sizes[label] = max(sizes.get(label, 1), n)
    return _prod(sizes.get(label, 1) for label in out)


def _conv_transpose_upper(ins, attrs: dict) -> int:
    x, w = ins[0], ins[1]
    nd = max(np.ndim(x) - 2, 0)
    strides = tuple(attrs.get("strides") or (1,) * nd)
    dil = tuple(attrs.get("dilations") or (1,) * nd)
    extra = tuple(attrs.get("output_padding") or (0,) * nd)
    sx, sw = np.shape(x), np.shape(w)
    spatial = [(sx[2 + i] - 1) * abs(int(strides[i])) + abs(int(dil[i])) * (sw[2 + i] - 1) + 1 + abs(int(extra[i]))
               for i in range(nd)]
    return sx[0] * sw[1] * abs(int(attrs.get("group", 1))) * _prod(spatial)


def _matmul_upper(ins, attrs: dict) -> int:
    a, b = (np.shape(t) for t in ins[:2])
    if len(a) < 1 or len(b) < 1:
        return _prod(a) * _prod(b)
    batch = np.broadcast_shapes(a[:-2], b[:-2]) if len(a) > 2 or len(b) > 2 else ()
    return _prod(batch) * (a[-2] if len(a) > 1 else 1) * (b[-1] if len(b) > 1 else 1)


# op kind -> upper bound of its output's element count from its inputs and attributes, for the
# ops whose output can be far larger than their inputs (a mutated `reps` or `pads` must be
# refused before NumPy allocates); every other op is bounded by its inputs and checked after.
SIZE_RULES: dict = {
    # (NumPy tiles one axis at a time, so a 0 in `reps` still lets the axes before it grow)
    "tile": lambda ins, a: _prod(np.shape(ins[0])) * _prod(max(abs(int(r)), 1) for r in a["reps"]),
    "repeat": lambda ins, a: _prod(np.shape(ins[0])) * max(int(a["repeats"]), 0),
    "full": lambda ins, a: _prod(a["shape"]),
    "broadcast_to": lambda ins, a: _prod(a["shape"]),
    "arange": lambda ins, a: _prod(a["n"][:1]),
    "pad": lambda ins, a: _prod(d + abs(int(p)) + abs(int(q)) for d, p, q in zip(
        np.shape(ins[0]), a["pads"], tuple(a["pads"])[np.ndim(ins[0]):])),
    "one_hot": lambda ins, a: _prod(np.shape(ins[0])) * max(int(a["depth"]), 0),
    "max_pool": lambda ins, a: _spatial_upper(ins[0], a),
    "avg_pool": lambda ins, a: _spatial_upper(ins[0], a),
    "conv": _conv_upper,
    "fused_conv": _conv_upper,
    "conv_transpose": _conv_transpose_upper,
    "matmul": _matmul_upper,
    "gemm": _matmul_upper,
    "einsum": _einsum_upper,
    "gather": lambda ins, a: _prod(np.shape(ins[1])) * _prod(np.shape(ins[0])) // max(np.shape(ins[0])[a["axis"]], 1),
}


def _broadcast_upper(ins, attrs: dict) -> int:
    return _prod(np.broadcast_shapes(*(np.shape(x) for x in ins)))


def _too_big(what: str, nbytes: int, label: str) -> RuntimeInputError:
    lim = _current.max_tensor_bytes
    size = str(nbytes) if nbytes < 2**64 else "over 2**64"
    return RuntimeInputError(f"{label}: {what} {size} bytes, more than max_tensor_bytes = {lim} "
                             f"({how_to_raise('max_tensor_bytes')})")


def guard_kernel(kernel: Callable, kind: str, label: str, itemsize: int, n_out: int = 1) -> Callable:
    """`kernel` wrapped to refuse, before running, an output its size rule bounds above
    `max_tensor_bytes`, and after running, any output (view or not) beyond it, so no value
    larger than the limit ever reaches the next op — nor a number of values other than the
    `n_out` the file declares.

    >>> tile = guard_kernel(lambda x, reps: np.tile(x, reps), "tile", "%1 = tile(%0)", 8)
    >>> with limits(max_tensor_bytes=64):
    ...     tile(np.ones(2), reps=(1000,))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    runtime.errors.RuntimeInputError: %1 = tile(%0): the output would take 16000 bytes, more than ...
    """
    rule, product_bounded = _rule(kind)
    what = "the output or its im2col workspace would take" if rule is _conv_upper else "the output would take"

    # a rule reads only the inputs' shapes and the step's fixed attributes: its result is kept per
    # input-shape signature (a few at most), so a repeated call costs one dict lookup
    sizes: dict[tuple, int] = {}

    def guarded(*ins, **attrs):
        lim = _current.max_tensor_bytes
        if product_bounded:
            bound = itemsize
            for x in ins:
                bound *= getattr(x, "size", 1)
            if 0 < bound <= lim:  # (an empty input proves nothing: (n,0) @ (0,m) is n x m)
                return _checked_out(kernel(*ins, **attrs), lim, label, n_out)
        if rule is not None:
            key = tuple(getattr(x, "shape", None) for x in ins)
            n = sizes.get(key)
            if n is None:
                n = _rule_size(rule, ins, attrs)
                if len(sizes) < 16:
                    sizes[key] = n
            if n * itemsize > lim:
                raise _too_big(what, n * itemsize, label)
        return _checked_out(kernel(*ins, **attrs), lim, label, n_out)

    return guarded


def _rule(kind: str) -> tuple[Callable | None, bool]:
    """(size rule, product-bounded) of `kind`: broadcasting and matmul outputs hold at most the
    product of their inputs' sizes, so when that product is small (the usual case) the exact rule
    is skipped, keeping the guard ~1 us an op."""
    from .kernels.elementwise import KERNELS as ELEMENTWISE

    rule = SIZE_RULES.get(kind) or (_broadcast_upper if kind in ELEMENTWISE else None)
    return rule, rule is _broadcast_upper or kind in ("matmul", "gemm", "einsum", "gather")


def _rule_size(rule: Callable, ins: tuple, attrs: dict) -> int:
    """The elements `rule` bounds the output (or workspace) to; 0 for malformed attributes, which
    the kernel reports with its own message."""
    try:
        return rule(ins, attrs)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError):
        return 0


def guard_threshold(kind: str, ins: tuple, attrs: dict, itemsize: int) -> int:
    """The least `max_tensor_bytes` under which `guard_kernel` lets a call of `kind` on inputs
    shaped like `ins` run (its check of the outputs aside): callers that run such a call without
    the guard (runtime.schedule) compare this number with the limit in force instead.

    >>> guard_threshold("tile", (np.ones(2),), {"reps": (1000,)}, 8)
    16000
    >>> guard_threshold("add", (np.ones(3), np.ones(3)), {}, 8)
    24
    """
    rule, product_bounded = _rule(kind)
    bound = itemsize
    for x in ins:
        bound *= getattr(x, "size", 1)
    first = bound if product_bounded and bound > 0 else None
    n = 0 if rule is None else _rule_size(rule, ins, attrs)
    return min(n * itemsize, first) if first is not None else n * itemsize


def _results(out, n_out: int, label: str) -> tuple:
    """A kernel's results as a tuple, refusing a count other than the file's `n_out` (one result
    comes as itself, several as a tuple or list; the executor relies on it)."""
    if n_out == 1:
        if isinstance(out, tuple):
            raise KernelError(f"{label}: the kernel gave {len(out)} values as a tuple, the file declares 1")
        return (out,)
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if len(outs) != n_out:
        raise KernelError(f"{label}: the kernel gave {len(outs)} values, the file declares {n_out}")
    return outs


def _checked_out(out, lim: int, label: str, n_out: int):
    for o in _results(out, n_out, label):
        nbytes = getattr(o, "nbytes", 0)
        if nbytes > lim:
            raise _too_big("an output takes", nbytes, label)
    return out


def guard_arity(kernel: Callable, label: str, n_out: int) -> Callable:
    """A region kernel (`if`/`loop`) wrapped to refuse a number of results other than `n_out`.

    >>> guard_arity(lambda step, ins, env, slots: (1, 2), "%3 = loop(...)", 1)(None, [], {}, [])
    Traceback (most recent call last):
    ...
    runtime.errors.KernelError: %3 = loop(...): the kernel gave 2 values as a tuple, the file declares 1
    """
    def guarded(*args, **attrs):
        out = kernel(*args, **attrs)
        _results(out, n_out, label)
        return out

    return guarded


def check_plan(values: list, env: dict, where: str) -> None:
    """Refuse a call whose declared values (`(dtype, shape, first step, last step)`, dims bound
    by `env`) would exceed `max_tensor_bytes` one by one or `max_intermediate_bytes` alive at
    once; values with data-dependent dims are skipped (their ops are checked as they run).

    >>> check_plan([(np.dtype(np.float64), ("n",), 0, 1)], {"n": 4}, "entry 'main'")
    >>> with limits(max_intermediate_bytes=16):  # doctest: +ELLIPSIS
    ...     check_plan([(np.dtype(np.float64), ("n",), 0, 1)], {"n": 4}, "entry 'main'")
    Traceback (most recent call last):
    ...
    runtime.errors.RuntimeInputError: entry 'main': 32 bytes of intermediate values alive at once ...
    """
    from . import dims as D

    lim = _current
    delta: dict[int, int] = {}
    for dtype, shape, first, last in values:
        try:
            sizes = [D.evaluate(d, env) for d in shape]
        except (D.DimError, ValueError, TypeError, OverflowError):
            continue
        if any(n < 0 for n in sizes):  # e.g. `n-3` with n = 2: these inputs cannot run this model
            raise RuntimeInputError(f"{where}: a value of type {dtype}[{','.join(map(str, shape))}] gets the "
                                    f"negative shape {tuple(sizes)} with {env}")
        n = _prod(sizes)
        nbytes = n * dtype.itemsize
        if nbytes > lim.max_tensor_bytes:
            raise RuntimeInputError(f"{where}: a value of type {dtype}[{','.join(map(str, shape))}] would take "
                                    f"{nbytes} bytes with {env}, more than max_tensor_bytes = "
                                    f"{lim.max_tensor_bytes} ({how_to_raise('max_tensor_bytes')})")
        delta[first] = delta.get(first, 0) + nbytes
        delta[last + 1] = delta.get(last + 1, 0) - nbytes
    live = 0
    for step in sorted(delta):
        live += delta[step]
        if live > lim.max_intermediate_bytes:
            raise RuntimeInputError(f"{where}: {live} bytes of intermediate values alive at once (at step {step}), "
                                    f"more than max_intermediate_bytes = {lim.max_intermediate_bytes} "
                                    f"({how_to_raise('max_intermediate_bytes')})")


__all__ = ["Limits", "current", "set_limits", "restore", "limits", "how_to_raise", "guard_kernel", "guard_threshold",
           "guard_arity", "check_plan", "SIZE_RULES"]
