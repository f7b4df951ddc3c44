"""Errors raised by the exporters: one base class (`ExportError`) under castml's root error.

`UnsupportedOpError` is the one callers catch to learn that a model (or a target) uses an op
castml cannot translate; its message lists every offending op type and where it is used.
"""

from __future__ import annotations

from runtime.errors import CastmlError


class ExportError(CastmlError):
    """A graph cannot be written to (or read from) an exchange format as asked.

    >>> str(ExportError("float64 Conv is not supported by onnxruntime-cpu"))
    'float64 Conv is not supported by onnxruntime-cpu'
    """


class UnsupportedOpError(ExportError):
    """An op (or op/dtype pair, or domain) has no translation.

    >>> issubclass(UnsupportedOpError, ExportError)
    True
    """
