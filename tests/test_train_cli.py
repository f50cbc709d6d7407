"""``zoo train`` argument handling and the shipped recipes (no training here)."""

from __future__ import annotations

import json

import pytest

from train import TrainConfig, list_recipes, load_recipe
from train.cli import main, parse_config


def test_every_shipped_recipe_loads() -> None:
    names = list_recipes()
    assert {"digits", "efficientvit", "efficientmod", "efficientformer", "vovnet", "tinynet", "resnet_rs"} <= set(names)
    for name in names:
        cfg = TrainConfig.from_dict(load_recipe(name), origin=name)
        assert cfg.epochs >= 1 and cfg.batch_size >= 1


def test_recipe_typo_suggests(tmp_path) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text('model = "efficientvit_m0"\nwarmup_epoch = 3\n')
    with pytest.raises(ValueError, match="warmup_epoch.*Did you mean: warmup_epochs"):
        load_recipe(bad)


def test_precedence_defaults_recipe_flags(tmp_path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('epochs = 7\nlr = 0.01\nscale = [0.5, 1.0]\n\n[recipe]\ndescription = "doc only"\n')
    cfg = parse_config(["--recipe", str(recipe), "--lr", "0.02", "-b", "16", "--model-kwargs", "distillation=True"])
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.scale) == (7, 0.02, 16, (0.5, 1.0))
    assert cfg.model_kwargs == {"distillation": True} and cfg.weight_decay == TrainConfig().weight_decay
    assert parse_config(["--pretrained"]).pretrained is True
    assert parse_config(["--pretrained", "w.pth", "--no-progress"]).pretrained == "w.pth"
    assert parse_config(["--torchcompile"]).torchcompile == "inductor"


def test_resume_takes_the_runs_config(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_state.pt").write_bytes(b"")
    (run / "config.json").write_text(json.dumps(TrainConfig(epochs=5, img_size=32, output="elsewhere").to_dict()))
    cfg = parse_config(["--resume", str(run), "--epochs", "8"])
    assert (cfg.epochs, cfg.img_size, cfg.output, cfg.resume) == (8, 32, str(run), str(run))


def test_print_config_help_and_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "-b BATCH_SIZE, --batch-size BATCH_SIZE" in capsys.readouterr().out
    assert main(["--recipe", "digits", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == "digits"
    assert main(["--recipe", "no_such_recipe"]) == 2
    assert "no recipe 'no_such_recipe'" in capsys.readouterr().err
    assert main(["--on-bad-image", "ignore"]) == 2
    assert "on_bad_image must be one of" in capsys.readouterr().err


def test_randaugment_survives_its_top_magnitude() -> None:
    """timm's posterize asks for 0 bits at magnitude 10 of 'inc1' policies, which Pillow >= 13 rejects."""
    import random

    from PIL import Image

    from train.data import build_transforms

    random.seed(0)
    pre = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0, "interpolation": "bilinear"}
    train_tf, _ = build_transforms(TrainConfig(aa="rand-m10-n15-inc1"), pre, 16)
    img = Image.new("RGB", (16, 16), (200, 100, 50))
    assert all(train_tf(img).shape == (3, 16, 16) for _ in range(20))


def test_dataset_selection_errors_and_class_alignment(tmp_path) -> None:
    from PIL import Image

    from train.data import build_datasets

    with pytest.raises(ValueError, match="--data-dir"):
        build_datasets(TrainConfig(data="cifar10"))
    with pytest.raises(FileNotFoundError, match="--dataset-download"):
        build_datasets(TrainConfig(data="torch/cifar100", data_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="neither a directory"):
        build_datasets(TrainConfig(data=str(tmp_path / "nope")))
    for split, classes in (("train", ("a", "b", "c")), ("val", ("c",))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / c / "0.png")
    data = build_datasets(TrainConfig(data=str(tmp_path)))
    assert data.num_classes == 3 and data.val.samples[0][1] == 2  # 'c' keeps the training split's index
