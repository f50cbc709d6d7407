"""Cascaded group attention and the EfficientViT block.

Paper: "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention" (Liu et al., CVPR 2023,
arXiv 2305.07027). Each head sees a different channel split of the input, and head ``i`` also receives head
``i-1``'s output (the cascade), which adds depth and diversity without more parameters.

Export notes: feature-map resolution and window geometry are Python ints fixed at construction; only the batch is
symbolic. In deploy mode the relative-position biases are gathered once into a dense ``(heads, N, N)`` buffer and the
softmax scale is folded into the query depthwise conv.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .convbn import ConvBN
from .layers import ConvFFN, Residual

__all__ = ["CascadedGroupAttention", "LocalWindowAttention", "EfficientViTBlock", "relative_offset_index"]


def relative_offset_index(resolution: int) -> tuple[torch.Tensor, int]:
    """Index of each (query, key) pair's absolute 2-D offset in a table of distinct offsets.

    Returns:
        ``(idx, num_offsets)`` with ``idx`` of shape (N, N), ``N = resolution ** 2``.
    """
    points = list(itertools.product(range(resolution), range(resolution)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    return torch.tensor(idxs, dtype=torch.long).view(n, n), len(offsets)


class CascadedGroupAttention(nn.Module):
    """Cascaded group attention over a ``resolution x resolution`` feature map (B, C, H, W).

    Args:
        dim: channels (split evenly over heads).
        key_dim: query/key channels per head.
        num_heads: heads.
        attn_ratio: value channels per head = ``attn_ratio * key_dim``.
        resolution: side of the (square) feature map the attention runs on.
        kernels: depthwise kernel size on the queries, one per head.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int = 8,
        attn_ratio: float = 4.0,
        resolution: int = 14,
        kernels: Sequence[int] = (5, 5, 5, 5),
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if len(kernels) < num_heads:
            raise ValueError(f"need one query kernel per head: got {len(kernels)} for {num_heads} heads")
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.resolution = resolution
        if num_heads > 1 and self.val_dim != dim // num_heads:
            raise ValueError(
                f"the cascade adds each head's output ({self.val_dim} = attn_ratio * key_dim channels) to the next "
                f"head's input split ({dim // num_heads} channels): they must be equal"
            )
        self.qkvs = nn.ModuleList(ConvBN(dim // num_heads, key_dim * 2 + self.val_dim) for _ in range(num_heads))
        self.dws = nn.ModuleList(ConvBN(key_dim, key_dim, kernels[i], groups=key_dim) for i in range(num_heads))
        self.proj = nn.Sequential(nn.ReLU(), ConvBN(self.val_dim * num_heads, dim, bn_weight_init=0.0))
        idx, num_offsets = relative_offset_index(resolution)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets))
        self.register_buffer("attention_bias_idxs", idx, persistent=False)
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        if self.deployed:
            bias = self.attention_bias
        else:
            bias = self.attention_biases[:, self.attention_bias_idxs]  # heads, N, N
        # channels-last maps (the deployed EfficientViT) are token-major in memory: the attention runs on (B, N, c)
        # views of them, with no copies; NCHW maps run it on (B, c, N) views. The same products either way.
        tokens = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        alpha = 1.0 if self.deployed else self.scale  # the scale is already folded into q in deploy mode
        feats_in = x.chunk(self.num_heads, dim=1)
        feats_out = []
        feat = feats_in[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i > 0:
                feat = feat + feats_in[i]  # the cascade: previous head's output feeds this head
            q, k, v = qkv(feat).split([self.key_dim, self.key_dim, self.val_dim], dim=1)  # B, c, H, W each
            q = dw(q)
            if tokens:
                # B, c, H, W (channels-last) -> B, H, W, c -> B, N, c: views
                q, k, v = (t.permute(0, 2, 3, 1).flatten(1, 2) for t in (q, k, v))
                attn = torch.baddbmm(bias[i], q, k.transpose(-2, -1), alpha=alpha).softmax(dim=-1)  # B, N, N
                # B, N, d -> B, H, W, d -> B, d, H, W (channels-last)
                feat = (attn @ v).unflatten(1, (r, r)).permute(0, 3, 1, 2)
            else:
                q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)  # B, c, H, W -> B, c, N
                attn = torch.baddbmm(bias[i], q.transpose(-2, -1), k, alpha=alpha).softmax(dim=-1)  # B, N, N
                feat = (v @ attn.transpose(-2, -1)).reshape(-1, self.val_dim, r, r)  # B, d, N -> B, d, H, W
            feats_out.append(feat)
        return self.proj(torch.cat(feats_out, dim=1))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Dense bias table as a buffer and the softmax scale folded into the (already folded) query convs."""
        if self.deployed:
            return
        for dw in self.dws:
            dw.reparameterize()
            dw.conv.weight.mul_(self.scale)
            dw.conv.bias.mul_(self.scale)
        dense = self.attention_biases[:, self.attention_bias_idxs].detach().clone()
        del self.attention_biases
        self.register_buffer("attention_bias", dense, persistent=False)
        self.deployed = True


class LocalWindowAttention(nn.Module):
    """Cascaded group attention inside non-overlapping ``window_resolution`` windows of a square feature map.

    Args:
        dim: channels.
        key_dim: query/key channels per head.
        num_heads: heads.
        attn_ratio: value/key channel ratio.
        resolution: side of the input feature map.
        window_resolution: side of a window; the map is zero-padded to a multiple of it when needed.
        kernels: query depthwise kernel per head.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int = 8,
        attn_ratio: float = 4.0,
        resolution: int = 14,
        window_resolution: int = 7,
        kernels: Sequence[int] = (5, 5, 5, 5),
    ) -> None:
        super().__init__()
        self.dim = dim
        self.resolution = resolution
        self.window_resolution = window_resolution
        self.attn = CascadedGroupAttention(
            dim, key_dim, num_heads, attn_ratio, min(window_resolution, resolution), kernels
        )
        ws = window_resolution
        self.pad = (ws - resolution % ws) % ws
        self.num_windows = (resolution + self.pad) // ws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resolution <= self.window_resolution:
            return self.attn(x)
        c, ws, nw, r = self.dim, self.window_resolution, self.num_windows, self.resolution
        if self.pad:
            x = F.pad(x, (0, self.pad, 0, self.pad))
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # the same partition on a channels-last map, kept channels-last (windows are (ws, ws, C) in memory):
            # B, C, H', W' -> B, H', W', C -> B, nH, ws, nW, ws, C -> B, nH, nW, ws, ws, C -> B*nH*nW, C, ws, ws
            x = x.permute(0, 2, 3, 1).reshape(-1, nw, ws, nw, ws, c).transpose(2, 3).reshape(-1, ws, ws, c)
            x = self.attn(x.permute(0, 3, 1, 2))
            # B*nH*nW, C, ws, ws -> B*nH*nW, ws, ws, C -> B, nH, nW, ws, ws, C -> B, nH, ws, nW, ws, C -> B, C, H', W'
            x = x.permute(0, 2, 3, 1).reshape(-1, nw, nw, ws, ws, c).transpose(2, 3).reshape(-1, nw * ws, nw * ws, c)
            x = x.permute(0, 3, 1, 2)
        else:
            # B, C, nH*ws, nW*ws -> B, C, nH, ws, nW, ws -> B, nH, nW, C, ws, ws -> B*nH*nW, C, ws, ws
            x = x.reshape(-1, c, nw, ws, nw, ws).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, ws, ws)
            x = self.attn(x)
            # B*nH*nW, C, ws, ws -> B, nH, nW, C, ws, ws -> B, C, nH, ws, nW, ws -> B, C, H', W'
            x = x.reshape(-1, nw, nw, c, ws, ws).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, nw * ws, nw * ws)
        if self.pad:
            x = x[:, :, :r, :r]
        return x


class EfficientViTBlock(nn.Module):
    """The EfficientViT "sandwich" block: (DW conv + FFN), cascaded group attention, (DW conv + FFN), all residual.

    Args:
        dim: channels.
        key_dim: query/key channels per head.
        num_heads: heads.
        attn_ratio: value/key channel ratio.
        resolution: side of the input feature map.
        window_resolution: attention window side.
        kernels: query depthwise kernel per head.
        drop_path: stochastic depth rate of each residual branch.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int = 8,
        attn_ratio: float = 4.0,
        resolution: int = 14,
        window_resolution: int = 7,
        kernels: Sequence[int] = (5, 5, 5, 5),
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dw0 = Residual(ConvBN(dim, dim, 3, groups=dim, bn_weight_init=0.0), drop_path)
        self.ffn0 = Residual(ConvFFN(dim, dim * 2), drop_path)
        self.mixer = Residual(
            LocalWindowAttention(dim, key_dim, num_heads, attn_ratio, resolution, window_resolution, kernels),
            drop_path,
        )
        self.dw1 = Residual(ConvBN(dim, dim, 3, groups=dim, bn_weight_init=0.0), drop_path)
        self.ffn1 = Residual(ConvFFN(dim, dim * 2), drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))
