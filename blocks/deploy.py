"""The deploy protocol: one name, one walker.

A module with a train-time / deploy-time split implements ``reparameterize(self) -> None``: in place, under
``torch.no_grad()``, in eval mode, idempotent (returns at once when already deployed). Its constructor can also build
the deploy form directly (``deploy=True``). :func:`reparameterize_model` walks a model and applies it everywhere,
children before parents, so that a parent can fold an already-folded child further (e.g. a residual around a
depthwise conv becomes one conv).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["reparameterize_model", "is_deployed", "remaining_norms", "make_bn_realistic", "NORM_TYPES"]

#: Normalization layer types the deploy checks look for.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm2d,
)


def _drop_train_only(module: nn.Module) -> None:
    """Replace DropPath and dropout layers with Identity: they are no-ops in eval and have no place in a graph."""
    from timm.layers import DropPath

    for name, child in list(module.named_children()):
        if isinstance(child, (DropPath, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)):
            setattr(module, name, nn.Identity())
        else:
            _drop_train_only(child)


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Convert every train-time structure of ``model`` into its deploy form.

    Args:
        model: any module; modules that define ``reparameterize()`` are folded, dropout and DropPath removed.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The deployed model, in eval mode. Calling this again on it is a no-op.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    with torch.no_grad():
        _drop_train_only(model)
        # Reversed pre-order visits every descendant before its ancestors.
        for module in reversed(list(model.modules())):
            fn = getattr(module, "reparameterize", None)
            if callable(fn):
                fn()
    return model


def is_deployed(model: nn.Module) -> bool:
    """True when no module of ``model`` still has a train-time form."""
    return all(getattr(m, "deployed", True) for m in model.modules() if callable(getattr(m, "reparameterize", None)))


def remaining_norms(model: nn.Module) -> dict[str, int]:
    """Count the normalization layers left in ``model``, by class name (``{}`` when all folded)."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, NORM_TYPES) or type(m).__name__ in ("RepBN", "PRepBN", "UnifiedNorm"):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts


@torch.no_grad()
def make_bn_realistic(
    model: nn.Module, input_size: tuple[int, ...], batches: int = 2, batch_size: int = 4, seed: int = 0
) -> nn.Module:
    """Give every BatchNorm (and UnifiedNorm) non-trivial affine parameters and running statistics measured on random
    input.

    A fresh model's BN layers are identities in eval mode (mean 0, var 1, gamma 1, beta 0), which hides folding
    mistakes; purely random statistics blow deep BN-only nets up. This draws gamma in [0.5, 1.5] and beta ~ N(0, 0.1),
    then recomputes the running statistics as cumulative averages over ``batches`` forward passes in train mode
    (a UnifiedNorm's running variance becomes the last pass's statistics; its counters advance by ``batches``).
    Used by the deploy-parity tests and the exporter's self-check. Returns the model in eval mode.
    """
    from .unified_norm import UnifiedNorm

    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    uns = [m for m in model.modules() if isinstance(m, UnifiedNorm)]
    for bn in bns + uns:
        if isinstance(bn, UnifiedNorm) or bn.affine:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.1)
        bn.reset_running_stats()
    for bn in bns:
        bn.momentum = None  # cumulative moving average
    un_momentum = [un.momentum for un in uns]
    for un in uns:
        un.momentum = 0.0  # UN keeps the last batch's statistics (its warm-up normalizes by the batch itself)
    model.train()
    for _ in range(batches):
        model(torch.randn(batch_size, *input_size, generator=gen))
    for bn in bns:
        bn.momentum = 0.1
    for un, m in zip(uns, un_momentum):
        un.momentum = m
    return model.eval()
