"""VoVNet (one-shot aggregation) and VoVNetV2 (identity mapping + effective squeeze-excitation).

Papers: "An Energy and GPU-Computation Efficient Backbone Network for Real-Time Object Detection", Youngwan Lee,
Joong-won Hwang, Sangrok Lee, Yuseok Bae, Jongyoul Park, CVPR Workshops 2019, arXiv 1904.09730 (VoVNet, OSA);
"CenterMask: Real-Time Anchor-Free Instance Segmentation", Youngwan Lee, Jongyoul Park, CVPR 2020, arXiv 1911.06667
(VoVNetV2: identity mapping and eSE).
Origin: stigma0617/VoVNet.pytorch (the authors' ImageNet VoVNet-39/57, no licence file; reference commit 039d9dc) and
youngwanLEE/vovnet-detectron2 (VoVNetV2); the variants and parameter names follow timm's ``vovnet.py``
(Apache-2.0), whose ``ra_in1k`` / ``ra4`` weights (Apache-2.0) load exactly.

Layout: a three-conv 3x3 stem (stride 4; separable 2nd/3rd convs in the depthwise variants), four stages of OSA blocks,
stages 2-4 starting with a 3x3 stride-2 max-pool (ceil mode), global average pool and a linear classifier.

Variants: timm's ``vovnet39a`` / ``vovnet57a`` (V1: no identity, no eSE) and ``ese_vovnet*b`` (V2). The authors'
released VoVNet-39/57 are ``vovnet39`` / ``vovnet57`` here: their code (``_OSA_module(identity=True)``) adds the
identity mapping to every block of a stage but the first, which timm's ``a`` variants drop, so the authors'
checkpoints must run with it. Both load the same keys; only ``vovnet39`` / ``vovnet57`` compute the authors' network.

Deviations from the original / timm:
* stochastic depth applies to the residual branch of identity-mapped blocks only (timm also drops the whole output of
  a block without identity when ``drop_path_rate > 0``; 0 by default everywhere);
* the classifier is ``head`` (timm: ``head.fc``, the authors: ``classifier``; the converters rename it);
* deploy (``blocks.reparameterize_model``) folds every BatchNorm; no normalization layer is left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from blocks import ConvBN, OsaStage, SeparableConvBN
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["VoVNetCfg", "VoVNet", "convert_original", "convert_timm"]


@dataclass(frozen=True)
class VoVNetCfg:
    """Architecture of one VoVNet variant (stride-4 stem, four OSA stages).

    Attributes:
        stem_chs: channels of the three stem convs.
        stage_conv_chs: channels of the 3x3 chains, per stage.
        stage_out_chs: output channels, per stage.
        layer_per_block: 3x3 layers per OSA block.
        block_per_stage: OSA blocks per stage.
        residual: identity mapping on every block of a stage but the first.
        depthwise: separable 3x3 layers (and separable 2nd/3rd stem convs).
        ese: effective squeeze-excitation on the last block of each stage.
    """

    stem_chs: tuple[int, int, int]
    stage_conv_chs: tuple[int, int, int, int]
    stage_out_chs: tuple[int, int, int, int]
    layer_per_block: int
    block_per_stage: tuple[int, int, int, int]
    residual: bool
    depthwise: bool
    ese: bool


class VoVNet(nn.Module):
    """VoVNet / VoVNetV2 classifier / backbone.

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of the identity-mapped blocks, increasing linearly over all blocks.
    """

    def __init__(
        self,
        cfg: VoVNetCfg,
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
        s = cfg.stem_chs
        conv = SeparableConvBN if cfg.depthwise else ConvBN
        self.stem = nn.Sequential(
            ConvBN(in_chans, s[0], 3, stride=2, act_layer=nn.ReLU),
            conv(s[0], s[1], 3, stride=1, act_layer=nn.ReLU),
            conv(s[1], s[2], 3, stride=2, act_layer=nn.ReLU),
        )
        self.feature_info = FeatureInfo([{"num_chs": s[1], "reduction": 2, "module": "stem.1"}])
        dpr = torch.linspace(0, drop_path_rate, sum(cfg.block_per_stage)).tolist()
        in_chs, stages, stride = s[2], [], 4
        for i in range(4):
            n = cfg.block_per_stage[i]
            stages.append(
                OsaStage(
                    in_chs,
                    cfg.stage_conv_chs[i],
                    cfg.stage_out_chs[i],
                    n,
                    cfg.layer_per_block,
                    downsample=i > 0,
                    residual=cfg.residual,
                    depthwise=cfg.depthwise,
                    attn=cfg.ese,
                    drop_path=dpr[sum(cfg.block_per_stage[:i]) : sum(cfg.block_per_stage[: i + 1])],
                )
            )
            stride *= 2 if i > 0 else 1
            in_chs = cfg.stage_out_chs[i]
            self.feature_info.append({"num_chs": in_chs, "reduction": stride, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs
        self.head_drop = nn.Dropout(drop_rate)
        self.pretrained_cfg: dict = {}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay: none beyond the 1-D ones optimisers usually exclude."""
        return set()

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Feature maps up to level ``stop`` (all by default): the stem's second conv (stride 2), then the four
        stages (strides 4, 8, 16, 32), as timm's ``features_only``."""
        x = self.stem[1](self.stem[0](x))
        outs = [x]
        if stop is not None and stop <= 0:
            return outs
        x = self.stem[2](x)
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            outs.append(x)
            if stop is not None and i >= stop:
                break
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature map (B, C, H/32, W/32)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool and classifier; ``pre_logits`` returns the pooled features."""
        x = x.mean((2, 3))  # B, C, H, W -> B, C
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def convert_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ``vovnet.py`` keys to ours: the same names but the classifier (``head.fc`` -> ``head``)."""
    if not any(k.startswith("stages.") for k in state_dict) or "stem.0.conv.weight" not in state_dict:
        raise KeyError("not a timm VoVNet checkpoint (no stem.0.conv / stages.* keys)")
    return {re.sub(r"^head\.fc\.", "head.", k): v for k, v in state_dict.items()}


