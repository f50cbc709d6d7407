"""EfficientViT (MSRA): memory-efficient vision transformer with cascaded group attention.

Paper: "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention", Xinyu Liu, Houwen Peng,
Ningxin Zheng, Yuqing Yang, Han Hu, Yixuan Yuan, CVPR 2023, arXiv 2305.07027.
Origin: microsoft/Cream, ``EfficientViT/classification`` (MIT licence); weights released by the authors (MIT).

Layout: a 16x overlapping conv stem, three stages of ``EfficientViTBlock`` (DW conv + FFN, cascaded group attention
in local windows, DW conv + FFN), stages 2 and 3 preceded by a subsample block (DW conv + FFN, inverted-residual
patch merging with squeeze-excitation, DW conv + FFN), global average pool and a BN + Linear classifier.

Deviations from the original:
* the feature-map geometry is computed at construction from ``img_size`` (ceil division through the four stride-2
  stem convs, which equals the original's ``img_size // 16`` whenever ``img_size`` is a multiple of 16);
* optional stochastic depth over the block residuals (``drop_path_rate``, default 0 as in the original);
* ``deploy`` (via ``blocks.reparameterize_model``) also folds the residual identities of the depthwise convs, the
  attention scale into the query convs and gathers the position-bias tables into dense buffers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from blocks import BNLinear, ConvBN, ConvFFN, EfficientViTBlock, Residual, SqueezeExcite
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["EfficientViTCfg", "EfficientViT", "convert_original", "convert_timm"]


def _conv_out(size: int) -> int:
    """Output side of a 3x3, stride-2, padding-1 convolution."""
    return (size - 1) // 2 + 1


class PatchMerging(nn.Module):
    """Inverted-residual downsampling: 1x1 expand (4x), 3x3 depthwise stride 2, squeeze-excitation, 1x1 project."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        hid = dim * 4
        self.conv1 = ConvBN(dim, hid, act_layer=nn.ReLU)
        self.conv2 = ConvBN(hid, hid, 3, stride=2, groups=hid, act_layer=nn.ReLU)
        self.se = SqueezeExcite(hid, rd_ratio=0.25)
        self.conv3 = ConvBN(hid, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.conv2(self.conv1(x))))


def _dw_ffn(dim: int) -> nn.Sequential:
    """Residual depthwise conv followed by a residual FFN (the subsample block's sandwich halves)."""
    return nn.Sequential(Residual(ConvBN(dim, dim, 3, groups=dim)), Residual(ConvFFN(dim, dim * 2)))


