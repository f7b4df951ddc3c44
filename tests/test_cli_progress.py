"""Progress bars of the `castml` commands: on a terminal's stderr only, never on stdout.

The subprocess tests run commands as a user types them, with stderr attached to a real
pseudo-terminal (so the command sees a TTY) and stdout to a pipe, and check what each one got:
counts and the final bar on the terminal, clean parseable output on stdout. `CASTML_PROGRESS_DELAY=0`
makes the fast test models draw at once; by default a task draws only after half a second.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.test_cli import ROOT, castml
from tests.test_cli import work as work  # noqa: F401 - the fixture: model.py, x.npy, w.npy, b.npy, p.npz

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
FAST = {"CASTML_PROGRESS_DELAY": "0"}


def castml_tty(*args: str, cwd: str, env: dict[str, str] | None = None,
               columns: int = 160) -> tuple[int, str, str]:
    """Run `castml ARGS` with stderr on a pseudo-terminal `columns` wide; (exit code, stdout, terminal text)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CASTML_PROGRESS")}  # the defaults
    full_env.update({"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})})
    proc = subprocess.Popen([sys.executable, "-m", "castml_cli.main", *args], cwd=cwd, env=full_env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:  # read the terminal while the command runs, so it never blocks on a full buffer
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        reader.join(timeout=30)
        os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def final_lines(terminal: str) -> list[str]:
    """The lines left on screen: each line's text after its last carriage return, escapes removed."""
    out = []
    for line in terminal.replace("\r\n", "\n").split("\n"):
        shown = ANSI.sub("", line.split("\r")[-1]).strip()
        if shown:
            out.append(shown)
    return out


def _model(tmp) -> None:
    castml("trace", "model.py:predict", "-o", "m.castml", "--input", "x=f32[batch,4]", "--input", "params=p.npz",
           cwd=str(tmp))


def test_bench_draws_counted_bars_on_a_terminal_and_keeps_json_stdout_clean(work):  # noqa: F811
    tmp, _ = work
    _model(tmp)
    code, out, term = castml_tty("bench", "m.castml", "--dim", "batch=8", "--runs", "20", "--warmup", "2", "--json",
                                 cwd=str(tmp), env=FAST)
    assert code == 0, term
    result = json.loads(out)  # stdout is exactly the JSON document
    assert result["agree"] is True and "\r" not in out and "\x1b" not in out
    assert "\r" in term and "\x1b[K" in term  # redrawn in place
    shown = final_lines(term)
    assert re.fullmatch(r"castml bench m\.castml: done \[#{24}\] 4/4 in \d+\.\ds", shown[0]), shown
    for k, engine in enumerate(("castml numpy", "onnxruntime")):
        assert re.fullmatch(rf"castml bench m\.castml: {engine}: done \[#{{24}}\] 22/22 calls in \d+\.\ds",
                            shown[1 + k]), shown
    assert len(shown) == 3
    counts = [int(c) for c in re.findall(r"castml numpy: \S+ \[[#-]+\] (\d+)/22 calls", term)]
    assert counts == sorted(counts) and counts[-1] == 22  # the count only grows, to the total


def test_trace_steps_on_a_terminal_and_the_same_stdout_as_through_a_pipe(work):  # noqa: F811
    tmp, _ = work
    args = ("trace", "model.py:predict", "-o", "m.castml", "--input", "x=f32[batch,4]", "--input", "params=p.npz",
            "--optimize", "--check")
    code, out, term = castml_tty(*args, cwd=str(tmp), env=FAST)
    assert code == 0, term
    piped = castml(*args, cwd=str(tmp), env=FAST)
    assert out == piped.stdout and piped.stderr == ""  # nothing on a pipe, even with no delay
    assert "check: max abs error" in out and ": ok" in out
    shown = final_lines(term)
    assert len(shown) == 1 and re.fullmatch(r"castml trace model\.py:predict: done \[#{24}\] 5/5 in \d+\.\ds",
                                             shown[0]), shown
    for step in ("importing", "tracing", "optimizing", "saving m.castml", "checking against the Python function"):
        assert f"castml trace model.py:predict: {step} [" in term


def test_an_error_erases_the_bar_so_the_message_is_one_clean_line(work):  # noqa: F811
    tmp, _ = work
    code, out, term = castml_tty("trace", "model.py:predict", "-o", "m.castml", "--input", "x=f32[4]",
                                 cwd=str(tmp), env=FAST)
    assert code == 1 and out == ""
    assert "castml trace model.py:predict: importing" in term  # it was drawn ...
    shown = final_lines(term)  # ... and erased: only the error is left on screen
    assert len(shown) == 1 and shown[0].startswith("castml: error: missing --input for parameter 'params'"), shown
    assert term.replace("\r\n", "\n").split("\r\x1b[K")[-1].startswith("castml: error:")


def test_quiet_and_off_silence_the_terminal_and_plain_prints_sparse_lines(work):  # noqa: F811
    tmp, _ = work
    _model(tmp)
    args = ("run", "m.castml", "--input", "x=x.npy", "--input", "params=p.npz", "-o", "o.npz")
    for extra, env in (((), {"CASTML_PROGRESS": "off", **FAST}), (("-q",), FAST), (("--quiet",), FAST)):
        code, out, term = castml_tty(*extra, *args, cwd=str(tmp), env=env)
        assert code == 0 and term == "", (extra, env, term)
        assert out.startswith("ran m.castml with backend ")
    code, out, term = castml_tty("run", *args[1:], "--quiet", cwd=str(tmp), env=FAST)  # after the command too
    assert code == 0 and term == ""
    proc = castml(*args, cwd=str(tmp), env={"CASTML_PROGRESS": "plain", **FAST})  # e.g. a CI log
    assert re.fullmatch(r"castml run m\.castml: done 2/2 in \d+\.\ds\n", proc.stderr), proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    with np.load(tmp / "o.npz") as z:
        assert z.files == ["output"]
    proc = castml(*args, cwd=str(tmp), env={"CASTML_PROGRESS": "sometimes"}, ok=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "castml: error: ProgressConfigError: CASTML_PROGRESS='sometimes': expected one of auto, plain, off"]


def test_viz_and_convert_and_grad_report_their_steps(work):  # noqa: F811
    tmp, _ = work
    castml("trace", "model.py:loss", "-o", "l.castml", "--input", "x=f32[batch,4]", "--input", "w=w.npy", cwd=str(tmp))
    expected = {
        ("convert", "l.castml", "l.onnx", "--optimize"): r"castml convert l\.castml: done \[#{24}\] 3/3 in",
        ("grad", "l.castml", "-o", "dl.castml", "--wrt", "w"): r"castml grad l\.castml: done \[#{24}\] 3/3 in",
        ("viz", "l.castml", "-o", "l.html", "--tensorboard", "runs"): r"castml viz l\.castml: done \[#{24}\] 4/4 in",
    }
    for args, pattern in expected.items():
        code, out, term = castml_tty(*args, cwd=str(tmp), env=FAST)
        assert code == 0, term
        shown = final_lines(term)
        assert len(shown) == 1 and re.match(pattern, shown[0]), (args, shown)
        assert "\r" not in out and "\x1b" not in out and out.startswith(("converted", "d output", "wrote"))


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal, for in-process checks of what is drawn."""

    def isatty(self) -> bool:
        return True


def test_progress_draws_only_after_the_delay_counts_and_prints_around_the_bar(capsys):
    from castml_cli.progress import Progress, track

    term = FakeTerminal()
    with Progress("castml test", total=3, stream=term, delay=3600) as p:  # fast: never drawn
        p.advance(3)
    assert term.getvalue() == "" and p.mode == "bar" and p.done == 3

    term = FakeTerminal()
    with Progress("castml test", total=4, unit=" items", stream=term, delay=0) as p:
        p.advance()
        p.refresh(force=True)
        assert term.getvalue().endswith("castml test: [######------------------] 1/4 items 0.0s\x1b[K")
        p.print("a result line")
        p.advance(3)
    assert capsys.readouterr().out == "a result line\n"
    text = term.getvalue()
    assert "\r\x1b[K" in text  # cleared before the stdout line
    assert text.endswith("\rcastml test: done [########################] 4/4 items in 0.0s\x1b[K\n")

    term = FakeTerminal()
    with pytest.raises(KeyError):
        with Progress("castml test", total=2, stream=term, delay=0) as p:
            p.step("first")
            p.refresh(force=True)
            raise KeyError("boom")
    assert term.getvalue().endswith("\r\x1b[K") and p.done == 0  # erased, the failed step not counted

    assert list(track(range(3), "castml test")) == [0, 1, 2]


def test_plain_mode_and_unknown_totals():
    from castml_cli.progress import Progress, format_seconds

    log = io.StringIO()
    with Progress("castml test", stream=log, mode="plain", delay=0) as p:
        p.advance(5)
    assert log.getvalue() == "castml test: done 5 in 0.0s\n"
    term = FakeTerminal()
    with Progress("castml test", stream=term, delay=0) as p:
        p.describe("waiting")
        p.refresh(force=True)
        assert re.search(r"castml test: waiting [|/\\-] 0\.0s\x1b\[K$", term.getvalue())
    assert format_seconds(59.94) == "59.9s" and format_seconds(61) == "1:01"


def test_demo_train_counts_epochs_under_a_bar_with_the_epoch_lines_on_stdout(tmp_path):
    pytest.importorskip("sklearn", reason="demo --train needs the train extra")
    code, out, term = castml_tty("demo", "--train", "--epochs", "3", cwd=str(tmp_path), env=FAST)
    assert code == 0, out + term
    assert [int(m) for m in re.findall(r"^epoch (\d)/3  loss ", out, re.M)] == [1, 2, 3]
    assert "demo: all results agree" in out and "\x1b" not in out
    shown = final_lines(term)
    assert len(shown) == 1 and re.fullmatch(r"castml demo --train: done \[#{24}\] 3/3 epochs in \S+", shown[0]), shown
    assert "castml demo --train: tracing the training step" in term
