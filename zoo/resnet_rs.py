"""ResNet-RS: ResNets with improved scaling and training, as timm ports them.

Paper: "Revisiting ResNets: Improved Training and Scaling Strategies", Irwan Bello, William Fedus, Xianzhi Du,
Ekin D. Cubuk, Aravind Srinivas, Tsung-Yi Lin, Jonathon Shlens, Barret Zoph, NeurIPS 2021, arXiv 2103.07579.
Origin: tensorflow/tpu ``models/official/resnet/resnet_rs`` (Apache-2.0, TensorFlow); the PyTorch port and the
converted weights are timm's ``resnetrs*`` (Apache-2.0), whose key layout ``convert_timm`` reads.

Layout (the ResNet-D family with the paper's changes): a deep stem of three 3x3 convs (32, 32, 64 channels, the
first with stride 2) whose max-pool is replaced by a 3x3 stride-2 conv; four stages of bottleneck blocks (1x1, 3x3
carrying the stride, 1x1 with 4x expansion) with squeeze-excitation (ratio 0.25) after the last BN; projection
shortcuts that average-pool (2x2, stride 2) before their 1x1 conv; the last BN of every residual branch initialised
with gamma 0; global average pooling, dropout and a linear classifier.

Deviations from timm's ``ResNet`` (none in the computation): the stem, shortcut and block convs are ``ConvBN``
modules (``convert_timm`` renames the keys); feature levels are the four stages (strides 4-32), not timm's five;
the pretrained configs hold timm's evaluation resolution but not its ``test_input_size``. ``deploy`` folds every
BatchNorm into its conv.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from timm.layers import DropPath
from torch import nn

from blocks import ConvBN, SqueezeExcite
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["ResNetRSCfg", "ResNetRS", "RSBottleneck", "convert_timm"]


class RSBottleneck(nn.Module):
    """Bottleneck with squeeze-excitation and an average-pool projection shortcut.

    Args:
        in_chs: input channels.
        planes: bottleneck width (output is ``4 * planes``).
        stride: stride of the 3x3 conv (and of the shortcut's pooling).
        drop_path: stochastic-depth rate of the residual branch.
        se_ratio: squeeze-excitation reduction ratio.
    """

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, drop_path: float = 0.0, se_ratio: float = 0.25):
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = ConvBN(in_chs, planes, 1, act_layer=nn.ReLU)
        self.conv2 = ConvBN(planes, planes, 3, stride=stride, act_layer=nn.ReLU)
        self.conv3 = ConvBN(planes, out_chs, 1, bn_weight_init=0.0)
        self.se = SqueezeExcite(out_chs, rd_ratio=se_ratio)
        if stride != 1 or in_chs != out_chs:
            layers = OrderedDict()
            if stride != 1:
                layers["pool"] = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
            layers["conv"] = ConvBN(in_chs, out_chs, 1)
            self.downsample = nn.Sequential(layers)
        else:
            self.downsample = nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.conv3(self.conv2(self.conv1(x))))
        return self.act(self.downsample(x) + self.drop_path(out))


@dataclass(frozen=True)
class ResNetRSCfg:
    """Architecture of one ResNet-RS variant: blocks per stage (widths and stem are shared)."""

    layers: tuple[int, int, int, int]
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_width: int = 32
    se_ratio: float = 0.25


class ResNetRS(nn.Module):
    """ResNet-RS classifier / backbone.

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, increasing linearly over all blocks.
    """

    def __init__(
        self,
        cfg: ResNetRSCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        w = cfg.stem_width
        self.stem = nn.Sequential(
            ConvBN(in_chans, w, 3, stride=2, act_layer=nn.ReLU),
            ConvBN(w, w, 3, act_layer=nn.ReLU),
            ConvBN(w, 2 * w, 3, act_layer=nn.ReLU),
            ConvBN(2 * w, 2 * w, 3, stride=2, act_layer=nn.ReLU),  # replaces the max-pool
        )
        total = sum(cfg.layers)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, self.feature_info, in_chs, k = [], FeatureInfo(), 2 * w, 0
        for i, (planes, depth) in enumerate(zip(cfg.planes, cfg.layers)):
            blocks = []
            for d in range(depth):
                stride = 2 if i > 0 and d == 0 else 1
                blocks.append(RSBottleneck(in_chs, planes, stride, dpr[k], cfg.se_ratio))
                in_chs, k = planes * RSBottleneck.expansion, k + 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": in_chs, "reduction": 4 * 2**i, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs
        self.pretrained_cfg: dict = {}
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay: none (the paper decays every weight)."""
        return set()

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Outputs of stages ``0..stop`` (all by default), strides 4, 8, 16, 32."""
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outs.append(x)
            if stop is not None and i >= stop:
                break
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature map (B, C, H/32, W/32)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, dropout and classifier; ``pre_logits`` returns the pooled features."""
        x = x.mean((2, 3))  # B, C, H, W -> B, C
        if pre_logits:
            return x
        return self.fc(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_STEM = {"conv1.0": "stem.0.conv", "conv1.1": "stem.0.bn", "conv1.3": "stem.1.conv", "conv1.4": "stem.1.bn"}
_STEM |= {"conv1.6": "stem.2.conv", "bn1": "stem.2.bn", "maxpool.0": "stem.3.conv", "maxpool.1": "stem.3.bn"}
_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv[123]|bn[123]|se|downsample)\.(?:(\d)\.)?(.+)$")


def convert_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ``resnetrs*`` keys to this implementation's.

    timm keeps torchvision's names: the deep stem is ``conv1.{0,1,3,4,6}`` + ``bn1``, the stride-2 stem conv that
    replaces the max-pool is ``maxpool.{0,1}``, stages are ``layer1..4``, block convs and BNs are ``convN``/``bnN``,
    and the shortcut is ``downsample.{1,2}`` (conv, BN; index 0 is the pool).
    """
    if "conv1.0.weight" not in state_dict or not any(k.startswith("layer1.") for k in state_dict):
        raise KeyError("not a timm ResNet-RS checkpoint (no conv1.0.weight / layer1.* keys)")
    out = {}
    for k, v in state_dict.items():
        head, _, leaf = k.rpartition(".")
        if head in _STEM:
            out[f"{_STEM[head]}.{leaf}"] = v
            continue
        m = _BLOCK.match(k)
        if m:
            stage, idx, part, sub, rest = m.groups()
            prefix = f"stages.{int(stage) - 1}.{idx}"
            if part == "downsample":
                part = {"1": "downsample.conv.conv", "2": "downsample.conv.bn"}[sub]
            elif part != "se":
                part = f"conv{part[-1]}.{'conv' if part.startswith('conv') else 'bn'}"
            out[f"{prefix}.{part}.{rest}"] = v
        else:
            out[k] = v  # fc.*
    return out


_URL = "https://github.com/rwightman/pytorch-image-models/releases/download/{}"
_FILES = {
    "resnetrs50": "v0.1-rs-weights/resnetrs50_ema-6b53758b.pth",
    "resnetrs101": "v0.1-rs-weights/resnetrs101_i192_ema-1509bbf6.pth",
    "resnetrs152": "v0.1-rs-weights/resnetrs152_i256_ema-a9aff7f9.pth",
    "resnetrs200": "v0.1-tpu-weights/resnetrs200_c-6b698b88.pth",
    "resnetrs270": "v0.1-rs-weights/resnetrs270_ema-b40e674c.pth",
    "resnetrs350": "v0.1-rs-weights/resnetrs350_i256_ema-5a1aa8f1.pth",
    "resnetrs420": "v0.1-rs-weights/resnetrs420_ema-972dee69.pth",
}
_LIC = "Apache-2.0"
_SRC = "tensorflow/tpu ResNet-RS checkpoints (ImageNet-1k), converted to PyTorch by timm"
# Paper top-1 at the resolution the ported weights were trained at (tensorflow/tpu resnet_rs README).
_TOP1 = {"50": 78.8, "101": 81.2, "152": 83.0, "200": 83.4, "270": 83.8, "350": 84.0, "420": 84.4}
_WEIGHTS = {
    name: WeightSpec(_URL.format(f), "timm", license=_LIC, source=_SRC, top1=_TOP1[name[8:]])
    for name, f in _FILES.items()
}
_LAT = "training step, batch 128: V100 {} s (fp32), TPUv3 {} ms (bf16)"
_RSRC = "tensorflow/tpu resnet_rs README (top-1, latency); params and GMACs from timm's benchmark"
_REPORTED = {
    "resnetrs50": Reported(35.69, 2.29, 78.8, 160, _LAT.format("0.31", "70"), _RSRC),
    "resnetrs101": Reported(63.62, 6.04, 81.2, 192, _LAT.format("0.70", "170"), _RSRC),
    "resnetrs152": Reported(86.62, 15.59, 83.0, 256, _LAT.format("1.76", "410"), _RSRC),
    "resnetrs200": Reported(93.21, 20.18, 83.4, 256, _LAT.format("2.86", "570"), _RSRC),
    "resnetrs270": Reported(129.86, 27.06, 83.8, 256, _LAT.format("3.76", "780"), _RSRC),
    "resnetrs350": Reported(163.96, None, 84.0, 256, _LAT.format("4.72", "1100"), _RSRC),
    "resnetrs420": Reported(191.89, 64.2, 84.4, 320, _LAT.format("10.16", "2090"), _RSRC),
}

FAMILY = Family(
    name="resnet_rs",
    paper=Paper(
        title="Revisiting ResNets: Improved Training and Scaling Strategies",
        arxiv="2103.07579",
        venue="NeurIPS 2021",
        repo="https://github.com/tensorflow/tpu/tree/master/models/official/resnet/resnet_rs",
        code_license="Apache-2.0",
        weights_license=_LIC,
    ),
    model_cls=ResNetRS,
    default_cfg=PretrainedCfg(crop_pct=1.0, first_conv="stem.0.conv", classifier=("fc",)),
    converters={"timm": convert_timm},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("ConvBN", "SqueezeExcite"),
    remaining_norms=(),
    timm_names={n: n for n in _FILES},
)


def _cfg(size: int, crop_pct: float = 1.0) -> dict:
    return {"input_size": (3, size, size), "crop_pct": crop_pct}


@FAMILY.register(**_cfg(160, 0.91))
def resnetrs50(**kwargs) -> ResNetRS:
    """ResNet-RS-50: 35.69 M params, trained at 160 px."""
    return ResNetRS(ResNetRSCfg((3, 4, 6, 3)), **kwargs)


@FAMILY.register(**_cfg(192, 0.94))
def resnetrs101(**kwargs) -> ResNetRS:
    """ResNet-RS-101: 63.62 M params, trained at 192 px."""
    return ResNetRS(ResNetRSCfg((3, 4, 23, 3)), **kwargs)


@FAMILY.register(**_cfg(256))
def resnetrs152(**kwargs) -> ResNetRS:
    """ResNet-RS-152: 86.62 M params, trained at 256 px."""
    return ResNetRS(ResNetRSCfg((3, 8, 36, 3)), **kwargs)


@FAMILY.register(**_cfg(256))
def resnetrs200(**kwargs) -> ResNetRS:
    """ResNet-RS-200: 93.21 M params, trained at 256 px."""
    return ResNetRS(ResNetRSCfg((3, 24, 36, 3)), **kwargs)


@FAMILY.register(**_cfg(256))
def resnetrs270(**kwargs) -> ResNetRS:
    """ResNet-RS-270: 129.86 M params, trained at 256 px."""
    return ResNetRS(ResNetRSCfg((4, 29, 53, 4)), **kwargs)


@FAMILY.register(**_cfg(288))
def resnetrs350(**kwargs) -> ResNetRS:
    """ResNet-RS-350: 163.96 M params, evaluated at 288 px (trained at 256)."""
    return ResNetRS(ResNetRSCfg((4, 36, 72, 4)), **kwargs)


@FAMILY.register(**_cfg(320))
def resnetrs420(**kwargs) -> ResNetRS:
    """ResNet-RS-420: 191.89 M params, trained at 320 px."""
    return ResNetRS(ResNetRSCfg((4, 44, 87, 4)), **kwargs)
