"""Panoptic models behind one registry: ``build_model(name, categories, **config)``.

Importing the package registers the built-in models.
"""

from trainer_image.models.mask_transformer import MaskTransformer
from trainer_image.models.panoptic_deeplab import PRESETS, PUBLISHED_WEIGHTS, PanopticDeepLab
from trainer_image.models.postprocess import PanopticPrediction, panoptic_postprocess
from trainer_image.models.registry import MODELS, PanopticModel, build_model, register_model

__all__ = [
    "MODELS",
    "MaskTransformer",
    "PRESETS",
    "PUBLISHED_WEIGHTS",
    "PanopticDeepLab",
    "PanopticModel",
    "PanopticPrediction",
    "build_model",
    "panoptic_postprocess",
    "register_model",
]
