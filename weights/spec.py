"""``WeightSpec``: where a variant's released weights live and how to read them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightSpec:
    """One released checkpoint.

    Attributes:
        url: download address.
        layout: key layout of the file: ``"original"`` (the paper authors'), ``"timm"`` or ``"zoo"`` (ours).
        sha256: expected SHA-256 of the file, or None when the publisher gave none (then the first download's hash
            is recorded next to the cached file and checked afterwards).
        filename: cache file name; defaults to the URL's last path component.
        license: licence of the weights.
        source: who trained / released them.
        num_classes: classifier size of the checkpoint.
        top1: ImageNet top-1 the publisher reports for these weights.
        prefer_ema: read the file's EMA weights (``state_dict_ema``) when it holds both, as the publisher evaluated.
    """

    url: str
    layout: str = "original"
    sha256: str | None = None
    filename: str | None = None
    license: str = "unknown"
    source: str = ""
    num_classes: int = 1000
    top1: float | None = None
    prefer_ema: bool = False

    @property
    def cache_name(self) -> str:
        """File name inside the cache directory."""
        return self.filename or self.url.rstrip("/").split("/")[-1].split("?")[0]
