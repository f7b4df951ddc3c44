"""The `Module` base class and the basic layers (Linear, Sequential, Flatten, Dropout, Embedding,
LayerNorm).

Why this shape: a model is a *description* (the module tree) plus a *pytree of parameters* (nested
dicts of NumPy arrays). `module.apply(params, x)` is a pure function of both, written in plain
NumPy and `tracer.ops`, so the very same code runs eagerly on arrays, or on tracers under
`tracer.trace` (and so can be differentiated, exported and run by the runtime). Initial values
come from `np.random.default_rng(seed)` *outside* traced code; `module(x)` is the eager shortcut
that applies the module's own stored parameters.

State that changes in training (BatchNorm's running statistics) is not mutated: `apply(...,
train=True, updates=d)` writes the new values into the dict `d`, nested like the parameters, so a
traced training step returns them as ordinary outputs. Parameter leaves named `running_*` are
such buffers: optimizers leave them alone (see `trainable`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.errors import CastmlError
from tracer import ops
from tracer.core import Tracer
from tracer.errors import TraceError

Params = dict


class ModelError(CastmlError, ValueError):
    """A model is used wrongly: wrong input rank or size, parameters missing, a mode that is not
    available. The message names the layer and what it expected.

    >>> Dropout(1.5)
    Traceback (most recent call last):
        ...
    models.layers_core.ModelError: Dropout: p must be in [0, 1), got 1.5
    """


def _rank(x: Any) -> int:
    return x.ndim if isinstance(x, Tracer) else np.ndim(x)


def _sub(updates: dict | None, name: str) -> dict | None:
    """The part of `updates` that belongs to child `name` (created on demand)."""
    return None if updates is None else updates.setdefault(name, {})


def _prune(tree: Any) -> Any:
    """Drop empty dicts from a nested dict (children that recorded no update)."""
    if not isinstance(tree, dict):
        return tree
    out = {k: _prune(v) for k, v in tree.items()}
    return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}


def cast_params(params: Any, dtype: Any) -> Any:
    """Cast every floating leaf of a parameter pytree to `dtype` (integer leaves are kept).

    >>> cast_params({"w": np.ones(2)}, np.float32)["w"].dtype
    dtype('float32')
    """
    if isinstance(params, dict):
        return {k: cast_params(v, dtype) for k, v in params.items()}
    arr = np.asarray(params)
    return arr.astype(dtype) if arr.dtype.kind == "f" else arr


def trainable(params: Params) -> Params:
    """The parameters an optimizer updates: every leaf except buffers named `running_*`.

    >>> sorted(trainable({"weight": 1, "running_mean": 2}))
    ['weight']
    """
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            sub = trainable(v)
            if sub:
                out[k] = sub
        elif not k.startswith("running_"):
            out[k] = v
    return out


def merge(base: Params, override: Params) -> Params:
    """`base` with the leaves present in `override` replaced (nested dicts merged).

    >>> merge({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 9}})
    {'a': 1, 'b': {'c': 9, 'd': 3}}
    """
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


class Module:
    """Base class: children (attributes that are modules) become nested parameter dicts.

    Subclasses implement `init_params(rng)` for their own leaves and `apply(params, x, train,
    updates)`; children are initialized in attribute order.

    >>> m = Linear(3, 2)
    >>> params = m.init(seed=0, dtype=np.float64)
    >>> m(np.ones((4, 3))).shape
    (4, 2)
    """

    params: Params | None = None

    def children(self) -> dict[str, Module]:
        """Child modules by name, in definition order.

        >>> class Head(Module):
        ...     def __init__(self):
        ...         self.body, self.out = Linear(4, 3), Linear(3, 1)
        >>> list(Head().children())
        ['body', 'out']
        """
        return {k: v for k, v in vars(self).items() if isinstance(v, Module)}

    def init_params(self, rng: np.random.Generator) -> Params:
        """Fresh parameters drawn from `rng` (float64; `init` casts them); here, the children's, by name.

        >>> class Head(Module):
        ...     def __init__(self):
        ...         self.body, self.out = Linear(4, 3), Linear(3, 1, bias=False)
        >>> {k: sorted(v) for k, v in Head().init_params(np.random.default_rng(0)).items()}
        {'body': ['bias', 'weight'], 'out': ['weight']}
        """
        return {name: child.init_params(rng) for name, child in self.children().items()}

    def init(self, seed: int = 0, dtype: Any = np.float32) -> Params:
        """Draw parameters with `np.random.default_rng(seed)`, store them on the module, return them.

        >>> Linear(2, 1).init(seed=1)["weight"].shape
        (2, 1)
        """
        self.params = cast_params(self.init_params(np.random.default_rng(seed)), dtype)
        return self.params

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """The layer as a pure function of `params` and `x` (NumPy arrays or tracers).

        Every layer overrides it; the base class has no computation of its own:

        >>> Module().apply({}, np.ones(2))
        Traceback (most recent call last):
            ...
        models.layers_core.ModelError: Module does not define apply(params, x)
        """
        raise ModelError(f"{type(self).__name__} does not define apply(params, x)")

    def __call__(self, x: Any, train: bool = False) -> Any:
        """Eager use with the stored parameters (initialized with seed 0 on first use)."""
        if self.params is None:
            self.init(0, x.dtype if getattr(x, "dtype", np.dtype("O")).kind == "f" else np.float32)
        return self.apply(self.params, x, train=train)

    def export(self, path: str, example: Any, params: Params | None = None) -> Any:
        """Save the inference graph (evaluation mode, parameters baked in as constants) to `path`,
        `.onnx` or `.castml` by suffix, with axis 0 of `example` (an array or `TensorSpec`) symbolic.
        Returns the traced graph.

        >>> import os, tempfile
        >>> m = Linear(3, 2); _ = m.init(0)
        >>> g = m.export(os.path.join(tempfile.mkdtemp(), "m.castml"), np.ones((1, 3), np.float32))
        >>> str(g.outputs[0].type)
        'f32[batch,2]'
        """
        import exporters
        import tracer

        params = params if params is not None else self.params
        if params is None:
            raise ModelError(f"{type(self).__name__}.export: no parameters; call init(seed) or fit first")
        shape, dtype = (example.shape, example.dtype)
        g = tracer.trace(lambda x: self.apply(params, x), tracer.TensorSpec(("batch",) + tuple(shape[1:]), dtype))
        exporters.save(g, str(path))
        return g

    def apply_with_updates(self, params: Params, x: Any, train: bool = True) -> tuple[Any, Params]:
        """`apply` returning also the new buffer values (BatchNorm running stats), nested like params.

        >>> y, upd = Linear(2, 2).apply_with_updates(Linear(2, 2).init(0), np.ones((1, 2), np.float32))
        >>> upd
        {}
        """
        updates: dict = {}
        y = self.apply(params, x, train=train, updates=updates)
        return y, _prune(updates)


class Sequential(Module):
    """Layers applied one after the other; parameters under keys "0", "1", ….

    >>> m = Sequential([Linear(4, 3), ReLU(), Linear(3, 2)])
    >>> sorted(m.init(0))
    ['0', '2']
    """

    def __init__(self, layers: Sequence[Module]):
        self.layers = list(layers)

    def children(self) -> dict[str, Module]:
        """The layers by their index as a string, "0", "1", ….

        >>> list(Sequential([Linear(2, 2), ReLU()]).children())
        ['0', '1']
        """
        return {str(i): m for i, m in enumerate(self.layers)}

    def init_params(self, rng: np.random.Generator) -> Params:
        """Each layer's parameters under its index; layers without parameters get no key.

        >>> sorted(Sequential([Linear(2, 2), ReLU(), Linear(2, 1)]).init_params(np.random.default_rng(0)))
        ['0', '2']
        """
        out = {}
        for name, child in self.children().items():
            p = child.init_params(rng)
            if p:
                out[name] = p
        return out

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """Apply the layers in order, layer i with `params[str(i)]` (`{}` when absent).

        >>> m = Sequential([Linear(2, 1, bias=False), ReLU()])
        >>> m.apply({"0": {"weight": np.array([[1.0], [-2.0]])}}, np.ones((1, 2))).tolist()
        [[0.0]]
        """
        for name, child in self.children().items():
            x = child.apply(params.get(name, {}), x, train=train, updates=_sub(updates, name))
        return x


class Linear(Module):
    """y = x @ weight + bias, weight of shape (in, out), initialized like PyTorch
    (uniform in ±1/sqrt(in)).

    >>> Linear(3, 2).init(0)["bias"].shape
    (2,)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        self.in_features, self.out_features, self.bias = int(in_features), int(out_features), bias

    def init_params(self, rng: np.random.Generator) -> Params:
        """weight (in, out) and bias (out,), uniform in ±1/sqrt(in).

        >>> {k: v.shape for k, v in Linear(3, 2).init_params(np.random.default_rng(0)).items()}
        {'weight': (3, 2), 'bias': (2,)}
        """
        bound = 1.0 / np.sqrt(self.in_features)
        p = {"weight": rng.uniform(-bound, bound, (self.in_features, self.out_features))}
        if self.bias:
            p["bias"] = rng.uniform(-bound, bound, (self.out_features,))
        return p

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """x @ weight + bias, over the last axis of `x`.

        >>> Linear(2, 1).apply({"weight": np.ones((2, 1)), "bias": np.array([0.5])}, np.ones((3, 2))).tolist()
        [[2.5], [2.5], [2.5]]
        """
        y = x @ params["weight"]
        return y + params["bias"] if self.bias else y


