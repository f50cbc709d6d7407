"""Errors of the exporter. Each message says what went wrong, with the measured figure where there is one."""

from __future__ import annotations

__all__ = ["ExportError", "ExportInputError", "FoldCheckError", "ParityError", "FormatUnavailableError"]


class ExportError(RuntimeError):
    """Base class of every exporter error."""


class ExportInputError(ExportError, ValueError):
    """Bad arguments: unknown format, unwritable output directory, missing calibration data, ..."""


class FoldCheckError(ExportError):
    """Folding left a normalization the family says folds, or changed what the model computes."""


class ParityError(ExportError):
    """An artifact does not compute what the PyTorch model computes.

    Attributes:
        fmt: the format whose check failed.
        error: the measured error (max abs difference relative to the output scale).
        tol: the tolerance it exceeded.
    """

    def __init__(self, fmt: str, error: float, tol: float, detail: str = "") -> None:
        self.fmt, self.error, self.tol = fmt, error, tol
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{fmt}: parity check failed: relative error {error:.3e} > tolerance {tol:.1e}{extra}")


class FormatUnavailableError(ExportError):
    """The toolchain or hardware a format needs is not present on this machine."""
