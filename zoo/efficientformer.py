"""EfficientFormer (v1): a dimension-consistent vision transformer that runs at MobileNet speed.

Paper: "EfficientFormer: Vision Transformers at MobileNet Speed", Yanyu Li, Geng Yuan, Yang Wen, Ju Hu, Georgios
Evangelidis, Sergey Tulyakov, Yanzhi Wang, Jian Ren, NeurIPS 2022, arXiv 2206.01191.
Origin: snap-research/EfficientFormer, ``models/efficientformer.py`` (Snap Inc. MIT-style licence, with
Apache-2.0 LeViT-derived parts); weights released by the authors (Google Drive) and re-hosted by timm
(``efficientformer_l*.snap_dist_in1k``, Apache-2.0).

Layout: a stride-4 stem (two 3x3 stride-2 conv + BN + ReLU), four stages at strides 4-32 joined by 3x3 stride-2
conv + BN embeddings. Stages hold Meta4D blocks on feature maps (token mixer ``avgpool3x3(x) - x``, then a 1x1
conv MLP with BN after each conv and GELU, both residual branches scaled by a learned per-channel layer scale); the
last ``num_vit`` blocks of the last stage are Meta3D blocks on flattened tokens (LayerNorm, multi-head attention with
a learned bias per head and absolute 2-D offset, LayerNorm, linear MLP, again with layer scales). A final
LayerNorm, token average and two linear heads (class and distillation) whose outputs are averaged at inference.

Deviations from the original:
* the attention resolution comes from ``img_size`` (the original fixes it at 7, i.e. 224 px input);
* in training mode the original returns the (class, distillation) pair; here the averaged logits are returned
  unless ``set_distilled_training(True)`` was called (then both, stacked), as in timm;
* ``deploy`` (via ``blocks.reparameterize_model``) folds every BatchNorm (stem, embeddings, Meta4D MLPs) into its
  conv, the layer scales of the MLPs and of the attention projection into the preceding conv/linear, the attention
  scale into the query weights, and gathers the attention biases into dense ``(heads, N, N)`` buffers. The
  LayerNorms of the Meta3D blocks and the final LayerNorm cannot fold and remain.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn

from blocks import ConvBN
from blocks.cga import relative_offset_index
from weights import WeightSpec

from .features import FeatureInfo
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["EfficientFormerCfg", "EfficientFormer", "Meta4D", "Meta3D", "convert_original", "convert_timm"]


class Pooling(nn.Module):
    """PoolFormer token mixer: ``avgpool(x) - x`` (3x3, stride 1, padding not counted)."""

    def __init__(self, pool_size: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, 1, pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class ConvMlp(nn.Module):
    """1x1 conv + BN + GELU, 1x1 conv + BN (the Meta4D MLP)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = ConvBN(dim, hidden, bias=True, act_layer=nn.GELU)
        self.fc2 = ConvBN(hidden, dim, bias=True)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.fc1(x))))


class LinearMlp(nn.Module):
    """Linear + GELU + linear on tokens (the Meta3D MLP)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention over ``resolution**2`` tokens with a learned bias per head and absolute 2-D offset.

    Args:
        dim: token channels.
        resolution: side of the token grid.
        key_dim: query/key channels per head.
        num_heads: heads.
        attn_ratio: value channels per head = ``attn_ratio * key_dim``.
    """

    def __init__(self, dim: int, resolution: int, key_dim: int = 32, num_heads: int = 8, attn_ratio: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = attn_ratio * key_dim
        self.scale = key_dim**-0.5
        self.num_tokens = resolution**2
        self.qkv = nn.Linear(dim, (2 * key_dim + self.val_dim) * num_heads)
        self.proj = nn.Linear(self.val_dim * num_heads, dim)
        idx, num_offsets = relative_offset_index(resolution)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets))
        self.register_buffer("attention_bias_idxs", idx, persistent=False)
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h = self.num_tokens, self.num_heads
        if x.shape[1] != n:  # a static size under export: only the batch is symbolic
            raise ValueError(f"attention built for {n} tokens (img_size) got {x.shape[1]}: build with img_size=<side>")
        # B, N, h*c -> B, N, h, c -> B, h, N, c
        qkv = self.qkv(x).reshape(-1, n, h, 2 * self.key_dim + self.val_dim).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        attn = q @ k.transpose(-2, -1)  # B, h, N, N
        if self.deployed:
            attn = attn + self.attention_bias
        else:
            attn = attn * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, n, h * self.val_dim)  # B, h, N, d -> B, N, h*d
        return self.proj(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Gather the bias table into a dense buffer and fold the softmax scale into the query weights."""
        if self.deployed:
            return
        per_head = 2 * self.key_dim + self.val_dim
        w = self.qkv.weight.view(self.num_heads, per_head, -1)  # out rows grouped by head: q, k, v
        b = self.qkv.bias.view(self.num_heads, per_head)
        w[:, : self.key_dim].mul_(self.scale)
        b[:, : self.key_dim].mul_(self.scale)
        dense = self.attention_biases[:, self.attention_bias_idxs].detach().clone()
        del self.attention_biases
        self.register_buffer("attention_bias", dense, persistent=False)
        self.deployed = True


class Meta4D(nn.Module):
    """Feature-map block: ``x + ls1 * pool_mixer(x)``, then ``x + ls2 * conv_mlp(x)``.

    Args:
        dim: channels.
        mlp_ratio: hidden channels of the MLP per input channel.
        drop: dropout inside the MLP.
        drop_path: stochastic depth of both residual branches.
        layer_scale_init: initial layer-scale value.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-5,
    ) -> None:
        super().__init__()
        self.token_mixer = Pooling()
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.token_mixer(x))  # C -> C, 1, 1
        if self.deployed:
            return x + self.mlp(x)
        return x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the MLP's layer scale into its (BN-folded) last conv."""
        if self.deployed:
            return
        fc2 = self.mlp.fc2
        fc2.reparameterize()
        fc2.conv.weight.mul_(self.layer_scale_2[:, None, None, None])
        fc2.conv.bias.mul_(self.layer_scale_2)
        del self.layer_scale_2
        self.deployed = True