class EfficientViTStage(nn.Module):
    """An optional subsample block followed by ``depth`` EfficientViT blocks at one resolution."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        key_dim: int,
        num_heads: int,
        resolution: int,
        window_resolution: int,
        kernels: Sequence[int],
        depth: int,
        downsample: bool,
        drop_path: Sequence[float],
    ) -> None:
        super().__init__()
        if downsample:
            self.downsample = nn.Sequential(
                OrderedDict(res1=_dw_ffn(in_dim), patchmerge=PatchMerging(in_dim, out_dim), res2=_dw_ffn(out_dim))
            )
            resolution = _conv_out(resolution)
        else:
            self.downsample = nn.Identity()
        self.resolution = resolution
        attn_ratio = out_dim / (key_dim * num_heads)
        self.blocks = nn.Sequential(
            *[
                EfficientViTBlock(
                    out_dim, key_dim, num_heads, attn_ratio, resolution, window_resolution, kernels, drop_path[d]
                )
                for d in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


@dataclass(frozen=True)
class EfficientViTCfg:
    """Architecture of one EfficientViT variant (three stages)."""

    embed_dim: tuple[int, int, int]
    depth: tuple[int, int, int]
    num_heads: tuple[int, int, int]
    kernels: tuple[int, ...]
    key_dim: tuple[int, int, int] = (16, 16, 16)
    window_size: tuple[int, int, int] = (7, 7, 7)


class EfficientViT(nn.Module):
    """EfficientViT classifier / backbone.

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input channels.
        img_size: input side the geometry is built for (square).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, increasing linearly over the blocks.
        distillation: add the DeiT-style distillation head of the original code (eval output averages the two).
    """

    def __init__(
        self,
        cfg: EfficientViTCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        distillation: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        self.distillation = distillation
        self.deployed = False
        d0 = cfg.embed_dim[0]
        self.patch_embed = nn.Sequential(
            OrderedDict(
                conv1=ConvBN(in_chans, d0 // 8, 3, stride=2, act_layer=nn.ReLU),
                conv2=ConvBN(d0 // 8, d0 // 4, 3, stride=2, act_layer=nn.ReLU),
                conv3=ConvBN(d0 // 4, d0 // 2, 3, stride=2, act_layer=nn.ReLU),
                conv4=ConvBN(d0 // 2, d0, 3, stride=2),
            )
        )
        resolution = img_size
        for _ in range(4):
            resolution = _conv_out(resolution)
        dpr = torch.linspace(0, drop_path_rate, sum(cfg.depth)).tolist()
        stages, self.feature_info, in_dim, stride = [], FeatureInfo(), d0, 16
        for i, (dim, depth) in enumerate(zip(cfg.embed_dim, cfg.depth)):
            stage = EfficientViTStage(
                in_dim,
                dim,
                cfg.key_dim[i],
                cfg.num_heads[i],
                resolution,
                cfg.window_size[i],
                cfg.kernels,
                depth,
                downsample=i > 0,
                drop_path=dpr[sum(cfg.depth[:i]) : sum(cfg.depth[: i + 1])],
            )
            stride *= 2 if i > 0 else 1
            resolution, in_dim = stage.resolution, dim
            stages.append(stage)
            self.feature_info.append({"num_chs": dim, "reduction": stride, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.num_features = cfg.embed_dim[-1]
        self.pretrained_cfg: dict = {}
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (and distillation head) with fresh ones of ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.head = BNLinear(self.num_features, num_classes, drop=self.drop_rate) if num_classes else nn.Identity()
        if self.distillation:
            self.head_dist = BNLinear(self.num_features, num_classes) if num_classes else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay: the attention position biases."""
        return {n for n, _ in self.named_parameters() if "attention_biases" in n}

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Deploy, after every block has folded: weights stored channels-last, and the forward runs channels-last.

        oneDNN runs this network's many small depthwise and 1x1 convolutions faster in NHWC than in NCHW, where
        every call reorders (``benchmarks/vs_timm.py``: deployed M0 at batch 16 0.86x -> 0.73x of timm's time).
        Only the memory layout changes: shapes, values and exported graphs are those of NCHW. No-op when deployed.
        """
        if self.deployed:
            return
        self.to(memory_format=torch.channels_last)
        self.deployed = True

    def _stem_input(self, x: torch.Tensor) -> torch.Tensor:
        graph = torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if self.deployed and not graph:  # graphs keep the logical NCHW ops only
            x = x.contiguous(memory_format=torch.channels_last)  # no-op when it already is
        return x

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Outputs of stages ``0..stop`` (all by default), strides 16, 32, 64."""
        x = self.patch_embed(self._stem_input(x))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outs.append(x)
            if stop is not None and i >= stop:
                break
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature map (B, C, H/64, W/64)."""
        return self.stages(self.patch_embed(self._stem_input(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool and classifier; ``pre_logits`` returns the pooled features."""
        x = x.mean((2, 3))  # B, C, H, W -> B, C
        if pre_logits:
            return x
        if self.distillation:
            x, x_dist = self.head(x), self.head_dist(x)
            return torch.stack([x, x_dist]) if self.training else (x + x_dist) / 2
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' release (microsoft/Cream ``EfficientViT``) to this implementation's.

    The original flattens each stage into ``blocks{1,2,3}`` where, for stages 2 and 3, entries 0-2 are the subsample
    block (``res1``, ``patchmerge``, ``res2``); names its conv/linear ``c``/``l``; and stores the stem as
    ``patch_embed.{0,2,4,6}``. Some releases store 1x1 conv weights as 2-D matrices.
    """
    if not any(k.startswith("blocks1.") for k in state_dict):
        raise KeyError("not an original EfficientViT checkpoint (no blocks1.* keys)")
    out = {}
    for k, v in state_dict.items():
        if k.endswith("attention_bias_idxs"):
            continue
        parts = k.split(".")
        parts = [{"c": "conv", "l": "linear"}.get(p, p) if j == len(parts) - 2 else p for j, p in enumerate(parts)]
        if parts[0] == "patch_embed":
            parts[1] = f"conv{int(parts[1]) // 2 + 1}"
        elif parts[0].startswith("blocks"):
            stage, idx = int(parts[0][len("blocks") :]) - 1, int(parts[1])
            if stage == 0:
                head = ["stages", "0", "blocks", str(idx)]
            elif idx < 3:
                head = ["stages", str(stage), "downsample", ("res1", "patchmerge", "res2")[idx]]
            else:
                head = ["stages", str(stage), "blocks", str(idx - 3)]
            parts = head + parts[2:]
        key = ".".join(parts)
        if key.endswith("conv.weight") or ".se.fc" in key:
            v = v[:, :, None, None] if v.dim() == 2 and key.endswith("weight") else v
        out[key] = v
    return out


def convert_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ``efficientvit_m*`` keys to this implementation's (same names; drops the index buffers)."""
    if not any(k.startswith("stages.") for k in state_dict):
        raise KeyError("not a timm EfficientViT checkpoint (no stages.* keys)")
    return {k: v for k, v in state_dict.items() if not k.endswith("attention_bias_idxs")}


_URL = "https://github.com/xinyuliu-jeffrey/EfficientViT_cream/releases/download/v1.0/{}.pth"
_LIC = "MIT"
_SRC = "microsoft/Cream (authors), ImageNet-1k, 300 epochs"
_WEIGHTS = {
    f"efficientvit_m{i}": WeightSpec(_URL.format(f"efficientvit_m{i}"), "original", license=_LIC, source=_SRC, top1=t)
    for i, t in enumerate((63.2, 68.4, 70.8, 73.4, 74.3, 77.1))
}
_LAT = "V100 {} img/s (batch 2048, AMP, fused BN){}"
_REPORTED = {
    "efficientvit_m0": Reported(2.3, 0.079, 63.2, latency=_LAT.format("27,644", "; CPU 228.4 img/s, ONNX 340.1 img/s")),
    "efficientvit_m1": Reported(3.0, 0.167, 68.4, latency=_LAT.format("20,093", "")),
    "efficientvit_m2": Reported(4.2, 0.201, 70.8, latency=_LAT.format("18,218", "")),
    "efficientvit_m3": Reported(6.9, 0.263, 73.4, latency=_LAT.format("16,644", "")),
    "efficientvit_m4": Reported(8.8, 0.299, 74.3, latency=_LAT.format("15,914", "")),
    "efficientvit_m5": Reported(12.4, 0.522, 77.1, latency=_LAT.format("10,621", "")),
}

FAMILY = Family(
    name="efficientvit",
    paper=Paper(
        title="EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention",
        arxiv="2305.07027",
        venue="CVPR 2023",
        repo="https://github.com/microsoft/Cream/tree/main/EfficientViT",
        code_license="MIT",
        weights_license=_LIC,
    ),
    model_cls=EfficientViT,
    default_cfg=PretrainedCfg(first_conv="patch_embed.conv1.conv", classifier=("head.linear", "head_dist.linear")),
    converters={"original": convert_original, "timm": convert_timm},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=(
        "ConvBN",
        "BNLinear",
        "Residual",
        "ConvFFN",
        "SqueezeExcite",
        "CascadedGroupAttention",
        "LocalWindowAttention",
        "EfficientViTBlock",
    ),
    remaining_norms=(),
    timm_names={f"efficientvit_m{i}": f"efficientvit_m{i}" for i in range(6)},
)


@FAMILY.register
def efficientvit_m0(**kwargs) -> EfficientViT:
    """EfficientViT-M0: 2.35 M params, 79 M MACs."""
    return EfficientViT(EfficientViTCfg((64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5)), **kwargs)


@FAMILY.register
def efficientvit_m1(**kwargs) -> EfficientViT:
    """EfficientViT-M1: 2.98 M params, 167 M MACs."""
    return EfficientViT(EfficientViTCfg((128, 144, 192), (1, 2, 3), (2, 3, 3), (7, 5, 3, 3)), **kwargs)


@FAMILY.register
def efficientvit_m2(**kwargs) -> EfficientViT:
    """EfficientViT-M2: 4.19 M params, 201 M MACs."""
    return EfficientViT(EfficientViTCfg((128, 192, 224), (1, 2, 3), (4, 3, 2), (7, 5, 3, 3)), **kwargs)


@FAMILY.register
def efficientvit_m3(**kwargs) -> EfficientViT:
    """EfficientViT-M3: 6.90 M params, 263 M MACs."""
    return EfficientViT(EfficientViTCfg((128, 240, 320), (1, 2, 3), (4, 3, 4), (5, 5, 5, 5)), **kwargs)


@FAMILY.register
def efficientvit_m4(**kwargs) -> EfficientViT:
    """EfficientViT-M4: 8.80 M params, 299 M MACs."""
    return EfficientViT(EfficientViTCfg((128, 256, 384), (1, 2, 3), (4, 4, 4), (7, 5, 3, 3)), **kwargs)


@FAMILY.register
def efficientvit_m5(**kwargs) -> EfficientViT:
    """EfficientViT-M5: 12.47 M params, 522 M MACs."""
    return EfficientViT(EfficientViTCfg((192, 288, 384), (1, 3, 4), (3, 3, 4), (7, 5, 3, 3)), **kwargs)
