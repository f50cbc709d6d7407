"""Shared pieces of the training tests: a tiny learnable ImageFolder and a fast configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
COLORS = [(220, 40, 40), (40, 200, 60), (50, 80, 230)]


def make_imagefolder(root: Path, per_class: int = 16, val_per_class: int = 4, size: int = 16) -> Path:
    """``root/{train,val}/c{k}/*.png``: three classes of noisy solid colours (learnable within an epoch or two)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for k, color in enumerate(COLORS):
            d = root / split / f"c{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.integers(-40, 40, size=(size, size, 3))
                img = np.clip(np.array(color)[None, None] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def tiny_config(data: Path, output: Path, **changes) -> TrainConfig:
    """efficientvit_m0 at 16 px on the tiny ImageFolder: a few optimizer steps per epoch, single thread, no workers."""
    base = dict(
        model="efficientvit_m0",
        data=str(data),
        img_size=16,
        batch_size=8,
        epochs=2,
        warmup_epochs=0,
        lr=2e-3,
        workers=0,
        threads=1,
        progress=False,
        plot=False,
        output=str(output),
        seed=0,
    )
    base.update(changes)
    return TrainConfig(**base)


def cli_env() -> dict[str, str]:
    """Environment for subprocesses that import this checkout (one thread each: tests run two workers)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run_cli(args: list[str], module: str = "train", timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m <module> args`` from the repository root with this checkout on the path."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )
