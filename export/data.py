"""Images for calibration, the fold check and INT8 validation: scikit-learn's bundled ``digits`` or a folder.

Everything here returns **pixels in [0, 1]**, RGB, NCHW at the export resolution; the exporter converts them to
whatever the artifact takes (normalized tensors, or raw pixels when the input normalization is folded in).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ExportInputError

__all__ = ["ImageSet", "load_digits", "load_image_dir", "load_images", "normalize"]

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """Pixels in [0, 1], shape (N, 3, H, W); labels (N,) or None; class names when known."""

    pixels: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str] | None
    source: str

    def __len__(self) -> int:
        return self.pixels.shape[0]


def load_digits(
    img_size: int, split: str = "train", crop_pct: float = 0.875, interpolation: str = "bicubic"
) -> ImageSet:
    """scikit-learn's 8x8 handwritten digits, the same split and evaluation transform as ``zoo train``.

    The split is :func:`zoo.data.digits_split` (1,437 ``train`` / 360 ``val``); each image goes through timm's
    evaluation transform (resize the shorter side to ``img_size / crop_pct`` with ``interpolation``, center crop),
    exactly as the training loop's validation does, so the INT8 gate scores the images ``zoo validate`` scores.
    """
    from PIL import Image
    from timm.data import create_transform

    from zoo.data import DIGITS_CLASSES, digits_split

    images, targets = digits_split(split)
    tf = create_transform(
        input_size=(3, img_size, img_size), is_training=False, interpolation=interpolation, crop_pct=crop_pct,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )  # fmt: skip
    x = torch.stack([tf(Image.fromarray(im).convert("RGB")) for im in images])
    return ImageSet(x, torch.from_numpy(targets), list(DIGITS_CLASSES), f"digits:{split}")


def _pil_resample(interpolation: str) -> int:
    from PIL import Image

    table = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}
    return table.get(interpolation, Image.BICUBIC)


def _read_image(path: Path, img_size: int, crop_pct: float, interpolation: str) -> torch.Tensor:
    """Resize the shorter side to ``img_size / crop_pct``, center-crop ``img_size``, RGB in [0, 1], (3, H, W)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        short = int(round(img_size / crop_pct))
        w, h = im.size
        scale = short / min(w, h)
        im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))), _pil_resample(interpolation))
        w, h = im.size
        left, top = (w - img_size) // 2, (h - img_size) // 2
        im = im.crop((left, top, left + img_size, top + img_size))
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # H, W, C -> C, H, W


def load_image_dir(
    path: str | os.PathLike, img_size: int, crop_pct: float, interpolation: str, limit: int | None = None
) -> ImageSet:
    """Images found under ``path`` (recursively), preprocessed as the model's ``pretrained_cfg`` says.

    When ``path`` has one sub-folder per class (the ImageFolder layout), labels are the sorted sub-folder indices
    and the class names are the folder names; images directly inside ``path`` have no label.

    Raises:
        ExportInputError: no such directory, or no image in it.
    """
    root = Path(path)
    if not root.is_dir():
        raise ExportInputError(f"calibration/validation data {str(root)!r} is not a directory (nor 'digits')")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_EXTS and p.is_file())
    if not files:
        raise ExportInputError(f"no image files ({', '.join(sorted(_IMAGE_EXTS))}) found under {root}")
    if limit is not None:
        step = max(1, len(files) // limit)
        files = files[::step][:limit]
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    labelled = bool(classes) and all(f.parent != root for f in files)
    pixels = torch.stack([_read_image(f, img_size, crop_pct, interpolation) for f in files])
    labels = torch.tensor([classes.index(f.relative_to(root).parts[0]) for f in files]) if labelled else None
    return ImageSet(pixels, labels, classes if labelled else None, str(root))


def load_images(
    spec: str, img_size: int, crop_pct: float, interpolation: str, split: str, limit: int | None = None
) -> ImageSet:
    """``"digits"`` (its ``split``) or a directory path."""
    if spec == "digits":
        data = load_digits(img_size, split, crop_pct, interpolation)
        if limit is not None and len(data) > limit:
            data = ImageSet(data.pixels[:limit], data.labels[:limit], data.classes, data.source)
        return data
    return load_image_dir(spec, img_size, crop_pct, interpolation, limit)


def normalize(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(pixels in [0, 1] - mean) / std, per channel."""
    m = torch.tensor(mean, dtype=pixels.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype).view(1, -1, 1, 1)
    return (pixels - m) / s
