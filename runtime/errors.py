"""The root of castml's error hierarchy.

The runtime is the bottom layer, so every other package derives its errors from `CastmlError`
here; callers can catch one class for anything castml raises on purpose.
"""

from __future__ import annotations


class CastmlError(Exception):
    """Base class of every error castml raises on purpose.

    >>> issubclass(ModelFormatError, CastmlError)
    True
    """


class ModelFormatError(CastmlError, ValueError):
    """A model file or buffer is malformed: names the field and, where known, the byte offset.

    >>> raise ModelFormatError("tensor 3: data offset 912 is past the end of the file (800 bytes)")
    Traceback (most recent call last):
    ...
    runtime.errors.ModelFormatError: tensor 3: data offset 912 is past the end of the file (800 bytes)
    """


class RuntimeInputError(CastmlError, ValueError):
    """An input given to `run` has the wrong shape, dtype or name, or is missing.

    >>> raise RuntimeInputError("input 'x': expected f32[batch,3], got f64[5,3]")
    Traceback (most recent call last):
    ...
    runtime.errors.RuntimeInputError: input 'x': expected f32[batch,3], got f64[5,3]
    """


class KernelError(CastmlError):
    """A kernel failed while executing an op; the message names the op and its source line."""
