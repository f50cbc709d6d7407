"""SLAB-DeiT and DeiT-PRepBN: DeiT with progressive re-parameterized BatchNorm, and with simplified linear attention.

Paper: "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive Re-parameterized Batch
Normalization", Jialong Guo, Xinghao Chen, Yehui Tang, Yunhe Wang, ICML 2024, arXiv 2405.11582.
Origin: xinghaochen/SLAB, ``classification/models/deit.py`` (DeiT-PRepBN) and ``slab_deit.py`` (SLAB-DeiT), built on
DeiT (facebookresearch/deit, Apache-2.0); weights released by the authors on the repository's GitHub releases.

Layout: 16x16 patch embedding, ``depth`` pre-norm blocks (``blocks.SlabBlock``) whose norms are RepBN / PRepBN, a
final norm and a linear classifier. DeiT-PRepBN keeps DeiT's class token and softmax attention. SLAB-DeiT uses
simplified linear attention (ReLU kernel, 5x5 depthwise conv on the values, a positional encoding added to the
keys), position embeddings for the patches only and average pooling; like the original it still holds a class token
that the forward never reads (it is here a frozen parameter so that the parameter count and the checkpoint layout
match, and so that no parameter is left without gradient).

Norm schedules, as released: DeiT-T-PRepBN uses plain RepBN from the start (the ``deit_tiny_patch16_224_repbn``
builder), DeiT-S-PRepBN PRepBN over 300,000 steps, SLAB-DeiT PRepBN over 60,000 steps; LayerNorm eps 1e-6.
``prepbn_steps`` / ``prepbn_warmup`` override them (0 steps: plain RepBN). Evaluation uses RepBN alone, also before
the schedule has ended (as the original).

Deviations from the original:
* the PRepBN schedule is driven by the training loop's global step (``blocks.set_step``) instead of a per-module
  counter of training forward calls; checkpoint counters convert (``step = total_step - iter``);
* the linear attention's positional encoding has one entry per patch at any ``img_size`` (the original hard-codes
  14 x 14, i.e. 224 px);
* deploy (``blocks.reparameterize_model``) folds every norm into the linear layer after it, the final one into the
  classifier: in the deployed model ``forward_features`` returns the tokens before that (folded) norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import trunc_normal_
from torch import nn

from blocks import (
    SimplifiedLinearAttention,
    SlabBlock,
    SoftmaxAttention,
    convert_linearnorm,
    fold_norm_into_head,
    make_repbn_norm,
)
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, Reported

__all__ = ["SlabDeiTCfg", "SlabDeiT", "convert_original"]


@dataclass(frozen=True)
class SlabDeiTCfg:
    """Architecture of one variant.

    Attributes:
        embed_dim: token channels.
        depth: blocks.
        num_heads: attention heads.
        linear_attn: simplified linear attention, patch-only position embedding and average pooling (SLAB-DeiT);
            otherwise softmax attention and the class token (DeiT-PRepBN).
        prepbn_steps: PRepBN decay steps as released (0: plain RepBN).
        mlp_ratio: MLP width relative to ``embed_dim``.
        patch_size: patch side.
        kernel_size: depthwise conv of the linear attention.
        ln_eps: LayerNorm epsilon of PRepBN.
    """

    embed_dim: int
    depth: int
    num_heads: int
    linear_attn: bool
    prepbn_steps: int
    mlp_ratio: float = 4.0
    patch_size: int = 16
    kernel_size: int = 5
    ln_eps: float = 1e-6


class SlabDeiT(nn.Module):
    """DeiT with RepBN/PRepBN norms, optionally with simplified linear attention (SLAB-DeiT).

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for none).
        in_chans: input channels.
        img_size: input side (square, a multiple of the patch size).
        drop_rate: dropout after the position embedding, in the attention projection and the MLP.
        drop_path_rate: stochastic depth, increasing linearly over the blocks.
        prepbn_steps: PRepBN decay steps (default the released schedule; 0 builds plain RepBN).
        prepbn_warmup: LayerNorm-only steps before the decay.
    """

    def __init__(
        self,
        cfg: SlabDeiTCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        prepbn_steps: int | None = None,
        prepbn_warmup: int = 0,
    ) -> None:
        super().__init__()
        if img_size % cfg.patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {cfg.patch_size}")
        self.cfg, self.num_classes, self.in_chans, self.img_size = cfg, num_classes, in_chans, img_size
        self.drop_rate, self.drop_path_rate = drop_rate, drop_path_rate
        self.num_features = d = cfg.embed_dim
        self.grid = (img_size // cfg.patch_size,) * 2
        n = self.grid[0] * self.grid[1]
        steps = cfg.prepbn_steps if prepbn_steps is None else prepbn_steps
        norm_layer = partial(make_repbn_norm, prepbn_steps=steps, prepbn_warmup=prepbn_warmup, ln_eps=cfg.ln_eps)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, d, cfg.patch_size, cfg.patch_size)
        # SLAB-DeiT keeps DeiT's class token but never reads it: frozen, as it never receives a gradient there.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d), requires_grad=not cfg.linear_attn)
        self.num_prefix = 0 if cfg.linear_attn else 1
        self.pos_embed = nn.Parameter(torch.zeros(1, n + self.num_prefix, d))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(
            *[
                SlabBlock(d, self._attn(drop_rate), norm_layer, cfg.mlp_ratio, drop_rate, dpr[i])
                for i in range(cfg.depth)
            ]
        )
        self.norm = norm_layer(d)
        ends = [cfg.depth * (i + 1) // 4 - 1 for i in range(4)]
        self.feature_info = FeatureInfo(
            {"num_chs": d, "reduction": cfg.patch_size, "module": f"blocks.{i}", "index": i} for i in ends
        )
        self.pretrained_cfg: dict = {}
        self.deployed = False
        self.reset_classifier(num_classes)
        self._init_weights()

    def _attn(self, drop: float) -> nn.Module:
        c = self.cfg
        if c.linear_attn:
            return SimplifiedLinearAttention(c.embed_dim, c.num_heads, self.grid, c.kernel_size, proj_drop=drop)
        return SoftmaxAttention(c.embed_dim, c.num_heads, self.grid[0] * self.grid[1] + 1, proj_drop=drop)

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: none)."""
        if self.deployed:
            raise RuntimeError("the final norm is folded into the classifier: reset it before reparameterizing")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay (as DeiT): position embedding and class token."""
        return {"pos_embed", "cls_token"}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # B, C, H, W -> B, HW, C
        if self.num_prefix:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Patch-token maps (B, C, H/16, W/16) after the blocks in ``feature_info``, levels ``0..stop``."""
        ends = [f["index"] for f in self.feature_info][: None if stop is None else stop + 1]
        x, outs = self._embed(x), []
        for i, blk in enumerate(self.blocks[: ends[-1] + 1]):
            x = blk(x)
            if i in ends:  # B, N, C -> B, C, N -> B, C, H, W
                outs.append(x[:, self.num_prefix :].transpose(1, 2).reshape(-1, self.num_features, *self.grid))
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized tokens (B, N, C) (class token first for DeiT-PRepBN)."""
        return self.norm(self.blocks(self._embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average of the patch tokens (SLAB) or the class token (PRepBN), then the classifier."""
        x = x.mean(dim=1) if self.cfg.linear_attn else x[:, 0]  # B, N, C -> B, C
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the final norm into the classifier (a channel affine when there is none). The blocks fold their own."""
        if self.deployed:
            return
        self.norm, self.head = fold_norm_into_head(self.norm, self.head)
        self.deployed = True


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' DeiT-PRepBN / SLAB-DeiT checkpoints to ours.

    The module names are the same; ``LinearNorm`` norms (``norm1``/``norm2`` inside, with step counters) become
    ``PRepBN`` (``ln``/``repbn`` inside, with a ``step`` buffer). Plain-RepBN checkpoints need no change.
    """
    if "pos_embed" not in state_dict or not any(k.startswith("blocks.0.") for k in state_dict):
        raise KeyError("not an original SLAB DeiT checkpoint (no pos_embed / blocks.0.* keys)")
    return convert_linearnorm(state_dict)


