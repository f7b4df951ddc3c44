"""`TraceError` and how it finds the user's line of code."""

from __future__ import annotations

import os
import sys

from runtime.errors import CastmlError

_OURS = tuple(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + p + os.sep
              for p in ("tracer", "ir", "runtime", "exporters"))
_NUMPY = os.path.dirname(os.path.dirname(os.path.abspath(__import__("numpy").__file__)))


class TraceError(CastmlError):
    """A function cannot be traced as written; the message names the user's file:line and a fix.

    >>> issubclass(TraceError, CastmlError)
    True
    """


def user_frame():
    """The innermost stack frame that belongs to user code (not castml, not NumPy)."""
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        if not name.startswith(_OURS) and not name.startswith(_NUMPY) and not name.startswith("<frozen"):
            return f
        f = f.f_back
    return None


def user_location() -> str | None:
    """`file.py:LINE` of the user code that is running (basename only, so files stay portable)."""
    f = user_frame()
    if f is None or f.f_code.co_filename.startswith("<"):
        return None
    return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"


def trace_error(msg: str, hint: str | None = None) -> TraceError:
    """A `TraceError` prefixed with the user's location and followed by a hint."""
    loc = user_location()
    text = f"{loc}: {msg}" if loc else msg
    if hint:
        text += f"\n  hint: {hint}"
    return TraceError(text)
