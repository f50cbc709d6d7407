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
    "sparse_*": {"input_size": (3, 64, 64)},  # 7 sparse variants: 64 px keeps them within their budget
    # EfficientMod has no fixed geometry (convs, LayerNorms, global attention): 128 px keeps every stage non-trivial.
    "efficientmod_*": {"input_size": (3, 128, 128)},
    # VoVNets up to 16.5 GMACs at 224: 96 px (96 -> 24 -> 12 -> 6 -> 3 through the ceil-mode pools).
    "*vovnet*": {"input_size": (3, 96, 96)},
    # 57 BN-folded layers without identity: float32 rounding reaches ~1.2e-4 (exact in float64, see test_vovnet.py).
    "vovnet57a": {"tol": 5e-4},
    # ResNet-RS: conv nets of 50-420 layers, tested at 64 px (at 32 px the stage-4 BN statistics come from 4 values
    # per channel and the random nets turn chaotic). Float32 rounding alone moves the unfolded random model's logits
    # (against float64) by 4e-5 (101), 1.3e-4 (152), 3.6e-4 (200), 1.2e-3 (270), 3.7e-3 (350), 3.2e-3 (420) of
    # their magnitude at 64 px, so deploy/ONNX parity gets ~5x that; test_resnet_rs.py checks the folding in float64.
    "resnetrs*": {"input_size": (3, 64, 64)},
    "resnetrs1[05]*": {"tol": 1e-3},
    "resnetrs2*": {"tol": 5e-3},
    "resnetrs[34]*": {"tol": 2e-2},
    # EfficientFormer: the attention grid follows img_size; 128 px gives a 4x4 grid (224 px: 7x7).
    "efficientformer_*": {"create": {"img_size": 128}},
    # Inverted-residual conv nets take any input size; 64 px (2x2 final maps) keeps the registry tests fast.
    "mobilenetv[12]_*": {"input_size": (3, 64, 64)},
    "efficientnet_b[0-9]": {"input_size": (3, 64, 64)},
    "tinynet_[a-e]": {"input_size": (3, 64, 64)},
    "fbnet[abc]_100": {"input_size": (3, 64, 64)},
    "proxylessnas_*": {"input_size": (3, 64, 64)},
    "spnasnet_100": {"input_size": (3, 64, 64)},
    # SLAB: geometry from img_size; 64 px keeps every window valid (one window per stage for SLAB-Swin, PVT's
    # reductions 8/4/2/1 still divide). Swin-T-PRepBN's 7x7 windows need 224. PRepBN evaluates with RepBN alone, so
    # its BN statistics are measured past the end of the LN-to-RepBN decay (on the path eval uses), as trained.
    "slab_deit_[ts]": {"create": {"img_size": 64}, "step": 1_000_000},
    "deit_[ts]_prepbn": {"create": {"img_size": 64}, "step": 1_000_000},
    "slab_swin_[tsb]": {"create": {"img_size": 64}, "step": 1_000_000},
    "swin_t_prepbn": {"step": 1_000_000},
    "slab_pvt_[tsm]": {"create": {"img_size": 64}, "step": 1_000_000},
    "pvt_[tsm]_prepbn": {"create": {"img_size": 64}, "step": 1_000_000},
    # SLAB-CSwin at 64 px: maps 16/8/4/2, the stripes clamp to one global branch per stage; the two-branch stripes
    # (both attention kinds) are checked against the authors' code in test_slab.py.
    "slab_cswin_[ts]": {"create": {"img_size": 64}, "step": 1_000_000},
    # T2T-ViT-14-UN: geometry from img_size; 64 px gives 16 + 1 tokens (224: 196 + 1).
    "t2t_vit_14_un": {"create": {"img_size": 64}},
}


def settings(name: str) -> dict[str, Any]:
    """Merged settings for model ``name``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for pattern, extra in QUIRKS.items():
        if fnmatch.fnmatch(name, pattern):
            for k, v in extra.items():
                out[k] = {**out[k], **v} if isinstance(v, dict) else v
    return out
