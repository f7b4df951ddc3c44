"""Progress lines on stderr for the slow steps of `castml` commands.

Three rules make progress safe for a command line whose stdout is read by machines
(`inspect --json`, `bench --json`, `run` summaries in scripts):

- it goes to stderr only, never to stdout;
- it draws (a bar redrawn in place with `\\r`) only when stderr is a terminal, and only for a
  task still running after `delay` seconds, so fast commands, pipes and log files see nothing;
- `CASTML_PROGRESS=plain` asks for sparse plain lines instead (for CI logs: one line when a slow
  task ends, one every `PLAIN_EVERY` seconds while it runs); `CASTML_PROGRESS=off` or
  `castml --quiet` silences it. `CASTML_PROGRESS_DELAY` sets the delay (default 0.5 s).

A task counts steps (`step("optimizing")`) or items (`advance()`, `track(iterable)`); a ticker
thread keeps the elapsed time moving while one long call (an export, an optimization) runs.
Lines the command prints to stdout while a bar is shown go through `Progress.print`, which
clears the bar first so the two never share a line. A bar that was shown stays on screen when
its task ends (its final count and time); one that ends with an error is erased, so the
one-line error message starts on a clean line.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from runtime import CastmlError

T = TypeVar("T")

MODES = ("auto", "plain", "off")
DEFAULT_DELAY = 0.5  # seconds a task runs before anything is drawn: "can take more than a second"
TICK = 0.1  # redraw period of a bar (seconds)
PLAIN_EVERY = 10.0  # seconds between plain lines of a running task
BAR_WIDTH = 24
SPINNER = "|/-\\"

_settings: dict[str, Any] = {"mode": None, "delay": None}


class ProgressConfigError(CastmlError):
    """A bad `CASTML_PROGRESS` / `CASTML_PROGRESS_DELAY` value."""


def configure(mode: str | None = None, delay: float | None = None) -> None:
    """Set the process-wide mode (`auto`, `plain`, `off`) and delay; None keeps the environment's.

    `castml --quiet` calls `configure("off")`.

    >>> configure("off"); Progress("demo").mode
    'off'
    >>> configure(None)
    """
    if mode is not None and mode not in MODES:
        raise ProgressConfigError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
    _settings["mode"], _settings["delay"] = mode, delay


def _env_mode() -> str:
    value = os.environ.get("CASTML_PROGRESS", "auto").strip().lower() or "auto"
    if value in ("0", "no", "false", "none", "quiet"):
        return "off"
    if value not in MODES:
        raise ProgressConfigError(f"CASTML_PROGRESS={value!r}: expected one of {', '.join(MODES)}")
    return value


def _env_delay() -> float:
    text = os.environ.get("CASTML_PROGRESS_DELAY", "")
    if not text.strip():
        return DEFAULT_DELAY
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ProgressConfigError(f"CASTML_PROGRESS_DELAY={text!r}: expected a number of seconds >= 0")
    return value


def resolve_mode(stream: TextIO) -> str:
    """What a task on `stream` does: `bar` (a terminal), `plain` (sparse lines) or `off`.

    >>> import io
    >>> resolve_mode(io.StringIO()) in ("off", "plain")
    True
    """
    mode = _settings["mode"] or _env_mode()
    if mode == "auto":
        try:
            return "bar" if stream.isatty() else "off"
        except (AttributeError, ValueError):  # a closed or file-less stream
            return "off"
    return mode


def format_seconds(s: float) -> str:
    """`0.4s`, `12.3s`, `2:05`, `1:02:05`.

    >>> format_seconds(0.42), format_seconds(125), format_seconds(3725)
    ('0.4s', '2:05', '1:02:05')
    """
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _columns(stream: TextIO) -> int:
    try:
        cols = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        cols = 0
    return cols if cols > 10 else 80  # a fresh pseudo-terminal reports 0 columns


class Progress:
    """One task's progress line on stderr (see the module docstring for when it draws).

    `total` is the number of steps or items (None: unknown, a spinner and a count are shown).
    Use it as a context manager; `step(text)` finishes the current step and starts the next,
    `advance(n)` counts items, `print(...)` writes a stdout line without tearing the bar.

    >>> import io
    >>> out = io.StringIO()
    >>> with Progress("castml trace", total=2, stream=out, mode="plain", delay=0) as p:
    ...     p.step("tracing"); p.step("saving")
    >>> out.getvalue()
    'castml trace: done 2/2 in 0.0s\\n'
    """

    def __init__(self, label: str, total: int | None = None, *, unit: str = "", stream: TextIO | None = None,
                 mode: str | None = None, delay: float | None = None):
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.text = ""
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode if mode is not None else resolve_mode(self.stream)
        if self.mode not in ("bar", "plain", "off"):
            raise ProgressConfigError(f"Progress mode {self.mode!r}: expected bar, plain or off")
        self.delay = delay if delay is not None else (_settings["delay"] if _settings["delay"] is not None
                                                      else _env_delay())
        self.start = time.monotonic()
        self.shown = False  # whether anything was drawn (a bar) or printed (a plain line)
        self._in_step = False
        self._closed = False
        self._last = 0.0
        self._spin = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.mode == "bar":
            self._ticker = threading.Thread(target=self._tick, name="castml-progress", daemon=True)
            self._ticker.start()

    # counting -------------------------------------------------------------------------------
    def step(self, text: str) -> None:
        """Finish the current step (if any) and start the next one, described by `text`."""
        with self._lock:
            if self._in_step:
                self.done += 1
            self._in_step, self.text = True, text
        self.refresh(urgent=True)

    def advance(self, n: int = 1) -> None:
        """Count `n` more items done."""
        with self._lock:
            self.done += n
        self.refresh()

    def describe(self, text: str) -> None:
        """Change the description without counting anything."""
        with self._lock:
            self.text = text
        self.refresh(urgent=True)

    # output ---------------------------------------------------------------------------------
    def line(self, final: bool = False, bar: bool = True) -> str:
        """The current progress text, e.g. `castml bench: onnxruntime [#####-----] 12/24 calls 0.3s`
        (the `[###---]` part only in bar mode, and only when `bar`)."""
        elapsed = time.monotonic() - self.start
        parts = [f"{self.label}:"]
        if final:
            parts.append("done")
        elif self.text:
            parts.append(self.text)
        if self.total:
            if self.mode == "bar" and bar:
                filled = min(BAR_WIDTH, int(BAR_WIDTH * self.done / self.total))
                parts.append("[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]")
            parts.append(f"{self.done}/{self.total}{self.unit}")
        elif self.done:
            parts.append(f"{self.done}{self.unit}")
        if self.mode == "bar" and not final and not self.total:
            parts.append(SPINNER[self._spin % len(SPINNER)])
        parts.append(("in " if final else "") + format_seconds(elapsed))
        if (not final and self.total and 0 < self.done < self.total and elapsed > 1.0):
            parts.append(f"eta {format_seconds(elapsed * (self.total - self.done) / self.done)}")
        return " ".join(parts)

    def refresh(self, force: bool = False, urgent: bool = False) -> None:
        """Redraw if it is time to (bar: every TICK after the delay, or at once when `urgent`, as for
        a new step; plain: every PLAIN_EVERY). `force` draws now, delay or not."""
        if self.mode == "off":
            return
        with self._lock:
            if self._closed:
                return
            now = time.monotonic()
            if now - self.start < self.delay and not force:
                return
            if self.mode == "bar":
                if force or urgent or now - self._last >= TICK:
                    self._draw()
                    self._last = now
            elif now - self.start >= PLAIN_EVERY and now - self._last >= PLAIN_EVERY:
                self._write(self.line() + "\n")
                self._last = now

    def print(self, *args: Any, **kwargs: Any) -> None:
        """`print(...)` to stdout (or `file=`), clearing the bar first; it is redrawn at the next tick."""
        with self._lock:
            if self.mode == "bar" and self.shown and not self._closed:
                self._write("\r\033[K")
            print(*args, **kwargs)
            (kwargs.get("file") or sys.stdout).flush()
            self._last = 0.0

    def close(self, ok: bool = True) -> None:
        """End the task: a shown bar keeps its final line (erased when `ok` is False)."""
        with self._lock:
            if self._closed:
                return
            if ok and self._in_step:
                self.done += 1
            self._in_step = False
            slow = time.monotonic() - self.start >= self.delay
            if self.mode == "bar" and (self.shown or (ok and slow)):
                if ok:
                    self._draw(final=True)
                    self._write("\n")
                else:
                    self._write("\r\033[K")
            elif self.mode == "plain" and (self.shown or slow):
                self._write(self.line(final=True) + ("\n" if ok else " (failed)\n"))
            self._closed = True
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(ok=exc_type is None)

    # internals ------------------------------------------------------------------------------
    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            self._spin += 1
            self.refresh()

    def _draw(self, final: bool = False) -> None:
        width = _columns(self.stream) - 1
        text = self.line(final)
        if len(text) > width:  # a narrow terminal: drop the bar before cutting the counts off
            text = self.line(final, bar=False)
        self._write("\r" + text[:width] + "\033[K")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not fail the command
            self.mode = "off"
            return
        self.shown = True


def track(items: Iterable[T], label: str, total: int | None = None, unit: str = "") -> Iterator[T]:
    """Iterate over `items`, counting each one on a progress line (`total` defaults to `len`).

    >>> [x * 2 for x in track([1, 2, 3], "castml demo")]
    [2, 4, 6]
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(label, total, unit=unit) as p:
        for item in items:
            yield item
            p.advance()
