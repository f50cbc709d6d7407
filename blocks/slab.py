"""The pre-norm transformer block of SLAB's DeiT, Swin, PVT and CSwin variants and their patch embedding, with
RepBN/PRepBN norms that fold away."""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import DropPath, Mlp
from torch import nn
from torch.nn import functional as F

from .repbn import fold_affine_into_conv_output, fold_affine_into_linear, norm_affine

__all__ = ["SlabBlock", "SlabPatchEmbed", "SoftmaxAttention"]


class SlabBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    At deploy time the eval-mode norms (RepBN, or PRepBN, whose eval form is RepBN) are per-channel affine maps:
    ``norm1`` folds into the attention's input projections (``attn.fold_input_affine``) and ``norm2`` into
    ``mlp.fc1``, so no normalization is left in the block.

    Args:
        dim: channels.
        attn: the token mixer, ``(B, N, C) -> (B, N, C)``, with a ``fold_input_affine(scale, shift)`` method.
        norm_layer: norm type / factory, called with ``dim``.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        drop: dropout inside the MLP.
        drop_path: stochastic depth of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        norm_layer: Callable[[int], nn.Module],
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if not callable(getattr(attn, "fold_input_affine", None)):
            raise TypeError(f"{type(attn).__name__} has no fold_input_affine(scale, shift)")
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both norms into the layers that read them. No-op when already deployed."""
        if self.deployed:
            return
        self.attn.fold_input_affine(*norm_affine(self.norm1))
        self.mlp.fc1 = fold_affine_into_linear(self.mlp.fc1, *norm_affine(self.norm2))
        self.norm1, self.norm2, self.drop_path = nn.Identity(), nn.Identity(), nn.Identity()
        self.deployed = True


class SlabPatchEmbed(nn.Module):
    """Convolution on a (B, C, H, W) map, flattened to (B, HW, C) tokens, then the norm (folded into it at deploy).

    The patch embeddings of SLAB-Swin and SLAB-PVT (non-overlapping, ``kernel == stride``), CSwin's overlapping stem
    (7x7, stride 4, padding 2) and its 3x3 stride-2 merge blocks.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: convolution kernel.
        norm_layer: norm type / factory, called with ``out_chs``.
        stride: convolution stride (default ``kernel_size``: non-overlapping patches).
        padding: convolution zero padding.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        norm_layer: Callable[[int], nn.Module],
        stride: int | None = None,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, kernel_size if stride is None else stride, padding)
        self.norm = norm_layer(out_chs)
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # B, C, H, W -> B, HW, C

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the norm into the convolution (on its output side: exact with padding). No-op when deployed."""
        if self.deployed:
            return
        self.proj, self.norm = fold_affine_into_conv_output(self.proj, *norm_affine(self.norm)), nn.Identity()
        self.deployed = True


class SoftmaxAttention(nn.Module):
    """ViT's multi-head softmax self-attention over a fixed number of tokens (SLAB's DeiT-PRepBN, T2T-ViT), with a
    ``fold_input_affine`` for :class:`SlabBlock`.

    Args:
        dim: channels.
        num_heads: heads (``dim`` must divide evenly).
        num_tokens: tokens per sample.
        qkv_bias: bias of the query/key/value projection.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self, dim: int, num_heads: int, num_tokens: int, qkv_bias: bool = True, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim, self.num_tokens = dim, num_heads, dim // num_heads, num_tokens
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = self.num_tokens, self.dim
        # B, N, 3C -> B, N, 3, h, d -> 3, B, h, N, d
        q, k, v = self.qkv(x).reshape(-1, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, n, c)  # B, h, N, d -> B, N, C
        return self.proj_drop(self.proj(x))

    @torch.no_grad()
    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Fold a per-channel affine of the input into ``qkv`` (which gains a bias if it had none)."""
        self.qkv = fold_affine_into_linear(self.qkv, scale, shift)
