"""Convolution / linear layers followed or preceded by BatchNorm, foldable at deploy time.

``ConvBN`` implements the four modes of "Efficient ConvBN Blocks for Transfer Learning and Beyond"
(arXiv 2305.11624):

* **train** - BN in training mode (batch statistics, running stats updated);
* **eval** - BN in eval mode (running statistics), conv and BN run one after the other;
* **tune** - BN frozen in eval mode, and the conv runs with weights folded on the fly every forward,
  ``W' = W * gamma / sqrt(var + eps)``, ``b' = beta + (b - mean) * gamma / sqrt(var + eps)``. This is exactly eval
  mode in forward and backward (gradients still reach W, gamma, beta) but saves the BN activation memory;
* **deploy** - folded once into a single Conv2d (``reparameterize()``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fold_bn", "ConvBN", "LinearBN", "BNLinear", "set_bn_frozen"]

ConvBNMode = Literal["train", "eval", "tune", "deploy"]


_INPLACE_ACTS = {
    nn.ReLU: F.relu_,
    nn.ReLU6: lambda y: F.hardtanh_(y, 0.0, 6.0),
    nn.Hardswish: lambda y: F.hardswish(y, inplace=True),
    nn.SiLU: lambda y: F.silu(y, inplace=True),
}


def _act_on_fresh(act: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``act(y)`` for a tensor nobody else holds (a conv's output), in place where that is safe.

    Without autograd, and outside tracing/export/compilation (whose graphs keep the ordinary op): an in-place
    activation saves allocating, and touching, a second activation-sized buffer at deploy time.
    """
    inplace = _INPLACE_ACTS.get(type(act))
    if inplace is None or not inplace_allowed():
        return act(y)
    return inplace(y)


