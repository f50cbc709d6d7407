"""Helpers shared by the tests."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's magnitude (max |b|)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
