"""ndarray methods and Python operators on `Tracer`, each delegating to the NumPy function so that
`x.sum()`, `np.sum(x)` and `x + 1` record exactly the same ops."""

from __future__ import annotations

import numpy as np

from . import indexing
from .core import Tracer, astype
from .errors import trace_error

_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
    "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor, "lshift": np.left_shift,
    "rshift": np.right_shift,
}
_COMPARE = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
            "eq": np.equal, "ne": np.not_equal}


def _binary(uf):
    return lambda self, other: uf(self, other)


def _reflected(uf):
    return lambda self, other: uf(other, self)


for _name, _uf in _BINARY.items():
    setattr(Tracer, f"__{_name}__", _binary(_uf))
    setattr(Tracer, f"__r{_name}__", _reflected(_uf))
for _name, _uf in _COMPARE.items():
    setattr(Tracer, f"__{_name}__", _binary(_uf))

def _pow(self, exponent):
    # ndarray.__pow__ turns `x ** 2` into np.square (bool ** 2 is int8, not int64): do the same
    if exponent == 2 and (type(exponent) is int or (type(exponent) is float and self.dtype.kind == "f")):
        return np.square(self)
    return np.power(self, exponent)


Tracer.__pow__ = _pow
Tracer.__neg__ = lambda self: np.negative(self)
Tracer.__pos__ = lambda self: self
Tracer.__abs__ = lambda self: np.absolute(self)
Tracer.__invert__ = lambda self: np.invert(self)
Tracer.__divmod__ = lambda self, other: np.divmod(self, other)
Tracer.__getitem__ = indexing.getitem
Tracer.__setitem__ = indexing.setitem


def _astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
    return astype(self, dtype)


def _reshape(self, *shape, order="C"):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return np.reshape(self, shape, order=order)


def _transpose(self, *axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return np.transpose(self, axes or None)


def _fill_(self, value):
    raise trace_error("x.fill() writes in place", "use np.full_like(x, value)")


Tracer.astype = _astype
Tracer.reshape = _reshape
Tracer.transpose = _transpose
Tracer.T = property(lambda self: np.transpose(self))
Tracer.mT = property(lambda self: np.swapaxes(self, -1, -2))
Tracer.fill = _fill_
Tracer.copy = lambda self, order="C": np.copy(self)
Tracer.flatten = lambda self, order="C": np.reshape(self, (-1,))
Tracer.ravel = lambda self, order="C": np.reshape(self, (-1,))
Tracer.squeeze = lambda self, axis=None: np.squeeze(self, axis)
Tracer.swapaxes = lambda self, a, b: np.swapaxes(self, a, b)
Tracer.dot = lambda self, b: np.dot(self, b)
Tracer.clip = lambda self, min=None, max=None: np.clip(self, min, max)
Tracer.round = lambda self, decimals=0: np.round(self, decimals)
Tracer.repeat = lambda self, repeats, axis=None: np.repeat(self, repeats, axis)
Tracer.take = lambda self, indices, axis=None: np.take(self, indices, axis)
for _name in ("sum", "mean", "max", "min", "prod", "any", "all", "argmax", "argmin", "var", "std", "cumsum"):
    setattr(Tracer, _name, (lambda f: lambda self, *a, **k: f(self, *a, **k))(getattr(np, _name)))
