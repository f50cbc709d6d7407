"""Fast Sparse ConvNets: MobileNetV1/V2 and EfficientNet with sparse 1x1 convolutions.

Paper: "Fast Sparse ConvNets", Erich Elsen, Marat Dukhan, Trevor Gale, Karen Simonyan, CVPR 2020, arXiv 1911.09723.
Origin: google-research/google-research ``fastconvnets`` (Apache-2.0): TF-Lite models only, run with XNNPACK's
sparse kernels. The architectures are the dense families' (``zoo/mobilenetv1.py``, ``zoo/mobilenetv2.py``,
``zoo/efficientnet.py``, timm-compatible) built with ``pw_conv_layer=SparseConv2d`` (and for EfficientNets
``classifier_layer=SparseLinear``); see ``blocks/sparse.py`` for the layers, the pruners and the deploy kernel.

Which layers are sparse (the authors' ``fastconvnets/README.md`` and model file names):

* MobileNetV1 (``mbv1_*_90_12b4``): every 1x1 conv, unstructured, except the last depthwise-separable block (12,
  counting from 0), whose 1x1 conv has blocks of 4 output channels; stem, depthwise convs and classifier dense;
* MobileNetV2 1.4 (``mbv2_140_85_11-16b2``): every 1x1 conv (expansion, projection, head), unstructured, with blocks
  of 2 output channels in inverted-residual blocks 11-16; stem, depthwise convs and classifier dense;
* MobileNetV2 1.0 (``mbv2ca_100_85_none``): unstructured throughout;
* EfficientNet-B0/B1 (``enb0_80_none``, ``enb1_85_none``): every 1x1 conv and the classifier, unstructured.

Models are created with the target sparsity applied: random masks (uniform over the units of each layer, every
sparse layer at the same sparsity), so that the deploy path and the benchmark are real before any training. A
dense checkpoint (timm's, or this zoo's dense family) loads with all-ones (dense) masks; prune it with
``blocks.prune_magnitude`` (one shot) or ``blocks.make_pruner`` (gradual, the paper's Zhu & Gupta recipe).

Deviations from the original:
* no released weights: the authors published TF-Lite files only (and no training code);
* ``sparse_mobilenetv2_100_s85`` is plain MobileNetV2 1.0; the paper's 1.0 model is a "cache-aware" variant whose
  changed layer widths are not given in the release;
* the squeeze-excitation 1x1 convs of the EfficientNets stay dense (they act on a 1x1 map, ~0.5% of the MACs;
  whether the authors pruned them is not published), and the MobileNetV2/EfficientNet head conv is sparse;
* block sparsity is applied to the same layers, but its orientation (consecutive output channels at one input channel)
  follows XNNPACK's sparse kernels, which is what the paper's "block size" means for its inference engine;
* the pruning schedule (begin/end step, frequency) is not published; ``blocks.make_pruner`` takes it as arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from blocks import SparseConv2d, SparseLinear
from blocks.sparse import prune_random

from .efficientnet import efficientnet_cfg
from .irnet import InvertedResidualNet, IRNetCfg, convert_timm_layout
from .mobilenetv1 import mobilenetv1_cfg
from .mobilenetv2 import mobilenetv2_cfg
from .registry import Family, Paper, PretrainedCfg, Reported

__all__ = ["sparse_irnet", "convert_dense", "convert_dense_sparse_fc"]


def sparse_irnet(
    cfg: IRNetCfg,
    sparsity: float,
    sparse_classifier: bool = False,
    block_pattern: tuple[str, int] | None = None,
    **kwargs,
) -> InvertedResidualNet:
    """An inverted-residual network with sparse 1x1 convs (and classifier), random masks at ``sparsity``.

    Args:
        cfg: the dense architecture.
        sparsity: per-layer sparsity of the random masks.
        sparse_classifier: make the classifier a :class:`blocks.SparseLinear` too (the EfficientNets).
        block_pattern: ``(pattern, first)``: the 1x1 convs of blocks ``first`` and later (counted over all stages
            from 0) get the structured ``pattern`` (e.g. ``("block4", 12)``).
        **kwargs: the model's constructor arguments (``num_classes``, ``drop_rate``, ...).
    """
    linear = SparseLinear if sparse_classifier else nn.Linear
    model = InvertedResidualNet(cfg, pw_conv_layer=SparseConv2d, classifier_layer=linear, **kwargs)
    if block_pattern is not None:
        pattern, first = block_pattern
        flat = [block for stage in model.blocks for block in stage]
        for block in flat[first:]:
            for m in block.modules():
                if isinstance(m, SparseConv2d):
                    m.pattern = pattern
    prune_random(model, sparsity)
    return model


def _dense_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our dense families' layout from timm's or our own (timm's is recognised by its ``conv_stem``)."""
    return convert_timm_layout(state_dict) if "conv_stem.weight" in state_dict else dict(state_dict)


