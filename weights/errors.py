"""Errors raised while finding, reading and loading weights. Each message says what is wrong and what to do."""

from __future__ import annotations

__all__ = ["WeightsError", "CorruptCheckpointError", "UnsafeCheckpointError", "CheckpointMismatchError", "OfflineError"]


class WeightsError(RuntimeError):
    """Base class for weight-handling errors."""


class CorruptCheckpointError(WeightsError):
    """The file is truncated, corrupt, or not a checkpoint at all."""


class UnsafeCheckpointError(WeightsError):
    """The file needs arbitrary code to be unpickled; it is refused."""


class OfflineError(WeightsError):
    """The weights are not cached and could not be downloaded."""


class CheckpointMismatchError(WeightsError):
    """A state dict does not fit a model: lists every missing, unexpected and shape-mismatched key.

    Attributes:
        missing: keys the model needs that the checkpoint lacks.
        unexpected: keys of the checkpoint the model does not have.
        mismatched: ``(key, checkpoint_shape, model_shape)`` triples.
    """

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        context: str = "",
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"checkpoint does not match the model{(' ' + context) if context else ''}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}):")
            lines += [f"    {k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched]
        super().__init__("\n".join(lines))
