"""Reusable building blocks and the deploy protocol (``reparameterize()`` / :func:`reparameterize_model`)."""

from .cga import CascadedGroupAttention, EfficientViTBlock, LocalWindowAttention
from .convbn import BNLinear, ConvBN, LinearBN, fold_bn, set_bn_frozen
from .deploy import NORM_TYPES, is_deployed, make_bn_realistic, remaining_norms, reparameterize_model
from .inverted_residual import DepthwiseSeparable, InvertedResidual, build_stages, decode_arch, round_channels
from .layers import ConvFFN, Residual, SqueezeExcite
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
    "BNLinear",
    "CascadedGroupAttention",
    "ConvBN",
    "ConvFFN",
    "DepthwiseSeparable",
    "EfficientViTBlock",
    "GradualPruner",
    "InvertedResidual",
    "LinearBN",
    "LocalWindowAttention",
    "NORM_TYPES",
    "Residual",
    "SparseConv2d",
    "SparseLinear",
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
