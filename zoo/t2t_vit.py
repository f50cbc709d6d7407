"""T2T-ViT with Unified Normalization: the foldable-norm ViT of "Unified Normalization for Accelerating and
Stabilizing Transformers" (Yang et al., ACM MM 2022, arXiv 2208.01313).

Origin: hikvision-research/Unified-Normalization (Apache-2.0), ``image_classification/models/t2t_vit.py``
(``T2t_vit_14_all_un1d``), which is T2T-ViT ("Tokens-to-Token ViT: Training Vision Transformers from Scratch on
ImageNet", Yuan et al., ICCV 2021, arXiv 2101.11986; yitu-opensource/T2T-ViT, Clear BSD) with every LayerNorm
replaced by UN (``blocks.UnifiedNorm``: window 4, warm-up 4000 iterations, outlier filtration on).

Layout: the tokens-to-token module (three soft splits, unfolds of 7x7 stride 4, 3x3 stride 2, 3x3 stride 2, with a
Performer T2T layer after each of the first two, then a linear projection to the embedding width), a class token,
fixed sinusoidal position embeddings, 14 pre-norm ViT blocks (384 channels, 6 heads, MLP ratio 3, no qkv bias), a
final norm and a linear classifier on the class token. A Performer layer is ``y = v + proj(FAVOR(q, k, v))`` on
``kqv(norm1(x))`` (positive random features of a fixed orthogonal projection ``w``, one head), then
``y + mlp(norm2(y))``.

Deploy: every UN is a per-channel affine in eval mode and folds into the Linear that reads it (the Performer's
``kqv`` and ``mlp.0``, the blocks' ``qkv`` and ``fc1``, the classifier), so no normalization is left.

Deviations from the original: the geometry is fixed by ``img_size`` (a multiple of 16) as Python ints; the frozen
``w`` and position table are parameters without gradient, as in the original (they count in the parameter total).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.nn import functional as F

from blocks import SlabBlock, SoftmaxAttention, UnifiedNorm, fold_affine_into_linear, fold_norm_into_head, norm_affine
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, Reported

__all__ = ["T2tVitCfg", "T2tVit", "convert_original"]


class TokenPerformer(nn.Module):
    """The Performer T2T layer: one-head FAVOR attention on ``kqv(norm1(x))`` with ``v`` as the shortcut, then an MLP.

    Args:
        dim: input channels (an unfolded patch).
        emb: output channels.
        norm_layer: norm type / factory.
        kernel_ratio: random features per output channel.
        drop: dropout after the projection and the MLP (the original fixes 0.1).
    """

    def __init__(
        self, dim: int, emb: int, norm_layer: Callable[[int], nn.Module], kernel_ratio: float = 0.5, drop: float = 0.1
    ) -> None:
        super().__init__()
        self.emb, self.m = emb, int(emb * kernel_ratio)
        self.kqv = nn.Linear(dim, 3 * emb)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(emb, emb)
        self.norm1 = norm_layer(dim)
        self.norm2 = norm_layer(emb)
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.GELU(), nn.Linear(emb, emb), nn.Dropout(drop))
        w = nn.init.orthogonal_(torch.empty(self.m, emb)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)  # fixed random features (a parameter in the original)
        self.deployed = False

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Positive random features ``exp(w x - |x|^2 / 2) / sqrt(m)``: (B, T, emb) -> (B, T, m)."""
        return torch.exp(x @ self.w.t() - (x * x).sum(dim=-1, keepdim=True) / 2) / math.sqrt(self.m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(self.norm1(x)).split(self.emb, dim=-1)  # the original's order: k, q, v
        kp, qp = self._features(k), self._features(q)  # B, T, m
        d = qp @ kp.sum(dim=1).unsqueeze(-1)  # B, T, m @ B, m, 1 -> B, T, 1
        kptv = v.transpose(1, 2) @ kp  # B, emb, T @ B, T, m -> B, emb, m
        y = (qp @ kptv.transpose(1, 2)) / (d + 1e-8)  # B, T, m @ B, m, emb -> B, T, emb
        y = v + self.dp(self.proj(y))
        return y + self.mlp(self.norm2(y))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold ``norm1`` into ``kqv`` and ``norm2`` into the MLP's first Linear. No-op when already deployed."""
        if self.deployed:
            return
        self.kqv = fold_affine_into_linear(self.kqv, *norm_affine(self.norm1))
        self.mlp[0] = fold_affine_into_linear(self.mlp[0], *norm_affine(self.norm2))
        self.norm1, self.norm2 = nn.Identity(), nn.Identity()
        self.deployed = True


def _split_res(res: int, kernel: int, stride: int, padding: int) -> int:
    return (res + 2 * padding - kernel) // stride + 1


class TokensToToken(nn.Module):
    """Soft split (unfold), Performer, back to a map; twice; a last soft split and the projection to ``embed_dim``."""

    def __init__(
        self, img_size: int, in_chans: int, embed_dim: int, token_dim: int, norm_layer: Callable[[int], nn.Module]
    ) -> None:
        super().__init__()
        self.splits = ((7, 4, 2), (3, 2, 1), (3, 2, 1))  # kernel, stride, padding of the three soft splits
        self.res = [img_size]
        for k, s, p in self.splits:
            self.res.append(_split_res(self.res[-1], k, s, p))
        self.token_dim = token_dim
        self.attention1 = TokenPerformer(in_chans * 7 * 7, token_dim, norm_layer)
        self.attention2 = TokenPerformer(token_dim * 3 * 3, token_dim, norm_layer)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    def _soft_split(self, x: torch.Tensor, i: int) -> torch.Tensor:
        k, s, p = self.splits[i]
        return F.unfold(x, k, padding=p, stride=s).transpose(1, 2)  # B, C, H, W -> B, C*k*k, L -> B, L, C*k*k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention1(self._soft_split(x, 0))
        x = x.transpose(1, 2).reshape(-1, self.token_dim, self.res[1], self.res[1])  # B, L, C -> B, C, H, W
        x = self.attention2(self._soft_split(x, 1))
        x = x.transpose(1, 2).reshape(-1, self.token_dim, self.res[2], self.res[2])  # B, L, C -> B, C, H, W
        return self.project(self._soft_split(x, 2))


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """(1, n, dim) fixed position table: sin on even channels, cos on odd, of ``pos / 10000^(2 (j // 2) / dim)``."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()[None]


@dataclass(frozen=True)
class T2tVitCfg:
    """Architecture of one variant.

    Attributes:
        embed_dim: token width of the backbone.
        depth: ViT blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width relative to ``embed_dim``.
        token_dim: width of the tokens-to-token layers.
        un_window: UN window (forward and backward statistics).
        un_warmup: UN warm-up iterations.
        un_outlier_filtration: UN outlier filter.
    """

    embed_dim: int = 384
    depth: int = 14
    num_heads: int = 6
    mlp_ratio: float = 3.0
    token_dim: int = 64
    un_window: int = 4
    un_warmup: int = 4000
    un_outlier_filtration: bool = True


class T2tVit(nn.Module):
    """T2T-ViT (Performer tokens-to-token) with Unified Normalization everywhere.

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for none).
        in_chans: input channels.
        img_size: input side (square, a multiple of 16).
        drop_rate: dropout after the position embedding, in the attention projection and the MLPs.
        drop_path_rate: stochastic depth, increasing linearly over the blocks.
    """

    def __init__(
        self,
        cfg: T2tVitCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if img_size % 16:
            raise ValueError(f"img_size {img_size} is not a multiple of 16")
        self.cfg, self.num_classes, self.in_chans, self.img_size = cfg, num_classes, in_chans, img_size
        self.drop_rate, self.drop_path_rate = drop_rate, drop_path_rate
        norm_layer = partial(
            UnifiedNorm, window_size=cfg.un_window, warmup_iters=cfg.un_warmup,
            outlier_filtration=cfg.un_outlier_filtration,
        )  # fmt: skip
        d = self.num_features = cfg.embed_dim
        self.tokens_to_token = TokensToToken(img_size, in_chans, d, cfg.token_dim, norm_layer)
        self.grid = self.tokens_to_token.res[-1]
        n = self.grid**2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(sinusoid_table(n, d), requires_grad=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(
            *[
                SlabBlock(
                    d, SoftmaxAttention(d, cfg.num_heads, n, qkv_bias=False, proj_drop=drop_rate),
                    norm_layer, cfg.mlp_ratio, drop_rate, dpr[i],
                )  # fmt: skip
                for i in range(cfg.depth)
            ]
        )
        self.norm = norm_layer(d)
        ends = [cfg.depth * (i + 1) // 4 - 1 for i in range(4)]
        self.feature_info = FeatureInfo(
            {"num_chs": d, "reduction": img_size // self.grid, "module": f"blocks.{i}", "index": i} for i in ends
        )
        self.pretrained_cfg: dict = {}
        self.deployed = False
        self.reset_classifier(num_classes)
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
        """Parameters excluded from weight decay (as the original): the class token."""
        return {"cls_token"}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # B, L, C -> B, 1 + L, C
        return self.pos_drop(x + self.pos_embed)

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Patch-token maps (B, C, H/16, W/16) after the blocks in ``feature_info``, levels ``0..stop``."""
        ends = [f["index"] for f in self.feature_info][: None if stop is None else stop + 1]
        x, outs = self._embed(x), []
        for i, blk in enumerate(self.blocks[: ends[-1] + 1]):
            x = blk(x)
            if i in ends:  # B, 1 + N, C -> B, C, N -> B, C, H, W
                outs.append(x[:, 1:].transpose(1, 2).reshape(-1, self.num_features, self.grid, self.grid))
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized tokens (B, 1 + N, C), class token first (after deploy: before the norm folded into the head)."""
        return self.norm(self.blocks(self._embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The class token, then the classifier."""
        x = x[:, 0]  # B, 1 + N, C -> B, C
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
    """Keys of the authors' T2T-ViT-UN checkpoints (timm's trainer: ``state_dict`` / ``state_dict_ema`` of the model)
    to ours: the layout is the same (``tokens_to_token.attention{1,2}.*``, ``blocks.*``, UN buffers by the original's
    names), so after the wrapper is stripped (by ``weights.load_checkpoint``) this checks the layout and passes the
    keys through; the ``iters`` counters are kept (the original advises zeroing them before fine-tuning:
    ``UnifiedNorm.reset_running_stats`` does more, ``m.iters.zero_()`` only that)."""
    if "tokens_to_token.attention1.kqv.weight" not in state_dict:
        raise KeyError("not an original T2T-ViT checkpoint (no tokens_to_token.attention1.kqv.weight)")
    if "tokens_to_token.attention1.norm1.running_var" not in state_dict:
        raise KeyError("a T2T-ViT checkpoint without Unified Normalization (LayerNorm T2T-ViT is not this model)")
    return dict(state_dict)


