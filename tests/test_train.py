"""The training loop, in process: outputs, validation, fine-tuning, distillation, schedules, failures."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import make_imagefolder, tiny_config

import blocks
import train
import train.loop
import zoo
from train.build import DistillationLoss, parse_when
from train.checkpoint import STATE_FILE
from train.data import DigitsDataset
from weights import save_safetensors


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"))


def _capture_models(monkeypatch) -> list[torch.nn.Module]:
    """Make fit's model builder record the models it builds (so a test can inspect them after the run)."""
    built = []
    real = train.loop.build_model

    def build(cfg, num_classes):
        built.append(real(cfg, num_classes))
        return built[-1]

    monkeypatch.setattr(train.loop, "build_model", build)
    return built


def test_digits_split_is_fixed_and_stratified() -> None:
    tr, va = DigitsDataset("train"), DigitsDataset("val")
    assert (len(tr), len(va)) == (1437, 360)
    counts = torch.bincount(torch.tensor(va.targets), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert DigitsDataset("val").targets == va.targets
    img, _ = tr[0]
    assert img.mode == "RGB" and img.size == (8, 8)


def test_fit_writes_outputs_and_validate_agrees(folder, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    result = train.fit(tiny_config(folder, out, epochs=3, plot=True))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr", "img_per_s"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert records[-1]["train_loss"] < records[0]["train_loss"]  # it learns (the digits demo shows how well)
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss,val_loss")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["epoch"] == 3 and state["step"] == records[-1]["step"] == 3 * (48 // 8)
    keys = set(zoo.create_model("efficientvit_m0", num_classes=3).state_dict())
    assert set(load_file(out / "last.safetensors")) == keys
    best = max(records, key=lambda r: r["val_top1"])
    assert result["best"] == best["val_top1"]
    from train.cli import validate_main

    args = ["--checkpoint", str(out / "best.safetensors"), "--data", str(folder), "-j", "0", "--json"]
    assert validate_main(args) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["model"] == "efficientvit_m0" and got["img_size"] == 16 and got["val_images"] == 12
    assert got["val_top1"] == pytest.approx(best["val_top1"]) and got["val_loss"] == pytest.approx(best["val_loss"])


def test_set_step_once_per_optimizer_step_and_pruner_state(folder, tmp_path, monkeypatch, caplog) -> None:
    """In-model schedules see every optimizer step once (accumulation: once per 2 micro-batches); the pruner from
    blocks.make_pruner gets its window in steps and its state travels with the checkpoint."""
    seen, made = [], []

    class Probe(torch.nn.Module):
        def set_step(self, step: int) -> None:
            seen.append(step)

    class FakePruner:
        def __init__(self, model, final_sparsity, start, end, frequency, pattern):
            self.args, self.steps = (final_sparsity, start, end, frequency, pattern), []
            made.append(self)

        def set_step(self, step: int) -> None:
            self.steps.append(step)

        def state_dict(self) -> dict:
            return {"last": torch.tensor(self.steps[-1])}

        def load_state_dict(self, sd: dict) -> None:
            self.loaded = int(sd["last"])

    real = train.loop.build_model

    def build(cfg, num_classes):
        model = real(cfg, num_classes)
        model.probe = Probe()
        return model

    monkeypatch.setattr(train.loop, "build_model", build)
    monkeypatch.setattr(blocks, "make_pruner", FakePruner, raising=False)
    cfg = tiny_config(folder, tmp_path / "run", grad_accum_steps=2, prune_to=0.5, prune_start="1ep", prune_freq=2)
    train.fit(cfg)  # 6 micro-batches per epoch -> 3 optimizer steps per epoch, 6 in all
    assert seen == [0, 0, 1, 2, 3, 4, 5]  # once at start, then before each step
    assert made[0].args == (0.5, 3, 4, 2, "unstructured")  # 1ep = 3 steps; default end: 75% of 6 steps, rounded
    assert made[0].steps == seen
    seen.clear()
    with caplog.at_level(logging.WARNING, logger="train"):
        train.fit(cfg.replace(epochs=3, resume=str(tmp_path / "run")))  # one more epoch than planned
    assert made[1].loaded == 5 and seen == [6, 6, 7, 8]
    assert "resuming with changed epochs: the lr follows the new schedule" in caplog.text


def test_parse_when() -> None:
    assert parse_when("1000", 50, 5000) == 1000
    assert parse_when("2.5ep", 40, 5000) == 100
    assert parse_when("75%", 40, 400) == 300
    with pytest.raises(ValueError, match="epochs"):
        parse_when("soon", 40, 400)


def test_finetune_frozen_backbone_new_classes(folder, tmp_path, monkeypatch) -> None:
    """Fine-tuning from a 5-class checkpoint on 3 classes: the head is replaced and trained, everything frozen keeps
    its weights and BN statistics, and frozen ConvBNs run in tune mode."""
    src = zoo.create_model("efficientvit_m0", num_classes=5, img_size=16)
    blocks.make_bn_realistic(src, (3, 16, 16))
    ckpt = save_safetensors(src.state_dict(), tmp_path / "pre.safetensors")
    built = _capture_models(monkeypatch)
    with pytest.warns(UserWarning, match="classifier"):
        train.fit(tiny_config(folder, tmp_path / "ft", epochs=1, pretrained=str(ckpt), freeze=("backbone",)))
    after, before = load_file(tmp_path / "ft" / "last.safetensors"), src.state_dict()
    body = [k for k in after if not k.startswith("head")]
    assert all(torch.equal(after[k], before[k]) for k in body)  # weights and running statistics untouched
    assert after["head.linear.weight"].shape == (3, 192)
    model = built[0]
    assert model.patch_embed.conv1.mode == "tune" and not model.patch_embed.conv1.conv.weight.requires_grad
    assert model.head.linear.weight.requires_grad
    assert not torch.equal(after["head.bn.running_var"], torch.ones(192))  # the head (and its BN) trained


def test_features_amp_ema_accum_channels_last(folder, tmp_path) -> None:
    # 64 px, not 16: at 16 px EfficientViT's stride-2 depthwise convs see 1x1 maps, where torch 2.14's oneDNN bf16
    # channels-last weight gradient returns garbage (~1e32) now and then, and clipping turns it into NaN everywhere
    cfg = tiny_config(
        folder,
        tmp_path / "run",
        img_size=64,
        epochs=1,
        amp=True,
        model_ema=True,
        model_ema_decay=0.9,
        grad_accum_steps=2,
        channels_last=True,
        mixup=0.8,
        cutmix=1.0,
        aa="rand-m9-mstd0.5-inc1",
        reprob=0.25,
        drop_path=0.1,
        clip_grad=1.0,
    )
    result = train.fit(cfg)
    assert result["last"]["evaluated"] == "ema" and math.isfinite(result["last"]["train_loss"])
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert state["ema"] is not None and state["step"] == 3
    assert not torch.are_deterministic_algorithms_enabled()


def test_torch_compile(folder, tmp_path) -> None:
    """torch.compile wraps the module the loop calls; checkpoints keep the plain model's keys."""
    result = train.fit(tiny_config(folder, tmp_path / "run", epochs=1, torchcompile="eager"))
    assert math.isfinite(result["last"]["train_loss"])
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert not any(k.startswith(("_orig_mod", "module.")) for k in state["model"])


def test_distillation_loss_soft_and_hard() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3)).eval()
    out = torch.randn(2, 4, 3)  # a student with a distillation head: (class head, distillation head)
    base = torch.nn.CrossEntropyLoss()
    t = teacher(x)
    soft = DistillationLoss(base, teacher, "soft", alpha=0.5, tau=2.0)(x, out, y)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(out[1] / 2, 1), torch.log_softmax(t / 2, 1), reduction="sum", log_target=True
    )
    assert soft.item() == pytest.approx(0.5 * base(out[0], y).item() + 0.5 * (kl * 4 / out[1].numel()).item(), 1e-6)
    hard = DistillationLoss(base, teacher, "hard", alpha=0.5, tau=1.0)(x, out, y)
    ref = 0.5 * base(out[0], y) + 0.5 * base(out[1], t.argmax(1))
    assert hard.item() == pytest.approx(ref.item(), 1e-6)
    none = DistillationLoss(base, None, "none", 0.5, 1.0)(x, out, y)  # no teacher: both heads learn the labels
    assert none.item() == pytest.approx(((base(out[0], y) + base(out[1], y)) / 2).item(), 1e-6)


