"""TinyNet: EfficientNet-B0 shrunk by a "tiny formula" over resolution, depth and width.

Paper: "Model Rubik's Cube: Twisting Resolution, Depth and Width for TinyNets", Kai Han, Yunhe Wang, Qiulin Zhang,
Wei Zhang, Chunjing Xu, Tong Zhang, NeurIPS 2020, arXiv 2010.14819.
Origin: huawei-noah/Efficient-AI-Backbones ``tinynet_pytorch`` (built on timm 0.1.20's EfficientNet), weights released
by the authors (huawei-noah/CV-Backbones v1.2.0) in timm's key layout; timm (Apache-2.0) registers the same files.

Layout: the EfficientNet-B0 stage table (``zoo.efficientnet.EFFICIENTNET_ARCH``: MBConv with SE, Swish) with width
multiplier r_w, depth multiplier r_d rounded per stage (not ceil as EfficientNet), a fixed 32-channel stem, a head
conv of ``max(1280, 1280 x r_w)`` channels, at resolution r_r x 224:

    A: r_w 1.0,  r_d 1.2,   192 px    B: 0.75, 1.1, 188 px    C: 0.54, 0.85, 184 px
    D: 0.54, 0.695, 152 px            E: 0.51, 0.6, 106 px

Deviations from the original: none in architecture (symmetric padding, BN epsilon 1e-5 as the release). The authors'
checkpoints are in timm's layout (timm 0.1.20's ``EfficientNet``), so ``convert_timm`` reads them.
"""

from __future__ import annotations

from blocks.inverted_residual import round_channels
from weights import WeightSpec

from .efficientnet import EFFICIENTNET_ARCH
from .irnet import InvertedResidualNet, IRNetCfg, convert_timm_layout
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["tinynet_cfg", "convert_timm"]


def tinynet_cfg(width: float, depth: float) -> IRNetCfg:
    """TinyNet with width ``r_w`` and depth ``r_d`` (timm's ``_gen_tinynet``)."""
    head = max(1280, round_channels(1280, width))
    return IRNetCfg(
        EFFICIENTNET_ARCH, stem_size=32, num_features=head, width=width, depth=depth, depth_trunc="round", act="swish"
    )


def convert_timm(state_dict: dict) -> dict:
    """timm's (and the authors' release's) ``tinynet_*`` keys to ours (stem/head renamed, conv + BN pairs ->
    ``ConvBN``, SE fc1/fc2)."""
    return convert_timm_layout(state_dict)


_VARIANTS = {  # name: (r_w, r_d, resolution, MACs (G), top-1 README, timm params (M), timm top-1)
    "tinynet_a": (1.0, 1.2, 192, 0.339, 76.8, 6.19, 77.666),
    "tinynet_b": (0.75, 1.1, 188, 0.202, 75.0, 3.73, 74.946),
    "tinynet_c": (0.54, 0.85, 184, 0.100, 71.2, 2.46, 71.214),
    "tinynet_d": (0.54, 0.695, 152, 0.052, 67.0, 2.34, 66.936),
    "tinynet_e": (0.51, 0.6, 106, 0.024, 59.9, 2.04, 59.874),
}
_URL = "https://github.com/huawei-noah/CV-Backbones/releases/download/v1.2.0/{}.pth"
_WEIGHTS = {
    n: WeightSpec(_URL.format(n), "timm", license="Apache-2.0", source="authors (huawei-noah), ImageNet-1k", top1=v[6])
    for n, v in _VARIANTS.items()
}
_REPORTED = {
    n: Reported(v[5], v[3], v[4], resolution=v[2], source="README (MACs, top-1); params measured by timm")
    for n, v in _VARIANTS.items()
}

FAMILY = Family(
    name="tinynet",
    paper=Paper(
        title="Model Rubik's Cube: Twisting Resolution, Depth and Width for TinyNets",
        arxiv="2010.14819",
        venue="NeurIPS 2020",
        repo="https://github.com/huawei-noah/Efficient-AI-Backbones/tree/master/tinynet_pytorch",
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
    timm_names={n: n for n in _VARIANTS},
)


def _tinynet(name: str, **kwargs) -> InvertedResidualNet:
    width, depth = _VARIANTS[name][:2]
    return InvertedResidualNet(tinynet_cfg(width, depth), **kwargs)


@FAMILY.register(input_size=(3, 192, 192))
def tinynet_a(**kwargs) -> InvertedResidualNet:
    """TinyNet-A (r_w 1.0, r_d 1.2): 6.19 M params, 0.34 GMACs at 192 px."""
    return _tinynet("tinynet_a", **kwargs)


@FAMILY.register(input_size=(3, 188, 188))
def tinynet_b(**kwargs) -> InvertedResidualNet:
    """TinyNet-B (r_w 0.75, r_d 1.1): 3.73 M params, 0.20 GMACs at 188 px."""
    return _tinynet("tinynet_b", **kwargs)


@FAMILY.register(input_size=(3, 184, 184))
def tinynet_c(**kwargs) -> InvertedResidualNet:
    """TinyNet-C (r_w 0.54, r_d 0.85): 2.46 M params, 0.10 GMACs at 184 px."""
    return _tinynet("tinynet_c", **kwargs)


@FAMILY.register(input_size=(3, 152, 152))
def tinynet_d(**kwargs) -> InvertedResidualNet:
    """TinyNet-D (r_w 0.54, r_d 0.695): 2.34 M params, 0.052 GMACs at 152 px."""
    return _tinynet("tinynet_d", **kwargs)


@FAMILY.register(input_size=(3, 106, 106))
def tinynet_e(**kwargs) -> InvertedResidualNet:
    """TinyNet-E (r_w 0.51, r_d 0.6): 2.04 M params, 0.024 GMACs at 106 px."""
    return _tinynet("tinynet_e", **kwargs)
