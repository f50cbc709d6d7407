"""Reusable building blocks and the deploy protocol (``reparameterize()`` / :func:`reparameterize_model`)."""

from .cga import CascadedGroupAttention, EfficientViTBlock, LocalWindowAttention
from .convbn import BNLinear, ConvBN, LinearBN, fold_bn, set_bn_frozen
from .deploy import NORM_TYPES, is_deployed, make_bn_realistic, remaining_norms, reparameterize_model
from .efficientmod import MHSA, AttentionBlock, ContextModeling, EfficientModBlock, EfficientModStage, PatchEmbedLN
from .layers import ConvFFN, Residual, SqueezeExcite
from .osa import EffectiveSE, OsaBlock, OsaStage, SeparableConvBN
from .schedule import StepScheduled, scheduled_modules, set_step

__all__ = [
    "AttentionBlock",
    "BNLinear",
    "CascadedGroupAttention",
    "ContextModeling",
    "ConvBN",
    "ConvFFN",
    "EffectiveSE",
    "EfficientModBlock",
    "EfficientModStage",
    "EfficientViTBlock",
    "LinearBN",
    "LocalWindowAttention",
    "MHSA",
    "NORM_TYPES",
    "OsaBlock",
    "OsaStage",
    "PatchEmbedLN",
    "Residual",
    "SeparableConvBN",
    "SqueezeExcite",
    "StepScheduled",
    "fold_bn",
    "is_deployed",
    "make_bn_realistic",
    "remaining_norms",
    "reparameterize_model",
    "scheduled_modules",
    "set_bn_frozen",
    "set_step",
]
