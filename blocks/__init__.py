"""Reusable building blocks and the deploy protocol (``reparameterize()`` / :func:`reparameterize_model`)."""

from .cga import CascadedGroupAttention, EfficientViTBlock, LocalWindowAttention
from .convbn import BNLinear, ConvBN, LinearBN, fold_bn, set_bn_frozen
from .deploy import NORM_TYPES, is_deployed, make_bn_realistic, remaining_norms, reparameterize_model
from .efficientmod import MHSA, AttentionBlock, ContextModeling, EfficientModBlock, EfficientModStage, PatchEmbedLN
from .inverted_residual import DepthwiseSeparable, InvertedResidual, build_stages, decode_arch, round_channels
from .layers import ConvFFN, Residual, SqueezeExcite
from .osa import EffectiveSE, OsaBlock, OsaStage, SeparableConvBN
from .schedule import StepScheduled, scheduled_modules, set_step
from .sparse import (
    GradualPruner,
    SparseConv2d,
    SparseLinear,
    make_pruner,
    model_sparsity,
    prune_magnitude,
    sparsity_report,
)

__all__ = [
    "AttentionBlock",
    "BNLinear",
    "CascadedGroupAttention",
    "ContextModeling",
    "ConvBN",
    "ConvFFN",
    "DepthwiseSeparable",
    "EffectiveSE",
    "EfficientModBlock",
    "EfficientModStage",
    "EfficientViTBlock",
    "GradualPruner",
    "InvertedResidual",
    "LinearBN",
    "LocalWindowAttention",
    "MHSA",
    "NORM_TYPES",
    "OsaBlock",
    "OsaStage",
    "PatchEmbedLN",
    "Residual",
    "SparseConv2d",
    "SparseLinear",
    "SeparableConvBN",
    "SqueezeExcite",
    "StepScheduled",
    "build_stages",
    "decode_arch",
    "fold_bn",
    "is_deployed",
    "make_bn_realistic",
    "make_pruner",
    "model_sparsity",
    "prune_magnitude",
    "remaining_norms",
    "reparameterize_model",
    "round_channels",
    "scheduled_modules",
    "set_bn_frozen",
    "set_step",
    "sparsity_report",
]
