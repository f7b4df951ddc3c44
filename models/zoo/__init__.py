"""`models.zoo`: ready models, each a module with `build(seed=0) -> (fn, args)`.

`fn(x, params)` is plain NumPy code (the model's `apply` in evaluation mode); `args = (x, params)`
holds an example input whose axis 0 is the batch, then the parameter pytree (nested dicts of
float32 arrays drawn from `np.random.default_rng(seed)`). Each module also has `model()`, the
`models.layers.Module` itself, for training with `models.fit`.

>>> from models import zoo
>>> fn, args = zoo.mlp.build(seed=0)
>>> fn(*args).shape
(2, 10)

`gru` runs its time loop in script mode, so its export also takes a symbolic sequence length.
"""

from . import gru, lenet, mlp, resnet_tiny, transformer_encoder

MODELS = {"mlp": mlp, "lenet": lenet, "resnet_tiny": resnet_tiny, "transformer_encoder": transformer_encoder,
          "gru": gru}

__all__ = ["mlp", "lenet", "resnet_tiny", "transformer_encoder", "gru", "MODELS"]
