"""Simplified linear attention (SLA) of SLAB (arXiv 2405.11582): ReLU kernel plus a depthwise conv on the values.

For every head, with ``phi = ReLU``::

    out_i = sum_j (phi(q_i) . phi(k_j)) v_j / (phi(q_i) . sum_j phi(k_j) + 1e-6)  +  DWC(V)_i

where the keys get a learnable positional encoding before the kernel, and ``DWC`` is one depthwise convolution over
the token grid, shared by all heads (its channels are the head dimension). The order of the products,
``phi(q) (phi(k)^T v)`` or ``(phi(q) phi(k)^T) v``, is chosen once from the token count and head size (as the
original does), so that the cheaper one runs. Under autocast the products run in float32, as in the original.
"""

from __future__ import annotations

import torch
from torch import nn

from .repbn import fold_affine_into_linear

__all__ = ["SimplifiedLinearAttention", "linear_attention"]


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_first: bool) -> torch.Tensor:
    """ReLU-kernel linear attention of already-activated ``q``, ``k`` (B, heads, N, c) and ``v`` (B, heads, N, d)."""
    k_sum = k.sum(dim=2, keepdim=True)  # B, h, 1, c
    z = 1.0 / (q @ k_sum.transpose(-2, -1) + 1e-6)  # B, h, N, 1
    if kv_first:
        return (q @ (k.transpose(-2, -1) @ v)) * z
    return ((q @ k.transpose(-2, -1)) @ v) * z


class SimplifiedLinearAttention(nn.Module):
    """Multi-head simplified linear attention over a fixed ``grid`` of tokens (a window or a whole feature map).

    Args:
        dim: channels.
        num_heads: heads (``dim`` must divide evenly).
        grid: ``(H, W)`` of the token grid; the input has ``H * W`` tokens in row-major order.
        kernel_size: depthwise conv kernel on the values.
        qkv_bias: bias of the query/key/value projections.
        separate_kv: project queries with ``q`` and keys/values with ``kv`` (PVT's layout) instead of one ``qkv``.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        kernel_size: int = 5,
        qkv_bias: bool = True,
        separate_kv: bool = False,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_tokens = self.grid[0] * self.grid[1]
        n, c = self.num_tokens, self.head_dim
        self.kv_first = n * n * (c + c) > c * c * (n + n)  # cheaper product order (the original's test)
        if separate_kv:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.separate_kv = separate_kv
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(c, c, kernel_size, padding=kernel_size // 2, groups=c)
        self.positional_encoding = nn.Parameter(torch.zeros(1, n, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, c = self.num_tokens, self.num_heads, self.head_dim
        if self.separate_kv:
            q = self.q(x)
            k, v = self.kv(x).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = torch.relu(q)
        k = torch.relu(k + self.positional_encoding)
        # B, N, C -> B, N, h, c -> B, h, N, c
        q, k, vh = (t.reshape(-1, n, h, c).transpose(1, 2) for t in (q, k, v))
        fmap = v.transpose(1, 2).reshape(-1, c, *self.grid)  # B, N, C -> B, C, N -> B*h, c, H, W
        fmap = self.dwc(fmap).reshape(-1, h, c, n).transpose(2, 3)  # B*h, c, H, W -> B, h, N, c
        if x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):  # meta: counted from shapes
            with torch.autocast(x.device.type, enabled=False):
                out = linear_attention(q.float(), k.float(), vh.float(), self.kv_first) + fmap.float()
        else:
            out = linear_attention(q, k, vh, self.kv_first) + fmap
        out = out.transpose(1, 2).reshape(-1, n, self.dim)  # B, h, N, c -> B, N, C
        return self.proj_drop(self.proj(out))

    @torch.no_grad()
    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Fold a per-channel affine applied to this module's input into the input projections."""
        if self.separate_kv:
            self.q = fold_affine_into_linear(self.q, scale, shift)
            self.kv = fold_affine_into_linear(self.kv, scale, shift)
        else:
            self.qkv = fold_affine_into_linear(self.qkv, scale, shift)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, grid={self.grid}, kv_first={self.kv_first}"
