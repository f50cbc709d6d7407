"""SLAB-CSwin: CSWin Transformer with simplified linear attention and progressive re-parameterized BatchNorm.

Paper: "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive Re-parameterized Batch
Normalization", Jialong Guo, Xinghao Chen, Yehui Tang, Yunhe Wang, ICML 2024, arXiv 2405.11582.
Origin: xinghaochen/SLAB, ``classification/models/slab_cswin.py`` (``SLAB_CSWin_64_24181_tiny_224``,
``SLAB_CSWin_64_24322_small_224``, configs ``slab_cswin_{t,s}.yaml``: attention ``LLSS``, linear-attention split
sizes ``56-28-14-7``), built on CSWin Transformer (microsoft/CSWin-Transformer, MIT); weights released by the authors
(CSwin-T only).

Layout: an overlapping 7x7 stride-4 convolution stem with a norm; four stages of CSWin blocks, stages 2-4 opened by
a 3x3 stride-2 convolution with a norm (the original's ``Merge_Block``); a final norm, average pooling and a linear
classifier. A block is ``x + proj(attn(qkv(norm1(x))))`` then ``x + mlp(norm2(x))``. The attention splits its
channels into two halves attending within vertical (``res x split``) and horizontal (``split x res``) stripes;
where one stripe covers the map (``split == res``, and always in the last stage) one branch attends globally. Each
branch adds CSWin's locally-enhanced positional encoding (LePE: a 3x3 depthwise conv on the values of the stripe).
``"S"`` stages use softmax attention (CSWin's, split 7 in stages 3-4); ``"L"`` stages SLAB's simplified linear
attention (ReLU kernel, learned positional encoding on the keys, a depthwise conv shared by the heads; split sizes
56 and 28, i.e. global at 224 px), plus LePE. Every norm is PRepBN over 120,000 steps (LayerNorm eps 1e-5).

Geometry (stripes, window counts) is computed once from ``img_size`` as Python ints. Deviations from the original:
* PRepBN is driven by the training loop's global step (``blocks.set_step``), see ``blocks.repbn``;
* a split larger than its stage's map is clamped to it (one global branch, as when they are equal); the original
  cannot run such a size. ``img_size`` must be a multiple of 32 and every map divide into its stripes, else it raises;
* the original's mixed attention type ``"M"`` (used by no config) is not implemented;
* the linear attention keeps the original's unused ``scale`` parameter, frozen, so that checkpoints and parameter
  counts match;
* deploy folds every norm into the layer after it: ``norm1`` into ``qkv``, ``norm2`` into ``mlp.fc1``, the stem and
  merge norms into their convolutions, the final norm into the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.nn import functional as F

from blocks import SlabBlock, SlabPatchEmbed, convert_linearnorm, fold_norm_into_head, linear_attention, make_repbn_norm
from blocks.repbn import fold_affine_into_linear
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, Reported

__all__ = ["SlabCSwinCfg", "SlabCSwin", "convert_original"]


@dataclass(frozen=True)
class _Stripes:
    """A ``res x res`` map cut into windows of ``h x w`` tokens."""

    res: int
    h: int
    w: int

    @property
    def count(self) -> int:
        return (self.res // self.h) * (self.res // self.w)

    @property
    def n(self) -> int:
        return self.h * self.w


def _to_windows(x: torch.Tensor, g: _Stripes) -> torch.Tensor:
    """B, L, C tokens -> B * nW, h * w, C window tokens (windows row-major, tokens row-major inside)."""
    if g.count == 1:
        return x
    c = x.shape[-1]
    x = x.reshape(-1, g.res // g.h, g.h, g.res // g.w, g.w, c)  # B, L, C -> B, nH, h, nW, w, C
    return x.transpose(2, 3).reshape(-1, g.n, c)  # -> B, nH, nW, h, w, C -> B * nW, h * w, C


def _from_windows(x: torch.Tensor, g: _Stripes) -> torch.Tensor:
    """Inverse of :func:`_to_windows`."""
    if g.count == 1:
        return x
    c = x.shape[-1]
    x = x.reshape(-1, g.res // g.h, g.res // g.w, g.h, g.w, c)  # B * nW, h * w, C -> B, nH, nW, h, w, C
    return x.transpose(2, 3).reshape(-1, g.res * g.res, c)  # -> B, nH, h, nW, w, C -> B, L, C


class StripeAttention(nn.Module):
    """One branch: softmax (``linear=False``, CSWin's LePE attention) or simplified linear attention in stripes.

    Takes q, k, v as (B, L, C) tokens of the whole map and returns (B, L, C). Both kinds add LePE, a 3x3 depthwise
    conv over each window's values; the linear kind also has the positional encoding of the keys and the depthwise
    conv (``dwc``, over the head dimension, shared by the heads) of SLAB's linear attention.
    """

    def __init__(self, dim: int, num_heads: int, g: _Stripes, linear: bool, kernel_size: int = 5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim, self.g, self.linear = dim, num_heads, dim // num_heads, g, linear
        self.get_v = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        if linear:
            c = self.head_dim
            self.dwc = nn.Conv2d(c, c, kernel_size, padding=kernel_size // 2, groups=c)
            self.scale = nn.Parameter(torch.zeros(1, 1, dim), requires_grad=False)  # unused, as in the original
            self.positional_encoding = nn.Parameter(torch.zeros(1, g.n, dim))
            self.kv_first = g.n * g.n * (c + c) > c * c * (g.n + g.n)  # cheaper product order (the original's test)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        g, h, d = self.g, self.num_heads, self.head_dim
        q, k, v = (_to_windows(t, g) for t in (q, k, v))  # B * nW, N, C
        vmap = v.transpose(1, 2).reshape(-1, self.dim, g.h, g.w)  # B * nW, N, C -> B * nW, C, h, w
        lepe = self.get_v(vmap).reshape(-1, h, d, g.n).transpose(2, 3)  # -> B * nW, h, N, d
        if self.linear:
            q, k = torch.relu(q), torch.relu(k + self.positional_encoding)
        q, k, vh = (t.reshape(-1, g.n, h, d).transpose(1, 2) for t in (q, k, v))  # B * nW, N, C -> B * nW, h, N, d
        if self.linear:
            x = linear_attention(q, k, vh, self.kv_first)
            fmap = self.dwc(vh.reshape(-1, g.n, d).transpose(1, 2).reshape(-1, d, g.h, g.w))  # B*nW*h, d, h, w
            x = x + fmap.reshape(-1, h, d, g.n).transpose(2, 3)  # -> B * nW, h, N, d
        else:
            x = F.scaled_dot_product_attention(q, k, vh)
        x = (x + lepe).transpose(1, 2).reshape(-1, g.n, self.dim)  # B * nW, h, N, d -> B * nW, N, C
        return _from_windows(x, g)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}, stripe={self.g.h}x{self.g.w}, linear={self.linear}"


class CSwinAttention(nn.Module):
    """``proj(concat(branches(qkv(x))))``: one global branch, or two on the channel halves (vertical, horizontal)."""

    def __init__(
        self, dim: int, num_heads: int, res: int, split: int, linear: bool, kernel_size: int, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        self.dim = dim
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if split >= res:  # one stripe covers the map: a single global branch
            geoms, d, heads = [_Stripes(res, res, res)], dim, num_heads
        else:
            if res % split:
                raise ValueError(f"a {res}x{res} map does not divide into stripes of {split}; pick img_size")
            geoms, d, heads = [_Stripes(res, res, split), _Stripes(res, split, res)], dim // 2, num_heads // 2
        self.attns = nn.ModuleList(StripeAttention(d, heads, g, linear, kernel_size) for g in geoms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # B, L, 3C -> 3 x (B, L, C)
        if len(self.attns) == 1:
            return self.proj(self.attns[0](q, k, v))
        c = self.dim // 2
        halves = [a(q[..., s], k[..., s], v[..., s]) for a, s in zip(self.attns, (slice(0, c), slice(c, None)))]
        return self.proj(torch.cat(halves, dim=-1))

    @torch.no_grad()
    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Fold a per-channel affine of the input into ``qkv``."""
        self.qkv = fold_affine_into_linear(self.qkv, scale, shift)


class SlabCSwinStage(nn.Module):
    """Optional merge (3x3 stride-2 conv and norm on the token map), then blocks at one resolution."""

    def __init__(self, merge: SlabPatchEmbed | None, in_res: int, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.merge, self.in_res = merge, in_res
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merge is not None:
            c, r = self.merge.proj.in_channels, self.in_res
            x = x.transpose(1, 2).reshape(-1, c, r, r)  # B, L, C -> B, C, H, W
            x = self.merge(x)  # -> B, L/4, 2C
        return self.blocks(x)


@dataclass(frozen=True)
class SlabCSwinCfg:
    """Architecture of one variant.

    Attributes:
        depths: blocks per stage.
        embed_dim: channels of stage 1 (doubling per stage).
        num_heads: heads per stage.
        attn_types: per stage ``"L"`` (simplified linear attention) or ``"S"`` (softmax).
        split_sizes: stripe width of the softmax stages.
        la_split_sizes: stripe width of the linear-attention stages.
        prepbn_steps: PRepBN decay steps as released (0: plain RepBN).
        mlp_ratio: MLP width relative to the stage width.
        kernel_size: depthwise conv of the linear attention.
        ln_eps: LayerNorm epsilon of PRepBN.
    """

    depths: tuple[int, ...]
    embed_dim: int = 64
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    attn_types: str = "LLSS"
    split_sizes: tuple[int, ...] = (1, 2, 7, 7)
    la_split_sizes: tuple[int, ...] = (56, 28, 14, 7)
    prepbn_steps: int = 120_000
    mlp_ratio: float = 4.0
    kernel_size: int = 5
    ln_eps: float = 1e-5


class SlabCSwin(nn.Module):
    """CSWin Transformer with PRepBN norms and, per stage, simplified linear or softmax stripe attention.

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for none).
        in_chans: input channels.
        img_size: input side (square, a multiple of 32 whose stage maps divide into the stripes).
        drop_rate: dropout in the MLP.
        drop_path_rate: stochastic depth, increasing linearly over the blocks.
        prepbn_steps: PRepBN decay steps (default the released schedule; 0 builds plain RepBN).
        prepbn_warmup: LayerNorm-only steps before the decay.
    """

    def __init__(
        self,
        cfg: SlabCSwinCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        prepbn_steps: int | None = None,
        prepbn_warmup: int = 0,
    ) -> None:
        super().__init__()
        if img_size % 32:
            raise ValueError(f"img_size {img_size} is not a multiple of 32")
        if any(t not in "LS" for t in cfg.attn_types) or len(cfg.attn_types) != len(cfg.depths):
            raise ValueError(f"attn_types needs 'L' or 'S' for each of {len(cfg.depths)} stages: {cfg.attn_types!r}")
        self.cfg, self.num_classes, self.in_chans, self.img_size = cfg, num_classes, in_chans, img_size
        self.drop_rate, self.drop_path_rate = drop_rate, drop_path_rate
        steps = cfg.prepbn_steps if prepbn_steps is None else prepbn_steps
        norm_layer = partial(make_repbn_norm, prepbn_steps=steps, prepbn_warmup=prepbn_warmup, ln_eps=cfg.ln_eps)
        self.stem = SlabPatchEmbed(in_chans, cfg.embed_dim, 7, norm_layer, stride=4, padding=2)
        n = sum(cfg.depths)
        dpr = iter([drop_path_rate * i / max(n - 1, 1) for i in range(n)])
        res, stages, self.feature_info, self.resolutions = img_size // 4, [], FeatureInfo(), []
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            dim = cfg.embed_dim * 2**i
            merge = SlabPatchEmbed(dim // 2, dim, 3, norm_layer, stride=2, padding=1) if i else None
            in_res, res = res, res // 2 if i else res
            linear = cfg.attn_types[i] == "L"
            split = (cfg.la_split_sizes if linear else cfg.split_sizes)[i]
            split = res if i == len(cfg.depths) - 1 else split  # the last stage attends globally
            blocks = [
                SlabBlock(
                    dim,
                    CSwinAttention(dim, heads, res, split, linear, cfg.kernel_size),
                    norm_layer,
                    cfg.mlp_ratio,
                    drop_rate,
                    next(dpr),
                )
                for _ in range(depth)
            ]
            stages.append(SlabCSwinStage(merge, in_res, blocks))
            self.feature_info.append({"num_chs": dim, "reduction": img_size // res, "module": f"stages.{i}"})
            self.resolutions.append(res)
        self.stages = nn.Sequential(*stages)
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
        """Parameters excluded from weight decay: none (the original names a position embedding it does not have)."""
        return set()

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Stage outputs (B, C, H, W) at strides 4, 8, 16, 32, levels ``0..stop``."""
        x, outs = self.stem(x), []
        for i, stage in enumerate(self.stages[: None if stop is None else stop + 1]):
            x = stage(x)
            r, c = self.resolutions[i], self.feature_info[i]["num_chs"]
            outs.append(x.transpose(1, 2).reshape(-1, c, r, r))  # B, L, C -> B, C, L -> B, C, H, W
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized tokens (B, L, C) of the last stage."""
        return self.norm(self.stages(self.stem(x)))

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


_RENAMES = (("stage1_conv_embed.0.", "stem.proj."), ("stage1_conv_embed.2.", "stem.norm."))


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' SLAB-CSwin checkpoints to ours.

    ``stage1_conv_embed.{0,2}`` become ``stem.{proj,norm}``; ``stage{i}.{j}.*`` become ``stages.{i-1}.blocks.{j}.*``
    with ``qkv``/``proj``/``attns`` under ``attn``; ``merge{i}.{conv,norm}`` become ``stages.{i}.merge.{proj,norm}``;
    ``LinearNorm`` norms become ``PRepBN`` (see ``blocks.convert_linearnorm``).
    """
    if not any(k.startswith("stage1_conv_embed.") for k in state_dict):
        raise KeyError("not an original SLAB CSwin checkpoint (no stage1_conv_embed.* keys)")
    out = {}
    for k, v in convert_linearnorm(state_dict).items():
        for old, new in _RENAMES:
            k = new + k[len(old) :] if k.startswith(old) else k
        first, _, rest = k.partition(".")
        if first.startswith("stage") and first[5:].isdigit():
            j, _, leaf = rest.partition(".")
            leaf = f"attn.{leaf}" if leaf.startswith(("qkv.", "proj.", "attns.")) else leaf
            k = f"stages.{int(first[5:]) - 1}.blocks.{j}.{leaf}"
        elif first.startswith("merge") and first[5:].isdigit():
            k = f"stages.{first[5:]}.merge." + rest.replace("conv.", "proj.", 1)
        out[k] = v
    return out


_URL = "https://github.com/xinghaochen/SLAB/releases/download/ckpts/{}.pth"
_WEIGHTS = {
    "slab_cswin_t": WeightSpec(
        _URL.format("slab_cswin_tiny"),
        "original",
        license="Apache-2.0 (code); weights: no licence stated",
        source="xinghaochen/SLAB (authors), ImageNet-1k, 300 epochs",
        top1=82.8,
    )
}
_REPORTED = {"slab_cswin_t": Reported(top1=82.8, source="xinghaochen/SLAB README")}

FAMILY = Family(
    name="slab_cswin",
    paper=Paper(
        title="SLAB: Efficient Transformers with Simplified Linear Attention and Progressive Re-parameterized "
        "Batch Normalization",
        arxiv="2405.11582",
        venue="ICML 2024",
        repo="https://github.com/xinghaochen/SLAB",
        code_license="Apache-2.0",
        weights_license="not stated",
    ),
    model_cls=SlabCSwin,
    converters={"original": convert_original},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("RepBN", "PRepBN", "SlabBlock", "SlabPatchEmbed", "linear_attention"),
    remaining_norms=(),
)
_REG = {"first_conv": "stem.proj", "classifier": ("head",), "crop_pct": 0.9}


@FAMILY.register(**_REG)
def slab_cswin_t(**kwargs) -> SlabCSwin:
    """SLAB-CSwin-T: linear attention in stages 1-2, PRepBN over 120k steps: 21.23 M params."""
    return SlabCSwin(SlabCSwinCfg((2, 4, 18, 1)), **kwargs)


@FAMILY.register(**_REG)
def slab_cswin_s(**kwargs) -> SlabCSwin:
    """SLAB-CSwin-S (config only, no released weights): 35.49 M params."""
    return SlabCSwin(SlabCSwinCfg((2, 4, 32, 2)), **kwargs)
