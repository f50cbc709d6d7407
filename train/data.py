"""Datasets, transforms and loaders: ImageFolder directories, torchvision datasets by name, and the bundled digits.

An unreadable image never raises inside a worker: the dataset returns a :class:`BadImage` record, the collate function
passes it along next to the batch, and :func:`batches` (in the main process) warns and skips it or raises
:class:`BadImageError` naming the file, as ``on_bad_image`` says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, default_collate

from .config import TrainConfig

__all__ = [
    "BadImage",
    "BadImageError",
    "DataBundle",
    "DigitsDataset",
    "build_datasets",
    "build_transforms",
    "build_loaders",
    "build_val_loader",
    "batches",
    "TORCHVISION_DATASETS",
]

_log = logging.getLogger("train")

# name -> (torchvision class name, images are grayscale)
TORCHVISION_DATASETS = {
    "cifar10": ("CIFAR10", False),
    "cifar100": ("CIFAR100", False),
    "mnist": ("MNIST", True),
    "fashion_mnist": ("FashionMNIST", True),
}


class BadImage(NamedTuple):
    """An image that could not be read, with the reason."""

    path: str
    error: str


class BadImageError(RuntimeError):
    """An unreadable image was met with ``on_bad_image='stop'``."""


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes) as RGB PIL images, fixed split.

    The split is stratified, 20% validation, with a fixed seed, so every run and every rank sees the same 1,437 / 360
    images. The 0..16 gray levels are scaled to 0..255; upscaling to the model's input size is the transform's job.
    """

    def __init__(self, split: str, transform: Callable | None = None) -> None:
        from PIL import Image

        from zoo.data import DIGITS_CLASSES, digits_split

        pixels, targets = digits_split(split)
        self.images = [Image.fromarray(p).convert("RGB") for p in pixels]  # uint8 (8, 8): grayscale
        self.targets = [int(t) for t in targets]
        self.classes = list(DIGITS_CLASSES)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.targets[i]


class _SafeImageFolder(Dataset):
    """torchvision ImageFolder whose unreadable files become :class:`BadImage` records instead of exceptions.

    ``class_to_idx`` (the training split's) keeps a validation split with fewer class folders aligned.
    """

    def __init__(self, root: Path, class_to_idx: dict[str, int] | None = None) -> None:
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(root), allow_empty=class_to_idx is not None)
        class_to_idx = class_to_idx or folder.class_to_idx
        unknown = sorted(set(folder.classes) - set(class_to_idx))
        if unknown:
            raise ValueError(f"{root}: class folders {unknown[:5]} are not in the training split")
        self.samples = [(path, class_to_idx[folder.classes[t]]) for path, t in folder.samples]
        self.loader = folder.loader
        self.class_to_idx = class_to_idx
        self.classes = sorted(class_to_idx, key=class_to_idx.__getitem__)
        self.transform: Callable | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int] | BadImage:
        path, target = self.samples[i]
        try:
            img = self.loader(path)  # opens and converts to RGB, so a truncated file fails here, not in a transform
        except Exception as e:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ValueError, ...)
            return BadImage(path, f"{type(e).__name__}: {e}")
        return (self.transform(img) if self.transform else img), target


class _RGB(Dataset):
    """Wraps a grayscale torchvision dataset so that images reach the transform as RGB."""

    def __init__(self, ds: Dataset, transform: Callable | None) -> None:
        self.ds, self.transform = ds, transform
        self.classes = ds.classes

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img, target = self.ds[i]
        img = img.convert("RGB")
        return (self.transform(img) if self.transform else img), int(target)


@dataclass
class DataBundle:
    """Training and validation datasets (without transforms until :func:`build_loaders` sets them)."""

    train: Dataset
    val: Dataset
    num_classes: int
    name: str


def _imagefolder(cfg: TrainConfig) -> DataBundle:
    root = Path(cfg.data)
    splits = {s: root / s for s in (cfg.train_split, cfg.val_split)}
    for split, path in splits.items():
        if not path.is_dir():
            raise FileNotFoundError(
                f"{root} has no {split}/ sub-directory: expected the ImageFolder layout "
                f"{root}/{cfg.train_split}/<class>/<image> and {root}/{cfg.val_split}/<class>/<image>"
            )
    train = _SafeImageFolder(splits[cfg.train_split])
    val = _SafeImageFolder(splits[cfg.val_split], class_to_idx=train.class_to_idx)
    return DataBundle(train, val, len(train.classes), f"imagefolder:{root}")


def _torchvision(cfg: TrainConfig, name: str) -> DataBundle:
    import torchvision.datasets as tvd

    cls_name, gray = TORCHVISION_DATASETS[name]
    if not cfg.data_dir:
        raise ValueError(f"--data {cfg.data}: give the dataset's root with --data-dir (and --dataset-download)")
    cls = getattr(tvd, cls_name)
    try:
        train, val = (cls(cfg.data_dir, train=t, download=cfg.dataset_download) for t in (True, False))
    except RuntimeError as e:
        raise FileNotFoundError(
            f"{cls_name} not found under {cfg.data_dir} ({e}); pass --dataset-download to fetch it"
        ) from e
    if gray:
        train, val = _RGB(train, None), _RGB(val, None)
    return DataBundle(train, val, len(train.classes), name)