class Meta3D(nn.Module):
    """Token block: ``x + ls1 * attn(norm1(x))``, then ``x + ls2 * mlp(norm2(x))``.

    Args:
        dim: channels.
        resolution: side of the token grid (for the attention biases).
        mlp_ratio: hidden channels of the MLP per input channel.
        drop: dropout inside the MLP.
        drop_path: stochastic depth of both residual branches.
        layer_scale_init: initial layer-scale value.
    """

    def __init__(
        self,
        dim: int,
        resolution: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim, resolution)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LinearMlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            x = x + self.token_mixer(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.drop_path(self.layer_scale_1 * self.token_mixer(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both layer scales into the attention projection and the MLP's last linear layer."""
        if self.deployed:
            return
        for linear, ls in ((self.token_mixer.proj, self.layer_scale_1), (self.mlp.fc2, self.layer_scale_2)):
            linear.weight.mul_(ls[:, None])
            linear.bias.mul_(ls)
        del self.layer_scale_1, self.layer_scale_2
        self.deployed = True


class Flat(nn.Module):
    """Feature map to tokens: (B, C, H, W) -> (B, HW, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)  # B, C, H, W -> B, C, HW -> B, HW, C


class EfficientFormerStage(nn.Module):
    """A stage: the stride-2 conv embedding (none in the first stage), then its blocks."""

    def __init__(self, downsample: nn.Module, blocks: nn.Sequential) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


@dataclass(frozen=True)
class EfficientFormerCfg:
    """Architecture of one EfficientFormer variant."""

    depths: tuple[int, int, int, int]
    embed_dims: tuple[int, int, int, int]
    num_vit: int
    mlp_ratio: float = 4.0


def _conv_out(size: int) -> int:
    """Output side of a 3x3, stride-2, padding-1 convolution."""
    return (size - 1) // 2 + 1


class EfficientFormer(nn.Module):
    """EfficientFormer classifier / backbone.

    Args:
        cfg: architecture.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input channels.
        img_size: input side the attention geometry is built for (square).
        drop_rate: dropout before the classifiers (the original has none there).
        drop_path_rate: stochastic depth, increasing linearly over all blocks.
        proj_drop_rate: dropout inside the MLPs (the original's ``drop_rate``).
        distillation: add the distillation head of the original (the released weights have it).
    """

    def __init__(
        self,
        cfg: EfficientFormerCfg,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        distillation: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size must be a positive int (square input), got {img_size!r}")
        if not 0 < cfg.num_vit <= cfg.depths[-1]:
            raise ValueError(f"num_vit must be in 1..{cfg.depths[-1]} (the last stage's depth), got {cfg.num_vit}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        self.proj_drop_rate = proj_drop_rate
        self.distillation = distillation
        self.distilled_training = False
        d0 = cfg.embed_dims[0]
        self.stem = nn.Sequential(
            OrderedDict(
                conv1=ConvBN(in_chans, d0 // 2, 3, stride=2, bias=True, act_layer=nn.ReLU),
                conv2=ConvBN(d0 // 2, d0, 3, stride=2, bias=True, act_layer=nn.ReLU),
            )
        )
        res = _conv_out(_conv_out(img_size))
        total = sum(cfg.depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, self.feature_info, k = [], FeatureInfo(), 0
        for i, (dim, depth) in enumerate(zip(cfg.embed_dims, cfg.depths)):
            res = _conv_out(res) if i > 0 else res
            downsample = ConvBN(cfg.embed_dims[i - 1], dim, 3, stride=2, bias=True) if i > 0 else nn.Identity()
            stages.append(EfficientFormerStage(downsample, self._blocks(i, dim, depth, res, dpr[k : k + depth])))
            k += depth
            self.feature_info.append({"num_chs": dim, "reduction": 4 * 2**i, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.resolution = res
        self.num_features = cfg.embed_dims[-1]
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.pretrained_cfg: dict = {}
        self.reset_classifier(num_classes)
        self._init_weights()

    def _blocks(self, i: int, dim: int, depth: int, res: int, dpr: list[float]) -> nn.Sequential:
        """Meta4D blocks; in the last stage the final ``num_vit`` are Meta3D, after a flattening step."""
        cfg, blocks = self.cfg, []
        num_vit = cfg.num_vit if i == len(cfg.depths) - 1 else 0
        for j in range(depth):
            if num_vit and j == depth - num_vit:
                blocks.append(Flat())
            if num_vit and j >= depth - num_vit:
                blocks.append(Meta3D(dim, res, cfg.mlp_ratio, self.proj_drop_rate, dpr[j]))
            else:
                blocks.append(Meta4D(dim, cfg.mlp_ratio, self.proj_drop_rate, dpr[j]))
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        """The original's init: truncated normal (std 0.02) for linear layers and MLP convs, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                layers = [m]
            elif isinstance(m, ConvMlp):
                layers = [m.fc1.conv, m.fc2.conv]
            else:
                continue
            for layer in layers:
                trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (and distillation head) with fresh ones of ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        heads = ["head", "head_dist"] if self.distillation else ["head"]
        for name in heads:
            head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
            if num_classes:
                trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)
            setattr(self, name, head)

    def set_distilled_training(self, enable: bool = True) -> None:
        """In training mode, return the class and distillation logits stacked, (2, B, classes), for a KD loss."""
        if enable and not self.distillation:
            raise ValueError("this model was built with distillation=False: it has no distillation head")
        self.distilled_training = enable

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay: the attention biases."""
        return {n for n, _ in self.named_parameters() if "attention_biases" in n}

    def forward_intermediates(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        """Outputs of stages ``0..stop`` (all by default) as (B, C, H, W) maps, strides 4, 8, 16, 32."""
        x = self.stem(x)
        outs, last = [], len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == last:  # tokens of the Meta3D blocks back to a map
                r = self.resolution
                outs.append(x.transpose(1, 2).reshape(-1, self.num_features, r, r))  # B, N, C -> B, C, H, W
            else:
                outs.append(x)
            if stop is not None and i >= stop:
                break
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized tokens of the last stage, (B, N, C)."""
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Token average and the classifier(s); eval output averages the class and distillation heads."""
        x = self.head_drop(x.mean(1))  # B, N, C -> B, C
        if pre_logits:
            return x
        if not self.distillation:
            return self.head(x)
        x, x_dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training:
            return torch.stack([x, x_dist])
        return (x + x_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_MLP4D = {"fc1": "fc1.conv", "norm1": "fc1.bn", "fc2": "fc2.conv", "norm2": "fc2.bn"}


def _rename_blocks(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Shared tail of both converters: Meta4D MLP convs/BNs into ``ConvBN`` names, layer scales, dropped indices."""
    conv_blocks = {k[: -len(".mlp.norm1.weight")] for k in sd if k.endswith(".mlp.norm1.weight")}
    out = {}
    for k, v in sd.items():
        if k.endswith("attention_bias_idxs"):
            continue
        m = re.match(r"^(stages\.\d+\.blocks\.\d+)\.mlp\.(fc1|norm1|fc2|norm2)\.(\w+)$", k)
        if m and m.group(1) in conv_blocks:
            k = f"{m.group(1)}.mlp.{_MLP4D[m.group(2)]}.{m.group(3)}"
        k = re.sub(r"\.ls([12])\.gamma$", r".layer_scale_\1", k)
        out[k] = v
    return out


def convert_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ``efficientformer_l*`` keys to this implementation's.

    timm names the stem ``stem.{conv,norm}{1,2}``, the embeddings ``downsample.{conv,norm}``, the Meta4D MLP
    ``mlp.{fc,norm}{1,2}`` and the layer scales ``ls{1,2}.gamma``, and stores the bias index tables.
    """
    if "stem.conv1.weight" not in state_dict or "stem.norm1.weight" not in state_dict:
        raise KeyError("not a timm EfficientFormer checkpoint (no stem.conv1 / stem.norm1 keys)")
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^stem\.conv([12])\.", r"stem.conv\1.conv.", k)
        k = re.sub(r"^stem\.norm([12])\.", r"stem.conv\1.bn.", k)
        k = re.sub(r"^(stages\.\d+\.downsample)\.norm\.", r"\1.bn.", k)
        out[k] = v
    return _rename_blocks(out)


_STEM = {"0": "stem.conv1.conv", "1": "stem.conv1.bn", "3": "stem.conv2.conv", "4": "stem.conv2.bn"}


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' release (snap-research/EfficientFormer v1) to this implementation's.

    The original keeps the stem as ``patch_embed.{0,1,3,4}``, interleaves stages and embeddings in one list
    (``network.{0,2,4,6}`` are stages, ``network.{1,3,5}.{proj,norm}`` the embeddings), names the Meta4D MLP
    ``mlp.{fc,norm}{1,2}`` and the distillation head ``dist_head``.
    """
    if "patch_embed.0.weight" not in state_dict or not any(k.startswith("network.") for k in state_dict):
        raise KeyError("not an original EfficientFormer checkpoint (no patch_embed.0 / network.* keys)")
    out = {}
    for k, v in state_dict.items():
        parts = k.split(".")
        if parts[0] == "patch_embed":
            k = f"{_STEM[parts[1]]}.{parts[2]}"
        elif parts[0] == "network":
            idx = int(parts[1])
            if idx % 2 == 0:
                k = ".".join(["stages", str(idx // 2), "blocks", *parts[2:]])
            else:
                k = ".".join(["stages", str(idx // 2 + 1), "downsample", {"proj": "conv", "norm": "bn"}[parts[2]]])
                k += "." + parts[3]
        elif parts[0] == "dist_head":
            k = "head_dist." + parts[1]
        out[k] = v
    return _rename_blocks(out)


_URL = "https://huggingface.co/timm/efficientformer_{}.snap_dist_in1k/resolve/main/model.safetensors"
_LIC = "Apache-2.0"
_SRC = "snap-research/EfficientFormer (authors, distilled, ImageNet-1k), re-hosted by timm; top-1 measured by timm"
_WEIGHTS = {
    f"efficientformer_{v}": WeightSpec(_URL.format(v), "timm", license=_LIC, source=_SRC, top1=t)
    for v, t in (("l1", 80.502), ("l3", 82.562), ("l7", 83.396))
}
_RSRC = "paper / snap-research README (top-1, iPhone 12 CoreML latency); params and GMACs from mmpretrain"
_REPORTED = {
    "efficientformer_l1": Reported(12.29, 1.30, 79.2, 224, "iPhone 12 (CoreML) 1.6 ms", _RSRC),
    "efficientformer_l3": Reported(31.41, 3.93, 82.4, 224, "iPhone 12 (CoreML) 3.0 ms", _RSRC),
    "efficientformer_l7": Reported(82.23, 10.16, 83.3, 224, "iPhone 12 (CoreML) 7.0 ms", _RSRC),
}

FAMILY = Family(
    name="efficientformer",
    paper=Paper(
        title="EfficientFormer: Vision Transformers at MobileNet Speed",
        arxiv="2206.01191",
        venue="NeurIPS 2022",
        repo="https://github.com/snap-research/EfficientFormer",
        code_license="Snap Inc. (MIT-style) + Apache-2.0 (LeViT parts)",
        weights_license=_LIC,
    ),
    model_cls=EfficientFormer,
    default_cfg=PretrainedCfg(crop_pct=0.95, first_conv="stem.conv1.conv", classifier=("head", "head_dist")),
    converters={"original": convert_original, "timm": convert_timm},
    weights=_WEIGHTS,
    reported=_REPORTED,
    blocks=("ConvBN", "relative_offset_index"),
    remaining_norms=("LayerNorm",),
    timm_names={f"efficientformer_{v}": f"efficientformer_{v}" for v in ("l1", "l3", "l7")},
)


@FAMILY.register
def efficientformer_l1(**kwargs) -> EfficientFormer:
    """EfficientFormer-L1: 12.29 M params, 1.30 GMACs (one Meta3D block)."""
    return EfficientFormer(EfficientFormerCfg((3, 2, 6, 4), (48, 96, 224, 448), num_vit=1), **kwargs)


@FAMILY.register
def efficientformer_l3(**kwargs) -> EfficientFormer:
    """EfficientFormer-L3: 31.41 M params, 3.93 GMACs (four Meta3D blocks)."""
    return EfficientFormer(EfficientFormerCfg((4, 4, 12, 6), (64, 128, 320, 512), num_vit=4), **kwargs)


@FAMILY.register
def efficientformer_l7(**kwargs) -> EfficientFormer:
    """EfficientFormer-L7: 82.23 M params, 10.16 GMACs (eight Meta3D blocks: the whole last stage)."""
    return EfficientFormer(EfficientFormerCfg((6, 6, 18, 8), (96, 192, 384, 768), num_vit=8), **kwargs)
