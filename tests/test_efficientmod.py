"""EfficientMod against the authors' code (parameter counts, recorded outputs, checkpoint layout) and its paper."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from helpers import rel_err

import blocks
import weights
import zoo
from blocks import AttentionBlock, EfficientModBlock
from weights import OfflineError, load_checkpoint, load_into
from zoo.efficientmod import EfficientMod, EfficientModCfg, convert_original

DATA = Path(__file__).parent / "data"
NAMES = ("efficientmod_xxs", "efficientmod_xs", "efficientmod_s", "efficientmod_s_conv")
# Parameter counts of the authors' implementation (1000 classes), measured by running it; the paper's MACs.
PARAMS = dict(zip(NAMES, (4_736_264, 6_627_544, 12_897_184, 12_872_336)))
PAPER_MACS = dict(zip(NAMES, (0.557e9, 0.710e9, 1.317e9, 1.471e9)))
# the two attention products per hybrid variant at 224 px: zoo.count_macs counts them, the paper's fvcore count does not
ATTN_MACS = dict(zip(NAMES, (22_127_616, 63_155_904, 84_668_864, 0)))


@pytest.mark.parametrize("name", NAMES)
def test_params_equal_original_and_macs_match_paper(name: str) -> None:
    model = zoo.create_model(name)
    assert zoo.count_params(model) == PARAMS[name]
    macs = zoo.count_macs(model, (3, 224, 224))
    attn = sum(
        blk.attn.attention_macs((224 // 2 ** (i + 2)) ** 2)
        for i, stage in enumerate(model.stages)
        for blk in stage.blocks
        if isinstance(blk, AttentionBlock)
    )
    assert attn == ATTN_MACS[name]
    # everything but the attention products is what the paper counted
    assert abs(macs - attn - PAPER_MACS[name]) / PAPER_MACS[name] < 0.03


def _tiny_from_blob(blob: dict) -> EfficientMod:
    c = blob["cfg"]
    cfg = EfficientModCfg(
        tuple(c["embed_dim"]),
        tuple(tuple(r) for r in c["ratios"]),
        tuple(c["attn_depth"]),
        tuple(float(r) for r in c["attn_mlp_ratio"]),
    )
    return EfficientMod(cfg, num_classes=c["num_classes"])


def test_original_checkpoint_reproduces_original_outputs() -> None:
    """A checkpoint written by the authors' code (tiny hybrid config, expansions 1-4, layer scales and LayerNorms
    made non-trivial) with its input and output."""
    blob = torch.load(DATA / "efficientmod_tiny_original.pth", weights_only=True)
    model = _tiny_from_blob(blob)
    assert load_into(model, blob["model"], zoo.get_family("efficientmod").converters) == "original"
    deployed = blocks.reparameterize_model(model)
    with torch.no_grad():
        assert rel_err(model.eval()(blob["x"]), blob["y"]) <= 1e-5
        assert rel_err(deployed(blob["x"]), blob["y"]) <= 1e-5
    # what stays: stem, 3 downsamples, one per EfficientMod block (6), two per attention block (3), the final norm
    assert blocks.remaining_norms(deployed) == {"LayerNorm": 1 + 3 + 6 + 2 * 3 + 1}


@pytest.mark.parametrize("name", NAMES)
def test_original_release_layout_converts_completely(name: str) -> None:
    """Every key of the authors' four variants (names and shapes recorded from their code) maps onto ours, strictly."""
    keys = json.loads((DATA / "efficientmod_original_keys.json").read_text())[name]
    assert not any("dist" in k for k in keys), "the released models have a single classifier"
    sd = {k: torch.randn(shape) for k, shape in keys.items()}
    model = zoo.create_model(name)
    assert load_into(model, sd, zoo.get_family("efficientmod").converters) == "original"
    got = model.state_dict()
    assert torch.equal(got["stem.conv.weight"], sd["patch_embed.proj.weight"])
    assert torch.equal(got["stages.1.downsample.norm.bias"], sd["layers.0.downsample.norm.bias"])
    assert torch.equal(got["stages.3.blocks.1.value.weight"], sd["layers.3.blocks.1.mlp.fc1.weight"])
    assert torch.equal(
        got["stages.2.blocks.0.context.dwconv.weight"], sd["layers.2.blocks.0.mlp.context_layer.context_list.0.weight"]
    )
    assert torch.equal(got["stages.0.blocks.0.gamma"], sd["layers.0.blocks.0.gamma_1"])
    if name != "efficientmod_s_conv":
        last = max(int(k.split(".")[3]) for k in keys if k.startswith("layers.3.blocks."))
        for part in ("mlp.fc1.weight", "attn.qkv.weight"):  # attention blocks keep their names
            assert torch.equal(got[f"stages.3.blocks.{last}.{part}"], sd[f"layers.3.blocks.{last}.{part}"])
    assert torch.equal(got["head.weight"], sd["head.weight"])


