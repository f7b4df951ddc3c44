"""`models.layers`: Keras-style layers over parameter pytrees (the public face of layers_*.py).

>>> import numpy as np
>>> from models.layers import Sequential, Linear, ReLU
>>> m = Sequential([Linear(4, 8), ReLU(), Linear(8, 2)])
>>> params = m.init(seed=0)
>>> m.apply(params, np.ones((3, 4), np.float32)).shape
(3, 2)
"""

from .layers_attention import MultiHeadAttention, TransformerEncoderLayer
from .layers_conv import BatchNorm2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from .layers_core import (
                          GELU,
                          Dropout,
                          Embedding,
                          Flatten,
                          LayerNorm,
                          Linear,
                          ModelError,
                          Module,
                          ReLU,
                          Sequential,
                          cast_params,
                          merge,
                          trainable,
)
from .layers_recurrent import GRU, GRUCell

__all__ = ["Module", "Sequential", "Linear", "ReLU", "GELU", "Flatten", "Dropout", "Embedding", "LayerNorm",
           "Conv2d", "BatchNorm2d", "MaxPool2d", "GlobalAvgPool2d", "MultiHeadAttention",
           "TransformerEncoderLayer", "GRUCell", "GRU", "ModelError", "cast_params", "merge", "trainable"]