def build_datasets(cfg: TrainConfig) -> DataBundle:
    """The datasets ``cfg.data`` names: ``digits``, a torchvision dataset name, or an ImageFolder root."""
    name = cfg.data.lower().removeprefix("torch/")
    if name == "digits":
        return DataBundle(DigitsDataset("train"), DigitsDataset("val"), 10, "digits")
    if name in TORCHVISION_DATASETS:
        return _torchvision(cfg, name)
    if Path(cfg.data).is_dir():
        return _imagefolder(cfg)
    raise FileNotFoundError(
        f"--data {cfg.data!r} is neither a directory, 'digits', nor a known dataset ({', '.join(TORCHVISION_DATASETS)})"
    )


def build_transforms(cfg: TrainConfig, pretrained_cfg: dict[str, Any], img_size: int) -> tuple[Callable, Callable]:
    """Training and evaluation transforms from timm's ``create_transform`` with the model's preprocessing."""
    from timm.data import create_transform

    common = dict(input_size=(3, img_size, img_size), mean=pretrained_cfg["mean"], std=pretrained_cfg["std"])
    train = create_transform(
        **common,
        is_training=True,
        no_aug=cfg.no_aug,
        scale=cfg.scale,
        ratio=cfg.ratio,
        hflip=cfg.hflip,
        vflip=cfg.vflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.aa,
        interpolation=cfg.train_interpolation,
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        re_count=cfg.recount,
    )
    _patch_posterize(train)
    crop_pct = cfg.crop_pct if cfg.crop_pct is not None else pretrained_cfg["crop_pct"]
    evaluate = create_transform(
        **common, is_training=False, interpolation=pretrained_cfg["interpolation"], crop_pct=crop_pct
    )
    return train, evaluate


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize op, valid for every magnitude: with ``inc1`` policies at the top magnitude timm asks for 0 bits,
    which Pillow >= 13 rejects (older Pillow returned a black image, which this reproduces)."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform: Any) -> None:
    """Point the posterize ops of timm's RandAugment / AutoAugment inside ``transform`` at :func:`_posterize`."""
    from timm.data import auto_augment

    for t in getattr(transform, "transforms", [transform]):
        ops = list(getattr(t, "ops", []))
        for sub in getattr(t, "policy", []):
            ops += list(sub)
        for op in ops:
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize


def _collate(batch: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[BadImage]]:
    """Stack the readable samples; hand unreadable ones to the main process instead of raising in a worker."""
    good = [b for b in batch if not isinstance(b, BadImage)]
    bad = [b for b in batch if isinstance(b, BadImage)]
    if not good:
        return None, None, bad
    x, y = default_collate(good)
    return x, y, bad


def build_val_loader(cfg: TrainConfig, val: Dataset, rank: int = 0, world: int = 1) -> DataLoader:
    """This rank's slice of the validation set (contiguous stride, no padding), in order.

    Without padding, summing the per-rank counts gives exactly the single-process metrics.
    """
    shard = Subset(val, range(rank, len(val), world))
    return DataLoader(
        shard,
        batch_size=cfg.validation_batch_size or 2 * cfg.batch_size,
        shuffle=False,
        num_workers=cfg.workers,
        collate_fn=_collate,
        pin_memory=cfg.pin_mem,
    )


def build_loaders(
    cfg: TrainConfig, data: DataBundle, transforms: tuple[Callable, Callable], rank: int, world: int
) -> tuple[DataLoader, DataLoader]:
    """Training loader (sharded by rank, reshuffled per epoch from ``cfg.seed``) and this rank's validation loader."""
    from timm.data.distributed_sampler import RepeatAugSampler

    data.train.transform, data.val.transform = transforms
    if cfg.aug_repeats:
        sampler = RepeatAugSampler(data.train, num_replicas=world, rank=rank, num_repeats=cfg.aug_repeats)
    else:
        sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    train = DataLoader(
        data.train,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.workers,
        collate_fn=_collate,
        pin_memory=cfg.pin_mem,
    )
    if len(train) == 0:
        raise ValueError(
            f"batch_size {cfg.batch_size} x {world} process(es) is larger than the {len(data.train)} training images"
        )
    return train, build_val_loader(cfg, data.val, rank, world)


def batches(loader: DataLoader, on_bad_image: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``(images, targets)``, reporting unreadable images by path (skip with a warning, or stop)."""
    for x, y, bad in loader:
        for b in bad:
            if on_bad_image == "stop":
                raise BadImageError(f"cannot read image {b.path}: {b.error} (use --on-bad-image skip to skip it)")
            _log.warning("skipping unreadable image %s: %s", b.path, b.error)
        if x is not None:
            yield x, y
