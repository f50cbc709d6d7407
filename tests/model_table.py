"""Per-model test settings: the one place where model quirks live (no ``if name == ...`` in the tests).

Each entry maps a shell-style pattern to settings; later matching entries override earlier ones.

Settings:
    create: extra ``create_model`` arguments for the tests (e.g. a smaller ``img_size`` for speed).
    input_size: (C, H, W) to test at; default the model's pretrained config.
    tol: relative tolerance of deploy and ONNX parity (max abs error / max abs output).
"""

from __future__ import annotations

import fnmatch
from typing import Any

DEFAULTS: dict[str, Any] = {"create": {}, "input_size": None, "tol": 1e-4}

QUIRKS: dict[str, dict[str, Any]] = {
    # EfficientViT's geometry is fixed by img_size; 224 is cheap enough for all six.
    # Inverted-residual conv nets take any input size; 64 px (2x2 final maps) keeps the registry tests fast.
    "mobilenetv[12]_*": {"input_size": (3, 64, 64)},
    "efficientnet_b[0-9]": {"input_size": (3, 64, 64)},
    "tinynet_[a-e]": {"input_size": (3, 64, 64)},
    "fbnet[abc]_100": {"input_size": (3, 64, 64)},
    "proxylessnas_*": {"input_size": (3, 64, 64)},
    "spnasnet_100": {"input_size": (3, 64, 64)},
}


def settings(name: str) -> dict[str, Any]:
    """Merged settings for model ``name``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for pattern, extra in QUIRKS.items():
        if fnmatch.fnmatch(name, pattern):
            for k, v in extra.items():
                out[k] = {**out[k], **v} if isinstance(v, dict) else v
    return out
