"""``features_only`` backbones: multi-scale feature maps for detection and segmentation heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FeatureInfo", "FeatureExtractor"]


class FeatureInfo(list):
    """List of ``{"num_chs", "reduction", "module"}`` dicts, one per feature level, with timm's accessors."""

    def channels(self) -> list[int]:
        """Channels of each level."""
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        """Stride of each level relative to the input."""
        return [f["reduction"] for f in self]


class FeatureExtractor(nn.Module):
    """Wraps a zoo model and returns the feature maps of the levels in ``out_indices`` (the head is removed).

    Args:
        model: a model implementing ``forward_intermediates(x) -> list[Tensor]`` and ``feature_info``.
        out_indices: feature levels to return (negative indices count from the end); default all.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        levels = len(model.feature_info)
        if any(not -levels <= i < levels for i in (out_indices or ())):
            raise IndexError(f"out_indices {tuple(out_indices)} out of range for {levels} feature levels")
        idx = tuple(range(levels)) if out_indices is None else tuple(i % levels for i in out_indices)
        model.reset_classifier(0)
        self.model = model
        self.out_indices = idx
        self.feature_info = FeatureInfo(model.feature_info[i] for i in idx)
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model.forward_intermediates(x, max(self.out_indices))
        return [feats[i] for i in self.out_indices]
