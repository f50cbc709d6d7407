"""EfficientFormer against its paper, the authors' code (recorded outputs) and timm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import rel_err
from torch.utils.flop_counter import FlopCounterMode

import blocks
import zoo
from weights import compare_state_dicts, detect_layout, load_into
from zoo.efficientformer import EfficientFormer, EfficientFormerCfg, convert_original

DATA = Path(__file__).parent / "data"
VARIANTS = ("l1", "l3", "l7")
# Parameter counts of the original implementation (1000 classes, both heads) and the paper's GMACs.
PARAMS = {"l1": 12_289_928, "l3": 31_406_000, "l7": 82_229_328}
PAPER_GMACS = {"l1": 1.30, "l3": 3.93, "l7": 10.16}


def _meta_model(name: str) -> torch.nn.Module:
    """The model on the meta device: shapes and counts without allocating or initialising weights."""
    with torch.device("meta"):
        return zoo.create_model(name).eval()


@pytest.mark.parametrize("v", VARIANTS)
def test_params_and_macs_match_paper(v: str) -> None:
    model = _meta_model(f"efficientformer_{v}")
    assert zoo.count_params(model) == PARAMS[v]
    counter = FlopCounterMode(display=False)
    with torch.device("meta"), counter, torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    macs = counter.get_total_flops() / 2e9
    assert abs(macs - PAPER_GMACS[v]) / PAPER_GMACS[v] < 0.01


@pytest.mark.parametrize("v", VARIANTS)
def test_timm_state_dict_reproduces_timm_logits(v: str) -> None:
    timm = pytest.importorskip("timm")
    ref = timm.create_model(f"efficientformer_{v}")
    gen = torch.Generator().manual_seed(0)
    for name, p in ref.named_parameters():  # fresh models have zero biases and 1e-5 layer scales: hide nothing
        if "attention_biases" in name or name.endswith(".gamma"):
            p.data = torch.rand(p.shape, generator=gen) * 0.5 + 0.1
    # timm fixes the attention grid at 7x7: 193 px is the smallest input that gives it (and ours, built for 193)
    blocks.make_bn_realistic(ref, (3, 193, 193), batches=1, batch_size=2)
    ours = zoo.create_model(f"efficientformer_{v}", img_size=193)
    assert load_into(ours, ref.state_dict(), zoo.get_family("efficientformer").converters) == "timm"
    x = torch.randn(2, 3, 193, 193)
    with torch.no_grad():
        assert rel_err(ours.eval()(x), ref(x)) <= 1e-4


@pytest.mark.parametrize("key", ["mid", "all"])
def test_original_checkpoint_reproduces_original_outputs(key: str) -> None:
    """Checkpoints written by the authors' code (Flat between blocks, Flat first) and their eval outputs."""
    blob = torch.load(DATA / "efficientformer_tiny_original.pth", weights_only=True)
    rec, c = blob[key], blob[key]["cfg"]
    cfg = EfficientFormerCfg(tuple(c["depths"]), tuple(c["embed_dims"]), c["num_vit"])
    model = EfficientFormer(cfg, num_classes=c["num_classes"], img_size=c["img_size"])
    assert load_into(model, rec["model"], zoo.get_family("efficientformer").converters) == "original"
    with torch.no_grad():
        assert rel_err(model.eval()(blob["x"]), rec["y"]) <= 1e-5
        deployed = blocks.reparameterize_model(model)
        assert rel_err(deployed(blob["x"]), rec["y"]) <= 1e-4
    assert blocks.remaining_norms(deployed) == {"LayerNorm": 2 * cfg.num_vit + 1}


@pytest.mark.parametrize("v", VARIANTS)
def test_original_release_layout_converts_completely(v: str) -> None:
    """Every key of the authors' L1/L3/L7 (names and shapes recorded from their code) maps onto ours."""
    keys = json.loads((DATA / "efficientformer_original_keys.json").read_text())[f"efficientformer_{v}"]
    with torch.device("meta"):
        sd = {k: torch.empty(shape) for k, shape in keys.items()}
    target = _meta_model(f"efficientformer_{v}").state_dict()
    layout, converted = detect_layout(sd, target, zoo.get_family("efficientformer").converters)
    assert layout == "original"
    assert compare_state_dicts(converted, target) == ([], [], [])
    assert "head_dist.weight" in converted and "stages.3.downsample.bn.running_var" in converted


def test_convert_original_is_pure() -> None:
    sd = torch.load(DATA / "efficientformer_tiny_original.pth", weights_only=True)["mid"]["model"]
    before = {k: v.clone() for k, v in sd.items()}
    convert_original(sd)
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)


def test_distillation_head() -> None:
    model = zoo.create_model("efficientformer_l1", num_classes=5, img_size=64)
    blocks.make_bn_realistic(model, (3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        expect = (model.head(pooled) + model.head_dist(pooled)) / 2
        assert rel_err(model(x), expect) < 1e-6
        model.train()
        assert model(x).shape == (2, 5)  # averaged unless distilled training is asked for
        model.set_distilled_training(True)
        out = model(x)
        assert out.shape == (2, 2, 5)
        model.eval()
        assert model(x).shape == (2, 5)
    plain = zoo.create_model("efficientformer_l1", distillation=False, img_size=64)
    full = zoo.count_params(zoo.create_model("efficientformer_l1", img_size=64))
    assert not hasattr(plain, "head_dist") and zoo.count_params(plain) == full - 448 * 1000 - 1000
    with pytest.raises(ValueError, match="distillation"):
        plain.set_distilled_training(True)


def test_geometry_follows_img_size() -> None:
    model = zoo.create_model("efficientformer_l1", img_size=128).eval()
    attn = model.stages[3].blocks[-1].token_mixer
    assert model.resolution == 4 and attn.attention_biases.shape == (8, 16)
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 128, 128))
    assert [tuple(m.shape[1:]) for m in maps] == [(48, 32, 32), (96, 16, 16), (224, 8, 8), (448, 4, 4)]
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 224, 224))
    with pytest.raises(ValueError, match="img_size"):
        zoo.create_model("efficientformer_l1", img_size=(224, 224))


def test_deploy_folds_layer_scales_and_biases() -> None:
    model = zoo.create_model("efficientformer_l1", img_size=64)
    blocks.make_bn_realistic(model, (3, 64, 64))
    deployed = blocks.reparameterize_model(model)
    names = {n for n, _ in deployed.named_parameters()}
    assert not any("layer_scale_2" in n or "attention_biases" in n for n in names)
    assert not any(n.endswith("layer_scale_1") and ".3.blocks.4." in n for n in names)  # Meta3D: both folded
    attn = deployed.stages[3].blocks[-1].token_mixer
    assert attn.attention_bias.shape == (8, 4, 4)
    assert blocks.remaining_norms(deployed) == {"LayerNorm": 3}
