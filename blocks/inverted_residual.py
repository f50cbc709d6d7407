"""Inverted-residual building blocks and the stage builder shared by the MobileNet-style families.

One implementation serves MobileNetV1/V2, EfficientNet, TinyNet, FBNet, ProxylessNAS and Single-Path NAS:

* :class:`DepthwiseSeparable` (``ds`` / ``dsa``): depthwise KxK ConvBN + activation, optional squeeze-excitation,
  pointwise 1x1 ConvBN (with an activation for ``dsa``, MobileNetV1), identity skip when shapes allow;
* :class:`InvertedResidual` (``ir``, "MBConv"): pointwise 1x1 expansion ConvBN + activation (optionally grouped and
  followed by a channel shuffle, FBNet's ``g2`` blocks), depthwise KxK ConvBN + activation, optional
  squeeze-excitation, linear pointwise 1x1 projection ConvBN, identity skip (with stochastic depth) when shapes allow;
* :func:`parse_block` / :func:`decode_arch`: a compact architecture table in timm's block-string notation, e.g.
  ``"ir_r2_k3_s2_e6_c24_se0.25"`` (type ``ir``/``ds``/``dsa``, ``r`` repeats, ``k`` depthwise kernel, ``s`` stride of
  the first repeat, ``e`` expansion ratio, ``c`` output channels, ``se`` squeeze-excitation ratio relative to the
  block *input* channels, ``n`` activation override ``re``/``r6``/``sw``/``hs``, ``g`` pointwise groups,
  ``noskip``), and depth scaling with timm's exact semantics (``ceil`` for EfficientNet, ``round`` for TinyNet,
  repeats redistributed from the last block definition of a stage backwards);
* :func:`round_channels`: width scaling, ``make_divisible(c * multiplier, 8)`` never more than 10 % below
  ``c * multiplier`` (timm's ``round_channels``);
* :func:`build_stages`: the blocks of every stage from a decoded table, plus the feature levels (output of the last
  stage at each stride, and the stem when the first block already downsamples), as timm lists them. Two switches
  cover FBNet's mobile-vision release: ``conv_bias`` (every conv has a bias) and ``always_pw=False`` (no expansion
  conv at expansion 1).

Every BatchNorm sits in a :class:`~blocks.convbn.ConvBN`, so ``reparameterize_model`` folds all of them; DropPath is
removed by the walker. Module names follow timm's ``conv_pw``/``conv_dw``/``se``/``conv_pwl`` so that a timm key maps
onto ours by appending ``.conv``/``.bn``.

Layer-type hooks (used by the sparse families): ``pw_conv_layer`` (a ``nn.Conv2d`` subclass, default ``nn.Conv2d``)
builds every 1x1 pointwise convolution of the blocks (expansion, projection and the depthwise-separable pointwise
conv) through ``ConvBN(conv_layer=pw_conv_layer)``; the networks built on this module also use it for their 1x1 head
conv and take a ``classifier_layer`` (default ``nn.Linear``) for the classifier. The stem conv, the depthwise convs
and the squeeze-excitation convs always stay ``nn.Conv2d``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from timm.layers import DropPath
from torch import nn

from .convbn import ConvBN
from .layers import SqueezeExcite

__all__ = [
    "ACT_LAYERS",
    "BlockDef",
    "ChannelShuffle",
    "DepthwiseSeparable",
    "InvertedResidual",
    "build_stages",
    "decode_arch",
    "parse_block",
    "round_channels",
]

#: Activation names accepted by the builder.
ACT_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "swish": nn.SiLU,
    "hard_swish": nn.Hardswish,
}
_ACT_CODES = {"re": "relu", "r6": "relu6", "sw": "swish", "hs": "hard_swish"}
_KINDS = ("ds", "dsa", "ir")


def round_channels(chs: float, multiplier: float = 1.0, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Scale ``chs`` by ``multiplier`` and round to a multiple of ``divisor`` (at least ``divisor``).

    The result never falls below ``round_limit * chs * multiplier`` (then one more ``divisor`` is added), as timm's
    ``round_channels``/``make_divisible`` and the TF reference do. ``multiplier == 0`` returns ``chs`` unchanged.
    """
    if not multiplier:
        return int(chs)
    v = chs * multiplier
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < round_limit * v:
        new += divisor
    return new


