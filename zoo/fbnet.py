"""FBNet-A/B/C: MBConv networks found by differentiable, latency-aware architecture search.

Paper: "FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural Architecture Search", Bichen Wu,
Xiaoliang Dai, Peizhao Zhang, Yanghan Wang, Fei Sun, Yiming Wu, Yuandong Tian, Peter Vajda, Yangqing Jia, Kurt
Keutzer, CVPR 2019, arXiv 1812.03443.
Origin: facebookresearch/mobile-vision (``mobile_cv/arch/fbnet_v2/fbnet_modeldef_cls_fbnet.py``, CC BY-NC 4.0), with
ImageNet weights for ``fbnet_a``/``fbnet_b``/``fbnet_c`` (CC BY-NC 4.0). ``fbnetc_100`` is timm's FBNet-C (Apache-2.0
weights trained by Ross Wightman), a re-derivation from the paper with different block details.

Layout: 3x3 stride-2 stem (16), stages of IRF blocks (1x1 expansion + ReLU, with a channel shuffle after grouped
"g2" pointwise convs; kxk depthwise + ReLU; linear 1x1 projection; identity skip when shapes allow), 1x1 head conv,
global average pool, classifier. The searched "skip" candidates are identities and are left out of the tables.

* ``fbneta_100``/``fbnetb_100`` follow the authors' release exactly: every conv carries a bias (folded into the BN at
  deploy), expansion-1 blocks have no expansion conv, head convs of 1504 / 1984 channels, the classifier is a 1x1
  conv (loaded here as the equivalent linear layer).
* ``fbnetc_100`` follows timm exactly: convs without bias, an expansion conv even at expansion 1, BN epsilon 1e-3
  (what timm's pretrained weights were trained with), head 1984.

Deviations from the original: the mobile-vision "skip" blocks are not modules (no parameters, identity); the
classifier 1x1 conv is a linear layer (``convert_original`` reshapes it).
"""

from __future__ import annotations

import re

import torch

from weights import WeightSpec

from .irnet import InvertedResidualNet, IRNetCfg, convert_timm_layout
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["FBNET_CFGS", "convert_original", "convert_timm"]

_MV = {"conv_bias": True, "always_pw": False, "act": "relu", "stem_size": 16}
#: Architectures: A/B from mobile-vision's ``fbnet_a``/``fbnet_b`` (their stage 0 is the stem, the last the head
#: conv), C from timm's ``_gen_fbnetc``.
FBNET_CFGS = {
    "fbneta_100": IRNetCfg(
        (
            ("ir_r1_k3_s2_e3_c24", "ir_r1_k3_s1_e1_c24"),
            ("ir_r1_k5_s2_e6_c32", "ir_r1_k3_s1_e3_c32", "ir_r1_k5_s1_e1_c32", "ir_r1_k3_s1_e3_c32"),
            (
                "ir_r1_k5_s2_e6_c64",
                "ir_r1_k5_s1_e3_c64",
                "ir_r1_k5_s1_e1_c64_g2",
                "ir_r1_k5_s1_e6_c64",
                "ir_r1_k3_s1_e6_c112",
                "ir_r1_k5_s1_e1_c112_g2",
                "ir_r1_k5_s1_e3_c112",
                "ir_r1_k3_s1_e1_c112_g2",
            ),
            ("ir_r2_k5_s2_e6_c184", "ir_r1_k5_s1_e3_c184", "ir_r1_k5_s1_e6_c184", "ir_r1_k5_s1_e6_c352"),
        ),
        num_features=1504,
        **_MV,
    ),
    "fbnetb_100": IRNetCfg(
        (
            ("ir_r1_k3_s1_e1_c16",),
            ("ir_r1_k3_s2_e6_c24", "ir_r1_k5_s1_e1_c24", "ir_r2_k3_s1_e1_c24"),
            ("ir_r1_k5_s2_e6_c32", "ir_r1_k5_s1_e3_c32", "ir_r1_k3_s1_e6_c32", "ir_r1_k5_s1_e6_c32"),
            (
                "ir_r2_k5_s2_e6_c64",
                "ir_r1_k5_s1_e3_c64",
                "ir_r1_k5_s1_e6_c112",
                "ir_r1_k3_s1_e1_c112",
                "ir_r1_k5_s1_e1_c112",
                "ir_r1_k5_s1_e3_c112",
            ),
            ("ir_r1_k5_s2_e6_c184", "ir_r1_k5_s1_e1_c184", "ir_r2_k5_s1_e6_c184", "ir_r1_k3_s1_e6_c352"),
        ),
        num_features=1984,
        **_MV,
    ),
    "fbnetc_100": IRNetCfg(
        (
            ("ir_r1_k3_s1_e1_c16",),
            ("ir_r1_k3_s2_e6_c24", "ir_r2_k3_s1_e1_c24"),
            ("ir_r1_k5_s2_e6_c32", "ir_r1_k5_s1_e3_c32", "ir_r1_k5_s1_e6_c32", "ir_r1_k3_s1_e6_c32"),
            ("ir_r1_k5_s2_e6_c64", "ir_r1_k5_s1_e3_c64", "ir_r2_k5_s1_e6_c64"),
            ("ir_r3_k5_s1_e6_c112", "ir_r1_k5_s1_e3_c112"),
            ("ir_r4_k5_s2_e6_c184",),
            ("ir_r1_k3_s1_e6_c352",),
        ),
        stem_size=16,
        num_features=1984,
        act="relu",
        bn_eps=1e-3,
    ),
}