def test_distillation_from_zoo_teacher_with_distilled_student(folder, tmp_path) -> None:
    teacher = zoo.create_model("efficientvit_m0", num_classes=3, img_size=16)
    path = save_safetensors(teacher.state_dict(), tmp_path / "teacher.safetensors")
    cfg = tiny_config(
        folder,
        tmp_path / "kd",
        epochs=1,
        model_kwargs={"distillation": True},
        distillation_type="hard",
        teacher_model="efficientvit_m0",
        teacher_path=str(path),
    )
    result = train.fit(cfg)
    assert math.isfinite(result["last"]["train_loss"])
    assert "head_dist.linear.weight" in load_file(tmp_path / "kd" / "last.safetensors")


def test_timm_teacher_and_classifier_mismatch(tmp_path) -> None:
    import timm

    from train.build import build_teacher

    path = tmp_path / "t.pth"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), path)
    cfg = train.TrainConfig(distillation_type="soft", teacher_model="test_resnet", teacher_path=str(path))
    t = build_teacher(cfg, 3, torch.device("cpu"))
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    five = save_safetensors(zoo.create_model("efficientvit_m0", num_classes=5).state_dict(), tmp_path / "5.safetensors")
    bad = cfg.replace(teacher_model="efficientvit_m0", teacher_path=str(five))
    with pytest.raises(ValueError, match="classifier"):
        build_teacher(bad, 3, torch.device("cpu"))


