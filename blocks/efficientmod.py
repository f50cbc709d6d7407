"""Efficient modulation (EfficientMod) blocks and the vanilla attention blocks of its hybrid stages.

Paper: "Efficient Modulation for Vision Networks", Xu Ma et al., ICLR 2024 (arXiv 2403.19963);
origin ma-xu/EfficientMod.

The modulation block computes ``x + gamma * proj(ctx(LN(x)) * act(value(LN(x))))`` on channels-last maps, where the
context branch is ``ctx(x) = fc_out(GELU(DWConv_kxk(fc_in(x))))``. The MLP is fused into the block: ``value``
expands the channels ``ratio`` times (and is then activated), the ``dim``-wide context is broadcast over the ``ratio``
groups of the expanded features (the original tiles it with ``repeat``), and ``proj`` maps back to ``dim``. With
``ratio == 1`` there is no activation on the value branch, as in the original.

Everything inside a stage is channels-last (B, H, W, C): LayerNorm and the linear layers act on the last dimension
and only the depthwise convolutions see (B, C, H, W) views (permutes without copies: eager convolution supports the
channels-last memory format natively).

Deploy (``reparameterize()``): the layer scale folds into ``proj`` and the attention scale into the query rows of
``qkv``. The LayerNorms stay: they cannot fold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch.nn import functional as F

__all__ = ["PatchEmbedLN", "ContextModeling", "EfficientModBlock", "MHSA", "AttentionBlock", "EfficientModStage"]


class PatchEmbedLN(nn.Module):
    """Strided convolution followed by a channels-last LayerNorm (the stem and the downsampling layers).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: conv kernel.
        stride: conv stride.
        padding: conv padding.
        channels_last_in: the input is (B, H, W, C) (inside the network) rather than (B, C, H, W) (an image).
    """

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int, channels_last_in: bool = True
    ) -> None:
        super().__init__()
        self.channels_last_in = channels_last_in
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_in:
            x = x.permute(0, 3, 1, 2)  # B, H, W, C -> B, C, H, W
        return self.norm(self.conv(x).permute(0, 2, 3, 1))  # B, C, H, W -> B, H, W, C


class ContextModeling(nn.Module):
    """``fc_out(act(dwconv(fc_in(x))))`` on channels-last maps: the context branch of the modulation block.

    Args:
        dim: input and output channels.
        ctx_dim: channels of the depthwise convolution.
        kernel_size: depthwise kernel (odd).
        act_layer: activation after the depthwise convolution.
    """

    def __init__(self, dim: int, ctx_dim: int, kernel_size: int = 7, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"context kernel_size must be odd, got {kernel_size}")
        self.fc_in = nn.Linear(dim, ctx_dim)
        self.dwconv = nn.Conv2d(ctx_dim, ctx_dim, kernel_size, padding=kernel_size // 2, groups=ctx_dim)
        self.act = act_layer()
        self.fc_out = nn.Linear(ctx_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc_in(x).permute(0, 3, 1, 2)  # B, H, W, C -> B, C, H, W
        x = self.act(self.dwconv(x)).permute(0, 2, 3, 1)  # B, C, H, W -> B, H, W, C
        return self.fc_out(x)


class EfficientModBlock(nn.Module):
    """Efficient modulation block with its fused MLP, pre-norm residual and layer scale (channels-last in and out).

    Args:
        dim: channels.
        ratio: expansion of the value branch (integer; 1 means no expansion and no activation on it).
        kernel_size: depthwise kernel of the context branch.
        act_layer: activation of the context and value branches.
        layer_scale: initial layer-scale value, or None for no layer scale.
        drop_path: stochastic-depth rate of the residual branch.
    """

    def __init__(
        self,
        dim: int,
        ratio: int = 1,
        kernel_size: int = 7,
        act_layer: type[nn.Module] = nn.GELU,
        layer_scale: float | None = 1e-4,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(ratio, int) or ratio < 1:
            raise ValueError(f"ratio must be a positive integer, got {ratio!r}")
        self.dim = dim
        self.ratio = ratio
        self.norm = nn.LayerNorm(dim)
        self.context = ContextModeling(dim, dim, kernel_size, act_layer)
        self.value = nn.Linear(dim, dim * ratio)
        self.act = act_layer() if ratio > 1 else nn.Identity()
        self.proj = nn.Linear(dim * ratio, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        ctx = self.context(y)
        v = self.act(self.value(y))
        if self.ratio > 1:
            # the dim-wide context modulates each of the ratio groups of the expanded value (the original's repeat)
            v = v.unflatten(-1, (self.ratio, self.dim)) * ctx.unsqueeze(-2)  # B, H, W, rC -> B, H, W, r, C
            v = v.flatten(-2)  # B, H, W, r, C -> B, H, W, rC
        else:
            v = v * ctx
        y = self.proj(v)
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the layer scale into ``proj``, in place. No-op when already deployed."""
        if self.deployed:
            return
        if self.gamma is not None:
            self.proj.weight.mul_(self.gamma[:, None])
            self.proj.bias.mul_(self.gamma)
            self.gamma = None
        self.drop_path = nn.Identity()
        self.deployed = True