def inplace_allowed() -> bool:
    """Whether a deployed module may overwrite a tensor it just created: no autograd, and not while a graph is being
    traced, exported or compiled (those keep the ordinary out-of-place op)."""
    return not (
        torch.is_grad_enabled()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def fold_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that follows a conv/linear into its weight and bias.

    Args:
        weight: (out, ...) weight of the layer before the BN.
        bias: its bias or None.
        bn: the BatchNorm (running statistics are used).

    Returns:
        ``(weight', bias')`` with ``layer'(x) == bn(layer(x))``. Differentiable (used by tune mode).
    """
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps) if bn.affine else torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    new_w = weight * scale.reshape([-1] + [1] * (weight.dim() - 1))
    new_b = shift + (b - bn.running_mean) * scale
    return new_w, new_b


class ConvBN(nn.Module):
    """Conv2d + BatchNorm2d (+ optional activation) with train / eval / tune / deploy modes.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: conv kernel size.
        stride: conv stride.
        padding: conv padding; ``None`` means ``(kernel_size - 1) // 2 * dilation`` ("same" for odd kernels).
        dilation: conv dilation.
        groups: conv groups.
        bias: give the conv its own bias (it is folded into the BN shift at deploy time either way).
        act_layer: activation type applied after the BN, or None.
        bn_weight_init: initial BN gamma (0 makes a residual branch start as identity).
        bn_eps: BN epsilon.
        deploy: build the folded form directly (a Conv2d with bias and no BN).
        conv_layer: Conv2d subclass to use (e.g. a sparse conv). At deploy time a fused conv is made with
            ``conv.fused_with(weight, bias)`` when the class defines it (so it can keep its own structure, such as
            a sparsity mask), else as a plain ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        act_layer: type[nn.Module] | None = None,
        bn_weight_init: float = 1.0,
        bn_eps: float = 1e-5,
        deploy: bool = False,
        conv_layer: type[nn.Conv2d] = nn.Conv2d,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        self.conv = conv_layer(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=bias or deploy)
        if deploy:
            self.bn = nn.Identity()
        else:
            self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps)
            nn.init.constant_(self.bn.weight, bn_weight_init)
            nn.init.zeros_(self.bn.bias)
        self.act = act_layer() if act_layer is not None else nn.Identity()
        self.deployed = deploy
        self.bn_frozen = False
        self.tune = False

    @property
    def mode(self) -> ConvBNMode:
        """The current mode: ``train``, ``eval``, ``tune`` or ``deploy``."""
        if self.deployed:
            return "deploy"
        if self.bn.training:
            return "train"
        return "tune" if self.tune else "eval"

    def freeze_bn(self, tune: bool = True) -> None:
        """Keep the BN in eval mode even under ``model.train()``; with ``tune`` fold it on the fly (tune mode)."""
        self.bn_frozen = True
        self.tune = tune
        self.bn.eval()

    def train(self, mode: bool = True) -> ConvBN:
        super().train(mode)
        if self.bn_frozen:
            self.bn.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            return _act_on_fresh(self.act, self.conv(x))
        if self.tune and not self.bn.training:
            w, b = fold_bn(self.conv.weight, self.conv.bias, self.bn)
            return self.act(self.conv._conv_forward(x, w, b))
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN into the conv, in place. No-op when already deployed."""
        if self.deployed:
            return
        w, b = fold_bn(self.conv.weight, self.conv.bias, self.bn)
        c = self.conv
        if callable(getattr(c, "fused_with", None)):
            self.conv = c.fused_with(w, b)
        else:
            fused = nn.Conv2d(
                c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups, bias=True
            ).to(device=w.device, dtype=w.dtype)
            fused.weight.copy_(w)
            fused.bias.copy_(b)
            self.conv = fused
        self.bn = nn.Identity()
        self.deployed = True
        self.tune = False


class LinearBN(nn.Module):
    """Linear followed by BatchNorm1d over features; accepts (B, C) or token tensors (B, N, C).

    Args:
        in_features: input features.
        out_features: output features.
        bias: give the linear its own bias.
        bn_weight_init: initial BN gamma.
        deploy: build the folded form directly.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, bn_weight_init: float = 1.0, deploy: bool = False
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias or deploy)
        if deploy:
            self.bn = nn.Identity()
        else:
            self.bn = nn.BatchNorm1d(out_features)
            nn.init.constant_(self.bn.weight, bn_weight_init)
            nn.init.zeros_(self.bn.bias)
        self.deployed = deploy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.deployed:
            return x
        if x.dim() == 3:
            return self.bn(x.transpose(1, 2)).transpose(1, 2)  # B, N, C -> B, C, N -> B, N, C
        return self.bn(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN into the linear layer, in place. No-op when already deployed."""
        if self.deployed:
            return
        w, b = fold_bn(self.linear.weight, self.linear.bias, self.bn)
        fused = nn.Linear(w.shape[1], w.shape[0], bias=True).to(device=w.device, dtype=w.dtype)
        fused.weight.copy_(w)
        fused.bias.copy_(b)
        self.linear = fused
        self.bn = nn.Identity()
        self.deployed = True


class BNLinear(nn.Module):
    """BatchNorm1d followed by (dropout and) Linear, as classifier heads of EfficientViT/LeViT use; folds into a Linear.

    Args:
        in_features: input features.
        out_features: output features.
        bias: linear bias.
        drop: dropout rate between BN and linear (removed at deploy).
        std: truncated-normal init std of the linear weight.
        deploy: build the folded form directly.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        drop: float = 0.0,
        std: float = 0.02,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        from timm.layers import trunc_normal_

        self.bn = nn.Identity() if deploy else nn.BatchNorm1d(in_features)
        self.drop = nn.Dropout(drop)
        self.linear = nn.Linear(in_features, out_features, bias=bias or deploy)
        trunc_normal_(self.linear.weight, std=std)
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)
        self.deployed = deploy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.bn(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the preceding BN into the linear layer, in place. No-op when already deployed."""
        if self.deployed:
            return
        bn, lin = self.bn, self.linear
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        w = lin.weight * scale[None, :]
        b = lin.weight @ shift
        if lin.bias is not None:
            b = b + lin.bias
        fused = nn.Linear(w.shape[1], w.shape[0], bias=True).to(device=w.device, dtype=w.dtype)
        fused.weight.copy_(w)
        fused.bias.copy_(b)
        self.linear = fused
        self.bn = nn.Identity()
        self.drop = nn.Identity()
        self.deployed = True


def set_bn_frozen(model: nn.Module, tune: bool = True) -> int:
    """Freeze every BatchNorm of ``model`` (running statistics kept) for fine-tuning.

    ConvBN blocks stay frozen across ``model.train()`` and, with ``tune``, run in tune mode (folded on the fly).
    Bare BatchNorm layers are put in eval mode: call this again after each ``model.train()`` (the training loop
    does). Idempotent. Returns the number of ConvBN blocks in tune mode.
    """
    n = 0
    for m in model.modules():
        if isinstance(m, ConvBN) and not m.deployed:
            m.freeze_bn(tune=tune)
            n += int(tune)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return n