@dataclass(frozen=True)
class BlockDef:
    """One block of an architecture table (before width scaling).

    Attributes:
        kind: ``"ds"`` (depthwise-separable, linear pointwise), ``"dsa"`` (with pointwise activation, no skip) or
            ``"ir"`` (inverted residual).
        out_chs: output channels before width scaling.
        kernel: depthwise kernel size.
        stride: depthwise stride (only the first repeat of a definition keeps it).
        exp_ratio: expansion ratio of ``ir`` blocks.
        se_ratio: squeeze-excitation reduction relative to the block input channels (0: none).
        act: activation name overriding the network's, or None.
        skip: allow the identity skip (taken only when stride is 1 and channels match).
        pw_groups: groups of the ``ir`` pointwise convs (a channel shuffle follows a grouped expansion).
    """

    kind: str
    out_chs: int
    kernel: int = 3
    stride: int = 1
    exp_ratio: float = 1.0
    se_ratio: float = 0.0
    act: str | None = None
    skip: bool = True
    pw_groups: int = 1

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown block kind {self.kind!r}; expected one of {_KINDS}")
        if self.stride not in (1, 2):
            raise ValueError(f"block stride must be 1 or 2, got {self.stride}")
        if self.act is not None and self.act not in ACT_LAYERS:
            raise ValueError(f"unknown activation {self.act!r}; expected one of {sorted(ACT_LAYERS)}")
        if self.pw_groups > 1 and self.kind != "ir":
            raise ValueError("grouped pointwise convs are only supported in 'ir' blocks")


def parse_block(spec: str) -> tuple[BlockDef, int]:
    """Decode one block string such as ``"ir_r2_k5_s2_e6_c40_se0.25"`` into ``(BlockDef, repeats)``.

    Raises:
        ValueError: unknown block type or option, or a missing ``c``/``k``/``s``/``r`` (``e`` is required by ``ir``).
    """
    kind, *ops = spec.split("_")
    if kind not in _KINDS:
        raise ValueError(f"{spec!r}: unknown block type {kind!r}; expected one of {_KINDS}")
    opts: dict[str, str] = {}
    skip, act = True, None
    for op in ops:
        if op == "noskip":
            skip = False
        elif op.startswith("n") and op[1:] in _ACT_CODES:
            act = _ACT_CODES[op[1:]]
        else:
            m = re.fullmatch(r"(se|[rksecg])(\d+(?:\.\d+)?)", op)
            if m is None:
                raise ValueError(f"{spec!r}: cannot parse option {op!r}")
            opts[m.group(1)] = m.group(2)
    required = ("r", "k", "s", "c") + (("e",) if kind == "ir" else ())
    missing = [k for k in required if k not in opts]
    if missing:
        raise ValueError(f"{spec!r}: missing option(s) {missing}")
    if kind != "ir" and (float(opts.get("e", 1)) != 1 or "g" in opts):
        raise ValueError(f"{spec!r}: expansion and pointwise groups apply to 'ir' blocks only")
    block = BlockDef(
        kind=kind,
        out_chs=int(opts["c"]),
        kernel=int(opts["k"]),
        stride=int(opts["s"]),
        exp_ratio=float(opts.get("e", 1.0)),
        se_ratio=float(opts.get("se", 0.0)),
        act=act,
        skip=skip and kind != "dsa",
        pw_groups=int(opts.get("g", 1)),
    )
    return block, int(opts["r"])


def _scale_repeats(repeats: Sequence[int], multiplier: float, trunc: str) -> list[int]:
    """Scale a stage's total depth, then share it out over its definitions from the last one backwards (timm)."""
    total = sum(repeats)
    scaled = max(1, round(total * multiplier)) if trunc == "round" else int(math.ceil(total * multiplier))
    out = []
    for r in reversed(repeats):
        rs = max(1, round(r / total * scaled))
        out.append(rs)
        total -= r
        scaled -= rs
    return out[::-1]


def decode_arch(
    arch: Sequence[Sequence[str]], depth_multiplier: float = 1.0, depth_trunc: str = "ceil"
) -> list[list[BlockDef]]:
    """Decode a stage table of block strings, scale each stage's depth, and expand repeats into single blocks.

    Args:
        arch: one sequence of block strings per stage.
        depth_multiplier: repeats multiplier per stage.
        depth_trunc: ``"ceil"`` (EfficientNet: any multiplier > 1 deepens every stage) or ``"round"`` (TinyNet).

    Returns:
        One list of :class:`BlockDef` per stage; only the first block of each definition keeps its stride.
    """
    if depth_trunc not in ("ceil", "round"):
        raise ValueError(f"depth_trunc must be 'ceil' or 'round', got {depth_trunc!r}")
    stages = []
    for stage in arch:
        if isinstance(stage, str):
            raise TypeError(f"each stage must be a sequence of block strings, got the string {stage!r}")
        parsed = [parse_block(s) for s in stage]
        repeats = _scale_repeats([r for _, r in parsed], depth_multiplier, depth_trunc)
        blocks = []
        for (block, _), n in zip(parsed, repeats):
            blocks += [block] + [replace(block, stride=1)] * (n - 1)
        stages.append(blocks)
    return stages


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups (ShuffleNet), after a grouped pointwise conv."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b, self.groups, c // self.groups, h, w)  # B, C, H, W -> B, G, C/G, H, W
        return x.transpose(1, 2).reshape(b, c, h, w)  # B, G, C/G, H, W -> B, C/G, G, H, W -> B, C, H, W