_ORIG_STEM = re.compile(r"^stem\.stem_(\d)/(conv|norm)\.(.+)$")
_ORIG_MID = re.compile(r"^stage(\d)\.OSA\d_(\d+)\.layers\.(\d+)\.OSA\d_\d+_\d+/(conv|norm)\.(.+)$")
_ORIG_CONCAT = re.compile(r"^stage(\d)\.OSA\d_(\d+)\.concat\.OSA\d_\d+_concat/(conv|norm)\.(.+)$")


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' ImageNet release (stigma0617/VoVNet.pytorch ``models_vovnet/vovnet.py``) to ours.

    The original names its layers after the paper: ``stem.stem_{1,2,3}/{conv,norm}``,
    ``stage{2..5}.OSA{s}_{b}.layers.{l}.OSA{s}_{b}_{l}/{conv,norm}`` for the 3x3 chain,
    ``stage{s}.OSA{s}_{b}.concat.OSA{s}_{b}_concat/{conv,norm}`` for the aggregation and ``classifier`` for the head.
    """
    if not any(k.startswith("stem.stem_1/") for k in state_dict):
        raise KeyError("not an original VoVNet checkpoint (no stem.stem_1/* keys)")
    out = {}
    for k, v in state_dict.items():
        bn = {"conv": "conv", "norm": "bn"}
        if m := _ORIG_STEM.match(k):
            key = f"stem.{int(m[1]) - 1}.{bn[m[2]]}.{m[3]}"
        elif m := _ORIG_MID.match(k):
            key = f"stages.{int(m[1]) - 2}.blocks.{int(m[2]) - 1}.conv_mid.{m[3]}.{bn[m[4]]}.{m[5]}"
        elif m := _ORIG_CONCAT.match(k):
            key = f"stages.{int(m[1]) - 2}.blocks.{int(m[2]) - 1}.conv_concat.{bn[m[3]]}.{m[4]}"
        elif k.startswith("classifier."):
            key = "head." + k[len("classifier.") :]
        else:
            raise KeyError(f"unexpected key in an original VoVNet checkpoint: {k}")
        out[key] = v
    return out


_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
_TIMM_SRC = "timm (Ross Wightman), ImageNet-1k, {} recipe"
_ORIG_URL = "https://dl.dropbox.com/s/{}?dl=1"
_ORIG_SRC = "stigma0617/VoVNet.pytorch (authors), ImageNet-1k, 90 epochs, pytorch/examples recipe"
_WEIGHTS = {
    "ese_vovnet19b_dw": WeightSpec(
        _HF.format("ese_vovnet19b_dw.ra_in1k"),
        "timm",
        filename="ese_vovnet19b_dw.ra_in1k.safetensors",
        license="Apache-2.0",
        source=_TIMM_SRC.format("RandAugment (ra)"),
        top1=76.828,
    ),
    "ese_vovnet39b": WeightSpec(
        _HF.format("ese_vovnet39b.ra_in1k"),
        "timm",
        filename="ese_vovnet39b.ra_in1k.safetensors",
        license="Apache-2.0",
        source=_TIMM_SRC.format("RandAugment (ra)"),
        top1=79.312,
    ),
    "ese_vovnet57b": WeightSpec(
        _HF.format("ese_vovnet57b.ra4_e3600_r256_in1k"),
        "timm",
        filename="ese_vovnet57b.ra4_e3600_r256_in1k.safetensors",
        license="Apache-2.0",
        source=_TIMM_SRC.format("ra4, 3600 epochs, 256 px"),
        top1=82.460,
    ),
    "vovnet39": WeightSpec(
        _ORIG_URL.format("1lnzsgnixd8gjra/vovnet39_torchvision.pth"),
        "original",
        license="unspecified (no licence file)",
        source=_ORIG_SRC,
        top1=76.77,
    ),
    "vovnet57": WeightSpec(
        _ORIG_URL.format("6bfu9gstbwfw31m/vovnet57_torchvision.pth"),
        "original",
        license="unspecified (no licence file)",
        source=_ORIG_SRC,
        top1=77.73,
    ),
}
_TIMM_BENCH = "timm RTX4090 AMP, batch 1024: {} img/s"
_REPORTED = {
    "vovnet39": Reported(22.60, 7.07, 76.77, latency="10 ms, TITAN X Pascal", source="authors' README (err 23.23)"),
    "vovnet57": Reported(36.64, 8.93, 77.73, latency="13 ms, TITAN X Pascal", source="authors' README (err 22.27)"),
    "vovnet39a": Reported(22.60, 7.07, source="timm (architecture only, no weights)"),
    "vovnet57a": Reported(36.64, 8.93, source="timm (architecture only, no weights)"),
    "ese_vovnet19b_slim_dw": Reported(1.90, 0.40, latency=_TIMM_BENCH.format("14,337"), source="timm (no weights)"),
    "ese_vovnet19b_dw": Reported(6.54, 1.34, 76.828, latency=_TIMM_BENCH.format("8,324"), source="timm ra_in1k"),
    "ese_vovnet19b_slim": Reported(3.17, 1.69, latency=_TIMM_BENCH.format("10,823"), source="timm (no weights)"),
    "ese_vovnet39b": Reported(24.57, 7.09, 79.312, latency=_TIMM_BENCH.format("4,151"), source="timm ra_in1k"),
    "ese_vovnet57b": Reported(
        38.61, 8.95, 82.460, 256, latency=_TIMM_BENCH.format("3,532") + " at 224", source="timm ra4; MACs at 224"
    ),
    "ese_vovnet99b": Reported(63.20, 16.51, latency=_TIMM_BENCH.format("2,147"), source="timm (no weights)"),
}

FAMILY = Family(
    name="vovnet",
    paper=Paper(
        title="An Energy and GPU-Computation Efficient Backbone Network for Real-Time Object Detection (VoVNet); "
        "CenterMask: Real-Time Anchor-Free Instance Segmentation (VoVNetV2)",
        arxiv="1904.09730",
        venue="CVPR Workshops 2019; CVPR 2020 (arXiv 1911.06667)",
        repo="https://github.com/stigma0617/VoVNet.pytorch",
        code_license="unspecified (authors); Apache-2.0 (timm)",
        weights_license="Apache-2.0 (timm); unspecified (authors)",
    ),
    model_cls=VoVNet,
    default_cfg=PretrainedCfg(first_conv="stem.0.conv", classifier=("head",)),
    converters={"original": convert_original, "timm": convert_timm},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("ConvBN", "SeparableConvBN", "OsaBlock", "OsaStage", "EffectiveSE"),
    remaining_norms=(),
    timm_names={n: n for n in _REPORTED if n not in ("vovnet39", "vovnet57")},
)

_V1 = dict(stem_chs=(64, 64, 128), stage_conv_chs=(128, 160, 192, 224), stage_out_chs=(256, 512, 768, 1024))
_SLIM = dict(stage_conv_chs=(64, 80, 96, 112), stage_out_chs=(112, 256, 384, 512))
_V2 = dict(residual=True, ese=True)


@FAMILY.register(interpolation="bilinear")
def vovnet39(**kwargs) -> VoVNet:
    """VoVNet-39 as the authors released it (identity mapping in later blocks, no eSE): 22.60 M params, 7.07 G MACs."""
    cfg = VoVNetCfg(**_V1, layer_per_block=5, block_per_stage=(1, 1, 2, 2), residual=True, depthwise=False, ese=False)
    return VoVNet(cfg, **kwargs)


@FAMILY.register(interpolation="bilinear")
def vovnet57(**kwargs) -> VoVNet:
    """VoVNet-57 as the authors released it (identity mapping in later blocks, no eSE): 36.64 M params, 8.93 G MACs."""
    cfg = VoVNetCfg(**_V1, layer_per_block=5, block_per_stage=(1, 1, 4, 3), residual=True, depthwise=False, ese=False)
    return VoVNet(cfg, **kwargs)


@FAMILY.register
def vovnet39a(**kwargs) -> VoVNet:
    """timm's VoVNet-39 (no identity mapping, no eSE): 22.60 M params, 7.07 G MACs."""
    cfg = VoVNetCfg(**_V1, layer_per_block=5, block_per_stage=(1, 1, 2, 2), residual=False, depthwise=False, ese=False)
    return VoVNet(cfg, **kwargs)


