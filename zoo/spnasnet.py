"""Single-Path NAS: a searched MBConv network for the Pixel 1 (``spnasnet_100``).

Paper: "Single-Path NAS: Designing Hardware-Efficient ConvNets in less than 4 Hours", Dimitrios Stamoulis, Ruizhou
Ding, Di Wang, Dimitrios Lymberopoulos, Bodhi Priyantha, Jie Liu, Diana Marculescu, ECML-PKDD 2019, arXiv 1904.02877.
Origin: dstamoulis/single-path-nas (TensorFlow/TPU, Apache-2.0). The PyTorch weights loadable here are timm's
``spnasnet_100`` (Apache-2.0, trained by Ross Wightman), whose architecture this follows exactly.

Layout: 3x3 stride-2 stem (32), a depthwise-separable block without skip, 20 MBConv blocks (expansion 3/6, kernels
3/5, ReLU, no SE) searched per layer, a last MBConv without skip, 1x1 head conv to 1280, pool, linear classifier.

Deviations from the original: symmetric padding and BN epsilon 1e-5 as timm (TF pads "SAME", epsilon 1e-3); no
original-layout converter (the authors released TensorFlow checkpoints only).
"""

from __future__ import annotations

from weights import WeightSpec

from .irnet import InvertedResidualNet, IRNetCfg, convert_timm_layout
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["SPNASNET_CFG", "convert_timm"]

#: The Pixel-1 architecture of the paper's Figure 4 (timm's ``_gen_spnasnet``).
SPNASNET_CFG = IRNetCfg(
    (
        ("ds_r1_k3_s1_c16_noskip",),
        ("ir_r3_k3_s2_e3_c24",),
        ("ir_r1_k5_s2_e6_c40", "ir_r3_k3_s1_e3_c40"),
        ("ir_r1_k5_s2_e6_c80", "ir_r3_k3_s1_e3_c80"),
        ("ir_r1_k5_s1_e6_c96", "ir_r3_k5_s1_e3_c96"),
        ("ir_r4_k5_s2_e6_c192",),
        ("ir_r1_k3_s1_e6_c320_noskip",),
    ),
    stem_size=32,
    num_features=1280,
    act="relu",
)


def convert_timm(state_dict: dict) -> dict:
    """timm's ``spnasnet_100`` keys to ours (stem/head renamed, conv + BN pairs -> ``ConvBN``)."""
    return convert_timm_layout(state_dict)


FAMILY = Family(
    name="spnasnet",
    paper=Paper(
        title="Single-Path NAS: Designing Hardware-Efficient ConvNets in less than 4 Hours",
        arxiv="1904.02877",
        venue="ECML-PKDD 2019",
        repo="https://github.com/dstamoulis/single-path-nas",
        code_license="Apache-2.0",
        weights_license="Apache-2.0",
    ),
    model_cls=InvertedResidualNet,
    default_cfg=PretrainedCfg(first_conv="stem.conv", classifier=("classifier",), interpolation="bilinear"),
    converters={"timm": convert_timm},
    weights={
        "spnasnet_100": WeightSpec(
            "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/spnasnet_100-048bc3f4.pth",
            "timm",
            license="Apache-2.0",
            source="timm (Ross Wightman), ImageNet-1k, RMSprop recipe",
            top1=74.086,
        )
    },
    reported={
        "spnasnet_100": Reported(
            4.42, 0.35, 74.96, latency="Pixel 1 79 ms", source="arXiv v1 abstract (top-1, latency); timm (params, MACs)"
        )
    },
    blocks=("ConvBN", "DepthwiseSeparable", "InvertedResidual"),
    remaining_norms=(),
    timm_names={"spnasnet_100": "spnasnet_100"},
)


@FAMILY.register
def spnasnet_100(**kwargs) -> InvertedResidualNet:
    """Single-Path NAS Pixel-1 model (timm ``spnasnet_100``): 4.42 M params, 0.33 GMACs."""
    return InvertedResidualNet(SPNASNET_CFG, **kwargs)
