"""SLAB-PVT and PVT-PRepBN: Pyramid Vision Transformer with progressive re-parameterized BatchNorm.

Paper: "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive Re-parameterized Batch
Normalization", Jialong Guo, Xinghao Chen, Yehui Tang, Yunhe Wang, ICML 2024, arXiv 2405.11582.
Origin: xinghaochen/SLAB, ``classification/models/slab_pvt.py`` (both variants; attention type ``SSSS`` for
PVT-PRepBN, ``LLLL`` for SLAB-PVT), built on PVT v1 (whai362/PVT, Apache-2.0); weights released by the authors.

Layout: four stages, each a patch embedding (conv with stride 4, then 2) followed by a norm, a learned position
embedding and pre-norm blocks (``blocks.SlabBlock``); average pooling over the last stage's tokens (no class token,
no final norm) and a linear classifier. Every norm, including the patch-embedding norms and the norm after the
spatial reduction, is PRepBN over 300,000 steps (LayerNorm eps 1e-6). PVT-PRepBN uses PVT's spatial-reduction
attention (keys/values from a strided conv of ratio 8, 4, 2, 1); SLAB-PVT uses simplified linear attention over the
whole map with no reduction (the configs' ``PVT_LA_SR_RATIOS`` default 1111).

Deviations from the original:
* PRepBN is driven by the training loop's global step (``blocks.set_step``), see ``blocks.repbn``;
* the geometry is fixed by ``img_size`` (the original interpolates position embeddings for other input sizes);
* linear attention with a spatial reduction (``la_sr_ratios`` other than 1, used by no config) is not implemented;
* under autocast the linear attention runs in float32 (the original does this for DeiT and Swin, not PVT);
* deploy folds every norm into the layer after it: a block's first norm into the query projection and the
  reduction conv (or key/value projection), the reduction norm into the key/value projection, the
  patch-embedding norms into the patch convolutions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.nn import functional as F

from blocks import SimplifiedLinearAttention, SlabBlock, SlabPatchEmbed, convert_linearnorm, make_repbn_norm
from blocks.repbn import fold_affine_into_conv_input, fold_affine_into_linear, norm_affine
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, Reported

__all__ = ["SlabPvtCfg", "SlabPvt", "convert_original"]


class SpatialReductionAttention(nn.Module):
    """PVT's softmax attention whose keys and values come from a ``sr x sr`` strided conv of the map, then a norm."""

    def __init__(
        self, dim: int, num_heads: int, res: int, sr: int, norm_layer: Callable[[int], nn.Module], proj_drop: float
    ) -> None:
        super().__init__()
        self.dim, self.num_heads, self.head_dim, self.res, self.sr_ratio = dim, num_heads, dim // num_heads, res, sr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, sr)
            self.norm = norm_layer(dim)
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, m, h, d = self.res**2, (self.res // self.sr_ratio) ** 2, self.num_heads, self.head_dim
        q = self.q(x).reshape(-1, n, h, d).transpose(1, 2)  # B, N, C -> B, h, N, d
        if self.sr_ratio > 1:
            y = x.transpose(1, 2).reshape(-1, self.dim, self.res, self.res)  # B, N, C -> B, C, H, W
            y = self.norm(self.sr(y).flatten(2).transpose(1, 2))  # B, C, H', W' -> B, M, C
        else:
            y = x
        k, v = self.kv(y).reshape(-1, m, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # B, M, 2C -> 2, B, h, M, d
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, n, self.dim)  # B, h, N, d -> B, N, C
        return self.proj_drop(self.proj(x))

    @torch.no_grad()
    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Fold a per-channel affine of the input into ``q`` and the reduction conv (``kv`` when there is none)."""
        self.q = fold_affine_into_linear(self.q, scale, shift)
        if self.sr_ratio > 1:
            self.sr = fold_affine_into_conv_input(self.sr, scale, shift)
        else:
            self.kv = fold_affine_into_linear(self.kv, scale, shift)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the reduction norm into ``kv``. No-op when already deployed."""
        if self.deployed:
            return
        if self.sr_ratio > 1:
            self.kv, self.norm = fold_affine_into_linear(self.kv, *norm_affine(self.norm)), nn.Identity()
        self.deployed = True


class SlabPvtStage(nn.Module):
    """Patch embedding, position embedding and blocks at one resolution; returns a (B, C, H, W) map."""

    def __init__(self, patch_embed: SlabPatchEmbed, res: int, dim: int, blocks: list[nn.Module], drop: float) -> None:
        super().__init__()
        self.res, self.dim = res, dim
        self.patch_embed = patch_embed
        self.pos_embed = nn.Parameter(torch.zeros(1, res * res, dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.pos_drop(self.patch_embed(x) + self.pos_embed))
        return x.transpose(1, 2).reshape(-1, self.dim, self.res, self.res)  # B, N, C -> B, C, H, W


@dataclass(frozen=True)
class SlabPvtCfg:
    """Architecture of one variant.

    Attributes:
        depths: blocks per stage.
        linear_attn: simplified linear attention (SLAB-PVT) instead of spatial-reduction attention (PVT-PRepBN).
        prepbn_steps: PRepBN decay steps as released (0: plain RepBN).
        embed_dims: channels per stage.
        num_heads: heads per stage.
        mlp_ratios: MLP width per stage.
        sr_ratios: spatial reduction of the softmax attention per stage.
        patch_size: stride of the first patch embedding (later ones use 2).
        kernel_size: depthwise conv of the linear attention.
        ln_eps: LayerNorm epsilon of PRepBN.
    """

    depths: tuple[int, ...]
    linear_attn: bool
    prepbn_steps: int = 300_000
    embed_dims: tuple[int, ...] = (64, 128, 320, 512)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    patch_size: int = 4
    kernel_size: int = 5
    ln_eps: float = 1e-6


class SlabPvt(nn.Module):
    """PVT v1 with PRepBN norms, optionally with simplified linear attention (SLAB-PVT).

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for none).
        in_chans: input channels.
        img_size: input side (square, a multiple of 32 and of the reductions).
        drop_rate: dropout after the position embeddings, in the attention projection and the MLP.
        drop_path_rate: stochastic depth, increasing linearly over the blocks.
        prepbn_steps: PRepBN decay steps (default the released schedule; 0 builds plain RepBN).
        prepbn_warmup: LayerNorm-only steps before the decay.
    """

    def __init__(
        self,
        cfg: SlabPvtCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        prepbn_steps: int | None = None,
        prepbn_warmup: int = 0,
    ) -> None:
        super().__init__()
        stride = cfg.patch_size * 2 ** (len(cfg.depths) - 1)
        if img_size % stride:
            raise ValueError(f"img_size {img_size} is not a multiple of {stride}")
        self.cfg, self.num_classes, self.in_chans, self.img_size = cfg, num_classes, in_chans, img_size
        self.drop_rate, self.drop_path_rate = drop_rate, drop_path_rate
        steps = cfg.prepbn_steps if prepbn_steps is None else prepbn_steps
        norm_layer = partial(make_repbn_norm, prepbn_steps=steps, prepbn_warmup=prepbn_warmup, ln_eps=cfg.ln_eps)
        n = sum(cfg.depths)
        dpr = iter([drop_path_rate * i / max(n - 1, 1) for i in range(n)])
        stages, self.feature_info, in_chs, res = [], FeatureInfo(), in_chans, img_size
        for i, (dim, depth) in enumerate(zip(cfg.embed_dims, cfg.depths)):
            patch = cfg.patch_size if i == 0 else 2
            res //= patch
            if not cfg.linear_attn and res % cfg.sr_ratios[i]:
                raise ValueError(f"stage {i + 1}: a {res}x{res} map does not reduce by {cfg.sr_ratios[i]}")
            blocks = [
                SlabBlock(dim, self._attn(i, res, norm_layer), norm_layer, cfg.mlp_ratios[i], drop_rate, next(dpr))
                for _ in range(depth)
            ]
            stages.append(SlabPvtStage(SlabPatchEmbed(in_chs, dim, patch, norm_layer), res, dim, blocks, drop_rate))
            self.feature_info.append({"num_chs": dim, "reduction": img_size // res, "module": f"stages.{i}"})
            in_chs = dim
        self.stages = nn.Sequential(*stages)
        self.num_features = cfg.embed_dims[-1]
        self.pretrained_cfg: dict = {}
        self.reset_classifier(num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _attn(self, i: int, res: int, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
        c, dim, heads = self.cfg, self.cfg.embed_dims[i], self.cfg.num_heads[i]
        if c.linear_attn:
            return SimplifiedLinearAttention(
                dim, heads, (res, res), c.kernel_size, separate_kv=True, proj_drop=self.drop_rate
            )
        return SpatialReductionAttention(dim, heads, res, c.sr_ratios[i], norm_layer, self.drop_rate)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay: none (the original names only a class token it does not have)."""
        return set()

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Stage outputs (B, C, H, W) at strides 4, 8, 16, 32, levels ``0..stop``."""
        outs = []
        for stage in self.stages[: None if stop is None else stop + 1]:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's map (B, C, H/32, W/32)."""
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pooling and the classifier."""
        x = x.mean(dim=(2, 3))  # B, C, H, W -> B, C
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' SLAB-PVT / PVT-PRepBN checkpoints to ours.

    ``patch_embed{i}.*``, ``pos_embed{i}`` and ``block{i}.*`` (stage i, from 1) become ``stages.{i-1}.patch_embed.*``,
    ``stages.{i-1}.pos_embed`` and ``stages.{i-1}.blocks.*``; ``LinearNorm`` norms become ``PRepBN``.
    """
    if "pos_embed1" not in state_dict:
        raise KeyError("not an original SLAB PVT checkpoint (no pos_embed1)")
    out = {}
    for k, v in convert_linearnorm(state_dict).items():
        first, _, rest = k.partition(".")
        for name, ours in (("patch_embed", "patch_embed"), ("pos_embed", "pos_embed"), ("block", "blocks")):
            if first.startswith(name) and first[len(name) :].isdigit():
                k = f"stages.{int(first[len(name) :]) - 1}.{ours}" + (f".{rest}" if rest else "")
                break
        out[k] = v
    return out


_URL = "https://github.com/xinghaochen/SLAB/releases/download/ckpts/{}.pth"
_LIC = "Apache-2.0 (code); weights: no licence stated"
_SRC = "xinghaochen/SLAB (authors), ImageNet-1k, 300 epochs"
_WEIGHTS = {
    name: WeightSpec(_URL.format(file), "original", license=_LIC, source=_SRC, top1=top1)
    for name, file, top1 in (
        ("pvt_t_prepbn", "pvt_tiny_prepbn", 76.0),
        ("pvt_s_prepbn", "pvt_small_prepbn", 80.1),
        ("pvt_m_prepbn", "pvt_medium_prepbn", 81.7),
        ("slab_pvt_t", "slab_pvt_tiny", 76.5),
    )
}
_REPORTED = {name: Reported(top1=spec.top1, source="xinghaochen/SLAB README") for name, spec in _WEIGHTS.items()}

FAMILY = Family(
    name="slab_pvt",
    paper=Paper(
        title="SLAB: Efficient Transformers with Simplified Linear Attention and Progressive Re-parameterized "
        "Batch Normalization",
        arxiv="2405.11582",
        venue="ICML 2024",
        repo="https://github.com/xinghaochen/SLAB",
        code_license="Apache-2.0",
        weights_license="not stated",
    ),
    model_cls=SlabPvt,
    converters={"original": convert_original},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("RepBN", "PRepBN", "SimplifiedLinearAttention", "SlabBlock"),
    remaining_norms=(),
)
_REG = {"first_conv": "stages.0.patch_embed.proj", "classifier": ("head",)}


@FAMILY.register(**_REG)
def pvt_t_prepbn(**kwargs) -> SlabPvt:
    """PVT-T with PRepBN over 300k steps: 13.24 M params."""
    return SlabPvt(SlabPvtCfg((2, 2, 2, 2), linear_attn=False), **kwargs)


@FAMILY.register(**_REG)
def pvt_s_prepbn(**kwargs) -> SlabPvt:
    """PVT-S with PRepBN over 300k steps: 24.51 M params."""
    return SlabPvt(SlabPvtCfg((3, 4, 6, 3), linear_attn=False), **kwargs)


@FAMILY.register(**_REG)
def pvt_m_prepbn(**kwargs) -> SlabPvt:
    """PVT-M with PRepBN over 300k steps: 44.25 M params."""
    return SlabPvt(SlabPvtCfg((3, 4, 18, 3), linear_attn=False), **kwargs)


@FAMILY.register(**_REG)
def slab_pvt_t(**kwargs) -> SlabPvt:
    """SLAB-PVT-T: linear attention, PRepBN over 300k steps: 12.16 M params."""
    return SlabPvt(SlabPvtCfg((2, 2, 2, 2), linear_attn=True), **kwargs)
