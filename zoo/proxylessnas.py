"""ProxylessNAS: architectures searched directly on the target task and hardware (mobile, GPU, CPU).

Paper: "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware", Han Cai, Ligeng Zhu, Song Han,
ICLR 2019, arXiv 1812.00332.
Origin: mit-han-lab/proxylessnas (``proxyless_nas/``, MIT), network configs and weights in han-cai/files
(``proxylessnas/proxyless_{mobile,gpu,cpu}.{config,pth}``).

Layout: 3x3 stride-2 stem + ReLU6, a depthwise-separable block (the configs' expansion-1 MBConv), 20 searched
positions of MBConv (expansion 3/6, kernels 3/5/7, ReLU6) or "zero" (the block is an identity), a 1x1
"feature mix" conv + ReLU6, pool and a linear classifier. BN epsilon 1e-3 (the configs' ``bn`` entry).
The zero positions are left out of the tables; stages start at each channel change (the configs' blocks without
shortcut).

Deviations from the original: none in architecture; optional dropout/stochastic depth (default 0) are additions.
"""

from __future__ import annotations

import re

import torch

from weights import WeightSpec

from .irnet import InvertedResidualNet, IRNetCfg
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["PROXYLESS_CFGS", "convert_original"]

_PX = {"act": "relu6", "bn_eps": 1e-3}
#: The released configs (mobile: Pixel 1; GPU: V100; CPU: Xeon), zero positions removed.
PROXYLESS_CFGS = {
    "proxylessnas_mobile": IRNetCfg(
        (
            ("ds_r1_k3_s1_c16",),
            ("ir_r1_k5_s2_e3_c32", "ir_r1_k3_s1_e3_c32"),
            ("ir_r1_k7_s2_e3_c40", "ir_r1_k3_s1_e3_c40", "ir_r2_k5_s1_e3_c40"),
            ("ir_r1_k7_s2_e6_c80", "ir_r3_k5_s1_e3_c80"),
            ("ir_r1_k5_s1_e6_c96", "ir_r3_k5_s1_e3_c96"),
            ("ir_r2_k7_s2_e6_c192", "ir_r2_k7_s1_e3_c192"),
            ("ir_r1_k7_s1_e6_c320",),
        ),
        stem_size=32,
        num_features=1280,
        **_PX,
    ),
    "proxylessnas_gpu": IRNetCfg(
        (
            ("ds_r1_k3_s1_c24",),
            ("ir_r1_k5_s2_e3_c32",),
            ("ir_r1_k7_s2_e3_c56", "ir_r1_k3_s1_e3_c56"),
            ("ir_r1_k7_s2_e6_c112", "ir_r1_k5_s1_e3_c112"),
            ("ir_r1_k5_s1_e6_c128", "ir_r1_k3_s1_e3_c128", "ir_r1_k5_s1_e3_c128"),
            ("ir_r3_k7_s2_e6_c256", "ir_r1_k5_s1_e6_c256"),
            ("ir_r1_k7_s1_e6_c432",),
        ),
        stem_size=40,
        num_features=1728,
        **_PX,
    ),
    "proxylessnas_cpu": IRNetCfg(
        (
            ("ds_r1_k3_s1_c24",),
            ("ir_r1_k3_s2_e6_c32", "ir_r3_k3_s1_e3_c32"),
            ("ir_r1_k3_s2_e6_c48", "ir_r2_k3_s1_e3_c48", "ir_r1_k5_s1_e3_c48"),
            ("ir_r1_k3_s2_e6_c88", "ir_r1_k3_s1_e3_c88"),
            ("ir_r1_k5_s1_e6_c104", "ir_r3_k3_s1_e3_c104"),
            ("ir_r1_k5_s2_e6_c216", "ir_r2_k5_s1_e3_c216", "ir_r1_k3_s1_e3_c216"),
            ("ir_r1_k5_s1_e6_c360",),
        ),
        stem_size=40,
        num_features=1432,
        **_PX,
    ),
}

_BLOCK = re.compile(r"(?:module\.)?blocks\.(\d+)\.mobile_inverted_conv\.(\w+)\.(conv|bn)\.(.+)")
_TOP = {"first_conv": "stem", "feature_mix_layer": "head", "classifier.linear": "classifier"}
_IR_PARTS = {"inverted_bottleneck": "conv_pw", "depth_conv": "conv_dw", "point_linear": "conv_pwl"}
_DS_PARTS = {"depth_conv": "conv_dw", "point_linear": "conv_pw"}