@pytest.mark.parametrize(
    ("poisoned", "message"),
    [
        ("train", r"training loss at epoch 2, step 8 is nan.*last_state\.pt"),  # epoch 2's 2nd step (6 per epoch)
        ("eval", r"validation loss after epoch 2 is nan"),  # one val batch per epoch: weights gone bad
    ],
)
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(folder, tmp_path, monkeypatch, poisoned, message) -> None:
    calls = {"train": 0, "eval": 0}
    real = train.loop.build_model

    def build(cfg, num_classes):
        model = real(cfg, num_classes)

        def poison(module, args, output):
            mode = "train" if module.training else "eval"
            calls[mode] += 1
            return output * float("nan") if mode == poisoned and calls[mode] > (7 if mode == "train" else 1) else output

        model.register_forward_hook(poison)
        return model

    monkeypatch.setattr(train.loop, "build_model", build)
    out = tmp_path / "run"
    with pytest.raises(train.NonFiniteLossError, match=message):
        train.fit(tiny_config(folder, out, epochs=3, log_interval=1))
    assert torch.load(out / STATE_FILE, weights_only=True)["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in load_file(out / "last.safetensors").values())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_unreadable_image_skipped_with_path_or_stops(folder, tmp_path, caplog, capsys) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    bad = data / "train" / "c0" / "broken.png"
    bad.write_bytes(b"not an image at all")
    with caplog.at_level(logging.WARNING, logger="train"):
        train.fit(tiny_config(data, tmp_path / "skip", epochs=1, batch_size=7))
    assert str(bad) in caplog.text and "skipping unreadable image" in caplog.text
    from train.cli import main

    args = ["--data", str(data), "--img-size", "16", "-b", "49", "--epochs", "1", "-j", "1", "--no-progress"]
    assert main([*args, "--on-bad-image", "stop", "--output", str(tmp_path / "stop")]) == 2  # read in a worker
    err = capsys.readouterr().err
    assert f"cannot read image {bad}" in err and "Traceback" not in err


def test_bad_settings_are_clear_errors(folder, tmp_path) -> None:
    with pytest.raises(ValueError, match="on_bad_image"):
        tiny_config(folder, tmp_path, on_bad_image="ignore")
    with pytest.raises(ValueError, match="teacher_model"):
        tiny_config(folder, tmp_path, distillation_type="soft")
    with pytest.raises(FileNotFoundError, match="no train/ sub-directory: expected the ImageFolder layout"):
        train.fit(tiny_config(folder / "train", tmp_path / "x"))
    with pytest.raises(zoo.UnknownModelError, match="efficientvit_m0"):
        train.fit(tiny_config(folder, tmp_path / "x", model="efficientvit_mo"))
    with pytest.raises(ValueError, match="freeze: efficientvit_m0 has no module 'stem'"):
        train.fit(tiny_config(folder, tmp_path / "x", freeze=("stem",)))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train.fit(tiny_config(folder, tmp_path / "x", resume=str(tmp_path / "missing")))


def test_gradual_pruning_reaches_target_through_cli(folder, tmp_path) -> None:
    """A dense checkpoint loaded into the sparse MobileNetV1 (dense masks), pruned to 75% over the first epoch."""
    from blocks.sparse import sparsity_report
    from train.cli import main

    dense_model = zoo.create_model("mobilenetv1_100", num_classes=3)
    dense = save_safetensors(dense_model.state_dict(), tmp_path / "d.safetensors")
    out = tmp_path / "pruned"
    args = ["--model", "sparse_mobilenetv1_100_s90", "--pretrained", str(dense), "--data", str(folder)]
    args += ["--img-size", "32", "-b", "8", "--epochs", "2", "--warmup-epochs", "0", "-j", "0", "--threads", "1"]
    args += ["--prune-to", "0.75", "--prune-start", "0", "--prune-end", "1ep", "--prune-freq", "2"]
    assert main([*args, "--no-progress", "--no-plot", "--output", str(out)]) == 0
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["pruner"]["applied_step"] == state["pruner"]["end_step"] == 6  # 1ep = 48 / 8 steps
    model = zoo.create_model("sparse_mobilenetv1_100_s90", num_classes=3, pretrained=str(out / "last.safetensors"))
    report = sparsity_report(model)
    assert len(report) == 13 and all(s == pytest.approx(0.75, abs=0.01) for s in report.values())
    weights = load_file(out / "last.safetensors")
    for name in report:
        w, mask = weights[f"{name}.weight"], weights[f"{name}.mask"]
        assert torch.count_nonzero(w * mask) == torch.count_nonzero(mask)  # the kept weights are live
