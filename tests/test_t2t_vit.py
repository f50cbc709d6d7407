"""T2T-ViT-14 with Unified Normalization against the authors' code: parameters, MACs, key layout, recorded outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import rel_err

import blocks
import zoo
from blocks import UnifiedNorm
from weights import load_into, unwrap_state_dict
from zoo.t2t_vit import T2tVit, T2tVitCfg, convert_original

DATA = Path(__file__).parent / "data"
PARAMS = 21_545_550  # the authors' T2t_vit_14_all_un1d, 1000 classes (the frozen Performer ``w`` and table included)
MACS = 4_783_468_544  # the authors' model at 224 px, torch.utils.flop_counter halved


def test_params_equal_original_and_release_layout_converts() -> None:
    keys = json.loads((DATA / "t2t_vit_un_original_keys.json").read_text())["t2t_vit_14_un"]
    with torch.device("meta"):
        model = zoo.create_model("t2t_vit_14_un")
    assert zoo.count_params(model) == PARAMS
    sd = {k: torch.zeros(()).expand(shape) for k, shape in keys.items()}
    converted = convert_original(sd)
    target = model.state_dict()
    assert sorted(converted) == sorted(target)
    assert all(tuple(converted[k].shape) == tuple(target[k].shape) for k in target)
    with pytest.raises(KeyError, match="not an original T2T-ViT"):
        convert_original({"blocks.0.attn.qkv.weight": torch.zeros(1)})


def test_macs_equal_original() -> None:
    with torch.device("meta"):  # counted from shapes alone
        model = zoo.create_model("t2t_vit_14_un")
    assert zoo.count_macs(model, (3, 224, 224)) == MACS


def test_original_checkpoint_reproduces_original_outputs() -> None:
    """A tiny T2T-ViT-UN written by the authors' code after three training calls: eval output, then deployed."""
    blob = torch.load(DATA / "t2t_vit_un_tiny_original.pth", weights_only=True)
    c = blob["cfg"]
    cfg = T2tVitCfg(c["embed_dim"], c["depth"], c["num_heads"], c["mlp_ratio"], c["token_dim"])
    model = T2tVit(cfg, num_classes=c["num_classes"], img_size=c["img_size"])
    # the authors' layout is ours (timm's trainer wraps it in "state_dict"), so the loader recognises it as such
    assert load_into(model, unwrap_state_dict(blob["model"]), zoo.get_family("t2t_vit").converters) == "zoo"
    norms = [m for m in model.modules() if isinstance(m, UnifiedNorm)]
    assert len(norms) == 4 + 2 * c["depth"] + 1 and all(int(m.iters) == 3 for m in norms)
    x = blob["x"]
    with torch.no_grad():
        assert rel_err(model.eval()(x), blob["y"]) <= 1e-5
        deployed = blocks.reparameterize_model(model)
        assert rel_err(deployed(x), blob["y"]) <= 1e-5
    assert blocks.remaining_norms(deployed) == {}
    assert not any(isinstance(m, UnifiedNorm) for m in deployed.modules())


def test_geometry_must_be_a_multiple_of_16() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        zoo.create_model("t2t_vit_14_un", img_size=100)


def test_pretrained_reads_the_ema_weights(tmp_path, monkeypatch) -> None:
    """The authors evaluate the EMA weights of their trainer's checkpoint; ``pretrained=True`` loads those."""
    blob = torch.load(DATA / "t2t_vit_un_tiny_original.pth", weights_only=True)
    sd = unwrap_state_dict(blob["model"])
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path / "t2t_vit_14_un.pth.tar"
    torch.save({"epoch": 299, "state_dict": sd, "state_dict_ema": ema}, path)
    monkeypatch.setattr(zoo.registry, "fetch_weights", lambda spec: path)  # nothing is downloaded
    c = blob["cfg"]
    cfg = T2tVitCfg(c["embed_dim"], c["depth"], c["num_heads"], c["mlp_ratio"], c["token_dim"])
    model = T2tVit(cfg, num_classes=c["num_classes"], img_size=c["img_size"])
    zoo.load_pretrained(model, "t2t_vit_14_un", True)
    assert torch.equal(model.head.bias, ema["head.bias"])
    zoo.load_pretrained(model, "t2t_vit_14_un", path)  # a local file: the plain weights, as everywhere else
    assert torch.equal(model.head.bias, sd["head.bias"])
