"""Schedules that live in the model (PRepBN's lambda, gradual pruning), driven by the training loop's global step.

The interface is one method. A module whose behaviour changes over training implements::

    def set_step(self, step: int) -> None: ...

and derives *all* of its schedule state from ``step`` (the number of optimizer steps taken so far, counted from 0
by the training loop). Nothing is counted inside ``forward``: a run resumed from a checkpoint, or replicated by
DistributedDataParallel, computes exactly what an uninterrupted single-process run computes, because every rank
receives the same global step. Modules that also keep the step in a buffer make it part of the weights file.

The training loop calls :func:`set_step` once before every optimizer step (and once after loading a checkpoint).
Objects that are not modules (e.g. a pruning scheduler) implement the same ``set_step`` and are passed in
``extra``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from torch import nn

__all__ = ["StepScheduled", "set_step", "scheduled_modules"]


@runtime_checkable
class StepScheduled(Protocol):
    """Anything whose behaviour is a function of the training loop's global step."""

    def set_step(self, step: int) -> None:
        """Move the schedule to global optimizer step ``step`` (idempotent; steps may jump on resume)."""


def scheduled_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule that implements ``set_step``."""
    return [(n, m) for n, m in model.named_modules() if callable(getattr(m, "set_step", None)) and m is not model]


def set_step(model: nn.Module, step: int, extra: Iterable[StepScheduled] = ()) -> int:
    """Tell every scheduled module of ``model`` (unwrapping DDP / compile wrappers) and every ``extra`` the step.

    Returns:
        How many objects were updated.
    """
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    targets = [m for _, m in scheduled_modules(inner)] + list(extra)
    for t in targets:
        t.set_step(step)
    return len(targets)
