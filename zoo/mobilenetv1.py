"""MobileNetV1: depthwise-separable convolutions.

Paper: "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", Andrew G. Howard,
Menglong Zhu, Bo Chen, Dmitry Kalenichenko, Weijun Wang, Tobias Weyand, Marco Andreetto, Hartwig Adam, 2017,
arXiv 1704.04861.
Origin: tensorflow/models ``research/slim/nets/mobilenet_v1.py`` (Apache-2.0, TF checkpoints only). The PyTorch
weights loadable here are timm's ``mobilenetv1_100`` (huggingface/pytorch-image-models, Apache-2.0), whose
architecture this follows exactly.

Layout: 3x3 stride-2 conv stem (32 channels x width), 13 depthwise-separable blocks (3x3 depthwise ConvBN + ReLU6,
1x1 pointwise ConvBN + ReLU6, no residual), global average pool and a linear classifier (no head conv).

Deviations from the original:
* ReLU6 and BN epsilon 1e-5, as timm (the TF release uses ReLU6 and BN epsilon 1e-3);
* width multipliers round every channel count to a multiple of 8 (timm's ``round_channels``) where TF slim truncates
  (``int(c * multiplier)``): identical for 0.75 (24/48/.../768) but 1.4 gives 48/88/176/360/720/1432 channels where
  TF slim gives 44/89/179/358/716/1433;
* the last stage's second block has stride 1 (as in the TF and timm code; the paper's Table 1 prints s2);
* no original-layout converter: the authors released TensorFlow checkpoints only.
"""

from __future__ import annotations

from blocks.inverted_residual import round_channels
from weights import WeightSpec

from .irnet import InvertedResidualNet, IRNetCfg, convert_timm_layout
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["mobilenetv1_cfg", "convert_timm"]

_ARCH = (
    ("dsa_r1_k3_s1_c64",),
    ("dsa_r2_k3_s2_c128",),
    ("dsa_r2_k3_s2_c256",),
    ("dsa_r6_k3_s2_c512",),
    ("dsa_r2_k3_s2_c1024",),
)


def mobilenetv1_cfg(width: float) -> IRNetCfg:
    """MobileNetV1 at width multiplier ``width`` (timm's ``_gen_mobilenet_v1`` without head conv)."""
    return IRNetCfg(_ARCH, stem_size=round_channels(32, width), num_features=0, width=width, act="relu6")


def convert_timm(state_dict: dict) -> dict:
    """timm's ``mobilenetv1_*`` keys to ours (``conv_stem``/``bn1`` -> ``stem``, conv + BN pairs -> ``ConvBN``)."""
    return convert_timm_layout(state_dict)


_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
_WEIGHTS = {
    "mobilenetv1_100": WeightSpec(
        _HF.format("mobilenetv1_100.ra4_e3600_r224_in1k"),
        "timm",
        filename="mobilenetv1_100.ra4_e3600_r224_in1k.safetensors",
        license="Apache-2.0",
        source="timm (Ross Wightman), ImageNet-1k, RA4 recipe, 3600 epochs",
    )
}
_SRC = "MobileNets paper, Table 6 (224 px)"
_REPORTED = {
    "mobilenetv1_075": Reported(2.6, 0.325, 68.4, source=_SRC),
    "mobilenetv1_100": Reported(4.2, 0.569, 70.6, source=_SRC),
    "mobilenetv1_140": Reported(source="not in the paper (width 1.4 appears only in Fast Sparse ConvNets)"),
}

FAMILY = Family(
    name="mobilenetv1",
    paper=Paper(
        title="MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
        arxiv="1704.04861",
        venue="arXiv 2017",
        repo="https://github.com/tensorflow/models/blob/master/research/slim/nets/mobilenet_v1.md",
        code_license="Apache-2.0",
        weights_license="Apache-2.0",
    ),
    model_cls=InvertedResidualNet,
    default_cfg=PretrainedCfg(first_conv="stem.conv", classifier=("classifier",)),
    converters={"timm": convert_timm},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("ConvBN", "DepthwiseSeparable"),
    remaining_norms=(),
    timm_names={"mobilenetv1_100": "mobilenetv1_100"},
)


@FAMILY.register
def mobilenetv1_075(**kwargs) -> InvertedResidualNet:
    """MobileNetV1 0.75: 2.59 M params, 0.325 GMACs."""
    return InvertedResidualNet(mobilenetv1_cfg(0.75), **kwargs)


@FAMILY.register(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
def mobilenetv1_100(**kwargs) -> InvertedResidualNet:
    """MobileNetV1 1.0 (timm ``mobilenetv1_100``): 4.23 M params, 0.569 GMACs."""
    return InvertedResidualNet(mobilenetv1_cfg(1.0), **kwargs)


@FAMILY.register
def mobilenetv1_140(**kwargs) -> InvertedResidualNet:
    """MobileNetV1 1.4: 7.70 M params, 1.10 GMACs."""
    return InvertedResidualNet(mobilenetv1_cfg(1.4), **kwargs)
