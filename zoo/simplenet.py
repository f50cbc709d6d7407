"""SimpleNet: a plain stack of 3x3 convolutions, BatchNorm, ReLU and max-pooling.

Paper: "Lets keep it simple, Using simple architectures to outperform deeper and more complex architectures",
Seyyed Hossein Hasanpour, Mohammad Rouhani, Mohsen Fayyaz, Mohammad Sabokrou, arXiv 1608.06037 (2016).
Origin: Coderx7/SimpleNet_Pytorch (MIT licence; ``imagenet/simplenet.py`` for the ImageNet variants and their
released weights, ``cifar/models/simplenet.py`` for CIFAR); the original Caffe release is Coderx7/SimpleNet.

Layout: 13 convolutions (3x3, and two 1x1 near the end), each with bias, BatchNorm (momentum 0.05) and ReLU; 2x2
max-pools between groups; global max pooling and a linear classifier. The ImageNet variants ("v1") differ in width
(5m: 64..512 plus a 2048-channel 1x1; 9m: 128..640 plus 2560; ``small``: the 5m layout scaled by 0.5 or 0.75,
rounded) and in stride mode: ``m1`` puts stride 2 in the first three convs, ``m2`` in convs 1, 2 and 4 (slower,
more accurate). The CIFAR variant keeps every conv at stride 1 and pools four times (32x32 input).

Deviations from the original:
* each conv and the max-pool that precedes it are one module (``PoolConvBN``), so the layer index of a key is the
  conv's index; ``convert_original`` maps the original's ``features.N`` indices (which count ReLU, dropout and pooling
  layers) by the order of the convs and BNs;
* the per-layer dropout of the original (rate 0 in every released configuration) is not built; ``drop_rate`` is the
  original's last dropout (index 15), applied to the pooled features (the original's ``dropout2d`` on a B x C x 1 x 1
  map drops the same units);
* ``deploy`` folds every BatchNorm into its conv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from blocks import ConvBN
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["SimpleNetCfg", "SimpleNet", "PoolConvBN", "convert_original"]


class PoolConvBN(ConvBN):
    """Optional 2x2 max-pool followed by conv (with bias) + BatchNorm + ReLU; deploys to pool + conv.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: conv kernel (3, or 1 without padding).
        stride: conv stride.
        pool_stride: stride of the 2x2 max-pool before the conv, or 0 for none.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, pool_stride: int = 0) -> None:
        super().__init__(in_chs, out_chs, kernel_size, stride, bias=True, act_layer=nn.ReLU)
        self.bn.momentum = 0.05
        self.pool = nn.MaxPool2d(2, pool_stride) if pool_stride else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pool(x))


# Layers as the original writes them: channels of a 3x3 conv, "<channels>k1" for a 1x1 conv, "p" for a max-pool.
_IMAGENET_5M = tuple("64 128 128 128 128 128 p 256 256 256 512 p 2048k1 256k1 256".split())
_IMAGENET_9M = tuple("128 192 192 192 192 192 p 320 320 320 640 p 2560k1 320k1 320".split())
_CIFAR_5M = tuple("64 128 128 128 p 128 128 256 p 256 256 p 512 2048k1 256k1 p 256".split())
# Stride overrides by layer index (pools count) of the original's stride modes.
_MODES = {0: {}, 1: {0: 2, 1: 2, 2: 2}, 2: {0: 2, 1: 2, 2: 1, 3: 2}, 3: {0: 2, 1: 2, 2: 1, 3: 1, 4: 2}}
_MODES[4] = {0: 2, 1: 1, 2: 2, 3: 1, 4: 2, 5: 1}
_LAYER = re.compile(r"^(\d+)(k1)?$|^p$")


@dataclass(frozen=True)
class SimpleNetCfg:
    """Architecture of one SimpleNet variant.

    Attributes:
        layers: the original's layer list (``"64"`` 3x3 conv, ``"2048k1"`` 1x1 conv, ``"p"`` 2x2 max-pool).
        scale: width multiplier (channels are ``round(c * scale)``).
        mode: stride mode 0-4 of the original (0 for CIFAR, 1 and 2 for the released ImageNet models).
    """

    layers: tuple[str, ...]
    scale: float = 1.0
    mode: int = 2


def _plan(cfg: SimpleNetCfg) -> list[tuple[int, int, int, int]]:
    """``(out_chs, kernel, conv_stride, pool_stride_before)`` per conv, from the original's layer list and mode."""
    if cfg.mode not in _MODES:
        raise ValueError(f"SimpleNet stride mode must be one of {sorted(_MODES)}, got {cfg.mode}")
    strides = _MODES[cfg.mode]
    plan, pool = [], 0
    for idx, layer in enumerate(cfg.layers):
        m = _LAYER.match(layer)
        if m is None:
            raise ValueError(f"bad SimpleNet layer {layer!r}: expected '<channels>', '<channels>k1' or 'p'")
        stride = strides.get(idx, 2 if layer == "p" else 1)
        if layer == "p":
            if pool:
                raise ValueError("two consecutive pooling layers")
            pool = stride
            continue
        plan.append((round(int(m.group(1)) * cfg.scale), 1 if m.group(2) else 3, stride, pool))
        pool = 0
    if pool:
        raise ValueError("a pooling layer must be followed by a conv")
    return plan


