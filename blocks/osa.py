"""One-shot aggregation (OSA) blocks of VoVNet / VoVNetV2 and the effective squeeze-excitation (eSE) attention.

VoVNet (Lee et al., "An Energy and GPU-Computation Efficient Backbone Network for Real-Time Object Detection", CVPR
Workshops 2019, arXiv 1904.09730): a chain of 3x3 conv-BN-ReLU layers whose outputs are concatenated once, together
with the block input, and aggregated by a 1x1 conv. VoVNetV2 (Lee and Park, "CenterMask: Real-Time Anchor-Free
Instance Segmentation", CVPR 2020, arXiv 1911.06667) adds the identity mapping (every block of a stage but the first)
and eSE: global average pool, one 1x1 conv with bias (no channel reduction) and a hard-sigmoid gate.

Parameter names follow timm's ``vovnet.py`` so that its state dicts load unchanged. Deploy folds every BatchNorm.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from .convbn import ConvBN, fold_bn

__all__ = ["SeparableConvBN", "EffectiveSE", "OsaBlock", "OsaStage"]


class SeparableConvBN(nn.Module):
    """Depthwise kxk conv, pointwise 1x1 conv, BatchNorm, activation; the BN folds into the pointwise conv at deploy.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: depthwise kernel.
        stride: depthwise stride.
        act_layer: activation type, or None.
        deploy: build the folded form directly.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        act_layer: type[nn.Module] | None = nn.ReLU,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel_size, stride, pad, groups=in_chs, bias=False)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=deploy)
        self.bn = nn.Identity() if deploy else nn.BatchNorm2d(out_chs)
        self.act = act_layer() if act_layer is not None else nn.Identity()
        self.deployed = deploy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv_pw(self.conv_dw(x))))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN into the pointwise conv, in place. No-op when already deployed."""
        if self.deployed:
            return
        w, b = fold_bn(self.conv_pw.weight, self.conv_pw.bias, self.bn)
        pw = nn.Conv2d(self.conv_pw.in_channels, self.conv_pw.out_channels, 1, bias=True).to(w.device, w.dtype)
        pw.weight.copy_(w)
        pw.bias.copy_(b)
        self.conv_pw = pw
        self.bn = nn.Identity()
        self.deployed = True


class EffectiveSE(nn.Module):
    """Effective squeeze-excitation (eSE): ``x * hard_sigmoid(fc(mean_hw(x)))`` with one full-width 1x1 conv.

    Args:
        chs: channels.
        gate_layer: gate type (``nn.Hardsigmoid``, i.e. ``relu6(x + 3) / 6``, as CenterMask and timm).
    """

    def __init__(self, chs: int, gate_layer: type[nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.fc = nn.Conv2d(chs, chs, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # B, C, H, W -> B, C, 1, 1
        return x * self.gate(self.fc(s))


def _conv3x3(in_chs: int, out_chs: int, depthwise: bool) -> nn.Module:
    if depthwise:
        return SeparableConvBN(in_chs, out_chs, 3, act_layer=nn.ReLU)
    return ConvBN(in_chs, out_chs, 3, act_layer=nn.ReLU)


class OsaBlock(nn.Module):
    """One-shot aggregation block: 3x3 chain, one concatenation (input included), 1x1 aggregation, eSE, identity.

    Args:
        in_chs: input channels.
        mid_chs: channels of the 3x3 chain.
        out_chs: output channels of the 1x1 aggregation.
        layers: number of 3x3 layers in the chain.
        residual: add the block input to the output (VoVNetV2 identity mapping; needs ``in_chs == out_chs``).
        depthwise: separable 3x3 layers (depthwise + pointwise); a 1x1 reduction to ``mid_chs`` comes first when
            ``in_chs != mid_chs``.
        attn: apply eSE after the aggregation.
        drop_path: stochastic-depth rate of the residual branch (only used with ``residual``).
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        layers: int,
        residual: bool = False,
        depthwise: bool = False,
        attn: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if residual and in_chs != out_chs:
            raise ValueError(f"an identity residual needs in_chs == out_chs, got {in_chs} and {out_chs}")
        if layers < 1:
            raise ValueError(f"an OSA block needs at least one 3x3 layer, got layers={layers}")
        self.residual = residual
        reduce = depthwise and in_chs != mid_chs
        self.conv_reduction = ConvBN(in_chs, mid_chs, 1, act_layer=nn.ReLU) if reduce else None
        chain_in = [mid_chs if depthwise else in_chs] + [mid_chs] * (layers - 1)
        self.conv_mid = nn.ModuleList([_conv3x3(c, mid_chs, depthwise) for c in chain_in])
        self.conv_concat = ConvBN(in_chs + layers * mid_chs, out_chs, 1, act_layer=nn.ReLU)
        self.attn = EffectiveSE(out_chs) if attn else None
        self.drop_path = DropPath(drop_path) if residual and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        y = self.conv_reduction(x) if self.conv_reduction is not None else x
        for conv in self.conv_mid:
            y = conv(y)
            feats.append(y)
        y = self.conv_concat(torch.cat(feats, dim=1))
        if self.attn is not None:
            y = self.attn(y)
        return x + self.drop_path(y) if self.residual else y


class OsaStage(nn.Module):
    """Optional 3x3 stride-2 max-pool (ceil mode), then OSA blocks: eSE on the last, identity on all but the first.

    Args:
        in_chs: input channels.
        mid_chs: channels of the 3x3 chains.
        out_chs: output channels.
        blocks: OSA blocks.
        layers: 3x3 layers per block.
        downsample: start with the max-pool.
        residual: identity mapping on every block but the first.
        depthwise: separable 3x3 layers.
        attn: eSE on the last block.
        drop_path: per-block stochastic-depth rates (default none).
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        blocks: int,
        layers: int,
        downsample: bool = True,
        residual: bool = True,
        depthwise: bool = False,
        attn: bool = True,
        drop_path: list[float] | None = None,
    ) -> None:
        super().__init__()
        dpr = drop_path if drop_path is not None else [0.0] * blocks
        if len(dpr) != blocks:
            raise ValueError(f"drop_path has {len(dpr)} rates for {blocks} blocks")
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *[
                OsaBlock(
                    in_chs if i == 0 else out_chs,
                    mid_chs,
                    out_chs,
                    layers,
                    residual=residual and i > 0,
                    depthwise=depthwise,
                    attn=attn and i == blocks - 1,
                    drop_path=dpr[i],
                )
                for i in range(blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pool(x))
