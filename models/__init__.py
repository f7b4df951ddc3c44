"""castml's high-level modelling layer: Keras-style layers over parameter pytrees, losses,
optimizers as pure functions, a `fit` loop that traces the training step once, and a model zoo.

>>> import numpy as np
>>> from models import layers
>>> m = layers.Sequential([layers.Linear(4, 2)])
>>> m.apply(m.init(0), np.ones((1, 4), np.float32)).shape
(1, 2)
"""

from . import layers, losses, optim, zoo
from .training import History, evaluate, fit

__all__ = ["layers", "losses", "optim", "zoo", "fit", "evaluate", "History"]
