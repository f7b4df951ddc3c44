"""Recurrent layers: `GRUCell` (one step) and `GRU` (a scripted loop over the time axis).

Why script mode: the number of time steps is data-dependent (a symbolic sequence length), so
unrolling at trace time would fix it. `GRU` runs its cell inside `tracer.script` functions whose
`for t in range(x.shape[1])` becomes one `loop` op; the exported graph then runs at any batch and
any sequence length, in our runtime and in onnxruntime (ONNX Loop). Inputs are batch-first,
`(batch, seq, features)`, as axis 0 is the batch everywhere in `models`. The gate equations and
parameter layout follow PyTorch's `nn.GRU` (gates r, z, n stacked along the last axis), with
weights stored transposed, (in, 3*hidden), like `Linear`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import tracer
from tracer import ops

from .layers_core import ModelError, Module, Params, _rank


def gru_step(x: Any, h: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> Any:
    """One GRU step: r, z = sigmoid(...), n = tanh(x W_in + b_in + r * (h W_hn + b_hn)),
    h' = (1 - z) * n + z * h.

    >>> w = np.zeros((2, 3)); u = np.zeros((1, 3)); b = np.zeros(3)
    >>> gru_step(np.ones((1, 2)), np.ones((1, 1)), w, u, b, b).tolist()
    [[0.5]]
    """
    gi = x @ w_ih + b_ih
    gh = h @ w_hh + b_hh
    size = w_hh.shape[0]
    r = ops.sigmoid(gi[..., :size] + gh[..., :size])
    z = ops.sigmoid(gi[..., size:2 * size] + gh[..., size:2 * size])
    n = np.tanh(gi[..., 2 * size:] + r * gh[..., 2 * size:])
    return (1.0 - z) * n + z * h


@tracer.script
def gru_last(x, h, w_ih, w_hh, b_ih, b_hh):
    """The final hidden state after running `gru_step` over axis 1 of x (batch, seq, in).

    >>> w, u, b = np.zeros((2, 3)), np.zeros((1, 3)), np.zeros(3)
    >>> gru_last(np.ones((1, 4, 2)), np.ones((1, 1)), w, u, b, b).tolist()
    [[0.0625]]
    """
    for t in range(x.shape[1]):
        h = gru_step(x[:, t], h, w_ih, w_hh, b_ih, b_hh)
    return h


@tracer.script
def gru_sequence(x, h, w_ih, w_hh, b_ih, b_hh):
    """Every hidden state, (batch, seq, hidden), stacked along axis 1.

    >>> w, u, b = np.zeros((2, 3)), np.zeros((1, 3)), np.zeros(3)
    >>> gru_sequence(np.ones((1, 2, 2)), np.ones((1, 1)), w, u, b, b).tolist()
    [[[0.5], [0.25]]]
    """
    hs = h[:, None, :][:, :0, :]
    for t in range(x.shape[1]):
        h = gru_step(x[:, t], h, w_ih, w_hh, b_ih, b_hh)
        hs = np.concatenate([hs, h[:, None, :]], axis=1)
    return hs


class GRUCell(Module):
    """One GRU step as a layer: `apply(params, (x, h))` -> new h, x (batch, in), h (batch, hidden).
    Initialized like PyTorch (uniform in ±1/sqrt(hidden)).

    >>> c = GRUCell(3, 4); p = c.init(0)
    >>> c.apply(p, (np.ones((2, 3), np.float32), np.zeros((2, 4), np.float32))).shape
    (2, 4)
    """

    def __init__(self, input_size: int, hidden_size: int):
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)

    def init_params(self, rng: np.random.Generator) -> Params:
        """weight_ih (in, 3*hidden), weight_hh (hidden, 3*hidden) and two biases, uniform in ±1/sqrt(hidden).

        >>> {k: v.shape for k, v in GRUCell(2, 3).init_params(np.random.default_rng(0)).items()}["weight_ih"]
        (2, 9)
        """
        bound = 1.0 / np.sqrt(self.hidden_size)
        n, h = self.input_size, self.hidden_size
        shapes = {"weight_ih": (n, 3 * h), "weight_hh": (h, 3 * h), "bias_ih": (3 * h,), "bias_hh": (3 * h,)}
        return {name: rng.uniform(-bound, bound, shape) for name, shape in shapes.items()}

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """The new hidden state from `x = (input, h)`; anything else raises `ModelError`.

        >>> c = GRUCell(2, 1); p = {k: np.zeros_like(v) for k, v in c.init(0, np.float64).items()}
        >>> c.apply(p, (np.ones((1, 2)), np.ones((1, 1)))).tolist()  # z = 0.5, n = 0: h / 2
        [[0.5]]
        """
        if not isinstance(x, tuple) or len(x) != 2:
            raise ModelError(f"GRUCell: expected (x, h), got {type(x).__name__}")
        inp, h = x
        return gru_step(inp, h, params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"])


class GRU(Module):
    """A GRU over batch-first sequences (batch, seq, in): the final hidden state (batch, hidden),
    or all of them (batch, seq, hidden) with `return_sequences=True`. The initial state is zero.
    The time loop is scripted, so a traced GRU runs at any sequence length.

    >>> g = GRU(3, 5); _ = g.init(0)
    >>> g(np.ones((2, 7, 3), np.float32)).shape, GRU(3, 5, return_sequences=True)(np.ones((2, 7, 3))).shape
    ((2, 5), (2, 7, 5))
    """

    def __init__(self, input_size: int, hidden_size: int, return_sequences: bool = False):
        self.cell = GRUCell(input_size, hidden_size)
        self.return_sequences = bool(return_sequences)

    def apply(self, params: Params, x: Any, train: bool = False, updates: dict | None = None) -> Any:
        """Run the cell over axis 1 of `x` (batch, seq, in); traced, the time loop is one `loop` op.

        >>> gru = GRU(3, 4); p = gru.init(0)
        >>> g = tracer.trace(lambda x: gru.apply(p, x), tracer.TensorSpec(("n", "t", 3)))
        >>> str(g.outputs[0].type), [op.kind for op in g.ops if op.regions]
        ('f32[n,4]', ['loop'])
        """
        if _rank(x) != 3 or x.shape[2] != self.cell.input_size:
            raise ModelError(f"GRU: expected input (batch, seq, {self.cell.input_size}), got shape {x.shape}")
        p = params["cell"]
        h0 = np.zeros_like(x, shape=(x.shape[0], self.cell.hidden_size))
        run = gru_sequence if self.return_sequences else gru_last
        return run(x, h0, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