_WEIGHTS = {
    "t2t_vit_14_un": WeightSpec(
        "https://drive.google.com/uc?export=download&id=1-a3tdPxOJ9QK4GlcbXndCpNvqcaLxR6v",
        "original",
        filename="t2t_vit_14_un.pth.tar",
        license="Apache-2.0 (code and released models, hikvision-research/Unified-Normalization)",
        source="hikvision-research/Unified-Normalization (authors), ImageNet-1k, 300 epochs (Google Drive)",
        top1=80.9,
        prefer_ema=True,  # the README's evaluation loads the EMA weights (main.py: --model-ema defaults to True)
    )
}
_REPORTED = {
    "t2t_vit_14_un": Reported(
        params_m=21.5,
        macs_g=4.8,
        top1=80.9,
        latency="31% faster inference than LayerNorm (paper abstract, GPU)",
        source="hikvision-research/Unified-Normalization README (top-1), yitu-opensource/T2T-ViT README (params, MACs)",
    )
}

FAMILY = Family(
    name="t2t_vit",
    paper=Paper(
        title="Unified Normalization for Accelerating and Stabilizing Transformers",
        arxiv="2208.01313",
        venue="ACM MM 2022",
        repo="https://github.com/hikvision-research/Unified-Normalization",
        code_license="Apache-2.0",
        weights_license="Apache-2.0 (repository licence; no separate weights licence)",
    ),
    model_cls=T2tVit,
    converters={"original": convert_original},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("UnifiedNorm", "SlabBlock", "SoftmaxAttention"),
    remaining_norms=(),
    card_notes=(
        "The authors' UN (window 4, 4000 warm-up iterations, outlier filtration) normalizes by offline statistics, "
        "so at inference every norm is a per-channel affine folded into the Linear after it. The checkpoint is on "
        "Google Drive (no checksum published; the first download's hash is recorded; Drive may answer a large file "
        "with a confirmation page, then download it by hand and pass `pretrained=<path>`). The reported 80.9% is "
        "the EMA weights' (the authors' `main.py` evaluates with `--model-ema`, on by default), which "
        "`pretrained=True` loads."
    ),
)


@FAMILY.register(first_conv="", classifier=("head",), crop_pct=0.9)
def t2t_vit_14_un(**kwargs) -> T2tVit:
    """T2T-ViT-14 with Unified Normalization (the authors' ``T2t_vit_14_all_un1d``): 21.55 M params."""
    return T2tVit(T2tVitCfg(), **kwargs)
