"""EfficientNet-B0/B1: compound-scaled MBConv networks with squeeze-excitation and Swish.

Paper: "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", Mingxing Tan, Quoc V. Le,
ICML 2019, arXiv 1905.11946.
Origin: tensorflow/tpu ``models/official/efficientnet`` (Apache-2.0, TF checkpoints only). The PyTorch weights
loadable here are timm's ``efficientnet_b0`` / ``efficientnet_b1`` (Apache-2.0), whose architecture this follows
exactly.

Layout: 3x3 stride-2 conv stem (32), a depthwise-separable block with SE, 15 (B0) / 22 (B1) MBConv blocks (expansion
6, 3x3 or 5x5 depthwise, SE with 1/4 of the block input channels, Swish), 1x1 head conv to 1280 + Swish, global
average pool, dropout and a linear classifier. B1 scales depth by 1.1 (ceil per stage) at 240 px.

Deviations from the original:
* symmetric padding ``(k - 1) // 2`` and BN epsilon 1e-5 as timm's ``efficientnet_*`` (the TF release pads
  "SAME" asymmetrically at stride 2 and uses epsilon 1e-3; timm's ``tf_efficientnet_*`` ports are not covered);
* dropout before the classifier defaults to 0 (the paper trains with 0.2; pass ``drop_rate``/``drop_path_rate``);
* no original-layout converter: the authors released TensorFlow checkpoints only.
"""

from __future__ import annotations

from blocks.inverted_residual import round_channels
from weights import WeightSpec

from .irnet import InvertedResidualNet, IRNetCfg, convert_timm_layout
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["EFFICIENTNET_ARCH", "efficientnet_cfg", "convert_timm"]

#: The EfficientNet-B0 stage table (also TinyNet's).
EFFICIENTNET_ARCH = (
    ("ds_r1_k3_s1_c16_se0.25",),
    ("ir_r2_k3_s2_e6_c24_se0.25",),
    ("ir_r2_k5_s2_e6_c40_se0.25",),
    ("ir_r3_k3_s2_e6_c80_se0.25",),
    ("ir_r3_k5_s1_e6_c112_se0.25",),
    ("ir_r4_k5_s2_e6_c192_se0.25",),
    ("ir_r1_k3_s1_e6_c320_se0.25",),
)


def efficientnet_cfg(width: float, depth: float) -> IRNetCfg:
    """EfficientNet with compound coefficients ``width``/``depth`` (timm's ``_gen_efficientnet``)."""
    return IRNetCfg(
        EFFICIENTNET_ARCH,
        stem_size=round_channels(32, width),
        num_features=round_channels(1280, width),
        width=width,
        depth=depth,
        act="swish",
    )


def convert_timm(state_dict: dict) -> dict:
    """timm's ``efficientnet_*`` keys to ours (stem/head renamed, conv + BN pairs -> ``ConvBN``, SE fc1/fc2)."""
    return convert_timm_layout(state_dict)


_WEIGHTS = {
    "efficientnet_b0": WeightSpec(
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/efficientnet_b0_ra-3dd342df.pth",
        "timm",
        license="Apache-2.0",
        source="timm (Ross Wightman), ImageNet-1k, RandAugment recipe",
    ),
    "efficientnet_b1": WeightSpec(
        "https://huggingface.co/timm/efficientnet_b1.ra4_e3600_r240_in1k/resolve/main/model.safetensors",
        "timm",
        filename="efficientnet_b1.ra4_e3600_r240_in1k.safetensors",
        license="Apache-2.0",
        source="timm (Ross Wightman), ImageNet-1k, RA4 recipe, 3600 epochs, 240 px",
    ),
}
_PAPER = "EfficientNet paper, Table 2"
_REPORTED = {
    "efficientnet_b0": Reported(5.3, 0.39, 77.1, resolution=224, source=_PAPER),
    "efficientnet_b1": Reported(7.8, 0.70, 79.1, resolution=240, source=_PAPER),
}

FAMILY = Family(
    name="efficientnet",
    paper=Paper(
        title="EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
        arxiv="1905.11946",
        venue="ICML 2019",
        repo="https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet",
        code_license="Apache-2.0",
        weights_license="Apache-2.0",
    ),
    model_cls=InvertedResidualNet,
    default_cfg=PretrainedCfg(first_conv="stem.conv", classifier=("classifier",)),
    converters={"timm": convert_timm},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("ConvBN", "DepthwiseSeparable", "InvertedResidual", "SqueezeExcite"),
    remaining_norms=(),
    timm_names={"efficientnet_b0": "efficientnet_b0", "efficientnet_b1": "efficientnet_b1"},
)


@FAMILY.register
def efficientnet_b0(**kwargs) -> InvertedResidualNet:
    """EfficientNet-B0 (timm ``efficientnet_b0``): 5.29 M params, 0.39 GMACs at 224 px."""
    return InvertedResidualNet(efficientnet_cfg(1.0, 1.0), **kwargs)


@FAMILY.register(input_size=(3, 240, 240), crop_pct=0.9, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
def efficientnet_b1(**kwargs) -> InvertedResidualNet:
    """EfficientNet-B1 (timm ``efficientnet_b1``): 7.79 M params, 0.69 GMACs at 240 px."""
    return InvertedResidualNet(efficientnet_cfg(1.0, 1.1), **kwargs)
