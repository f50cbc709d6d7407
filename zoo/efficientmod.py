"""EfficientMod: efficient modulation networks (pure-convolutional and hybrid with vanilla self-attention).

Paper: "Efficient Modulation for Vision Networks", Xu Ma, Xiyang Dai, Jianwei Yang, Bin Xiao, Yinpeng Chen, Yun Fu,
Lu Yuan, ICLR 2024, arXiv 2403.19963.
Origin: ma-xu/EfficientMod (Apache-2.0), reference commit ec04df6; checkpoints released by the authors on Google Drive
(linked from that README, same repository licence).

Layout: a 7x7 stride-4 conv stem with LayerNorm, four stages of EfficientMod blocks (the value branch alternates
between no expansion and an expansion of 4 or 6; the context branch is a 7x7 depthwise conv between two linear
layers), stages 2-4 starting with a 3x3 stride-2 conv + LayerNorm; in the hybrid variants the last two stages end
with vanilla self-attention blocks. Final LayerNorm, global average pool and a linear classifier. Everything inside
the network is channels-last as in the original; feature maps are handed out as (B, C, H, W) views.

The released checkpoints are trained with soft knowledge distillation from a RegNetY-160 teacher applied to the one
classifier (the original ``DistillationLoss`` on the model's single output): there is no distillation head, and the
evaluation output is the classifier's.

Deviations from the original:
* the downsampling layer that the original keeps at the end of stage ``i`` is the start of stage ``i + 1`` here, so
  that each stage's output is its feature map (the converter moves the keys);
* the context is broadcast over the ``ratio`` groups of the expanded value instead of materialised with ``repeat``
  (same numbers, no copy); the original's multi-kernel context (a list of depthwise convs) is reduced to the single
  kernel every released variant uses;
* ``drop_rate`` is a dropout before the classifier (the original applies its ``drop_rate`` inside the MLPs; it is 0
  in every variant), and the original's variant functions ignore ``num_classes`` and ``drop_path_rate`` while ours
  honour them (``drop_path_rate`` defaults to 0 rather than the original training value 0.02 for s / s-Conv);
* deploy (``blocks.reparameterize_model``) folds the layer scales into the output projections and the attention scale
  into the query weights. The LayerNorms remain: they cannot fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blocks import EfficientModStage, PatchEmbedLN
from blocks.efficientmod import init_efficientmod_weights
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["EfficientModCfg", "EfficientMod", "convert_original"]


def _alternating(depth: int, ratio: int) -> tuple[int, ...]:
    """Value-branch expansions 1, ratio, 1, ratio, ... of a stage with ``depth`` EfficientMod blocks."""
    return tuple(1 if i % 2 == 0 else ratio for i in range(depth))


@dataclass(frozen=True)
class EfficientModCfg:
    """Architecture of one EfficientMod variant (four stages).

    Attributes:
        embed_dim: channels of each stage.
        ratios: value-branch expansion of every EfficientMod block, per stage (the lengths are the stage depths).
        attn_depth: vanilla self-attention blocks at the end of each stage.
        attn_mlp_ratio: MLP expansion of those attention blocks, per stage.
        kernel_size: depthwise kernel of the context branch.
        layer_scale: initial layer scale of the EfficientMod blocks.
        num_heads: attention heads.
    """

    embed_dim: tuple[int, int, int, int]
    ratios: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    attn_depth: tuple[int, int, int, int] = (0, 0, 0, 0)
    attn_mlp_ratio: tuple[float, float, float, float] = (4.0, 4.0, 4.0, 4.0)
    kernel_size: int = 7
    layer_scale: float | None = 1e-4
    num_heads: int = 8


class EfficientMod(nn.Module):
    """EfficientMod classifier / backbone.

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, increasing linearly over all blocks (attention blocks included).
    """

    def __init__(
        self,
        cfg: EfficientModCfg,
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
        dims = cfg.embed_dim
        self.stem = PatchEmbedLN(in_chans, dims[0], 7, 4, 3, channels_last_in=False)
        depths = [len(r) + a for r, a in zip(cfg.ratios, cfg.attn_depth)]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, self.feature_info = [], FeatureInfo()
        for i in range(4):
            stages.append(
                EfficientModStage(
                    dims[max(i - 1, 0)],
                    dims[i],
                    cfg.ratios[i],
                    attn_depth=cfg.attn_depth[i],
                    attn_mlp_ratio=cfg.attn_mlp_ratio[i],
                    downsample=i > 0,
                    kernel_size=cfg.kernel_size,
                    num_heads=cfg.num_heads,
                    layer_scale=cfg.layer_scale,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                )
            )
            self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.num_features = dims[-1]
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.pretrained_cfg: dict = {}
        self.reset_classifier(num_classes)
        init_efficientmod_weights(self)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay: the layer scales (as every 1-D parameter in timm's optimiser)."""
        return {n for n, _ in self.named_parameters() if n.endswith(".gamma")}

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Outputs of stages ``0..stop`` (all by default) as (B, C, H, W), strides 4, 8, 16, 32."""
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outs.append(x.permute(0, 3, 1, 2))  # B, H, W, C -> B, C, H, W
            if stop is not None and i >= stop:
                break
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's feature map after the final LayerNorm, (B, C, H/32, W/32)."""
        x = self.norm(self.stages(self.stem(x)))
        return x.permute(0, 3, 1, 2)  # B, H, W, C -> B, C, H, W

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool and classifier; ``pre_logits`` returns the pooled features."""
        x = x.mean((2, 3))  # B, C, H, W -> B, C
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_ORIG_BLOCK_NAMES = {
    "mlp.fc1": "value",
    "mlp.fc2": "proj",
    "mlp.context_layer.f": "context.fc_in",
    "mlp.context_layer.g": "context.fc_out",
    "mlp.context_layer.context_list.0": "context.dwconv",
    "gamma_1": "gamma",
}


def _convert_block_key(rest: str, is_attention: bool) -> str:
    """Rename a key inside one of the original's blocks (attention blocks keep their names)."""
    if is_attention:
        return rest
    for old, new in _ORIG_BLOCK_NAMES.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' release (ma-xu/EfficientMod ``models/EfficientMod.py``) to this implementation's.

    The original names the stem ``patch_embed.proj/norm``, the stages ``layers.{i}`` with the downsampling at the end
    of stage ``i`` (``layers.{i}.downsample``, moved to ``stages.{i+1}.downsample`` here), the fused block's layers
    ``mlp.fc1`` (value), ``mlp.fc2`` (projection), ``mlp.context_layer.{f,g,context_list.0}`` (context) and its layer
    scale ``gamma_1``. Attention blocks (recognised by their ``attn.qkv`` weight) keep their names.
    """
    if not any(k.startswith("layers.") for k in state_dict) or "patch_embed.proj.weight" not in state_dict:
        raise KeyError("not an original EfficientMod checkpoint (no patch_embed.proj / layers.* keys)")
    attn_blocks = {k[: -len(".attn.qkv.weight")] for k in state_dict if k.endswith(".attn.qkv.weight")}
    out = {}
    for k, v in state_dict.items():
        parts = k.split(".")
        if parts[0] == "patch_embed":
            key = ".".join(["stem", {"proj": "conv"}.get(parts[1], parts[1]), *parts[2:]])
        elif parts[0] == "layers" and parts[2] == "downsample":
            key = ".".join(["stages", str(int(parts[1]) + 1), "downsample", {"proj": "conv"}.get(parts[3], parts[3])])
            key += "." + ".".join(parts[4:])
        elif parts[0] == "layers" and parts[2] == "blocks":
            prefix = ".".join(parts[:4])
            rest = _convert_block_key(".".join(parts[4:]), prefix in attn_blocks)
            key = ".".join(["stages", parts[1], "blocks", parts[3], rest])
        else:
            key = k
        out[key] = v
    return out


_FOLDERS = {
    "efficientmod_xxs": "1c0dlnN7w1bHlAsKcJFhGVA2mIhoA6ZHz?usp=sharing",
    "efficientmod_xs": "1PPQFO891WfJRUiH58NlWOgHDEzDnwC0_?usp=share_link",
    "efficientmod_s": "1rJs8LcWmdTFmj-IJ0cmlVp_MxGfZFsFk?usp=share_link",
    "efficientmod_s_conv": "1EY637XRiDPL4AwrVGESJWsK-ZP2GhnaI?usp=share_link",
}
_TOP1 = {"efficientmod_xxs": 77.1, "efficientmod_xs": 79.4, "efficientmod_s": 81.9, "efficientmod_s_conv": 80.5}
_LIC = "Apache-2.0 (repository licence)"
_SRC = "ma-xu/EfficientMod (authors), ImageNet-1k, 300 epochs, {} (Google Drive folder: download by hand)"
# the README marks s-Conv "No Distill."; its 80.5 is the paper's no-KD number
_KD = {name: "soft KD from RegNetY-160" for name in _TOP1} | {"efficientmod_s_conv": "no KD"}
_WEIGHTS = {
    name: WeightSpec(
        f"https://drive.google.com/drive/folders/{folder}",
        "original",
        filename=f"{name}.pth.tar",
        license=_LIC,
        source=_SRC.format(_KD[name]),
        top1=_TOP1[name],
    )
    for name, folder in _FOLDERS.items()
}
_LAT = "ONNX batch 1: P100 {} ms, Xeon E5-2680 (4 threads) {} ms"
_REPORTED = {
    "efficientmod_xxs": Reported(4.7, 0.6, 76.0, latency=_LAT.format(3.0, 10.2), source="Table 1 (no KD); KD 77.1"),
    "efficientmod_xs": Reported(6.6, 0.8, 78.3, latency=_LAT.format(3.6, 13.4), source="Table 1 (no KD); KD 79.4"),
    "efficientmod_s": Reported(12.9, 1.4, 81.0, latency=_LAT.format(5.5, 23.5), source="Table 1 (no KD); KD 81.9"),
    "efficientmod_s_conv": Reported(12.9, 1.5, 80.5, latency=_LAT.format(5.8, 25.0), source="Table 1 (no KD)"),
}

FAMILY = Family(
    name="efficientmod",
    paper=Paper(
        title="Efficient Modulation for Vision Networks",
        arxiv="2403.19963",
        venue="ICLR 2024",
        repo="https://github.com/ma-xu/EfficientMod",
        code_license="Apache-2.0",
        weights_license=_LIC,
    ),
    model_cls=EfficientMod,
    default_cfg=PretrainedCfg(first_conv="stem.conv", classifier=("head",)),
    converters={"original": convert_original},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("PatchEmbedLN", "ContextModeling", "EfficientModBlock", "MHSA", "AttentionBlock", "EfficientModStage"),
    remaining_norms=("LayerNorm",),
    card_notes=(
        "MACs here count every product, the two attention products of the hybrid variants' self-attention "
        "included (22.1 M / 63.2 M / 84.7 M for xxs / xs / s at 224 px). The paper counted with fvcore, which does "
        "not see `scaled_dot_product_attention`: its 0.557 / 0.710 / 1.317 G are ours minus those products."
    ),
)


@FAMILY.register
def efficientmod_xxs(**kwargs) -> EfficientMod:
    """EfficientMod-xxs (hybrid): 4.74 M params, 0.579 G MACs (paper, without attention: 0.557 G)."""
    ratios = (_alternating(2, 6), _alternating(2, 6), _alternating(6, 6), _alternating(2, 6))
    return EfficientMod(EfficientModCfg((32, 64, 128, 256), ratios, (0, 0, 1, 2), (4.0, 4.0, 4.0, 4.0)), **kwargs)


@FAMILY.register
def efficientmod_xs(**kwargs) -> EfficientMod:
    """EfficientMod-xs (hybrid): 6.63 M params, 0.773 G MACs (paper, without attention: 0.710 G)."""
    ratios = (_alternating(3, 4), _alternating(3, 4), _alternating(4, 4), _alternating(2, 4))
    return EfficientMod(EfficientModCfg((32, 64, 144, 288), ratios, (0, 0, 3, 3), (4.0, 4.0, 4.0, 4.0)), **kwargs)


@FAMILY.register
def efficientmod_s(**kwargs) -> EfficientMod:
    """EfficientMod-s (hybrid): 12.90 M params, 1.402 G MACs (paper, without attention: 1.317 G)."""
    ratios = (_alternating(4, 6), _alternating(4, 6), _alternating(8, 6), _alternating(4, 6))
    return EfficientMod(EfficientModCfg((32, 64, 144, 312), ratios, (0, 0, 4, 4), (4.0, 4.0, 4.0, 5.0)), **kwargs)


@FAMILY.register
def efficientmod_s_conv(**kwargs) -> EfficientMod:
    """EfficientMod-s-Conv (no attention): 12.87 M params, 1.471 G MACs."""
    ratios = (_alternating(4, 6), _alternating(4, 6), _alternating(12, 6), _alternating(8, 6))
    return EfficientMod(EfficientModCfg((40, 80, 160, 344), ratios), **kwargs)
