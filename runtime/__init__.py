"""castml's runtime: the bottom layer. Errors, pytrees, symbolic dims, NumPy kernels, the
executor, and (in `runtime.session`) loading and running `.castml` files.

It imports only numpy and flatbuffers, so a deployed model needs nothing else.
"""

from .errors import CastmlError, KernelError, ModelFormatError, RuntimeInputError
from .session import Session, load

__all__ = ["CastmlError", "ModelFormatError", "RuntimeInputError", "KernelError", "Session", "load"]
