"""Per-model test settings: the one place where model quirks live (no ``if name == ...`` in the tests).

Each entry maps a shell-style pattern to settings; later matching entries override earlier ones.

Settings:
    create: extra ``create_model`` arguments for the tests (e.g. a smaller ``img_size`` for speed).
    input_size: (C, H, W) to test at; default the model's pretrained config.
    tol: relative tolerance of deploy and ONNX parity (max abs error / max abs output).
    step: global training step given to the in-model schedules (``blocks.set_step``) before the BN statistics are
        measured, e.g. past the end of PRepBN's decay as in a trained model; None leaves them at step 0.
"""

from __future__ import annotations

import fnmatch
from typing import Any

DEFAULTS: dict[str, Any] = {"create": {}, "input_size": None, "tol": 1e-4, "step": None}

QUIRKS: dict[str, dict[str, Any]] = {
    # EfficientViT's geometry is fixed by img_size; 224 is cheap enough for all six.
    # SLAB: geometry from img_size; 64 px keeps every window valid (one window per stage for SLAB-Swin, PVT's
    # reductions 8/4/2/1 still divide). Swin-T-PRepBN's 7x7 windows need 224. PRepBN evaluates with RepBN alone, so
    # its BN statistics are measured past the end of the LN-to-RepBN decay (on the path eval uses), as trained.
    "slab_deit_[ts]": {"create": {"img_size": 64}, "step": 1_000_000},
    "deit_[ts]_prepbn": {"create": {"img_size": 64}, "step": 1_000_000},
    "slab_swin_[tsb]": {"create": {"img_size": 64}, "step": 1_000_000},
    "swin_t_prepbn": {"step": 1_000_000},
    "slab_pvt_[tsm]": {"create": {"img_size": 64}, "step": 1_000_000},
    "pvt_[tsm]_prepbn": {"create": {"img_size": 64}, "step": 1_000_000},
}


def settings(name: str) -> dict[str, Any]:
    """Merged settings for model ``name``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for pattern, extra in QUIRKS.items():
        if fnmatch.fnmatch(name, pattern):
            for k, v in extra.items():
                out[k] = {**out[k], **v} if isinstance(v, dict) else v
    return out