@FAMILY.register
def vovnet57a(**kwargs) -> VoVNet:
    """timm's VoVNet-57 (no identity mapping, no eSE): 36.64 M params, 8.93 G MACs."""
    cfg = VoVNetCfg(**_V1, layer_per_block=5, block_per_stage=(1, 1, 4, 3), residual=False, depthwise=False, ese=False)
    return VoVNet(cfg, **kwargs)


@FAMILY.register
def ese_vovnet19b_slim_dw(**kwargs) -> VoVNet:
    """VoVNetV2-19-slim, depthwise: 1.90 M params, 0.40 G MACs."""
    cfg = VoVNetCfg((64, 64, 64), **_SLIM, layer_per_block=3, block_per_stage=(1, 1, 1, 1), depthwise=True, **_V2)
    return VoVNet(cfg, **kwargs)


@FAMILY.register
def ese_vovnet19b_dw(**kwargs) -> VoVNet:
    """VoVNetV2-19, depthwise: 6.54 M params, 1.33 G MACs."""
    chs = dict(stage_conv_chs=_V1["stage_conv_chs"], stage_out_chs=_V1["stage_out_chs"])
    cfg = VoVNetCfg((64, 64, 64), **chs, layer_per_block=3, block_per_stage=(1, 1, 1, 1), depthwise=True, **_V2)
    return VoVNet(cfg, **kwargs)