class SimpleNet(nn.Module):
    """SimpleNet classifier / backbone.

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input channels.
        drop_rate: dropout on the pooled features before the classifier.
        drop_path_rate: accepted for the common interface; must be 0 (SimpleNet has no residual branches).
    """

    def __init__(
        self,
        cfg: SimpleNetCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if drop_path_rate:
            raise ValueError("SimpleNet has no residual branches: drop_path_rate must be 0")
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        plan = _plan(cfg)
        layers, in_chs, reduction = [], in_chans, 1
        self.feature_info, self._levels = FeatureInfo(), []
        for i, (out_chs, k, stride, pool) in enumerate(plan):
            layers.append(PoolConvBN(in_chs, out_chs, k, stride, pool))
            in_chs, reduction = out_chs, reduction * stride * max(pool, 1)
            nxt = plan[i + 1] if i + 1 < len(plan) else None
            if nxt is None or nxt[2] > 1 or nxt[3] > 1:  # the next conv changes the resolution: a feature level
                self.feature_info.append({"num_chs": out_chs, "reduction": reduction, "module": f"features.{i}"})
                self._levels.append(i)
        self.features = nn.Sequential(*layers)
        self.num_features = in_chs
        self.pretrained_cfg: dict = {}
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("relu"))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay: none."""
        return set()

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Outputs of feature levels ``0..stop`` (all by default): the last conv at each resolution."""
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._levels:
                outs.append(x)
                if stop is not None and len(outs) > stop:
                    break
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last conv's feature map."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global max pool, dropout and classifier; ``pre_logits`` returns the pooled features."""
        x = x.amax((2, 3))  # B, C, H, W -> B, C
        if pre_logits:
            return x
        return self.classifier(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' PyTorch releases (ImageNet ``v1.0.0`` weights, CIFAR snapshots) to this implementation's.

    The original's ``features`` is one flat ``nn.Sequential`` (conv, BN, ReLU, optional dropout; max-pool, dropout),
    so its indices count parameter-free layers; the k-th conv and the k-th BN there are ``features.k.conv`` and
    ``features.k.bn`` here. The classifier keeps its name.
    """
    convs: dict[int, str] = {}
    bns: dict[int, str] = {}
    for k, v in state_dict.items():
        m = re.match(r"^features\.(\d+)\.(\w+)$", k)
        if m is None:
            continue
        idx, leaf = int(m.group(1)), m.group(2)
        if leaf == "weight" and v.dim() == 4:
            convs[idx] = "conv"
        elif leaf == "running_mean":
            bns[idx] = "bn"
    if not convs or len(convs) != len(bns):
        raise KeyError("not an original SimpleNet checkpoint (flat features.N conv / BN keys)")
    order = {idx: n for n, idx in enumerate(sorted(convs))} | {idx: n for n, idx in enumerate(sorted(bns))}
    out = {}
    for k, v in state_dict.items():
        m = re.match(r"^features\.(\d+)\.(\w+)$", k)
        if m is None:
            out[k] = v
            continue
        idx = int(m.group(1))
        if idx not in order:
            raise KeyError(f"unexpected parameter {k} in an original SimpleNet checkpoint")
        out[f"features.{order[idx]}.{convs.get(idx) or bns[idx]}.{m.group(2)}"] = v
    return out


_URL = "https://github.com/Coderx7/SimpleNet_Pytorch/releases/download/v1.0.0/{}.pth"
_FILES = {
    "simplenetv1_5m_m1": "simplenetv1_5m_m1-36c4ca4d",
    "simplenetv1_5m_m2": "simplenetv1_5m_m2-9bd6bb36",
    "simplenetv1_9m_m1": "simplenetv1_9m_m1-524f9972",
    "simplenetv1_9m_m2": "simplenetv1_9m_m2-59e8733b",
    "simplenetv1_small_m1_05": "simplenetv1_small_m1_05-be804903",
    "simplenetv1_small_m2_05": "simplenetv1_small_m2_05-ca4b3e2b",
    "simplenetv1_small_m1_075": "simplenetv1_small_m1_075-098acbff",
    "simplenetv1_small_m2_075": "simplenetv1_small_m2_075-609ff4da",
}
_TOP1 = {
    "simplenetv1_5m_m1": 71.548,
    "simplenetv1_5m_m2": 72.03,
    "simplenetv1_9m_m1": 73.792,
    "simplenetv1_9m_m2": 74.23,
    "simplenetv1_small_m1_05": 61.122,
    "simplenetv1_small_m2_05": 61.67,
    "simplenetv1_small_m1_075": 67.784,
    "simplenetv1_small_m2_075": 68.506,
}
_LIC = "MIT"
_SRC = "Coderx7/SimpleNet_Pytorch release v1.0.0 (authors), ImageNet-1k"
_WEIGHTS = {
    n: WeightSpec(_URL.format(f), "original", license=_LIC, source=_SRC, top1=_TOP1[n]) for n, f in _FILES.items()
}
_PARAMS = {"5m": 5.75, "9m": 9.51, "05": 1.51, "075": 3.29}
_TPUT = {"5m_m1": "2,105", "5m_m2": "1,754", "9m_m1": "1,049", "9m_m2": "900"}
_RSRC = "SimpleNet_Pytorch README (timm benchmark: GTX1080, fp32, batch 256)"


def _reported(name: str) -> Reported:
    key = name.split("_")[-1] if "small" in name else name.split("_")[1]
    tput = _TPUT.get(name[len("simplenetv1_") :])
    lat = f"GTX1080 {tput} img/s (fp32, batch 256)" if tput else ""
    return Reported(_PARAMS[key], None, _TOP1[name], 224, lat, _RSRC)


_REPORTED = {n: _reported(n) for n in _FILES}
_REPORTED["simplenet_cifar_5m"] = Reported(
    5.48, None, 95.51, 32, "", "paper / SimpleNet_Pytorch README (CIFAR-10)", dataset="cifar-10"
)

FAMILY = Family(
    name="simplenet",
    paper=Paper(
        title="Lets keep it simple, Using simple architectures to outperform deeper and more complex architectures",
        arxiv="1608.06037",
        venue="arXiv 2016",
        repo="https://github.com/Coderx7/SimpleNet_Pytorch",
        code_license="MIT",
        weights_license=_LIC,
    ),
    model_cls=SimpleNet,
    default_cfg=PretrainedCfg(first_conv="features.0.conv", classifier=("classifier",)),
    converters={"original": convert_original},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("ConvBN",),
    remaining_norms=(),
)


@FAMILY.register
def simplenetv1_5m_m1(**kwargs) -> SimpleNet:
    """SimpleNetV1-5m, stride mode 1 (fastest): 5.75 M params."""
    return SimpleNet(SimpleNetCfg(_IMAGENET_5M, 1.0, 1), **kwargs)


@FAMILY.register
def simplenetv1_5m_m2(**kwargs) -> SimpleNet:
    """SimpleNetV1-5m, stride mode 2: 5.75 M params."""
    return SimpleNet(SimpleNetCfg(_IMAGENET_5M, 1.0, 2), **kwargs)


@FAMILY.register
def simplenetv1_9m_m1(**kwargs) -> SimpleNet:
    """SimpleNetV1-9m, stride mode 1: 9.51 M params."""
    return SimpleNet(SimpleNetCfg(_IMAGENET_9M, 1.0, 1), **kwargs)


@FAMILY.register
def simplenetv1_9m_m2(**kwargs) -> SimpleNet:
    """SimpleNetV1-9m, stride mode 2: 9.51 M params."""
    return SimpleNet(SimpleNetCfg(_IMAGENET_9M, 1.0, 2), **kwargs)


@FAMILY.register
def simplenetv1_small_m1_05(**kwargs) -> SimpleNet:
    """SimpleNetV1-5m at half width, stride mode 1: 1.51 M params."""
    return SimpleNet(SimpleNetCfg(_IMAGENET_5M, 0.5, 1), **kwargs)


@FAMILY.register
def simplenetv1_small_m2_05(**kwargs) -> SimpleNet:
    """SimpleNetV1-5m at half width, stride mode 2: 1.51 M params."""
    return SimpleNet(SimpleNetCfg(_IMAGENET_5M, 0.5, 2), **kwargs)


@FAMILY.register
def simplenetv1_small_m1_075(**kwargs) -> SimpleNet:
    """SimpleNetV1-5m at 0.75 width, stride mode 1: 3.29 M params."""
    return SimpleNet(SimpleNetCfg(_IMAGENET_5M, 0.75, 1), **kwargs)


@FAMILY.register
def simplenetv1_small_m2_075(**kwargs) -> SimpleNet:
    """SimpleNetV1-5m at 0.75 width, stride mode 2: 3.29 M params."""
    return SimpleNet(SimpleNetCfg(_IMAGENET_5M, 0.75, 2), **kwargs)


_CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
_CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


@FAMILY.register(input_size=(3, 32, 32), num_classes=10, crop_pct=1.0, mean=_CIFAR_MEAN, std=_CIFAR_STD)
def simplenet_cifar_5m(**kwargs) -> SimpleNet:
    """SimpleNet for CIFAR-10 (the paper's 13-layer net, 32x32 input): 5.50 M params with 10 classes."""
    return SimpleNet(SimpleNetCfg(_CIFAR_5M, 1.0, 0), **kwargs)
