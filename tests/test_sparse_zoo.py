"""The sparse families: same architectures as the dense ones, the paper's sparse layers, dense checkpoints load."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import rel_err
from torch import nn

import blocks
import zoo
from blocks import SparseConv2d, SparseLinear
from blocks.sparse import expected_pruned, sparse_layers

# variant -> (dense variant, sparsity, (block pattern, first block) or None, sparse classifier)
PAPER = {
    "sparse_mobilenetv1_075_s90": ("mobilenetv1_075", 0.90, ("block4", 12), False),
    "sparse_mobilenetv1_100_s90": ("mobilenetv1_100", 0.90, ("block4", 12), False),
    "sparse_mobilenetv1_140_s90": ("mobilenetv1_140", 0.90, ("block4", 12), False),
    "sparse_mobilenetv2_100_s85": ("mobilenetv2_100", 0.85, None, False),
    "sparse_mobilenetv2_140_s85": ("mobilenetv2_140", 0.85, ("block2", 11), False),
    "sparse_efficientnet_b0_s80": ("efficientnet_b0", 0.80, None, True),
    "sparse_efficientnet_b1_s85": ("efficientnet_b1", 0.85, None, True),
}


def test_every_sparse_variant_is_listed() -> None:
    assert set(zoo.list_models("sparse_*")) == set(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_sparse_variant_matches_dense_architecture_and_paper_layers(name: str) -> None:
    dense_name, sparsity, block, sparse_fc = PAPER[name]
    model, dense = zoo.create_model(name), zoo.create_model(dense_name)
    shapes = {k: v.shape for k, v in model.state_dict().items() if not k.endswith(".mask")}
    assert shapes == {k: v.shape for k, v in dense.state_dict().items()}
    flat = [b for stage in model.blocks for b in stage]
    first_block = block[1] if block else len(flat)
    for i, b in enumerate(flat):
        for m in b.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m not in set(b.se.modules()):
                assert isinstance(m, SparseConv2d)
                pattern = block[0] if i >= first_block else None
                assert m.pattern == pattern, (i, m.pattern)
                assert int((~m.mask).sum()) == expected_pruned(m, sparsity, pattern or "unstructured")
            elif isinstance(m, nn.Conv2d):
                assert not isinstance(m, SparseConv2d)  # depthwise and SE convs stay dense
    assert not isinstance(model.stem.conv, SparseConv2d)
    assert isinstance(model.classifier, SparseLinear) == sparse_fc
    assert blocks.model_sparsity(model) == pytest.approx(sparsity, abs=2e-3)


def _timm_checkpoint(tmp_path, timm_name: str) -> tuple[str, nn.Module]:
    timm = pytest.importorskip("timm")
    ref = timm.create_model(timm_name).eval()
    path = tmp_path / f"{timm_name}.pth"
    torch.save(ref.state_dict(), path)
    return str(path), ref


@pytest.mark.parametrize(
    "name,timm_name",
    [("sparse_mobilenetv1_100_s90", "mobilenetv1_100"), ("sparse_efficientnet_b0_s80", "efficientnet_b0")],
)
def test_dense_timm_checkpoint_loads_dense_then_prunes(tmp_path, name: str, timm_name: str) -> None:
    path, ref = _timm_checkpoint(tmp_path, timm_name)
    model = zoo.create_model(name, pretrained=path).eval()
    assert blocks.model_sparsity(model) == 0.0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) <= 1e-4
    report = blocks.prune_magnitude(model, PAPER[name][1])
    assert len(report) == len(list(sparse_layers(model)))
    assert blocks.model_sparsity(model) == pytest.approx(PAPER[name][1], abs=2e-3)


def test_deployed_sparse_model_uses_both_kernels_and_matches_dense(monkeypatch, tmp_path) -> None:
    model = zoo.create_model("sparse_mobilenetv1_100_s90")
    blocks.make_bn_realistic(model, (3, 96, 96))
    deployed = blocks.reparameterize_model(model)
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    blocks.sparse_plan.reset()
    verdicts = iter([True, False] * 20)  # injected timings: sparse wins on every other layer shape
    monkeypatch.setattr(
        blocks.sparse_plan, "measure", lambda d, s: ([2.0] * 3, [1.0] * 3) if next(verdicts) else ([1.0] * 3, [2.0] * 3)
    )
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        out = deployed(x)
        monkeypatch.setenv("ZOO_SPARSE_PLAN", "dense")
        dense = copy.deepcopy(deployed)(x)  # a copy: the layers remember their plans
        ref = model(x)
    chosen = blocks.sparse.kernel_decisions(deployed)
    assert len(chosen) == 13 and {d["kernel"] for d in chosen.values()} == {"sparse", "dense"}
    assert rel_err(out, dense) <= 1e-5
    assert rel_err(out, ref) <= 1e-4
    assert blocks.sparsity_report(deployed) == blocks.sparsity_report(model)
    blocks.sparse_plan.reset()
