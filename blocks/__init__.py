"""Reusable building blocks and the deploy protocol (``reparameterize()`` / :func:`reparameterize_model`)."""

from .cga import CascadedGroupAttention, EfficientViTBlock, LocalWindowAttention
from .convbn import BNLinear, ConvBN, LinearBN, fold_bn, set_bn_frozen
from .deploy import NORM_TYPES, is_deployed, make_bn_realistic, remaining_norms, reparameterize_model
from .efficientmod import MHSA, AttentionBlock, ContextModeling, EfficientModBlock, EfficientModStage, PatchEmbedLN
from .inverted_residual import DepthwiseSeparable, InvertedResidual, build_stages, decode_arch, round_channels
from .layers import ConvFFN, Residual, SqueezeExcite
from .linear_attention import SimplifiedLinearAttention, linear_attention
from .osa import EffectiveSE, OsaBlock, OsaStage, SeparableConvBN
from .repbn import (
    ChannelAffine,
    PRepBN,
    RepBN,
    convert_linearnorm,
    fold_affine_into_conv_input,
    fold_affine_into_conv_output,
    fold_affine_into_linear,
    fold_norm_into_head,
    make_repbn_norm,
    norm_affine,
    prepbn_lambda,
)
from .schedule import StepScheduled, scheduled_modules, set_step
from .slab import SlabBlock, SlabPatchEmbed, SoftmaxAttention
from .sparse import (
    GradualPruner,
    SparseConv2d,
    SparseLinear,
    make_pruner,
    model_sparsity,
    prune_magnitude,
    sparsity_report,
)
from .unified_norm import UnifiedNorm

__all__ = [
    "AttentionBlock",
    "BNLinear",
    "CascadedGroupAttention",
    "ContextModeling",
    "ChannelAffine",
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
    "PRepBN",
    "RepBN",
    "Residual",
    "SimplifiedLinearAttention",
    "SlabBlock",
    "SlabPatchEmbed",
    "SoftmaxAttention",
    "UnifiedNorm",
    "SqueezeExcite",
    "StepScheduled",
    "convert_linearnorm",
    "fold_affine_into_conv_input",
    "fold_affine_into_conv_output",
    "fold_affine_into_linear",
    "fold_norm_into_head",
    "fold_bn",
    "is_deployed",
    "linear_attention",
    "make_bn_realistic",
    "make_pruner",
    "model_sparsity",
    "prune_magnitude",
    "make_repbn_norm",
    "norm_affine",
    "prepbn_lambda",
    "remaining_norms",
    "reparameterize_model",
    "round_channels",
    "scheduled_modules",
    "set_bn_frozen",
    "set_step",
    "sparsity_report",
]
