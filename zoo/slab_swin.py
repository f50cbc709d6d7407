"""SLAB-Swin and Swin-PRepBN: Swin Transformer with re-parameterized BatchNorm, and with simplified linear attention.

Paper: "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive Re-parameterized Batch
Normalization", Jialong Guo, Xinghao Chen, Yehui Tang, Yunhe Wang, ICML 2024, arXiv 2405.11582.
Origin: xinghaochen/SLAB, ``classification/models/slab_swin.py`` (SLAB-Swin) and ``swin_transformer.py``
(Swin-PRepBN), built on Swin Transformer (microsoft/Swin-Transformer, MIT); weights released by the authors.

Layout: a 4x4 patch embedding with a norm, four stages of Swin blocks (stages 2-4 start with a patch merging whose
norm precedes the 2x reduction), a final norm, average pooling and a linear classifier. Every norm is RepBN
(Swin-T-PRepBN, as released) or PRepBN over 60,000 steps (SLAB-Swin; LayerNorm eps 1e-5). SLAB-Swin's first two
stages use simplified linear attention over windows of 56 (clamped to the feature map: one global window per stage at
224 px), the last two softmax window attention with windows of 7, shifted in every second block.

Geometry (window sizes, shifts, attention masks, the relative-position index) is computed once from ``img_size``
as Python ints and constant buffers; a window larger than the feature map is clamped to it and not shifted, as in
Swin. Feature maps must divide into whole windows (classification Swin does not pad): other sizes raise.

Deviations from the original:
* PRepBN is driven by the training loop's global step (``blocks.set_step``), see ``blocks.repbn``;
* patch merging sits at the start of stages 2-4 (timm's layout; the original closes stages 1-3 with it), so that
  ``forward_intermediates`` gives the stage outputs at strides 4-32; the converter moves the keys;
* deploy folds every norm into the layer after it (the patch-embedding norm into the patch convolution, the final
  norm into the classifier), turns the relative-position bias into a dense buffer with the shift mask added, and
  skips window partitioning where a stage is a single window. The original's own ``merge_bn`` pushes the final
  norm back through the last stage instead and folds only the BN, not ``alpha``, into the patch-embedding bias.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.nn import functional as F

from blocks import (
    SimplifiedLinearAttention,
    SlabBlock,
    SlabPatchEmbed,
    convert_linearnorm,
    fold_norm_into_head,
    make_repbn_norm,
)
from blocks.repbn import fold_affine_into_linear, norm_affine
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, Reported

__all__ = ["SlabSwinCfg", "SlabSwin", "convert_original"]


@dataclass(frozen=True)
class _Windows:
    """Window geometry of one block: feature map ``res x res``, windows of ``size``, cyclic shift ``shift``."""

    res: int
    size: int
    shift: int

    @property
    def count(self) -> int:
        return (self.res // self.size) ** 2


def _window_geometry(res: int, window: int, shifted: bool) -> _Windows:
    if res <= window:  # one window covers the map: no partition, no shift
        return _Windows(res, res, 0)
    if res % window:
        raise ValueError(f"a {res}x{res} feature map does not divide into {window}x{window} windows; pick img_size")
    return _Windows(res, window, window // 2 if shifted else 0)


def _partition(x: torch.Tensor, g: _Windows, c: int) -> torch.Tensor:
    """B, L, C tokens -> B * nW, size * size, C window tokens (after the cyclic shift)."""
    r, s = g.res, g.size
    x = x.reshape(-1, r, r, c)  # B, L, C -> B, H, W, C
    if g.shift:
        x = torch.roll(x, shifts=(-g.shift, -g.shift), dims=(1, 2))
    x = x.reshape(-1, r // s, s, r // s, s, c).transpose(2, 3)  # B, H, W, C -> B, nH, nW, s, s, C
    return x.reshape(-1, s * s, c)  # -> B * nW, s * s, C


def _reverse(x: torch.Tensor, g: _Windows, c: int) -> torch.Tensor:
    """Inverse of :func:`_partition`."""
    r, s = g.res, g.size
    x = x.reshape(-1, r // s, r // s, s, s, c).transpose(2, 3).reshape(-1, r, r, c)  # B * nW, s * s, C -> B, H, W, C
    if g.shift:
        x = torch.roll(x, shifts=(g.shift, g.shift), dims=(1, 2))
    return x.reshape(-1, r * r, c)  # B, H, W, C -> B, L, C


def _shift_mask(g: _Windows) -> torch.Tensor:
    """(nW, N, N) additive mask: -100 between tokens that the cyclic shift brought together from different regions."""
    grid = torch.zeros(1, g.res, g.res, 1)
    cuts = (slice(0, -g.size), slice(-g.size, -g.shift), slice(-g.shift, None))
    for i, (h, w) in enumerate(itertools.product(cuts, cuts)):
        grid[:, h, w, :] = i
    ids = _partition(grid.reshape(1, -1, 1), _Windows(g.res, g.size, 0), 1)[..., 0]  # nW, N region ids
    return (ids[:, None, :] != ids[:, :, None]).float() * -100.0


def _relative_index(s: int) -> torch.Tensor:
    """(N, N) index into the (2s-1)^2 relative-position table of an s x s window."""
    coords = torch.stack(torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")).flatten(1)  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (s - 1)  # N, N, 2
    return rel[..., 0] * (2 * s - 1) + rel[..., 1]


class WindowAttention(nn.Module):
    """Softmax attention in (shifted) windows with a relative-position bias, on B, L, C tokens."""

    def __init__(self, dim: int, num_heads: int, g: _Windows, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.g, self.num_heads, self.dim = g, num_heads, dim
        self.head_dim = dim // num_heads
        n = g.size * g.size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * g.size - 1) ** 2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", _relative_index(g.size).reshape(-1), persistent=False)
        self.register_buffer("attn_mask", _shift_mask(g) if g.shift else None, persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.n = n
        self.bias_windows = g.count if g.shift else 1  # leading dim of the (masked) bias
        self.deployed = False

    def _bias(self) -> torch.Tensor:
        """(nH, N, N) relative-position bias, or (nW, nH, N, N) with the shift mask added."""
        if self.deployed:
            return self.attn_bias
        bias = self.relative_position_bias_table[self.relative_position_index]  # N*N, nH
        bias = bias.reshape(self.n, self.n, -1).permute(2, 0, 1)[None]  # N*N, nH -> 1, nH, N, N
        return bias[0] if self.attn_mask is None else bias + self.attn_mask[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, n, h, d = self.g, self.n, self.num_heads, self.head_dim
        x = _partition(x, g, self.dim) if g.count > 1 else x
        # B*nW, N, 3C -> B*nW, N, 3, h, d -> 3, B*nW, h, N, d
        q, k, v = self.qkv(x).reshape(-1, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._bias()
        if self.bias_windows > 1:  # B*nW, h, N, d -> B, nW*h, N, d against the (nW*h, N, N) masked bias
            q, k, v = (t.reshape(-1, self.bias_windows * h, n, d) for t in (q, k, v))
            bias = bias.reshape(-1, n, n)  # nW, h, N, N -> nW*h, N, N
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x.reshape(-1, h, n, d).transpose(1, 2).reshape(-1, n, self.dim)  # B*nW, h, N, d -> B*nW, N, C
        x = self.proj_drop(self.proj(x))
        return _reverse(x, g, self.dim) if g.count > 1 else x

    @torch.no_grad()
    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Fold a per-channel affine of the input into ``qkv`` (windowing only permutes tokens)."""
        self.qkv = fold_affine_into_linear(self.qkv, scale, shift)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Gather the relative-position bias (plus the shift mask) into one dense buffer."""
        if self.deployed:
            return
        self.register_buffer("attn_bias", self._bias().contiguous(), persistent=False)
        self.relative_position_bias_table = self.relative_position_index = self.attn_mask = None
        self.deployed = True


class WindowLinearAttention(SimplifiedLinearAttention):
    """Simplified linear attention in (shifted) windows, on B, L, C tokens; like the original it ignores the mask."""

    def __init__(self, dim: int, num_heads: int, g: _Windows, kernel_size: int, proj_drop: float = 0.0) -> None:
        super().__init__(dim, num_heads, (g.size, g.size), kernel_size, proj_drop=proj_drop)
        self.g = g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.g.count == 1:
            return super().forward(x)
        return _reverse(super().forward(_partition(x, self.g, self.dim)), self.g, self.dim)


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation (4C), norm, linear reduction to 2C; the norm folds into the reduction."""

    def __init__(self, dim: int, res: int, norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__()
        if res % 2:
            raise ValueError(f"patch merging needs an even feature map, got {res}x{res}; pick img_size")
        self.dim, self.res = dim, res
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, c = self.res // 2, self.dim
        x = x.reshape(-1, r, 2, r, 2, c).permute(
            0, 1, 3, 4, 2, 5
        )  # B, L, C -> B, H/2, dh, W/2, dw, C -> B, H/2, W/2, dw, dh, C
        return self.reduction(self.norm(x.reshape(-1, r * r, 4 * c)))  # -> B, HW/4, 4C (x00, x10, x01, x11)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the norm into the reduction (which gains a bias). No-op when already deployed."""
        if self.deployed:
            return
        self.reduction, self.norm = fold_affine_into_linear(self.reduction, *norm_affine(self.norm)), nn.Identity()
        self.deployed = True


class SlabSwinStage(nn.Module):
    """Optional patch merging, then blocks at one resolution."""

    def __init__(self, downsample: nn.Module | None, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x) if self.downsample is not None else x)