def test_original_checkpoint_file_loads_through_create_model(tmp_path) -> None:
    """A timm-saver style file (``state_dict`` and ``state_dict_ema``) in the authors' layout, via ``pretrained=``."""
    keys = json.loads((DATA / "efficientmod_original_keys.json").read_text())["efficientmod_xxs"]
    sd = {k: torch.randn(shape) for k, shape in keys.items()}
    ema = {k: v + 1 for k, v in sd.items()}
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 299, "state_dict": sd, "state_dict_ema": ema}, path)
    model = zoo.create_model("efficientmod_xxs", pretrained=path)
    assert torch.equal(model.state_dict()["norm.weight"], sd["norm.weight"])


def test_convert_original_is_pure_and_rejects_other_layouts() -> None:
    sd = load_checkpoint(DATA / "efficientmod_tiny_original.pth")
    before = {k: v.clone() for k, v in sd.items()}
    convert_original(sd)
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)
    with pytest.raises(KeyError, match="not an original EfficientMod"):
        convert_original({"stem.conv.weight": torch.zeros(1)})


@pytest.mark.parametrize("ratio", [1, 3, 6])
def test_block_modulates_each_expanded_group_and_folds(ratio: int) -> None:
    """The broadcast modulation equals the original's ``repeat``; deploy folds the layer scale and keeps outputs."""
    torch.manual_seed(ratio)
    blk = EfficientModBlock(8, ratio, kernel_size=3, layer_scale=0.5).eval()
    x = torch.randn(2, 5, 6, 8)
    with torch.no_grad():
        y = blk.norm(x)
        ctx = blk.context(y)
        v = blk.act(blk.value(y)) * ctx.repeat(1, 1, 1, ratio)
        ref = x + blk.gamma * blk.proj(v)
        assert rel_err(blk(x), ref) < 1e-6
        blk.reparameterize()
        blk.reparameterize()
        assert blk.gamma is None and rel_err(blk(x), ref) < 1e-5
    assert (ratio > 1) == isinstance(blk.act, torch.nn.GELU)


def test_block_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="ratio"):
        EfficientModBlock(8, 1.5)
    with pytest.raises(ValueError, match="odd"):
        EfficientModBlock(8, 2, kernel_size=4)


def test_attention_block_deploy_folds_scale() -> None:
    blk = AttentionBlock(16, mlp_ratio=2.0, num_heads=2).eval()
    assert blk.attn.head_dim == 32  # max(dim // heads, 32), as the original
    x = torch.randn(2, 3, 5, 16)
    with torch.no_grad():
        ref = blk(x)
        dep = blocks.reparameterize_model(blk)
        assert rel_err(dep(x), ref) < 1e-5 and dep.attn.deployed


class _HtmlPage(io.BytesIO):
    headers = {"Content-Type": "text/html; charset=utf-8"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_release_is_a_drive_folder_and_fetch_says_so(monkeypatch, tmp_path) -> None:
    """The README links Google Drive folders: the download gets a web page, refused with where to put the file."""
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    monkeypatch.setattr(weights.hub.urllib.request, "urlopen", lambda *a, **k: _HtmlPage(b"<html></html>"))
    spec = zoo.get_family("efficientmod_s").weights["efficientmod_s"]
    assert spec.url.startswith("https://drive.google.com/drive/folders/1rJs8LcWmdTFmj")
    with pytest.raises(OfflineError, match="web page") as err:
        zoo.create_model("efficientmod_s", pretrained=True)
    assert str(tmp_path / "efficientmod_s.pth.tar") in str(err.value)
    assert not list(tmp_path.iterdir()), "nothing may be left in the cache"


def test_model_info_reports_paper_and_measured() -> None:
    info = zoo.model_info("efficientmod_xxs", macs=False)
    assert info["params"] == PARAMS["efficientmod_xxs"]
    assert info["reported"]["top1"] == 76.0 and info["paper"]["arxiv"] == "2403.19963"
    assert info["weights"]["top1"] == 77.1
    assert info["remaining_norms"] == ["LayerNorm"]
