"""The network skeleton shared by the inverted-residual families (not a family itself).

MobileNetV1/V2, EfficientNet, TinyNet, FBNet, ProxylessNAS and Single-Path NAS are all: a 3x3 stride-2 conv stem,
stages of depthwise-separable / inverted-residual blocks (``blocks.inverted_residual``), an optional 1x1 head conv,
global average pooling, dropout and a linear classifier. Each family file describes its variants with an
:class:`IRNetCfg` (a block-string table plus stem/head widths and multipliers) and builds :class:`InvertedResidualNet`.

Module names follow timm's ``EfficientNet`` (``blocks.<stage>.<block>``), so a timm state dict converts with
:func:`convert_timm_layout` by renaming the stem/head convs and splitting each conv + BN pair into a ``ConvBN``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from blocks import ConvBN
from blocks.inverted_residual import ACT_LAYERS, build_stages, decode_arch, round_channels

from .features import FeatureInfo

__all__ = ["IRNetCfg", "InvertedResidualNet", "convert_timm_layout"]


@dataclass(frozen=True)
class IRNetCfg:
    """Architecture of one inverted-residual network.

    Attributes:
        arch: one tuple of block strings per stage (``blocks.inverted_residual.parse_block`` notation), before
            width and depth scaling.
        stem_size: stem output channels (final, already scaled).
        num_features: head 1x1 conv channels (final); 0 for no head conv (the classifier reads the last block).
        width: channel multiplier of every block's output (``round_channels``, divisor 8).
        depth: repeats multiplier per stage.
        depth_trunc: ``"ceil"`` (EfficientNet) or ``"round"`` (TinyNet) depth rounding.
        act: default activation (``relu``, ``relu6``, ``swish``, ``hard_swish``).
        bn_eps: BatchNorm epsilon of every BN.
        conv_bias: every conv (stem, blocks, head) has its own bias (FBNet's mobile-vision release).
        always_pw: ``ir`` blocks keep their expansion conv at expansion 1 (timm); False omits it (mobile-vision).
    """

    arch: tuple[tuple[str, ...], ...]
    stem_size: int = 32
    num_features: int = 1280
    width: float = 1.0
    depth: float = 1.0
    depth_trunc: str = "ceil"
    act: str = "relu"
    bn_eps: float = 1e-5
    conv_bias: bool = False
    always_pw: bool = True

    def __post_init__(self) -> None:
        if self.act not in ACT_LAYERS:
            raise ValueError(f"unknown activation {self.act!r}; expected one of {sorted(ACT_LAYERS)}")


class InvertedResidualNet(nn.Module):
    """Stem, inverted-residual stages, optional 1x1 head conv, global average pool, dropout, classifier.

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of the residual blocks, ``rate * i / n`` over the n blocks.
        pw_conv_layer: Conv2d type of every 1x1 pointwise conv of the blocks and of the head conv (e.g. a sparse
            conv); the stem and depthwise convs stay dense.
        classifier_layer: Linear type of the classifier.
    """

    def __init__(
        self,
        cfg: IRNetCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pw_conv_layer: type[nn.Conv2d] = nn.Conv2d,
        classifier_layer: type[nn.Linear] = nn.Linear,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        self.classifier_layer = classifier_layer
        act = ACT_LAYERS[cfg.act]
        norm = {"bn_eps": cfg.bn_eps, "bias": cfg.conv_bias}
        self.stem = ConvBN(in_chans, cfg.stem_size, 3, stride=2, act_layer=act, **norm)
        self.blocks, features, head_in = build_stages(
            cfg.stem_size,
            decode_arch(cfg.arch, cfg.depth, cfg.depth_trunc),
            round_chs=partial(round_channels, multiplier=cfg.width),
            act_layer=act,
            drop_path_rate=drop_path_rate,
            bn_eps=cfg.bn_eps,
            conv_bias=cfg.conv_bias,
            always_pw=cfg.always_pw,
            pw_conv_layer=pw_conv_layer,
        )
        self._feature_stages = tuple(f.pop("stage") for f in features)
        self.feature_info = FeatureInfo(features)
        if cfg.num_features:
            self.head = ConvBN(head_in, cfg.num_features, act_layer=act, conv_layer=pw_conv_layer, **norm)
            self.num_features = cfg.num_features
        else:
            self.head = nn.Identity()
            self.num_features = head_in
        self.drop = nn.Dropout(drop_rate)
        self.pretrained_cfg: dict = {}
        self.reset_classifier(num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """TF/timm initialisation: conv N(0, sqrt(2 / fan_out)) (fan_out per group), BN (1, 0), linear U(+-out^-0.5)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / m.weight.shape[0] ** 0.5
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.classifier = self.classifier_layer(self.num_features, num_classes) if num_classes else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay: none (as timm's EfficientNet)."""
        return set()

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Feature maps of levels ``0..stop`` (all by default): the last stage output at each stride."""
        stop = len(self._feature_stages) - 1 if stop is None else stop
        x = self.stem(x)
        outs = [x] if self._feature_stages[0] == -1 else []
        for i, stage in enumerate(self.blocks):
            if len(outs) > stop:
                break
            x = stage(x)
            if i in self._feature_stages:
                outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Head-conv output (B, num_features, H/32, W/32)."""
        return self.head(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, dropout and classifier; ``pre_logits`` returns the pooled features."""
        x = x.mean((2, 3))  # B, C, H, W -> B, C
        if pre_logits:
            return x
        return self.classifier(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_TIMM_BLOCK = {  # timm's per-block names -> ours, for inverted-residual and depthwise-separable blocks
    "ir": {"conv_pw": "conv_pw.conv", "bn1": "conv_pw.bn", "conv_dw": "conv_dw.conv", "bn2": "conv_dw.bn"}
    | {"conv_pwl": "conv_pwl.conv", "bn3": "conv_pwl.bn"},
    "ds": {"conv_dw": "conv_dw.conv", "bn1": "conv_dw.bn", "conv_pw": "conv_pw.conv", "bn2": "conv_pw.bn"},
}
_TIMM_TOP = {"conv_stem": "stem.conv", "bn1": "stem.bn", "conv_head": "head.conv", "bn2": "head.bn"}
_TIMM_SE = {"conv_reduce": "fc1", "conv_expand": "fc2"}


def convert_timm_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``EfficientNet`` keys (``conv_stem``, ``bn1``, ``blocks.i.j.{conv_pw,bn1,...}``, ``conv_head``, ``bn2``,
    ``classifier``) to :class:`InvertedResidualNet`'s. Pure; raises ``KeyError`` on a foreign layout."""
    if "conv_stem.weight" not in state_dict:
        raise KeyError("not a timm EfficientNet-style checkpoint (no conv_stem.weight)")
    ir_blocks = {k.rsplit(".", 2)[0] for k in state_dict if k.endswith("conv_pwl.weight")}
    out = {}
    for k, v in state_dict.items():
        m = re.fullmatch(r"(blocks\.\d+\.\d+)\.(\w+)\.(.+)", k)
        if m is None:
            head, rest = k.split(".", 1)
            out[f"{_TIMM_TOP.get(head, head)}.{rest}"] = v
            continue
        block, name, rest = m.groups()
        if name == "se":
            sub, tail = rest.split(".", 1)
            out[f"{block}.se.{_TIMM_SE[sub]}.{tail}"] = v
        else:
            table = _TIMM_BLOCK["ir" if block in ir_blocks else "ds"]
            out[f"{block}.{table[name]}.{rest}"] = v
    return out
