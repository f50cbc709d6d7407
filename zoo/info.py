"""Measured facts about a model: parameters and multiply-accumulates, next to what its paper reports."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .registry import create_model, get_family

__all__ = ["count_params", "count_macs", "model_info"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not, buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at ``input_size`` (C, H, W), batch 1.

    Counted with ``torch.utils.flop_counter`` (convolutions and matrix products, as papers count) and halved:
    papers that say "FLOPs" report MACs. Fused attention runs on its math backend so that its products are counted
    (the counter does not see the CPU flash kernel). A model built on the ``meta`` device is counted from shapes
    alone, without computing anything.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    device = next(model.parameters()).device
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.zeros(1, *input_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def model_info(name: str, macs: bool = True) -> dict[str, Any]:
    """Params, MACs at the default resolution, pretrained config, paper and reported numbers of a registered model."""
    family = get_family(name)
    model = create_model(name)
    cfg = model.pretrained_cfg
    info: dict[str, Any] = {
        "name": name,
        "family": family.name,
        "params": count_params(model),
        "macs": count_macs(model, cfg["input_size"]) if macs else None,
        "pretrained_cfg": cfg,
        "paper": dataclasses.asdict(family.paper),
        "reported": dataclasses.asdict(family.reported[name]) if name in family.reported else None,
        "weights": dataclasses.asdict(family.weights[name]) if name in family.weights else None,
        "blocks": list(family.blocks),
        "remaining_norms": list(family.remaining_norms),
        "timm_name": family.timm_names.get(name),
    }
    return info