_URL = "https://github.com/xinghaochen/SLAB/releases/download/ckpts/{}.pth"
_LIC = "Apache-2.0 (code); weights: no licence stated"
_SRC = "xinghaochen/SLAB (authors), ImageNet-1k, 300 epochs"
_WEIGHTS = {
    name: WeightSpec(_URL.format(file), "original", license=_LIC, source=_SRC, top1=top1)
    for name, file, top1 in (
        ("deit_t_prepbn", "deit_tiny_prepbn", 73.6),
        ("deit_s_prepbn", "deit_small_prepbn", 80.2),
        ("slab_deit_t", "slab_deit_tiny", 74.3),
        ("slab_deit_s", "slab_deit_small", 80.0),
    )
}
_REPORTED = {name: Reported(top1=spec.top1, source="xinghaochen/SLAB README") for name, spec in _WEIGHTS.items()}

FAMILY = Family(
    name="slab_deit",
    paper=Paper(
        title="SLAB: Efficient Transformers with Simplified Linear Attention and Progressive Re-parameterized "
        "Batch Normalization",
        arxiv="2405.11582",
        venue="ICML 2024",
        repo="https://github.com/xinghaochen/SLAB",
        code_license="Apache-2.0",
        weights_license="not stated",
    ),
    model_cls=SlabDeiT,
    converters={"original": convert_original},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("RepBN", "PRepBN", "SimplifiedLinearAttention", "SlabBlock"),
    remaining_norms=(),
)


@FAMILY.register(first_conv="patch_embed.proj", classifier=("head",))
def deit_t_prepbn(**kwargs) -> SlabDeiT:
    """DeiT-T with RepBN (the released builder's plain RepBN): 5.72 M params."""
    return SlabDeiT(SlabDeiTCfg(192, 12, 3, linear_attn=False, prepbn_steps=0), **kwargs)


@FAMILY.register(first_conv="patch_embed.proj", classifier=("head",))
def deit_s_prepbn(**kwargs) -> SlabDeiT:
    """DeiT-S with PRepBN over 300k steps: 22.07 M params."""
    return SlabDeiT(SlabDeiTCfg(384, 12, 6, linear_attn=False, prepbn_steps=300_000), **kwargs)


@FAMILY.register(first_conv="patch_embed.proj", classifier=("head",))
def slab_deit_t(**kwargs) -> SlabDeiT:
    """SLAB-DeiT-T: linear attention, PRepBN over 60k steps: 6.20 M params."""
    return SlabDeiT(SlabDeiTCfg(192, 12, 3, linear_attn=True, prepbn_steps=60_000), **kwargs)


@FAMILY.register(first_conv="patch_embed.proj", classifier=("head",))
def slab_deit_s(**kwargs) -> SlabDeiT:
    """SLAB-DeiT-S: linear attention, PRepBN over 60k steps: 22.99 M params."""
    return SlabDeiT(SlabDeiTCfg(384, 12, 6, linear_attn=True, prepbn_steps=60_000), **kwargs)