class _Activation(Module):
    fn = staticmethod(ops.relu)

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        return self.fn(x)


class ReLU(_Activation):
    """max(x, 0) as a layer.

    >>> ReLU()(np.array([-1.0, 1.0])).tolist()
    [0.0, 1.0]
    """

    fn = staticmethod(ops.relu)


class GELU(_Activation):
    """Exact GELU as a layer.

    >>> float(GELU()(np.array(0.0)))
    0.0
    """

    fn = staticmethod(ops.gelu)


class Flatten(Module):
    """(N, d1, d2, …) -> (N, d1*d2*…); the batch stays symbolic (reshape to -1 first).

    >>> Flatten()(np.ones((2, 3, 4))).shape
    (2, 12)
    """

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """Reshape to (N, prod(non-batch dims)); a symbolic batch stays symbolic.

        >>> import tracer
        >>> print(tracer.trace(lambda x: Flatten().apply({}, x), tracer.TensorSpec(("n", 3, 4))).outputs[0].type)
        f32[n,12]
        """
        rest = x.shape[1:]
        if not all(isinstance(d, (int, np.integer)) for d in rest):
            raise ModelError(f"Flatten: the non-batch dims must be static, got shape {x.shape}")
        return x.reshape(-1, int(np.prod(rest, dtype=np.int64)))


