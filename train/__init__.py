"""The shared training loop: ``train.fit(TrainConfig(...))``, ``zoo train`` and ``zoo validate``.

>>> import train
>>> cfg = train.TrainConfig(model="efficientvit_m0", data="digits", img_size=64, epochs=1)  # doctest: +SKIP
>>> result = train.fit(cfg)  # doctest: +SKIP
"""

from .config import TrainConfig, list_recipes, load_recipe
from .data import BadImageError
from .loop import NonFiniteLossError, fit
from .validate import validate

__all__ = ["BadImageError", "NonFiniteLossError", "TrainConfig", "fit", "list_recipes", "load_recipe", "validate"]
