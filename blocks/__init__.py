"""Reusable building blocks and the deploy protocol (``reparameterize()`` / :func:`reparameterize_model`)."""

from .cga import CascadedGroupAttention, EfficientViTBlock, LocalWindowAttention
from .convbn import BNLinear, ConvBN, LinearBN, fold_bn, set_bn_frozen
from .deploy import NORM_TYPES, is_deployed, make_bn_realistic, remaining_norms, reparameterize_model
from .layers import ConvFFN, Residual, SqueezeExcite
from .linear_attention import SimplifiedLinearAttention, linear_attention
from .repbn import (
    ChannelAffine,
    PRepBN,
    RepBN,
    convert_linearnorm,
    fold_affine_into_conv_input,
    fold_affine_into_conv_output,
    fold_affine_into_linear,
    make_repbn_norm,
    norm_affine,
    prepbn_lambda,
)
from .schedule import StepScheduled, scheduled_modules, set_step
from .slab import SlabBlock

__all__ = [
    "BNLinear",
    "CascadedGroupAttention",
    "ChannelAffine",
    "ConvBN",
    "ConvFFN",
    "EfficientViTBlock",
    "LinearBN",
    "LocalWindowAttention",
    "NORM_TYPES",
    "PRepBN",
    "RepBN",
    "Residual",
    "SimplifiedLinearAttention",
    "SlabBlock",
    "SqueezeExcite",
    "StepScheduled",
    "convert_linearnorm",
    "fold_affine_into_conv_input",
    "fold_affine_into_conv_output",
    "fold_affine_into_linear",
    "fold_bn",
    "is_deployed",
    "linear_attention",
    "make_bn_realistic",
    "make_repbn_norm",
    "norm_affine",
    "prepbn_lambda",
    "remaining_norms",
    "reparameterize_model",
    "scheduled_modules",
    "set_bn_frozen",
    "set_step",
]
