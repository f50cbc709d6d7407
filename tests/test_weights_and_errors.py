"""Bad input gets a clear, specific error and loses nothing; checkpoints round-trip in every supported form."""

from __future__ import annotations

import collections
import os
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch

import weights
import zoo
from weights import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    OfflineError,
    UnsafeCheckpointError,
    WeightSpec,
    load_checkpoint,
    save_safetensors,
)

NAME = "efficientvit_m0"


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return zoo.create_model(NAME).state_dict()


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(zoo.UnknownModelError, match="efficientvit_m0"):
        zoo.create_model("efficentvit_m0")
    with pytest.raises(zoo.UnknownModelError, match="Did you mean"):
        zoo.model_info("efficientvit_m9")


def test_unknown_override_suggests() -> None:
    with pytest.raises(TypeError, match="Did you mean: drop_rate"):
        zoo.create_model(NAME, drop_rat=0.1)


def test_list_models_patterns() -> None:
    assert zoo.list_models("efficientvit_m*") == [f"efficientvit_m{i}" for i in range(6)]
    assert zoo.list_models("m3") == ["efficientvit_m3"]
    assert zoo.list_models("nothing_like_this") == []


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth_wrapped", "pth_module"])
def test_load_roundtrip(fmt: str, state, tmp_path) -> None:
    path = tmp_path / f"ckpt.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_safetensors(state, path)
    elif fmt == "pth":
        torch.save(state, path)
    elif fmt == "pth_wrapped":
        torch.save({"model": state, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    else:
        torch.save({"state_dict": collections.OrderedDict((f"module.{k}", v) for k, v in state.items())}, path)
    model = zoo.create_model(NAME, pretrained=path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_wrong_keys_and_shapes_are_listed(state, tmp_path) -> None:
    bad = dict(state)
    bad.pop("stages.0.blocks.0.dw0.m.conv.weight")
    bad["extra.weight"] = torch.zeros(1)
    bad["head.bn.weight"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointMismatchError) as err:
        zoo.create_model(NAME, pretrained=path)
    msg = str(err.value)
    assert "stages.0.blocks.0.dw0.m.conv.weight" in msg and "missing" in msg
    assert "extra.weight" in msg and "unexpected" in msg
    assert "head.bn.weight: checkpoint (7,) vs model (192,)" in msg


def test_other_model_checkpoint_is_rejected(tmp_path) -> None:
    path = tmp_path / "m1.safetensors"
    save_safetensors(zoo.create_model("efficientvit_m1").state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        zoo.create_model(NAME, pretrained=path)


def test_new_num_classes_drops_classifier_with_warning(state, tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    save_safetensors(state, path)
    with pytest.warns(UserWarning, match="head.linear.weight, head.linear.bias dropped"):
        model = zoo.create_model(NAME, pretrained=path, num_classes=10)
    assert model.head.linear.weight.shape == (10, 192)
    assert torch.equal(model.head.bn.weight, state["head.bn.weight"])


@pytest.mark.parametrize("kind", ["truncated_pth", "truncated_st", "garbage", "empty"])
def test_corrupt_files_say_so(kind: str, state, tmp_path) -> None:
    path = tmp_path / ("x.safetensors" if kind == "truncated_st" else "x.pth")
    if kind == "truncated_pth":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    elif kind == "truncated_st":
        save_safetensors(state, path)
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    elif kind == "garbage":
        path.write_bytes(b"this is not a checkpoint at all" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="corrupt|truncated|empty"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):  # executing this on load would be arbitrary code
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_checkpoint(path)


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint("/nonexistent/ckpt.pth")


def test_pretrained_offline_names_url_and_cache_path(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights.hub.urllib.request, "urlopen", offline)
    spec = zoo.get_family(NAME).weights[NAME]
    with pytest.raises(OfflineError) as err:
        zoo.create_model(NAME, pretrained=True)
    assert spec.url in str(err.value)
    assert str(tmp_path / "cache" / "efficientvit_m0.pth") in str(err.value)


def test_cached_weights_are_used_and_hash_checked(monkeypatch, state, tmp_path) -> None:
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    spec = WeightSpec("https://example.invalid/w.pth", layout="zoo")
    torch.save(state, tmp_path / "w.pth")
    assert weights.fetch_weights(spec) == tmp_path / "w.pth"
    bad = WeightSpec("https://example.invalid/w.pth", sha256="0" * 64)
    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        weights.fetch_weights(bad)
    good = WeightSpec("https://example.invalid/w.pth", sha256=weights.sha256sum(tmp_path / "w.pth"))
    assert weights.fetch_weights(good).is_file()


def test_atomic_write_leaves_nothing_on_failure(tmp_path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def boom(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        weights.atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    weights.atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o044, "written files must be readable like any other file"


def test_no_warning_when_classes_match(state, tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    save_safetensors(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zoo.create_model(NAME, pretrained=path)


def test_features_only_through_create_model() -> None:
    backbone = zoo.create_model("efficientvit_m1", features_only=True, out_indices=(0, 2)).eval()
    assert backbone.feature_info.channels() == [128, 192] and backbone.feature_info.reduction() == [16, 64]
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape) for m in maps] == [(1, 128, 14, 14), (1, 192, 4, 4)]
    with pytest.raises(IndexError, match="out of range"):
        zoo.create_model("efficientvit_m1", features_only=True, out_indices=(3,))
