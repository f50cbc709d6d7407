"""Reusable building blocks and the deploy protocol (``reparameterize()`` / :func:`reparameterize_model`)."""

from .cga import CascadedGroupAttention, EfficientViTBlock, LocalWindowAttention
from .convbn import BNLinear, ConvBN, LinearBN, fold_bn, set_bn_frozen
from .deploy import NORM_TYPES, is_deployed, make_bn_realistic, remaining_norms, reparameterize_model
from .layers import ConvFFN, Residual, SqueezeExcite

__all__ = [
    "BNLinear",
    "CascadedGroupAttention",
    "ConvBN",
    "ConvFFN",
    "EfficientViTBlock",
    "LinearBN",
    "LocalWindowAttention",
    "NORM_TYPES",
    "Residual",
    "SqueezeExcite",
    "fold_bn",
    "is_deployed",
    "make_bn_realistic",
    "remaining_norms",
    "reparameterize_model",
    "set_bn_frozen",
]
