"""Strict loading of a state dict into a model, through the family's key-layout converters."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .errors import CheckpointMismatchError

__all__ = ["Converter", "detect_layout", "load_into", "compare_state_dicts"]

Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def compare_state_dicts(
    ckpt: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """Missing keys, unexpected keys and shape mismatches of ``ckpt`` against ``target``."""
    missing = sorted(k for k in target if k not in ckpt)
    unexpected = sorted(k for k in ckpt if k not in target)
    mismatched = sorted(
        (k, tuple(ckpt[k].shape), tuple(target[k].shape))
        for k in ckpt
        if k in target and tuple(ckpt[k].shape) != tuple(target[k].shape)
    )
    return missing, unexpected, mismatched


def _score(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> int:
    good = sum(1 for k, v in sd.items() if k in target and tuple(v.shape) == tuple(target[k].shape))
    return good - sum(1 for k in sd if k not in target)


def detect_layout(
    state_dict: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], converters: Mapping[str, Converter]
) -> tuple[str, dict[str, torch.Tensor]]:
    """Pick the key layout whose conversion fits ``target`` best.

    Args:
        state_dict: the checkpoint as read.
        target: the model's own state dict.
        converters: ``{layout_name: converter}``; our own layout (``"zoo"``, identity) is always tried first.

    Returns:
        ``(layout_name, converted_state_dict)``.
    """
    best: tuple[int, str, dict[str, torch.Tensor]] | None = None
    for name, conv in {"zoo": dict, **converters}.items():
        try:
            converted = conv(dict(state_dict))
        except (KeyError, ValueError, IndexError, RuntimeError):
            continue
        score = _score(converted, target)
        if best is None or score > best[0]:
            best = (score, name, converted)
    assert best is not None  # the identity never raises
    return best[1], best[2]


def load_into(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    converters: Mapping[str, Converter] | None = None,
    classifier: Sequence[str] = (),
    context: str = "",
) -> str:
    """Load a checkpoint into ``model`` strictly, converting its key layout first.

    When the checkpoint's classifier has another number of classes than the model, the classifier weights are
    dropped (the model keeps its fresh initialisation) and a warning says so; every other difference raises.

    Args:
        model: the model (train-time form).
        state_dict: checkpoint tensors.
        converters: the family's ``{layout: converter}`` table.
        classifier: module names of the classifier layers (e.g. ``("head.linear",)``).
        context: text added to error messages (model and file names).

    Returns:
        The name of the layout that was recognised.

    Raises:
        CheckpointMismatchError: listing every missing, unexpected and shape-mismatched key.
    """
    target = model.state_dict()
    layout, sd = detect_layout(state_dict, target, converters or {})
    dropped: list[str] = []
    for name in classifier:
        w = f"{name}.weight"
        if w in sd and (w not in target or sd[w].shape[0] != target[w].shape[0]):
            dropped += [k for k in (w, f"{name}.bias") if k in sd or k in target]
    if dropped:
        n_model = target[dropped[0]].shape[0] if dropped[0] in target else 0
        warnings.warn(
            f"{context or 'checkpoint'}: the checkpoint's classifier has {sd[dropped[0]].shape[0]} classes but the "
            f"model has {n_model}; {', '.join(dropped)} dropped (the model keeps a fresh classifier).",
            stacklevel=2,
        )
        sd = {k: v for k, v in sd.items() if k not in dropped}
    missing, unexpected, mismatched = compare_state_dicts(sd, target)
    missing = [k for k in missing if k not in dropped]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context=f"{context} (layout: {layout})")
    model.load_state_dict(sd, strict=False)
    return layout