class MHSA(nn.Module):
    """Vanilla multi-head self-attention over tokens (B, N, C), as the hybrid stages of EfficientMod use.

    The attention itself is ``F.scaled_dot_product_attention``, as in the original (fused kernels in eager; the
    exporters lower it to matrix products and a softmax). ``zoo.count_macs`` counts its two products (it runs the
    math backend); fvcore, which the paper counted with, does not see them (:meth:`attention_macs` gives them).

    Args:
        dim: token channels.
        num_heads: heads.
        head_dim: channels per head; default ``max(dim // num_heads, 32)`` as in the original.
        qkv_bias: bias in the qkv projection.
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or max(dim // num_heads, 32)
        self.scale = self.head_dim**-0.5
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # B, N, 3hd -> B, N, 3, h, d
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # B, N, 3, h, d -> 3 x (B, h, N, d)
        x = F.scaled_dot_product_attention(q, k, v, scale=1.0 if self.deployed else self.scale)
        return self.proj(x.transpose(1, 2).flatten(2))  # B, h, N, d -> B, N, h, d -> B, N, hd

    def attention_macs(self, num_tokens: int) -> int:
        """Multiply-accumulates of the two attention products (q k^T and attn v) over ``num_tokens`` tokens."""
        return 2 * self.num_heads * num_tokens * num_tokens * self.head_dim

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the attention scale into the query rows of ``qkv``, in place. No-op when already deployed."""
        if self.deployed:
            return
        inner = self.num_heads * self.head_dim
        self.qkv.weight[:inner].mul_(self.scale)
        if self.qkv.bias is not None:
            self.qkv.bias[:inner].mul_(self.scale)
        self.deployed = True


class _Mlp(nn.Module):
    """Linear, activation, dropout, linear, dropout (token MLP of the attention block)."""

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block (self-attention, then MLP) on channels-last maps, flattened to tokens inside.

    Args:
        dim: channels.
        mlp_ratio: MLP expansion.
        num_heads: attention heads.
        act_layer: MLP activation.
        drop: dropout in the MLP.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        num_heads: int = 8,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MHSA(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), act_layer, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(1, 2)  # B, H, W, C -> B, HW, C
        t = t + self.drop_path(self.attn(self.norm1(t)))
        t = t + self.drop_path(self.mlp(self.norm2(t)))
        return t.view_as(x)  # B, HW, C -> B, H, W, C


class EfficientModStage(nn.Module):
    """One stage: optional downsampling, EfficientMod blocks, then (hybrid stages) vanilla attention blocks.

    Args:
        in_dim: input channels.
        dim: stage channels.
        ratios: value-branch expansion of each EfficientMod block (its length is the number of blocks).
        attn_depth: attention blocks appended after them.
        attn_mlp_ratio: MLP expansion of the attention blocks.
        downsample: start with a 3x3 stride-2 conv + LayerNorm (otherwise ``in_dim`` must equal ``dim``).
        kernel_size: depthwise kernel of the context branches.
        num_heads: attention heads.
        layer_scale: initial layer scale of the EfficientMod blocks (None: none).
        drop: dropout inside the attention blocks' MLPs.
        drop_path: per-block stochastic-depth rates (EfficientMod blocks, then attention blocks).
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        ratios: Sequence[int],
        attn_depth: int = 0,
        attn_mlp_ratio: float = 4.0,
        downsample: bool = True,
        kernel_size: int = 7,
        num_heads: int = 8,
        layer_scale: float | None = 1e-4,
        drop: float = 0.0,
        drop_path: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        depth = len(ratios) + attn_depth
        dpr = list(drop_path) if drop_path is not None else [0.0] * depth
        if len(dpr) != depth:
            raise ValueError(f"drop_path has {len(dpr)} rates for {depth} blocks")
        if not downsample and in_dim != dim:
            raise ValueError(f"a stage without downsampling keeps its width, got in_dim={in_dim}, dim={dim}")
        self.downsample = PatchEmbedLN(in_dim, dim, 3, 2, 1) if downsample else nn.Identity()
        mods = [EfficientModBlock(dim, r, kernel_size, nn.GELU, layer_scale, dpr[i]) for i, r in enumerate(ratios)]
        attns = [
            AttentionBlock(dim, attn_mlp_ratio, num_heads, nn.GELU, drop, dpr[len(ratios) + j])
            for j in range(attn_depth)
        ]
        self.blocks = nn.Sequential(*mods, *attns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


def init_efficientmod_weights(module: nn.Module) -> None:
    """The original initialisation: truncated-normal (std 0.02) linear weights, zero linear biases, unit LayerNorms.

    Convolutions keep PyTorch's default initialisation, as in the original (whose ``isinstance(m, nn.Linear or
    nn.Conv2d)`` only matches linear layers).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