@dataclass(frozen=True)
class SlabSwinCfg:
    """Architecture of one variant.

    Attributes:
        embed_dim: channels of stage 1 (doubling per stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        attn_types: per stage ``"L"`` (simplified linear attention) or ``"S"`` (softmax window attention).
        window_size: window of the linear-attention stages; softmax stages use 7 (12 when this exceeds 56).
        prepbn_steps: PRepBN decay steps as released (0: plain RepBN).
        patch_size: patch-embedding stride.
        mlp_ratio: MLP width relative to the stage width.
        kernel_size: depthwise conv of the linear attention.
        ln_eps: LayerNorm epsilon of PRepBN.
    """

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    attn_types: str
    window_size: int
    prepbn_steps: int
    patch_size: int = 4
    mlp_ratio: float = 4.0
    kernel_size: int = 5
    ln_eps: float = 1e-5


class SlabSwin(nn.Module):
    """Swin Transformer with RepBN/PRepBN norms and, per stage, linear or softmax window attention.

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for none).
        in_chans: input channels.
        img_size: input side (square); every stage's map must divide into whole windows.
        drop_rate: dropout after the patch embedding, in the attention projection and the MLP.
        drop_path_rate: stochastic depth, increasing linearly over the blocks.
        prepbn_steps: PRepBN decay steps (default the released schedule; 0 builds plain RepBN).
        prepbn_warmup: LayerNorm-only steps before the decay.
    """

    def __init__(
        self,
        cfg: SlabSwinCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        prepbn_steps: int | None = None,
        prepbn_warmup: int = 0,
    ) -> None:
        super().__init__()
        if img_size % (cfg.patch_size * 2 ** (len(cfg.depths) - 1)):
            raise ValueError(f"img_size {img_size} is not a multiple of {cfg.patch_size * 2 ** (len(cfg.depths) - 1)}")
        self.cfg, self.num_classes, self.in_chans, self.img_size = cfg, num_classes, in_chans, img_size
        self.drop_rate, self.drop_path_rate = drop_rate, drop_path_rate
        steps = cfg.prepbn_steps if prepbn_steps is None else prepbn_steps
        norm_layer = partial(make_repbn_norm, prepbn_steps=steps, prepbn_warmup=prepbn_warmup, ln_eps=cfg.ln_eps)
        self.patch_embed = SlabPatchEmbed(in_chans, cfg.embed_dim, cfg.patch_size, norm_layer)
        self.pos_drop = nn.Dropout(drop_rate)
        n = sum(cfg.depths)
        dpr = iter([drop_path_rate * i / max(n - 1, 1) for i in range(n)])
        res, stages, self.feature_info = img_size // cfg.patch_size, [], FeatureInfo()
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            dim = cfg.embed_dim * 2**i
            merge = PatchMerging(dim // 2, res, norm_layer) if i else None
            res //= 2 if i else 1
            blocks = [self._block(dim, heads, res, cfg.attn_types[i], j, norm_layer, next(dpr)) for j in range(depth)]
            stages.append(SlabSwinStage(merge, blocks))
            self.feature_info.append({"num_chs": dim, "reduction": img_size // res, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.resolutions = [img_size // f["reduction"] for f in self.feature_info]
        self.num_features = cfg.embed_dim * 2 ** (len(cfg.depths) - 1)
        self.norm = norm_layer(self.num_features)
        self.pretrained_cfg: dict = {}
        self.deployed = False
        self.reset_classifier(num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _block(
        self, dim: int, heads: int, res: int, kind: str, j: int, norm_layer: Callable[[int], nn.Module], dp: float
    ) -> SlabBlock:
        c = self.cfg
        if kind == "L":
            g = _window_geometry(res, c.window_size, shifted=j % 2 == 1)
            attn = WindowLinearAttention(dim, heads, g, c.kernel_size, proj_drop=self.drop_rate)
        elif kind == "S":
            g = _window_geometry(res, 7 if c.window_size <= 56 else 12, shifted=j % 2 == 1)
            attn = WindowAttention(dim, heads, g, proj_drop=self.drop_rate)
        else:
            raise ValueError(f"attention type must be 'L' or 'S', got {kind!r}")
        return SlabBlock(dim, attn, norm_layer, c.mlp_ratio, self.drop_rate, dp)

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
        """Parameters excluded from weight decay (as Swin): the relative-position bias tables."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Stage outputs (B, C, H, W) at strides 4, 8, 16, 32, levels ``0..stop``."""
        x, outs = self.pos_drop(self.patch_embed(x)), []
        for i, stage in enumerate(self.stages[: None if stop is None else stop + 1]):
            x = stage(x)
            r, c = self.resolutions[i], self.feature_info[i]["num_chs"]
            outs.append(x.transpose(1, 2).reshape(-1, c, r, r))  # B, L, C -> B, C, L -> B, C, H, W
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized tokens (B, L, C) of the last stage."""
        return self.norm(self.stages(self.pos_drop(self.patch_embed(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pooling over tokens and the classifier."""
        x = x.mean(dim=1)  # B, L, C -> B, C
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the final norm into the classifier (a channel affine when there is none). Submodules fold their own."""
        if self.deployed:
            return
        self.norm, self.head = fold_norm_into_head(self.norm, self.head)
        self.deployed = True


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' SLAB-Swin / Swin-PRepBN checkpoints to ours.

    ``layers.i.blocks.*`` become ``stages.i.blocks.*`` and ``layers.i.downsample.*`` (closing stage i) becomes
    ``stages.{i+1}.downsample.*``; the index and mask buffers are dropped (rebuilt from the config) and
    ``LinearNorm`` norms become ``PRepBN`` (see ``blocks.convert_linearnorm``).
    """
    if not any(k.startswith("layers.0.blocks.") for k in state_dict):
        raise KeyError("not an original SLAB Swin checkpoint (no layers.0.blocks.* keys)")
    out = {}
    for k, v in convert_linearnorm(state_dict).items():
        if k.endswith(("relative_position_index", "attn_mask")):
            continue
        parts = k.split(".")
        if parts[0] == "layers":
            i = int(parts[1])
            parts = ["stages", str(i + 1) if parts[2] == "downsample" else str(i), *parts[2:]]
        out[".".join(parts)] = v
    return out


_URL = "https://github.com/xinghaochen/SLAB/releases/download/ckpts/{}.pth"
_LIC = "Apache-2.0 (code); weights: no licence stated"
_SRC = "xinghaochen/SLAB (authors), ImageNet-1k, 300 epochs"
_WEIGHTS = {
    name: WeightSpec(_URL.format(file), "original", license=_LIC, source=_SRC, top1=top1)
    for name, file, top1 in (
        ("swin_t_prepbn", "swin_tiny_prepbn", 81.4),
        ("slab_swin_t", "slab_swin_tiny", 81.8),
        ("slab_swin_s", "slab_swin_small", 83.6),
    )
}
_REPORTED = {name: Reported(top1=spec.top1, source="xinghaochen/SLAB README") for name, spec in _WEIGHTS.items()}
_REPORTED["slab_swin_s"] = Reported(
    top1=83.6, latency="16.2 ms (paper abstract; device not stated)", source="xinghaochen/SLAB README, abstract"
)

FAMILY = Family(
    name="slab_swin",
    paper=Paper(
        title="SLAB: Efficient Transformers with Simplified Linear Attention and Progressive Re-parameterized "
        "Batch Normalization",
        arxiv="2405.11582",
        venue="ICML 2024",
        repo="https://github.com/xinghaochen/SLAB",
        code_license="Apache-2.0",
        weights_license="not stated",
    ),
    model_cls=SlabSwin,
    converters={"original": convert_original},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("RepBN", "PRepBN", "SimplifiedLinearAttention", "SlabBlock"),
    remaining_norms=(),
)
_REG = {"first_conv": "patch_embed.proj", "classifier": ("head",), "crop_pct": 0.875}


@FAMILY.register(**_REG)
def swin_t_prepbn(**kwargs) -> SlabSwin:
    """Swin-T with RepBN (the released model's plain RepBN), windows of 7: 28.29 M params."""
    return SlabSwin(SlabSwinCfg(96, (2, 2, 6, 2), (3, 6, 12, 24), "SSSS", 7, prepbn_steps=0), **kwargs)


@FAMILY.register(**_REG)
def slab_swin_t(**kwargs) -> SlabSwin:
    """SLAB-Swin-T: linear attention in stages 1-2, PRepBN over 60k steps: 29.22 M params."""
    return SlabSwin(SlabSwinCfg(96, (2, 2, 6, 2), (3, 6, 12, 24), "LLSS", 56, prepbn_steps=60_000), **kwargs)


@FAMILY.register(**_REG)
def slab_swin_s(**kwargs) -> SlabSwin:
    """SLAB-Swin-S: linear attention in stages 1-2, PRepBN over 60k steps: 50.55 M params."""
    return SlabSwin(SlabSwinCfg(96, (2, 2, 18, 2), (3, 6, 12, 24), "LLSS", 56, prepbn_steps=60_000), **kwargs)


@FAMILY.register(**_REG)
def slab_swin_b(**kwargs) -> SlabSwin:
    """SLAB-Swin-B (config only, no released weights): 89.03 M params."""
    return SlabSwin(SlabSwinCfg(128, (2, 2, 18, 2), (4, 8, 16, 32), "LLSS", 56, prepbn_steps=60_000), **kwargs)
