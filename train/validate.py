"""``zoo validate``: top-1 / top-5 and loss of a checkpoint on a dataset's validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import zoo

from .build import accepts_arg, autocast_and_scaler, classifier_must_fit
from .checkpoint import read_weights_metadata
from .config import TrainConfig
from .data import build_datasets, build_transforms, build_val_loader
from .distributed import DistEnv
from .metrics import evaluate

__all__ = ["validate"]


def validate(
    checkpoint: str | Path,
    model: str | None = None,
    data: str = "digits",
    data_dir: str | None = None,
    img_size: int | None = None,
    num_classes: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    batch_size: int = 256,
    workers: int = 2,
    device: str = "",
    amp: bool = False,
    crop_pct: float | None = None,
    on_bad_image: str = "skip",
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the validation split of ``data``.

    Model name, input size, classes and model kwargs default to what training recorded in the safetensors metadata.

    Returns:
        ``{"val_loss", "val_top1", "val_top5", "val_images", "model", "img_size", "checkpoint"}``.

    Raises:
        ValueError: no model name, or a checkpoint whose classifier does not match the dataset's classes.
    """
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
    meta = read_weights_metadata(checkpoint)
    name = model or meta.get("model")
    if not name:
        raise ValueError(f"{checkpoint} does not record its model: pass --model")
    cfg = TrainConfig(
        model=name,
        data=data,
        data_dir=data_dir,
        img_size=img_size or meta.get("img_size"),
        model_kwargs=model_kwargs if model_kwargs is not None else meta.get("model_kwargs", {}),
        batch_size=batch_size,
        workers=workers,
        device=device,
        amp=amp,
        crop_pct=crop_pct,
        on_bad_image=on_bad_image,
    )
    datasets = build_datasets(cfg)
    n_classes = num_classes or datasets.num_classes
    kwargs = dict(cfg.model_kwargs)
    if cfg.img_size is not None and accepts_arg(name, "img_size"):
        kwargs.setdefault("img_size", cfg.img_size)
    with classifier_must_fit(f"{checkpoint} on {data} ({n_classes} classes)"):
        net = zoo.create_model(name, pretrained=str(checkpoint), num_classes=n_classes, **kwargs)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(dev).eval()
    size = cfg.img_size or int(net.pretrained_cfg["input_size"][-1])
    transforms = build_transforms(cfg, net.pretrained_cfg, size)
    datasets.val.transform = transforms[1]
    val_loader = build_val_loader(cfg.replace(validation_batch_size=batch_size), datasets.val)
    env = DistEnv(rank=0, world=1, local_rank=0, device=dev)
    autocast, _ = autocast_and_scaler(cfg, dev)
    result = evaluate(net, val_loader, env, autocast, on_bad_image)
    return {**result, "model": name, "img_size": size, "checkpoint": str(checkpoint)}
