"""SimpleNet against the authors' PyTorch code (recorded key layouts and outputs) and the numbers they report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import rel_err

import blocks
import zoo
from weights import compare_state_dicts, detect_layout, load_into
from zoo.simplenet import _CIFAR_5M, _IMAGENET_5M, SimpleNet, SimpleNetCfg, convert_original

DATA = Path(__file__).parent / "data"
# Parameter counts of the original code (1000 classes; CIFAR: 10) and the README's rounded ones.
PARAMS = {
    "simplenetv1_5m_m1": 5_752_808,
    "simplenetv1_5m_m2": 5_752_808,
    "simplenetv1_9m_m1": 9_508_968,
    "simplenetv1_9m_m2": 9_508_968,
    "simplenetv1_small_m1_05": 1_506_792,
    "simplenetv1_small_m2_05": 1_506_792,
    "simplenetv1_small_m1_075": 3_287_272,
    "simplenetv1_small_m2_075": 3_287_272,
    "simplenet_cifar_5m": 5_498_378,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_params_match_original(name: str) -> None:
    with torch.device("meta"):
        model = zoo.create_model(name)
    assert zoo.count_params(model) == PARAMS[name]
    assert abs(PARAMS[name] / 1e6 - zoo.get_family(name).reported[name].params_m) < 0.03


def test_cifar_macs_match_paper() -> None:
    """The paper's CIFAR table gives 652 M operations for the 13-layer net (multiply-accumulates)."""
    macs = zoo.count_macs(zoo.create_model("simplenet_cifar_5m"), (3, 32, 32))
    assert abs(macs - 652e6) / 652e6 < 0.01


@pytest.mark.parametrize("key", ["imagenet_m2", "cifar"])
def test_original_checkpoint_reproduces_original_outputs(key: str) -> None:
    blob = torch.load(DATA / "simplenet_tiny_original.pth", weights_only=True)[key]
    c = blob["cfg"]
    layers = _IMAGENET_5M if c["network_idx"] == 0 else _CIFAR_5M
    model = SimpleNet(SimpleNetCfg(layers, c["scale"], c["mode"]), num_classes=c["num_classes"])
    assert load_into(model, blob["model"], zoo.get_family("simplenet").converters) == "original"
    with torch.no_grad():
        assert rel_err(model.eval()(blob["x"]), blob["y"]) <= 1e-5
        assert rel_err(blocks.reparameterize_model(model)(blob["x"]), blob["y"]) <= 1e-4


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_original_release_layout_converts_completely(name: str) -> None:
    """Every key of the authors' models (recorded from their code) maps onto ours, in order."""
    keys = json.loads((DATA / "simplenet_original_keys.json").read_text())[name]
    sd = {k: torch.randn(shape) if shape else torch.tensor(0) for k, shape in keys.items()}
    model = zoo.create_model(name)
    layout, converted = detect_layout(sd, model.state_dict(), zoo.get_family(name).converters)
    assert layout == "original"
    assert compare_state_dicts(converted, model.state_dict()) == ([], [], [])
    convs = sorted(int(k.split(".")[1]) for k, shape in keys.items() if k.endswith(".weight") and len(shape) == 4)
    last = len(convs) - 1  # the original's indices count ReLU, dropout and pooling layers; ours count convs
    assert torch.equal(converted[f"features.{last}.conv.weight"], sd[f"features.{convs[-1]}.weight"])
    assert torch.equal(converted[f"features.{last}.bn.running_var"], sd[f"features.{convs[-1] + 1}.running_var"])


def test_2018_cifar_snapshot_layout_converts() -> None:
    """The 2018 CIFAR snapshots index conv, BN, ReLU per layer and pool, dropout per pool (no per-conv dropout)."""
    target = zoo.create_model("simplenet_cifar_5m").state_dict()
    sd, idx = {}, 0
    for layer in _CIFAR_5M:
        if layer == "p":
            idx += 2
            continue
        n = len(sd) // 7
        for leaf in ("weight", "bias"):
            sd[f"module.features.{idx}.{leaf}"] = target[f"features.{n}.conv.{leaf}"]
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            sd[f"module.features.{idx + 1}.{leaf}"] = target[f"features.{n}.bn.{leaf}"]
        idx += 3
    sd |= {f"module.classifier.{k}": target[f"classifier.{k}"] for k in ("weight", "bias")}
    converted = convert_original({k.removeprefix("module."): v for k, v in sd.items()})
    assert converted.keys() == target.keys()
    assert all(torch.equal(converted[k], target[k]) for k in target)


def test_convert_original_is_pure_and_rejects_others() -> None:
    sd = torch.load(DATA / "simplenet_tiny_original.pth", weights_only=True)["cifar"]["model"]
    before = {k: v.clone() for k, v in sd.items()}
    convert_original(sd)
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)
    with pytest.raises(KeyError):
        convert_original(zoo.create_model("simplenet_cifar_5m").state_dict())


def test_stride_modes_and_feature_levels() -> None:
    m1, m2 = zoo.create_model("simplenetv1_small_m1_05"), zoo.create_model("simplenetv1_small_m2_05")
    cifar = zoo.create_model("simplenet_cifar_5m")
    assert [layer.conv.stride[0] for layer in m1.features][:4] == [2, 2, 2, 1]
    assert [layer.conv.stride[0] for layer in m2.features][:4] == [2, 2, 1, 2]
    assert m1.feature_info.reduction() == m2.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert cifar.feature_info.reduction() == [1, 2, 4, 8, 16]
    with torch.no_grad():
        maps = m2.eval().forward_intermediates(torch.randn(1, 3, 224, 224))
    assert [m.shape[-1] for m in maps] == [112, 56, 28, 14, 7]


def test_bad_configs_raise() -> None:
    with pytest.raises(ValueError, match="stride mode"):
        SimpleNet(SimpleNetCfg(_IMAGENET_5M, 1.0, 7))
    with pytest.raises(ValueError, match="bad SimpleNet layer"):
        SimpleNet(SimpleNetCfg(("64", "3x3")))
    with pytest.raises(ValueError, match="drop_path_rate"):
        zoo.create_model("simplenetv1_5m_m1", drop_path_rate=0.1)


def test_weights_table_points_at_release() -> None:
    info = zoo.model_info("simplenetv1_5m_m2", macs=False)
    assert info["weights"]["url"].endswith("/v1.0.0/simplenetv1_5m_m2-9bd6bb36.pth")
    assert info["weights"]["layout"] == "original" and info["reported"]["top1"] == 72.03