def _stage_layout(blocks: dict[int, dict[str, torch.Tensor]]) -> dict[int, tuple[int, int]]:
    """Original block index -> (our stage, index in stage): a stage starts where the channels change."""
    layout, stage, j = {}, -1, 0
    for i in sorted(blocks):
        b = blocks[i]
        in_chs = b["depth_conv.conv.weight"].shape[0]
        if "inverted_bottleneck.conv.weight" in b:
            in_chs = b["inverted_bottleneck.conv.weight"].shape[1]
        if stage < 0 or in_chs != b["point_linear.conv.weight"].shape[0]:
            stage, j = stage + 1, 0
        layout[i] = (stage, j)
        j += 1
    return layout


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' ``ProxylessNASNets`` (``first_conv``, ``blocks.<i>.mobile_inverted_conv.*``,
    ``feature_mix_layer``, ``classifier.linear``) to ours.

    Zero positions have no parameters and are skipped; blocks without an expansion conv are our depthwise-separable
    blocks (``point_linear`` -> ``conv_pw``).
    """
    if not any(k.endswith("first_conv.conv.weight") for k in state_dict):
        raise KeyError("not a ProxylessNAS checkpoint (no first_conv.conv.weight)")
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    out = {}
    for k, v in state_dict.items():
        m = _BLOCK.fullmatch(k)
        if m:
            blocks.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}.{m.group(4)}"] = v
            continue
        key = k.removeprefix("module.")
        for old, new in _TOP.items():
            if key.startswith(old + "."):
                out[new + key[len(old) :]] = v
                break
        else:
            raise KeyError(f"unexpected ProxylessNAS key {k!r}")
    for i, (s, j) in _stage_layout(blocks).items():
        parts = _IR_PARTS if "inverted_bottleneck.conv.weight" in blocks[i] else _DS_PARTS
        for rest, v in blocks[i].items():
            part, tail = rest.split(".", 1)
            out[f"blocks.{s}.{j}.{parts[part]}.{tail}"] = v
    return out


_URL = "https://raw.githubusercontent.com/han-cai/files/master/proxylessnas/proxyless_{}.pth"
_WEIGHTS = {
    f"proxylessnas_{n}": WeightSpec(
        _URL.format(n), "original", license="MIT", source="authors (mit-han-lab), ImageNet-1k", top1=t
    )
    for n, t in (("mobile", 74.6), ("gpu", 75.1), ("cpu", None))
}
_REPORTED = {
    "proxylessnas_mobile": Reported(4.08, 0.320, 74.6, latency="Pixel 1 78 ms", source="README"),
    "proxylessnas_gpu": Reported(7.12, None, 75.1, latency="GPU 5.1 ms", source="README"),
    "proxylessnas_cpu": Reported(4.36, source="no published accuracy or latency found; params of the released config"),
}

FAMILY = Family(
    name="proxylessnas",
    paper=Paper(
        title="ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware",
        arxiv="1812.00332",
        venue="ICLR 2019",
        repo="https://github.com/mit-han-lab/proxylessnas",
        code_license="MIT",
        weights_license="MIT",
    ),
    model_cls=InvertedResidualNet,
    default_cfg=PretrainedCfg(first_conv="stem.conv", classifier=("classifier",), interpolation="bilinear"),
    converters={"original": convert_original},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("ConvBN", "DepthwiseSeparable", "InvertedResidual"),
    remaining_norms=(),
)


@FAMILY.register
def proxylessnas_mobile(**kwargs) -> InvertedResidualNet:
    """ProxylessNAS (mobile, Pixel 1): 4.08 M params, 0.32 GMACs."""
    return InvertedResidualNet(PROXYLESS_CFGS["proxylessnas_mobile"], **kwargs)


@FAMILY.register
def proxylessnas_gpu(**kwargs) -> InvertedResidualNet:
    """ProxylessNAS (GPU): 7.12 M params, 0.47 GMACs."""
    return InvertedResidualNet(PROXYLESS_CFGS["proxylessnas_gpu"], **kwargs)


@FAMILY.register
def proxylessnas_cpu(**kwargs) -> InvertedResidualNet:
    """ProxylessNAS (CPU): 4.36 M params, 0.44 GMACs."""
    return InvertedResidualNet(PROXYLESS_CFGS["proxylessnas_cpu"], **kwargs)
