"""The bundled dataset's one split, shared by training, validation and export.

scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes): a stratified 20% validation split with a fixed
seed, so that ``zoo train``, ``zoo validate`` and ``zoo export`` (INT8 calibration on ``train``, the INT8 accuracy gate
on ``val``) all see the same 1,437 / 360 images, and no INT8 verdict is scored on training images.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DIGITS_CLASSES", "digits_split"]

DIGITS_CLASSES = [str(i) for i in range(10)]


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, targets)`` of the ``train`` or ``val`` split: uint8 (N, 8, 8) gray levels 0..255, int64 (N,).

    Raises:
        ValueError: another split name.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "val"):
        raise ValueError(f"digits split must be 'train' or 'val', got {split!r}")
    digits = load_digits()
    idx = list(range(len(digits.target)))
    tr, va = train_test_split(idx, test_size=0.2, random_state=0, stratify=digits.target)
    keep = tr if split == "train" else va
    pixels = (digits.images[keep] * (255.0 / 16.0)).round().astype("uint8")
    return pixels, digits.target[keep].astype("int64")
