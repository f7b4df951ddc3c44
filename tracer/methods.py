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
    """`x.astype(dtype)`: a `cast` op (the layout arguments of `ndarray.astype` are ignored).

    >>> import tracer
    >>> str(tracer.trace(lambda x: x.astype(np.int32), np.zeros(2)).outputs[0].type)
    'i32[2]'
    """
    return astype(self, dtype)


def _reshape(self, *shape, order="C"):
    """`x.reshape(2, 3)` or `x.reshape((2, 3))`, as `np.reshape`.

    >>> import tracer
    >>> tracer.trace(lambda x: x.reshape(3, -1), np.zeros((2, 3))).outputs[0].shape
    (3, 2)
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return np.reshape(self, shape, order=order)


def _transpose(self, *axes):
    """`x.transpose()` reverses the axes; `x.transpose(1, 0, 2)` or `x.transpose((1, 0, 2))` permutes them.

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.transpose(), np.zeros((2, 3)))
    >>> ir.interpret(g, np.arange(6.0).reshape(2, 3)).tolist()
    [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return np.transpose(self, axes or None)


def _fill_(self, value):
    """Not traceable: it writes in place; the error names `np.full_like` instead.

    >>> import tracer
    >>> tracer.trace(lambda x: x.fill(0.0), np.zeros(2))
    Traceback (most recent call last):
        ...
    tracer.errors.TraceError: x.fill() writes in place
      hint: use np.full_like(x, value)
    """
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

# docstrings of the methods defined above as lambdas; `__test__` makes `pytest --doctest-modules`
# (and `doctest`) run their examples, which it would not find on the class of another module
_DOCS = {
    "copy": """`np.copy(x)`: the same SSA value (no op is recorded), but not a view, so it may be assigned into.

    >>> import tracer
    >>> tracer.trace(lambda x: x.copy(), np.zeros(3)).ops
    []
    """,
    "flatten": """`x.reshape(-1)`: the elements as one axis, in C order (`order` is ignored).

    >>> import tracer
    >>> print(tracer.trace(lambda x: x.flatten(), np.zeros((2, 3))).outputs[0].type)
    f64[6]
    """,
    "ravel": """`x.reshape(-1)`, as `flatten` (`order` is ignored).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.ravel(), np.zeros((2, 2)))
    >>> ir.interpret(g, np.eye(2)).tolist()
    [1.0, 0.0, 0.0, 1.0]
    """,
    "squeeze": """`np.squeeze(x, axis)`: drop axes of size 1 (all of them without `axis`).

    >>> import tracer
    >>> tracer.trace(lambda x: x.squeeze(), np.zeros((1, 3, 1))).outputs[0].shape
    (3,)
    """,
    "swapaxes": """`np.swapaxes(x, a, b)`: a transpose exchanging two axes.

    >>> import tracer
    >>> tracer.trace(lambda x: x.swapaxes(0, 2), np.zeros((1, 2, 3))).outputs[0].shape
    (3, 2, 1)
    """,
    "dot": """`np.dot(x, b)`: inner product of vectors, matrix product of matrices.

    >>> import tracer, ir
    >>> g = tracer.trace(lambda a, b: a.dot(b), np.zeros(2), np.zeros(2))
    >>> float(ir.interpret(g, np.array([1.0, 2.0]), np.array([3.0, 4.0])))
    11.0
    """,
    "clip": """`np.clip(x, min, max)`: limit the values to [min, max] (either bound may be None).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.clip(0.0, 1.0), np.zeros(3))
    >>> ir.interpret(g, np.array([-1.0, 0.5, 2.0])).tolist()
    [0.0, 0.5, 1.0]
    """,
    "round": """`np.round(x)`: to the nearest integer, halves to even; tracing supports `decimals=0` only.

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.round(), np.zeros(3))
    >>> ir.interpret(g, np.array([0.5, 1.5, 2.4])).tolist()
    [0.0, 2.0, 2.0]
    """,
    "repeat": """`np.repeat(x, repeats, axis)`: each element `repeats` times (flattened without `axis`).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.repeat(2), np.zeros(2))
    >>> ir.interpret(g, np.array([1.0, 2.0])).tolist()
    [1.0, 1.0, 2.0, 2.0]
    """,
    "take": """`np.take(x, indices, axis)`: the elements at `indices` (of the flattened array without `axis`).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.take([2, 0]), np.zeros(3))
    >>> ir.interpret(g, np.array([1.0, 2.0, 3.0])).tolist()
    [3.0, 1.0]
    """,
    "sum": """`np.sum(x, ...)`: the sum over `axis` (all axes by default).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.sum(axis=0), np.zeros((2, 2)))
    >>> ir.interpret(g, np.array([[1.0, 5.0], [3.0, 2.0]])).tolist()
    [4.0, 7.0]
    """,
    "mean": """`np.mean(x, ...)`: the mean over `axis` (all axes by default).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.mean(axis=0), np.zeros((2, 2)))
    >>> ir.interpret(g, np.array([[1.0, 5.0], [3.0, 2.0]])).tolist()
    [2.0, 3.5]
    """,
    "max": """`np.max(x, ...)`: the maximum over `axis` (all axes by default).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.max(axis=0), np.zeros((2, 2)))
    >>> ir.interpret(g, np.array([[1.0, 5.0], [3.0, 2.0]])).tolist()
    [3.0, 5.0]
    """,
    "min": """`np.min(x, ...)`: the minimum over `axis` (all axes by default).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.min(axis=0), np.zeros((2, 2)))
    >>> ir.interpret(g, np.array([[1.0, 5.0], [3.0, 2.0]])).tolist()
    [1.0, 2.0]
    """,
    "prod": """`np.prod(x, ...)`: the product over `axis` (all axes by default).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.prod(axis=0), np.zeros((2, 2)))
    >>> ir.interpret(g, np.array([[1.0, 5.0], [3.0, 2.0]])).tolist()
    [3.0, 10.0]
    """,
    "any": """`np.any(x, ...)`: whether any element over `axis` is true (all axes by default).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.any(axis=1), np.zeros((2, 2), bool))
    >>> ir.interpret(g, ~np.array([[True, False], [True, True]])).tolist()
    [True, False]
    """,
    "all": """`np.all(x, ...)`: whether every element over `axis` is true (all axes by default).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.all(axis=0), np.zeros((2, 2), bool))
    >>> ir.interpret(g, np.array([[True, False], [True, True]])).tolist()
    [True, False]
    """,
    "argmax": """`np.argmax(x, axis)`: the index of the first maximum (of the flattened array without `axis`).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.argmax(axis=0), np.zeros((2, 2)))
    >>> ir.interpret(g, np.array([[1.0, 5.0], [3.0, 2.0]])).tolist()
    [1, 0]
    """,
    "argmin": """`np.argmin(x, axis)`: the index of the first minimum (of the flattened array without `axis`).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.argmin(axis=0), np.zeros((2, 2)))
    >>> ir.interpret(g, np.array([[1.0, 5.0], [3.0, 2.0]])).tolist()
    [0, 1]
    """,
    "var": """`np.var(x, ...)`: the variance over `axis` (`ddof` as NumPy).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.var(axis=0), np.zeros((2, 2)))
    >>> ir.interpret(g, np.array([[1.0, 5.0], [3.0, 2.0]])).tolist()
    [1.0, 2.25]
    """,
    "std": """`np.std(x, ...)`: the standard deviation over `axis` (`ddof` as NumPy).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.std(axis=0), np.zeros((2, 2)))
    >>> ir.interpret(g, np.array([[1.0, 5.0], [3.0, 2.0]])).tolist()
    [1.0, 1.5]
    """,
    "cumsum": """`np.cumsum(x, axis)`: running sums along `axis` (of the flattened array without `axis`).

    >>> import tracer, ir
    >>> g = tracer.trace(lambda x: x.cumsum(), np.zeros((2, 2)))
    >>> ir.interpret(g, np.array([[1.0, 5.0], [3.0, 2.0]])).tolist()
    [1.0, 6.0, 9.0, 11.0]
    """,
}
for _name, _doc in _DOCS.items():
    getattr(Tracer, _name).__doc__ = _doc
__test__ = {f"Tracer.{_name}": _doc for _name, _doc in _DOCS.items()}
