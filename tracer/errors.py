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


_USER_FILE: dict[str, bool] = {}  # co_filename -> is user code (decided once per file)
_BASENAME: dict[str, str] = {}


def _is_user_file(name: str) -> bool:
    user = _USER_FILE.get(name)
    if user is None:
        user = _USER_FILE[name] = not (name.startswith(_OURS) or name.startswith(_NUMPY)
                                       or name.startswith("<frozen"))
    return user


def user_frame():
    """The innermost stack frame that belongs to user code (not castml, not NumPy)."""
    f = sys._getframe(1)
    known = _USER_FILE
    while f is not None:
        name = f.f_code.co_filename
        user = known.get(name)
        if user is None:
            user = _is_user_file(name)
        if user:
            return f
        f = f.f_back
    return None


def user_location() -> str | None:
    """`file.py:LINE` of the user code that is running (basename only, so files stay portable).

    Called once per traced op, so the file checks are cached per file name.
    """
    f = user_frame()
    if f is None:
        return None
    name = f.f_code.co_filename
    base = _BASENAME.get(name)
    if base is None:
        base = _BASENAME[name] = "" if name.startswith("<") else os.path.basename(name)
    if not base:
        return None
    return f"{base}:{f.f_lineno}"


def trace_error(msg: str, hint: str | None = None) -> TraceError:
    """A `TraceError` prefixed with the user's location and followed by a hint."""
    loc = user_location()
    text = f"{loc}: {msg}" if loc else msg
    if hint:
        text += f"\n  hint: {hint}"
    return TraceError(text)