@FAMILY.register
def ese_vovnet19b_slim(**kwargs) -> VoVNet:
    """VoVNetV2-19-slim: 3.17 M params, 1.69 G MACs."""
    cfg = VoVNetCfg((64, 64, 128), **_SLIM, layer_per_block=3, block_per_stage=(1, 1, 1, 1), depthwise=False, **_V2)
    return VoVNet(cfg, **kwargs)


@FAMILY.register
def ese_vovnet39b(**kwargs) -> VoVNet:
    """VoVNetV2-39: 24.57 M params, 7.09 G MACs."""
    return VoVNet(VoVNetCfg(**_V1, layer_per_block=5, block_per_stage=(1, 1, 2, 2), depthwise=False, **_V2), **kwargs)


@FAMILY.register(input_size=(3, 256, 256), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.95)
def ese_vovnet57b(**kwargs) -> VoVNet:
    """VoVNetV2-57 (timm's ra4 weights are 256 px): 38.61 M params, 8.95 G MACs at 224."""
    return VoVNet(VoVNetCfg(**_V1, layer_per_block=5, block_per_stage=(1, 1, 4, 3), depthwise=False, **_V2), **kwargs)


@FAMILY.register
def ese_vovnet99b(**kwargs) -> VoVNet:
    """VoVNetV2-99: 63.20 M params, 16.51 G MACs."""
    return VoVNet(VoVNetCfg(**_V1, layer_per_block=5, block_per_stage=(1, 3, 9, 3), depthwise=False, **_V2), **kwargs)
