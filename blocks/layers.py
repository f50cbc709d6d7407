"""Small shared layers: residual wrapper (with stochastic depth and identity folding), squeeze-excitation, conv FFN."""

from __future__ import annotations

import torch
from timm.layers import DropPath, make_divisible
from torch import nn

from .convbn import ConvBN, inplace_allowed

__all__ = ["Residual", "SqueezeExcite", "ConvFFN"]


class Residual(nn.Module):
    """``x + drop_path(m(x))``.

    At deploy time, when ``m`` has become a single stride-1 conv with as many input as output channels (e.g. a
    folded depthwise ConvBN), the identity is added to the conv's centre tap and the addition disappears.

    Args:
        m: the residual branch.
        drop_path: stochastic-depth rate for the branch.
    """

    def __init__(self, m: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__()
        self.m = m
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None
        self.deployed = False
        self.identity_folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity_folded:
            return self.m(x)
        if self.drop_path is None:
            y = self.m(x)
            if self.deployed and inplace_allowed() and y.shape == x.shape and not _shares_memory(x, y):
                return y.add_(x)  # deploy: add into the branch's fresh output (no third activation-sized buffer)
            return x + y
        return x + self.drop_path(self.m(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the identity into the branch when the branch is one plain conv; otherwise keep the add."""
        if self.deployed:
            return
        self.deployed = True
        self.drop_path = None
        conv = _as_plain_conv(self.m)
        if conv is None or not _is_same_shape_conv(conv):
            return
        k = conv.kernel_size
        in_per_group = conv.in_channels // conv.groups
        idx = torch.arange(conv.out_channels, device=conv.weight.device)
        conv.weight[idx, idx % in_per_group, k[0] // 2, k[1] // 2] += 1.0
        self.m = conv
        self.identity_folded = True


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _is_same_shape_conv(conv: nn.Conv2d) -> bool:
    """Stride 1, as many outputs as inputs, odd kernel, 'same' padding: identity can go in the centre tap."""
    k, d = conv.kernel_size, conv.dilation
    return (
        conv.stride == (1, 1)
        and conv.in_channels == conv.out_channels
        and k[0] % 2 == 1
        and k[1] % 2 == 1
        and conv.padding == (k[0] // 2 * d[0], k[1] // 2 * d[1])
    )


def _as_plain_conv(m: nn.Module) -> nn.Conv2d | None:
    """The Conv2d that ``m`` is equivalent to after folding (no activation), or None."""
    if isinstance(m, nn.Conv2d):
        return m
    if isinstance(m, ConvBN) and m.deployed and isinstance(m.act, nn.Identity):
        return m.conv
    return None


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool, 1x1 reduce, activation, 1x1 expand, gate, rescale.

    Args:
        chs: channels.
        rd_ratio: reduction ratio, used when ``rd_chs`` is None (rounded with ``rd_divisor``).
        rd_chs: reduced channels.
        rd_divisor: divisor for the rounded reduced channels.
        act_layer: activation between the two 1x1 convs.
        gate_layer: gate type (sigmoid by default).
    """

    def __init__(
        self,
        chs: int,
        rd_ratio: float = 0.25,
        rd_chs: int | None = None,
        rd_divisor: int = 8,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        if rd_chs is None:
            rd_chs = make_divisible(chs * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # B, C, H, W -> B, C, 1, 1
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class ConvFFN(nn.Module):
    """Pointwise FFN on feature maps: 1x1 ConvBN + activation, 1x1 ConvBN (gamma initialised to 0).

    Args:
        dim: input/output channels.
        hidden: hidden channels.
        act_layer: activation type.
    """

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.pw1 = ConvBN(dim, hidden, act_layer=act_layer)
        self.pw2 = ConvBN(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.pw1(x))
