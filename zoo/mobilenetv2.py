"""MobileNetV2: inverted residuals and linear bottlenecks.

Paper: "MobileNetV2: Inverted Residuals and Linear Bottlenecks", Mark Sandler, Andrew Howard, Menglong Zhu, Andrey
Zhmoginov, Liang-Chieh Chen, CVPR 2018, arXiv 1801.04381.
Origin: tensorflow/models ``research/slim/nets/mobilenet/mobilenet_v2.py`` (Apache-2.0, TF checkpoints only). The
PyTorch weights loadable here are timm's ``mobilenetv2_100`` / ``mobilenetv2_140`` (Apache-2.0), whose architecture
this follows exactly.

Layout: 3x3 stride-2 conv stem, a depthwise-separable block (expansion 1), 16 inverted-residual blocks (1x1 expand
x6 + ReLU6, 3x3 depthwise + ReLU6, linear 1x1 projection, identity skip when shapes allow), a 1x1 head conv to
``max(1280, 1280 x width)`` channels + ReLU6, global average pool and a linear classifier.

Deviations from the original:
* BN epsilon 1e-5 (timm; TF uses 1e-3);
* the width multiplier also scales the stem (32 x 1.4 = 48), as in the TF code and timm;
* no original-layout converter: the authors released TensorFlow checkpoints only.
"""

from __future__ import annotations

from blocks.inverted_residual import round_channels
from weights import WeightSpec

from .irnet import InvertedResidualNet, IRNetCfg, convert_timm_layout
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["mobilenetv2_cfg", "convert_timm"]

_ARCH = (
    ("ds_r1_k3_s1_c16",),
    ("ir_r2_k3_s2_e6_c24",),
    ("ir_r3_k3_s2_e6_c32",),
    ("ir_r4_k3_s2_e6_c64",),
    ("ir_r3_k3_s1_e6_c96",),
    ("ir_r3_k3_s2_e6_c160",),
    ("ir_r1_k3_s1_e6_c320",),
)


def mobilenetv2_cfg(width: float) -> IRNetCfg:
    """MobileNetV2 at width multiplier ``width`` (timm's ``_gen_mobilenet_v2``)."""
    head = max(1280, round_channels(1280, width))
    return IRNetCfg(_ARCH, stem_size=round_channels(32, width), num_features=head, width=width, act="relu6")


def convert_timm(state_dict: dict) -> dict:
    """timm's ``mobilenetv2_*`` keys to ours (``conv_stem``/``conv_head`` renamed, conv + BN pairs -> ``ConvBN``)."""
    return convert_timm_layout(state_dict)


_GH = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/{}"
_SRC = "timm (Ross Wightman), ImageNet-1k, RandAugment recipe"
_WEIGHTS = {
    "mobilenetv2_100": WeightSpec(
        _GH.format("mobilenetv2_100_ra-b33bc2c4.pth"), "timm", license="Apache-2.0", source=_SRC
    ),
    "mobilenetv2_140": WeightSpec(
        _GH.format("mobilenetv2_140_ra-21a4e913.pth"), "timm", license="Apache-2.0", source=_SRC
    ),
}
_PAPER = "MobileNetV2 paper, Table 4 (224 px)"
_REPORTED = {
    "mobilenetv2_100": Reported(3.4, 0.300, 72.0, latency="Pixel 1 CPU 75 ms (TF-Lite)", source=_PAPER),
    "mobilenetv2_140": Reported(6.9, 0.585, 74.7, latency="Pixel 1 CPU 143 ms (TF-Lite)", source=_PAPER),
}

FAMILY = Family(
    name="mobilenetv2",
    paper=Paper(
        title="MobileNetV2: Inverted Residuals and Linear Bottlenecks",
        arxiv="1801.04381",
        venue="CVPR 2018",
        repo="https://github.com/tensorflow/models/tree/master/research/slim/nets/mobilenet",
        code_license="Apache-2.0",
        weights_license="Apache-2.0",
    ),
    model_cls=InvertedResidualNet,
    default_cfg=PretrainedCfg(first_conv="stem.conv", classifier=("classifier",)),
    converters={"timm": convert_timm},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("ConvBN", "DepthwiseSeparable", "InvertedResidual"),
    remaining_norms=(),
    timm_names={"mobilenetv2_100": "mobilenetv2_100", "mobilenetv2_140": "mobilenetv2_140"},
)


@FAMILY.register
def mobilenetv2_100(**kwargs) -> InvertedResidualNet:
    """MobileNetV2 1.0 (timm ``mobilenetv2_100``): 3.50 M params, 0.30 GMACs."""
    return InvertedResidualNet(mobilenetv2_cfg(1.0), **kwargs)


@FAMILY.register
def mobilenetv2_140(**kwargs) -> InvertedResidualNet:
    """MobileNetV2 1.4 (timm ``mobilenetv2_140``): 6.11 M params, 0.58 GMACs."""
    return InvertedResidualNet(mobilenetv2_cfg(1.4), **kwargs)
