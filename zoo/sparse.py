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
**Deploy kernel.** A deployed sparse 1x1 conv (and sparse classifier) runs either the dense op (zeros included) or a
CSR sparse x dense product over the NCHW activation viewed as `C×HW`, whichever is faster *on the machine that runs
it*: both are timed on the layer's real input on first use and the choice is cached per CPU model, ISA flags,
thread count, kernel build and layer signature in `$ZOO_CACHE/sparse-plans/` (`blocks/sparse_plan.py`); sparse runs
only where it wins clearly, so a deployed sparse model is never slower than its dense twin by more than timing
noise. The product is the native kernel `blocks/csrc/spmm.c` (each non-zero weight broadcast against a strip of 8
vector registers: 64 pixels on AVX2, 128 on AVX-512, 32 on NEON/SSE), compiled on first use, or torch's MKL CSR
product without a compiler. Parity of sparse and dense paths: <= 1e-5 of the output's magnitude; every x86 build
(`x86-64`, `x86-64-v2`, `haswell`, `x86-64-v4`) and the NEON build (under qemu-aarch64) are checked exact.

**Measured** (2026-12-01, Intel Xeon Sapphire Rapids (family 6 model 167, KVM, 2 cores, AVX-512), torch 2.14.1,
batch 1, 1 thread, machine shared with other jobs: load average 10-16 on 2 cores, so absolute times are inflated and
2-thread timings were dominated by thread descheduling and are not given). "AVX2" = the kernel built with
`-march=haswell` against torch's dense kernels restricted to AVX2 (`--march haswell --avx2-dense`): an *emulation*
of an AVX2-only CPU on this AVX-512 one, not an AVX2 machine. Ratio = dense / sparse latency (> 1: sparse faster).

1x1 convs of MobileNetV1-1.0 at 90%, the kernel alone (`python benchmarks/sparse_kernel.py --threads 1`, all 9
layer shapes, load 10-13): the first kernel (64-float vectors on every ISA) ran at 0.14x of dense both as an AVX2
build (0.09-0.47x per layer, 0.6-3.9 GFLOP/s) and on AVX-512 (0.08-0.47x); the current one runs at 3.94x as an AVX2
build (2.65-5.74x per layer, 15-48 GFLOP/s) and 2.92x on AVX-512 (2.29-4.23x, 17-57 GFLOP/s). Strip shapes tried
(floats per vector . vectors . chains, sum over the layers): AVX2 8.4.2 3.52x, 8.4.1 3.72x, 8.2.2 3.17x, 8.6.2 3.96x,
8.8.1 3.94x; AVX-512 16.4.2 2.68x, 16.4.1 2.79x, 16.2.2 2.59x, 16.6.2 2.79x, 16.8.1 2.92x. Per layer, first
against current kernel (`--sources first=<old spmm.c>,current=blocks/csrc/spmm.c --plot`, load 14-15):
`benchmarks/results/sparse_kernel_avx2_emulated.png`, `benchmarks/results/sparse_kernel_avx512.png`.

Deployed models (`python benchmarks/sparse.py --threads 1 --models M --sparsities S`, decisions measured in the run):

| model, sparsity | build | end to end | 1x1 convs (deployed layers) | per 1x1 conv | load |
|---|---|---|---|---|---|
| MobileNetV1 1.0, 90% | AVX2 (emulated) | 1.63 | 2.84 | 1.94-3.50 (2.56-3.50 at 56-14 px), all sparse | 11.3-12.0 |
| MobileNetV1 1.0, 90% | AVX-512 | 1.47 | 1.99 | 1.69-2.47, all sparse | 10.9-11.2 |
| MobileNetV1 1.0, 90%, first kernel + fitted cost model | AVX-512 | 0.48 | 0.08 | 0.04-0.33 | 12.6-12.9 |
| MobileNetV2 1.0, 85% | AVX2 (emulated) | 1.20 | 1.40 | 0.96-2.32, all 34 sparse | 11.3-11.8 |
| MobileNetV2 1.0, 85% | AVX-512 | 1.17 | 1.28 | 1.02-1.70, all 34 sparse | 14.0-14.7 |
| EfficientNet-B0, 80% | AVX2 (emulated) | 1.10 | 1.29 | 0.88-1.69, all 32 sparse | 15.0 |
| EfficientNet-B0, 80% | AVX-512 | 1.07 | 1.93 | 0.76-6.32, 26 of 32 sparse | 14.6-15.0 |

Per-layer ratios under 1 on layers that run sparse are timing noise of this loaded machine (the decision is taken on
the fastest of paired samples, the table on medians); the 6 EfficientNet-B0 layers that run dense on AVX-512 are
its 7-14 px projection convs. On this loaded machine the 1x1 convs were 4-17% of the dense model's eager time
(depthwise convs and per-op overhead take the rest), which bounds the end-to-end gain; the earlier quiet-machine
table of this card (AMD EPYC, 2 threads, first kernel: MobileNetV1 90% 1.82x end to end, 1x1 convs 2.94x) is not
reproduced here. XNNPACK's own sparse path (phones) and the exports' file sizes: README, "Sparse models and
pruning".""",
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