def _add_masks(state_dict: dict[str, torch.Tensor], sparse_fc: bool) -> dict[str, torch.Tensor]:
    out = _dense_keys(state_dict)
    if any(k.endswith(".mask") for k in out):
        raise KeyError("already has masks")
    for key, w in list(out.items()):
        is_pw = key.endswith(".conv.weight") and w.dim() == 4 and w.shape[2:] == (1, 1)  # not stem, dw or SE convs
        if is_pw or (sparse_fc and key == "classifier.weight"):
            out[key[: -len("weight")] + "mask"] = torch.ones_like(w, dtype=torch.bool)
    return out


def convert_dense(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A dense MobileNet checkpoint (timm's or ours) with all-ones masks for the sparse 1x1 convs. Pure."""
    return _add_masks(state_dict, sparse_fc=False)


def convert_dense_sparse_fc(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """As :func:`convert_dense`, with a classifier mask too (the sparse EfficientNets). Pure."""
    return _add_masks(state_dict, sparse_fc=True)


_SRC = "Fast Sparse ConvNets, fastconvnets/README.md (TF-Lite, SD835 single core, XNNPACK)"
_REPORTED = {
    "sparse_mobilenetv1_075_s90": Reported(top1=64.4, latency="SD835 21 ms", source=_SRC),
    "sparse_mobilenetv1_100_s90": Reported(top1=68.4, latency="SD835 31 ms", source=_SRC),
    "sparse_mobilenetv1_140_s90": Reported(top1=72.0, latency="SD835 58 ms", source=_SRC),
    "sparse_mobilenetv2_100_s85": Reported(top1=69.7, latency="SD835 33 ms (cache-aware MobileNetV2)", source=_SRC),
    "sparse_mobilenetv2_140_s85": Reported(top1=72.0, latency="SD835 54 ms", source=_SRC),
    "sparse_efficientnet_b0_s80": Reported(top1=75.1, latency="SD835 80 ms", source=_SRC),
    "sparse_efficientnet_b1_s85": Reported(top1=76.7, resolution=240, latency="SD835 110 ms", source=_SRC),
}

FAMILY = Family(
    name="sparse",
    paper=Paper(
        title="Fast Sparse ConvNets",
        arxiv="1911.09723",
        venue="CVPR 2020",
        repo="https://github.com/google-research/google-research/tree/master/fastconvnets",
        code_license="Apache-2.0",
        weights_license="Apache-2.0 (TF-Lite files only)",
    ),
    model_cls=InvertedResidualNet,
    default_cfg=PretrainedCfg(first_conv="stem.conv", classifier=("classifier",)),
    converters={"dense": convert_dense, "dense_sparse_fc": convert_dense_sparse_fc},
    reported=_REPORTED,
    blocks=("ConvBN", "DepthwiseSeparable", "InvertedResidual", "SqueezeExcite", "SparseConv2d", "SparseLinear"),
    remaining_norms=(),
    card_notes="""
**Deploy kernel and speed on this CPU** (`python benchmarks/sparse.py`: batch 1, 2 threads, deployed models timed in
alternation; ratio = dense latency / sparse latency, > 1 means the sparse model is faster; random masks in the paper's
structure at each sparsity; AMD EPYC, 2 cores, torch 2.14, 2026-11-29). A deployed sparse 1x1 conv runs either the
dense convolution (zeros included) or a CSR sparse x dense product over the NCHW activation viewed as `C×HW`, chosen
per layer by a cost model fitted with `benchmarks/sparse.py --calibrate` (over 335 layer shapes and densities its
choice matches the faster kernel on 91% and costs 2.3% more than the best choices). The product is the native kernel
`blocks/csrc/spmm.c` (each non-zero weight broadcast against 64-pixel strips in vector registers, as XNNPACK's sparse
kernels do), compiled with the system C compiler on first use, or torch's MKL CSR product without a compiler
(`ZOO_SPARSE_KERNEL=mkl`). Parity of sparse and dense paths: <= 1e-5 of the output's magnitude.

| dense model (deployed) | dense ms | 70% | 80% | 90% | 90% against onnxruntime's dense model | 1x1 convs only, 90% |
|---|---|---|---|---|---|---|
| MobileNetV1 1.0 | 7.01 | 1.18 | 1.47 | 1.82 | 1.46 | 2.94 |
| MobileNetV2 1.0 | 8.85 | 1.39 | 1.55 | 1.68 | 0.89 | 3.35 |
| EfficientNet-B0 | 11.30 | 1.33 | 1.48 | 1.60 | 1.04 | 3.33 |

(`--min-seconds 5`.) MobileNetV1 at 90% over repeated runs: 1.82 and 1.86 in this full table, 1.54-1.69 (six runs)
with `--models mobilenetv1_100 --sparsities 0.9`, which times only the two models in alternation.

With torch's MKL product instead (`ZOO_SPARSE_KERNEL=mkl`), MobileNetV1 at 90% was 1.2-1.3x end to end (1x1 convs
1.7-1.9x): MKL runs a CSR product at about a fifth of oneDNN's dense rate per multiply-add. The 1x1 convolutions
are ~50% of eager PyTorch's dense time at batch 1 (depthwise convs, stem and per-op overhead weigh more than in
XNNPACK on a phone), which bounds the end-to-end gain below the 1x1 ratio.""",
)


@FAMILY.register
def sparse_mobilenetv1_075_s90(**kwargs) -> InvertedResidualNet:
    """MobileNetV1 0.75, 90% sparse 1x1 convs, block 4 in the last block."""
    return sparse_irnet(mobilenetv1_cfg(0.75), 0.90, block_pattern=("block4", 12), **kwargs)


@FAMILY.register
def sparse_mobilenetv1_100_s90(**kwargs) -> InvertedResidualNet:
    """MobileNetV1 1.0, 90% sparse 1x1 convs, block 4 in the last block."""
    return sparse_irnet(mobilenetv1_cfg(1.0), 0.90, block_pattern=("block4", 12), **kwargs)


@FAMILY.register
def sparse_mobilenetv1_140_s90(**kwargs) -> InvertedResidualNet:
    """MobileNetV1 1.4, 90% sparse 1x1 convs, block 4 in the last block."""
    return sparse_irnet(mobilenetv1_cfg(1.4), 0.90, block_pattern=("block4", 12), **kwargs)


@FAMILY.register
def sparse_mobilenetv2_100_s85(**kwargs) -> InvertedResidualNet:
    """MobileNetV2 1.0, 85% sparse 1x1 convs, unstructured."""
    return sparse_irnet(mobilenetv2_cfg(1.0), 0.85, **kwargs)


@FAMILY.register
def sparse_mobilenetv2_140_s85(**kwargs) -> InvertedResidualNet:
    """MobileNetV2 1.4, 85% sparse 1x1 convs, block 2 from inverted-residual block 11."""
    return sparse_irnet(mobilenetv2_cfg(1.4), 0.85, block_pattern=("block2", 11), **kwargs)


@FAMILY.register
def sparse_efficientnet_b0_s80(**kwargs) -> InvertedResidualNet:
    """EfficientNet-B0, 80% sparse 1x1 convs and classifier, unstructured."""
    return sparse_irnet(efficientnet_cfg(1.0, 1.0), 0.80, sparse_classifier=True, **kwargs)


@FAMILY.register(input_size=(3, 240, 240), crop_pct=0.9)
def sparse_efficientnet_b1_s85(**kwargs) -> InvertedResidualNet:
    """EfficientNet-B1, 85% sparse 1x1 convs and classifier, unstructured."""
    return sparse_irnet(efficientnet_cfg(1.0, 1.1), 0.85, sparse_classifier=True, **kwargs)
