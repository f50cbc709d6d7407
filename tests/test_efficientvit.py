"""EfficientViT against its paper, the authors' code (recorded outputs) and timm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import rel_err

import blocks
import zoo
from weights import load_checkpoint, load_into
from zoo.efficientvit import EfficientViT, EfficientViTCfg, convert_original

DATA = Path(__file__).parent / "data"
# Parameter counts of the original implementation (1000 classes) and the paper's MACs.
PARAMS = {0: 2_349_436, 1: 2_980_560, 2: 4_187_554, 3: 6_900_722, 4: 8_804_228, 5: 12_473_772}
PAPER_MACS = {0: 79e6, 1: 167e6, 2: 201e6, 3: 263e6, 4: 299e6, 5: 522e6}


@pytest.mark.parametrize("i", range(6))
def test_params_and_macs_match_paper(i: int) -> None:
    model = zoo.create_model(f"efficientvit_m{i}")
    assert zoo.count_params(model) == PARAMS[i]
    macs = zoo.count_macs(model, (3, 224, 224))
    assert abs(macs - PAPER_MACS[i]) / PAPER_MACS[i] < 0.02


@pytest.mark.parametrize("i", range(6))
def test_timm_state_dict_reproduces_timm_logits(i: int) -> None:
    timm = pytest.importorskip("timm")
    ref = timm.create_model(f"efficientvit_m{i}")
    for m in ref.modules():
        if hasattr(m, "attention_biases"):
            torch.nn.init.normal_(m.attention_biases, std=0.5)
    blocks.make_bn_realistic(ref, (3, 224, 224))
    ours = zoo.create_model(f"efficientvit_m{i}")
    layout = load_into(ours, ref.state_dict(), zoo.get_family("efficientvit").converters)
    assert layout in ("zoo", "timm")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(ours.eval()(x), ref(x)) <= 1e-4


def test_original_checkpoint_reproduces_original_outputs() -> None:
    """A checkpoint written by the authors' code (tiny config, 128 px, windows with padding) and its outputs."""
    blob = torch.load(DATA / "efficientvit_tiny_original.pth", weights_only=True)
    c = blob["cfg"]
    cfg = EfficientViTCfg(
        tuple(c["embed_dim"]),
        tuple(c["depth"]),
        tuple(c["num_heads"]),
        tuple(c["kernels"]),
        tuple(c["key_dim"]),
        tuple(c["window_size"]),
    )
    model = EfficientViT(cfg, num_classes=c["num_classes"], img_size=c["img_size"])
    assert load_into(model, blob["model"], zoo.get_family("efficientvit").converters) == "original"
    with torch.no_grad():
        assert rel_err(model.eval()(blob["x"]), blob["y"]) <= 1e-5
        assert rel_err(blocks.reparameterize_model(model)(blob["x"]), blob["y"]) <= 1e-4


@pytest.mark.parametrize("i", range(6))
def test_original_release_layout_converts_completely(i: int, tmp_path) -> None:
    """Every key of the authors' M0-M5 (names and shapes recorded from their code) maps onto ours, strictly."""
    keys = json.loads((DATA / "efficientvit_original_keys.json").read_text())[f"efficientvit_m{i}"]
    sd = {k: torch.randn(shape) if shape else torch.tensor(0) for k, shape in keys.items()}
    # some releases store the 1x1 SE weights as matrices
    for k in [k for k in sd if k.endswith("se.fc1.weight")]:
        sd[k] = sd[k][:, :, 0, 0]
    path = tmp_path / "orig.pth"
    torch.save({"model": sd}, path)
    model = zoo.create_model(f"efficientvit_m{i}", pretrained=path)
    got = model.state_dict()
    assert torch.equal(got["patch_embed.conv3.conv.weight"], sd["patch_embed.4.c.weight"])
    assert torch.equal(got["stages.1.downsample.patchmerge.conv2.conv.weight"], sd["blocks2.1.conv2.c.weight"])
    assert torch.equal(
        got["stages.2.blocks.0.mixer.m.attn.attention_biases"], sd["blocks3.3.mixer.m.attn.attention_biases"]
    )
    assert torch.equal(got["head.linear.weight"], sd["head.l.weight"])


def test_convert_original_is_pure() -> None:
    sd = load_checkpoint(DATA / "efficientvit_tiny_original.pth")
    before = {k: v.clone() for k, v in sd.items()}
    convert_original(sd)
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)


def test_distillation_head_averages_in_eval() -> None:
    model = zoo.create_model("efficientvit_m0", distillation=True, num_classes=5)
    blocks.make_bn_realistic(model, (3, 224, 224))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        expect = (model.head(pooled) + model.head_dist(pooled)) / 2
        assert rel_err(model(x), expect) < 1e-6
        model.train()
        assert model(x).shape == (2, 2, 5)


def test_model_info_reports_paper_and_measured() -> None:
    info = zoo.model_info("efficientvit_m4")
    assert info["params"] == PARAMS[4]
    assert info["reported"]["top1"] == 74.3 and info["paper"]["arxiv"] == "2305.07027"
    assert info["pretrained_cfg"]["input_size"] == (3, 224, 224)
    assert info["weights"]["url"].endswith("efficientvit_m4.pth")


def test_deployed_runs_channels_last_with_nchw_semantics() -> None:
    model = blocks.make_bn_realistic(zoo.create_model("efficientvit_m0", img_size=64), (3, 64, 64))
    deployed = blocks.reparameterize_model(model)
    conv = deployed.patch_embed.conv1.conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(deployed(x), model.eval()(x)) <= 1e-4  # NCHW input, the same logits
        feats = deployed.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 4, 4), (2, 128, 2, 2), (2, 192, 1, 1)]
    exported = torch.export.export(deployed, (x,))
    assert not [n for n in exported.graph.nodes if "clone" in str(n.target)], "the layout change is not in graphs"
    assert blocks.reparameterize_model(deployed, inplace=True) is deployed  # still idempotent


@pytest.mark.parametrize("resolution", [7, 10, 14])  # one window; padded windows; exact windows
def test_window_attention_same_in_both_layouts(resolution: int) -> None:
    from blocks import LocalWindowAttention

    torch.manual_seed(0)
    attn = LocalWindowAttention(64, 16, 4, 1.0, resolution, 7, (5, 5, 5, 5)).eval()
    blocks.make_bn_realistic(attn, (64, resolution, resolution))
    with torch.no_grad():
        torch.nn.init.normal_(attn.attn.attention_biases)
    x = torch.randn(2, 64, resolution, resolution)
    xcl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = attn(x)
        assert rel_err(attn(xcl), ref) <= 1e-5  # the token-major path on channels-last maps
        deployed = blocks.reparameterize_model(attn)
        assert rel_err(deployed(xcl), ref) <= 1e-5 and rel_err(deployed(x), ref) <= 1e-5