_MV_KEY = re.compile(r"(?:module\.)?backbone\.stages\.xif(\d+)_(\d+)\.(.+)")
_MV_PARTS = {"pw": "conv_pw", "dw": "conv_dw", "pwl": "conv_pwl"}


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' mobile-vision ``FBNet`` (``backbone.stages.xif<stage>_<block>.{pw,dw,pwl}``,
    ``head.conv``) to ours.

    Stage 0 is the stem and the last stage the head conv; parameter-free "skip" blocks leave gaps in the numbering,
    so blocks are renumbered in order of appearance and stages without parameters disappear. The 1x1 classifier
    conv becomes the linear classifier.
    """
    parsed = [(m, v) for k, v in state_dict.items() if (m := _MV_KEY.fullmatch(k))]
    if not parsed:
        raise KeyError("not a mobile-vision FBNet checkpoint (no backbone.stages.xif* keys)")
    stages = sorted({int(m.group(1)) for m, _ in parsed})
    head = stages[-1]
    if stages[0] != 0 or any(m.group(3).split(".")[0] not in ("conv", "bn") for m, _ in parsed if m.group(1) == "0"):
        raise KeyError("mobile-vision FBNet checkpoint without a conv stem at xif0_0")
    body = stages[1:-1]
    blocks = {s: sorted({int(m.group(2)) for m, _ in parsed if int(m.group(1)) == s}) for s in body}
    out = {}
    for m, v in parsed:
        s, b, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if s == 0:
            out[f"stem.{rest}"] = v
        elif s == head:
            out[f"head.{rest}"] = v
        else:
            part, tail = rest.split(".", 1)
            out[f"blocks.{body.index(s)}.{blocks[s].index(b)}.{_MV_PARTS[part]}.{tail}"] = v
    for name in ("weight", "bias"):
        for key in (f"head.conv.{name}", f"module.head.conv.{name}"):
            if key in state_dict:
                v = state_dict[key]
                out[f"classifier.{name}"] = v.flatten(1) if name == "weight" else v
    return out


def convert_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ``fbnetc_100`` keys to ours (stem/head renamed, conv + BN pairs -> ``ConvBN``)."""
    return convert_timm_layout(state_dict)


_MVURL = "https://dl.fbaipublicfiles.com/fbnet/models/20200103/rAuaZE/{}/model.pth"
_MVSRC = "authors (facebookresearch/mobile-vision model zoo), ImageNet-1k"
_WEIGHTS = {
    "fbneta_100": WeightSpec(
        _MVURL.format("fbnet_a_f155351132"),
        "original",
        filename="fbnet_a_f155351132.pth",
        license="CC-BY-NC-4.0",
        source=_MVSRC,
        top1=73.298,
    ),
    "fbnetb_100": WeightSpec(
        _MVURL.format("fbnet_b_f153237418"),
        "original",
        filename="fbnet_b_f153237418.pth",
        license="CC-BY-NC-4.0",
        source=_MVSRC,
        top1=74.544,
    ),
    "fbnetc_100": WeightSpec(
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/fbnetc_100-c345b898.pth",
        "timm",
        license="Apache-2.0",
        source="timm (Ross Wightman), ImageNet-1k, RMSprop recipe",
    ),
}
_REPORTED = {
    "fbneta_100": Reported(4.3, 0.249, 73.0, latency="Samsung S8 19.8 ms", source="FBNet paper"),
    "fbnetb_100": Reported(4.5, 0.295, 74.1, latency="Samsung S8 23.1 ms", source="FBNet paper (abstract)"),
    "fbnetc_100": Reported(5.5, 0.383, 74.9, source="FBNet paper (top-1) and mobile-vision repo (MACs)"),
}

FAMILY = Family(
    name="fbnet",
    paper=Paper(
        title="FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural Architecture Search",
        arxiv="1812.03443",
        venue="CVPR 2019",
        repo="https://github.com/facebookresearch/mobile-vision",
        code_license="CC-BY-NC-4.0",
        weights_license="CC-BY-NC-4.0 (A/B, authors); Apache-2.0 (C, timm)",
    ),
    model_cls=InvertedResidualNet,
    default_cfg=PretrainedCfg(first_conv="stem.conv", classifier=("classifier",), interpolation="bilinear"),
    converters={"original": convert_original, "timm": convert_timm},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("ConvBN", "InvertedResidual", "ChannelShuffle"),
    remaining_norms=(),
    timm_names={"fbnetc_100": "fbnetc_100"},
)


@FAMILY.register
def fbneta_100(**kwargs) -> InvertedResidualNet:
    """FBNet-A (mobile-vision ``fbnet_a``): 4.32 M params, 0.24 GMACs."""
    return InvertedResidualNet(FBNET_CFGS["fbneta_100"], **kwargs)


@FAMILY.register
def fbnetb_100(**kwargs) -> InvertedResidualNet:
    """FBNet-B (mobile-vision ``fbnet_b``): 4.82 M params, 0.29 GMACs."""
    return InvertedResidualNet(FBNET_CFGS["fbnetb_100"], **kwargs)


@FAMILY.register
def fbnetc_100(**kwargs) -> InvertedResidualNet:
    """FBNet-C (timm ``fbnetc_100``): 5.57 M params, 0.38 GMACs."""
    return InvertedResidualNet(FBNET_CFGS["fbnetc_100"], **kwargs)