def _se(chs: int, rd_chs: int, act_layer: type[nn.Module]) -> nn.Module:
    return SqueezeExcite(chs, rd_chs=rd_chs, act_layer=act_layer) if rd_chs else nn.Identity()


class DepthwiseSeparable(nn.Module):
    """Depthwise KxK ConvBN + act, optional SE, pointwise 1x1 ConvBN (+ act when ``pw_act``), identity skip.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel: depthwise kernel size.
        stride: depthwise stride.
        act_layer: activation type.
        pw_act: activation after the pointwise conv (MobileNetV1).
        se_chs: squeeze-excitation reduced channels (0: no SE).
        skip: add the input when stride is 1 and ``in_chs == out_chs``.
        drop_path: stochastic-depth rate of the skip branch.
        bn_eps: BatchNorm epsilon.
        bias: give the convs their own bias (FBNet's mobile-vision release; folded at deploy either way).
        pw_conv_layer: Conv2d type of the pointwise conv.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: int = 3,
        stride: int = 1,
        act_layer: type[nn.Module] = nn.ReLU,
        pw_act: bool = False,
        se_chs: int = 0,
        skip: bool = True,
        drop_path: float = 0.0,
        bn_eps: float = 1e-5,
        bias: bool = False,
        pw_conv_layer: type[nn.Conv2d] = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.has_skip = skip and stride == 1 and in_chs == out_chs
        norm = {"bn_eps": bn_eps, "bias": bias}
        self.conv_dw = ConvBN(in_chs, in_chs, kernel, stride, groups=in_chs, act_layer=act_layer, **norm)
        self.se = _se(in_chs, se_chs, act_layer)
        pw_act_layer = act_layer if pw_act else None
        self.conv_pw = ConvBN(in_chs, out_chs, act_layer=pw_act_layer, conv_layer=pw_conv_layer, **norm)
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_pw(self.se(self.conv_dw(x)))
        return x + self.drop_path(y) if self.has_skip else y


class InvertedResidual(nn.Module):
    """Inverted residual (MBConv): 1x1 expand + act, KxK depthwise + act, optional SE, linear 1x1 project, skip.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        mid_chs: expanded channels.
        kernel: depthwise kernel size.
        stride: depthwise stride.
        act_layer: activation type.
        se_chs: squeeze-excitation reduced channels (0: no SE).
        skip: add the input when stride is 1 and ``in_chs == out_chs``.
        drop_path: stochastic-depth rate of the skip branch.
        bn_eps: BatchNorm epsilon.
        bias: give the convs their own bias (FBNet's mobile-vision release; folded at deploy either way).
        pw_groups: groups of both pointwise convs; a channel shuffle follows the (grouped) expansion (FBNet).
        always_pw: build the expansion conv even when ``mid_chs == in_chs`` (timm); ``False`` omits it then
            (FBNet's mobile-vision release).
        pw_conv_layer: Conv2d type of the pointwise convs.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        kernel: int = 3,
        stride: int = 1,
        act_layer: type[nn.Module] = nn.ReLU,
        se_chs: int = 0,
        skip: bool = True,
        drop_path: float = 0.0,
        bn_eps: float = 1e-5,
        bias: bool = False,
        pw_groups: int = 1,
        always_pw: bool = True,
        pw_conv_layer: type[nn.Conv2d] = nn.Conv2d,
    ) -> None:
        super().__init__()
        for c in (in_chs, mid_chs, out_chs):
            if c % pw_groups:
                raise ValueError(f"channels {c} not divisible by pw_groups={pw_groups}")
        self.has_skip = skip and stride == 1 and in_chs == out_chs
        norm = {"bn_eps": bn_eps, "bias": bias}
        pw = {"groups": pw_groups, "conv_layer": pw_conv_layer, **norm}
        has_pw = always_pw or mid_chs != in_chs
        self.conv_pw = ConvBN(in_chs, mid_chs, act_layer=act_layer, **pw) if has_pw else nn.Identity()
        self.shuffle = ChannelShuffle(pw_groups) if pw_groups > 1 else nn.Identity()
        self.conv_dw = ConvBN(mid_chs, mid_chs, kernel, stride, groups=mid_chs, act_layer=act_layer, **norm)
        self.se = _se(mid_chs, se_chs, act_layer)
        self.conv_pwl = ConvBN(mid_chs, out_chs, **pw)
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_pwl(self.se(self.conv_dw(self.shuffle(self.conv_pw(x)))))
        return x + self.drop_path(y) if self.has_skip else y


def _make_block(
    d: BlockDef, in_chs: int, out_chs: int, act_layer: type[nn.Module], always_pw: bool, **common
) -> nn.Module:
    """One block from its definition; SE channels are ``round(se_ratio * in_chs)`` as in timm (and the TF code)."""
    act = ACT_LAYERS[d.act] if d.act is not None else act_layer
    common |= {"kernel": d.kernel, "stride": d.stride, "act_layer": act, "skip": d.skip}
    if d.kind == "ir":
        mid = round_channels(in_chs * d.exp_ratio)
        se_chs = round(mid * d.se_ratio / d.exp_ratio) if d.se_ratio else 0
        return InvertedResidual(
            in_chs, out_chs, mid, se_chs=se_chs, pw_groups=d.pw_groups, always_pw=always_pw, **common
        )
    se_chs = round(in_chs * d.se_ratio) if d.se_ratio else 0
    return DepthwiseSeparable(in_chs, out_chs, pw_act=d.kind == "dsa", se_chs=se_chs, **common)


def build_stages(
    in_chs: int,
    stages: Sequence[Sequence[BlockDef]],
    round_chs: Callable[[int], int] = round_channels,
    act_layer: type[nn.Module] = nn.ReLU,
    drop_path_rate: float = 0.0,
    bn_eps: float = 1e-5,
    conv_bias: bool = False,
    always_pw: bool = True,
    pw_conv_layer: type[nn.Conv2d] = nn.Conv2d,
    in_stride: int = 2,
    prefix: str = "blocks",
    stem_name: str = "stem",
) -> tuple[nn.Sequential, list[dict], int]:
    """Build the blocks of every stage.

    Args:
        in_chs: channels entering the first stage (the stem's output).
        stages: decoded table (:func:`decode_arch`).
        round_chs: width scaling applied to every block's ``out_chs`` (e.g. ``partial(round_channels,
            multiplier=1.4)``).
        act_layer: default activation.
        drop_path_rate: stochastic depth, ``rate * i / n`` for the i-th of n blocks (timm's schedule).
        bn_eps: BatchNorm epsilon.
        conv_bias: give every conv its own bias (FBNet's mobile-vision release).
        always_pw: build the expansion conv of ``ir`` blocks even at expansion 1 (timm; False: mobile-vision).
        pw_conv_layer: Conv2d type of every 1x1 pointwise conv.
        in_stride: stride of the input relative to the image (the stem's).
        prefix: module name of the returned Sequential, used in the feature-info ``module`` names.
        stem_name: module name of the stem, listed as a feature level when the first block downsamples.

    Returns:
        ``(stages, feature_info, out_chs)``: an ``nn.Sequential`` of per-stage ``nn.Sequential``s; one dict per
        feature level with ``num_chs``, ``reduction``, ``module`` and ``stage`` (the index into ``stages`` whose
        output it is, -1 for the stem); and the channels of the last block.
    """
    n_total = sum(len(s) for s in stages)
    if n_total == 0:
        raise ValueError("empty architecture")
    features, built, idx, stride = [], [], 0, in_stride
    if stages[0][0].stride > 1:
        features.append({"num_chs": in_chs, "reduction": stride, "module": stem_name, "stage": -1})
    for i, stage in enumerate(stages):
        blocks = []
        for d in stage:
            out_chs = round_chs(d.out_chs)
            dp = drop_path_rate * idx / n_total
            common = {"drop_path": dp, "bn_eps": bn_eps, "bias": conv_bias, "pw_conv_layer": pw_conv_layer}
            blocks.append(_make_block(d, in_chs, out_chs, act_layer, always_pw, **common))
            stride *= d.stride
            in_chs, idx = out_chs, idx + 1
        built.append(nn.Sequential(*blocks))
        last = i + 1 == len(stages)
        if last or stages[i + 1][0].stride > 1:
            features.append({"num_chs": in_chs, "reduction": stride, "module": f"{prefix}.{i}", "stage": i})
    return nn.Sequential(*built), features, in_chs