class Dropout(Module):
    """Zeroes a fraction `p` of the activations in training, scaling the rest by 1/(1-p).

    Evaluation mode is the identity. Training mode uses `tracer.ops.dropout`: inside
    `models.rng.seed_scope(seed)` (as `models.fit` traces its step, with a new seed every step)
    the mask comes from that seed, so traced steps draw new masks; outside a scope, eager calls
    draw a fresh seed from `np.random.default_rng(seed)` and traced calls raise `TraceError` (the
    mask would be frozen into the graph).

    >>> Dropout(0.5)(np.ones(3)).tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(self, p: float = 0.5, seed: int = 0):
        if not 0.0 <= p < 1.0:
            raise ModelError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = np.random.default_rng(seed)

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """The identity unless `train`; in training, each element is zeroed or scaled by 1/(1-p).

        >>> d = Dropout(0.5)
        >>> d.apply({}, np.ones(4)).tolist(), sorted(set(d.apply({}, np.ones(8), train=True).tolist()))
        ([1.0, 1.0, 1.0, 1.0], [0.0, 2.0])
        """
        from . import rng

        if not train or self.p == 0.0:
            return x
        if rng.current_seed() is not None:
            return ops.dropout(x, self.p, rng.current_seed(), stream=rng.next_stream())
        if isinstance(x, Tracer):
            raise TraceError("Dropout in training mode traced without a seed: its mask would be frozen into the "
                             "graph; trace inside models.rng.seed_scope(seed) with a traced seed (as models.fit "
                             "does), or trace with train=False")
        return ops.dropout(x, self.p, self.rng.integers(0, 2**63 - 1))


class Embedding(Module):
    """Rows of a (num_embeddings, dim) table picked by integer ids: weight[ids], init N(0, 1).

    >>> e = Embedding(10, 4); _ = e.init(0)
    >>> e(np.array([[1, 2, 3]])).shape
    (1, 3, 4)
    """

    def __init__(self, num_embeddings: int, dim: int):
        self.num_embeddings, self.dim = int(num_embeddings), int(dim)

    def init_params(self, rng: np.random.Generator) -> Params:
        """weight (num_embeddings, dim), standard normal.

        >>> Embedding(10, 4).init_params(np.random.default_rng(0))["weight"].shape
        (10, 4)
        """
        return {"weight": rng.standard_normal((self.num_embeddings, self.dim))}

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """The rows of weight picked by the integer ids `x` (shape x.shape + (dim,)).

        >>> Embedding(3, 2).apply({"weight": np.arange(6.0).reshape(3, 2)}, np.array([2, 0])).tolist()
        [[4.0, 5.0], [0.0, 1.0]]
        """
        return params["weight"][x]


class LayerNorm(Module):
    """Normalization over the trailing dims `shape` with learned scale and shift (init 1 and 0).

    >>> LayerNorm(2)(np.array([[1.0, 3.0]])).round(3).tolist()
    [[-1.0, 1.0]]
    """

    def __init__(self, shape: int | Sequence[int], eps: float = 1e-5):
        self.shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        self.eps = float(eps)

    def init_params(self, rng: np.random.Generator) -> Params:
        """weight ones and bias zeros of the normalized shape.

        >>> {k: v.tolist() for k, v in LayerNorm(2).init_params(np.random.default_rng(0)).items()}
        {'weight': [1.0, 1.0], 'bias': [0.0, 0.0]}
        """
        return {"weight": np.ones(self.shape), "bias": np.zeros(self.shape)}

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """(x - mean) / sqrt(var + eps) over the trailing dims, times weight, plus bias.

        >>> p = {"weight": np.full(2, 2.0), "bias": np.ones(2)}
        >>> LayerNorm(2).apply(p, np.array([[1.0, 3.0]])).round(3).tolist()
        [[-1.0, 3.0]]
        """
        return ops.layer_norm(x, params["weight"], params["bias"], self.eps)
