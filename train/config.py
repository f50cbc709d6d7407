"""The training configuration: one dataclass, loadable from a TOML recipe, that ``train.fit`` takes.

Field names follow timm's ``train.py`` (``batch_size``, ``opt``, ``sched``, ``warmup_epochs``, ``smoothing``, ``aa``,
``reprob``, ``mixup``, ``model_ema`` ...) so that a timm or DeiT command line translates one to one. Precedence, low to
high: the dataclass defaults, the ``config.json`` of a run being resumed (CLI only), the recipe, explicit flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["TrainConfig", "load_recipe", "recipe_path", "list_recipes", "RECIPE_DIR"]

RECIPE_DIR = Path(__file__).parent / "recipes"

_CHOICES = {
    "on_bad_image": ("skip", "stop"),
    "distillation_type": ("none", "soft", "hard"),
    "clip_mode": ("norm", "value", "agc"),
    "lr_base_scale": ("linear", "sqrt"),
    "mixup_mode": ("batch", "pair", "elem"),
    "amp_dtype": ("", "float16", "bfloat16"),
    "dist_bn": ("", "reduce", "broadcast"),
    "eval_metric": ("top1", "top5", "loss"),
    "qat_reduce_range": ("auto", "on", "off"),
}


@dataclass
class TrainConfig:
    """Everything a training run needs. See ``zoo train --help`` for each field's meaning (same names, dashed)."""

    # model
    model: str = field(default="efficientvit_m0", metadata={"help": "registered model name (zoo list)"})
    pretrained: bool | str = field(
        default=False, metadata={"help": "start from released weights (flag alone) or a checkpoint file (PATH)"}
    )
    num_classes: int | None = field(default=None, metadata={"help": "classifier size (default: the dataset's)"})
    img_size: int | None = field(default=None, metadata={"help": "input side (default: the model's pretrained cfg)"})
    model_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "extra create_model arguments, key=value (e.g. distillation=True)"}
    )
    drop: float | None = field(default=None, metadata={"help": "classifier dropout rate (model default if unset)"})
    drop_path: float | None = field(default=None, metadata={"help": "stochastic depth rate (model default if unset)"})
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory layout"})
    torchcompile: str | None = field(default=None, metadata={"help": "torch.compile the model (backend, inductor)"})
    # data
    data: str = field(
        default="digits", metadata={"help": "ImageFolder root (train/, val/), torchvision name (cifar10), or digits"}
    )
    data_dir: str | None = field(default=None, metadata={"help": "root of a torchvision dataset given by name"})
    dataset_download: bool = field(default=False, metadata={"help": "allow torchvision datasets to download"})
    train_split: str = field(default="train", metadata={"help": "ImageFolder training sub-directory"})
    val_split: str = field(default="val", metadata={"help": "ImageFolder validation sub-directory"})
    on_bad_image: str = field(default="skip", metadata={"help": "unreadable image: skip (warn) or stop"})
    workers: int = field(default=2, metadata={"help": "data loading worker processes"})
    pin_mem: bool = field(default=False, metadata={"help": "pin host memory for faster GPU transfer"})
    batch_size: int = field(default=128, metadata={"help": "batch size per process"})
    validation_batch_size: int | None = field(default=None, metadata={"help": "validation batch (default 2x)"})
    # augmentation and regularisation (timm create_transform / Mixup)
    no_aug: bool = field(default=False, metadata={"help": "no training augmentation"})
    scale: tuple[float, float] = field(default=(0.08, 1.0), metadata={"help": "random resized crop area range"})
    ratio: tuple[float, float] = field(default=(3 / 4, 4 / 3), metadata={"help": "random resized crop aspect range"})
    hflip: float = field(default=0.5, metadata={"help": "horizontal flip probability"})
    vflip: float = field(default=0.0, metadata={"help": "vertical flip probability"})
    color_jitter: float = field(default=0.4, metadata={"help": "color jitter factor (ignored with --aa)"})
    aa: str | None = field(default=None, metadata={"help": "auto-augment policy, e.g. rand-m9-mstd0.5-inc1"})
    train_interpolation: str = field(default="random", metadata={"help": "training resize interpolation"})
    crop_pct: float | None = field(default=None, metadata={"help": "validation centre-crop fraction (model default)"})
    reprob: float = field(default=0.0, metadata={"help": "random erasing probability"})
    remode: str = field(default="pixel", metadata={"help": "random erasing mode"})
    recount: int = field(default=1, metadata={"help": "random erasing count"})
    aug_repeats: int = field(default=0, metadata={"help": "repeated augmentation (DeiT RASampler) repeats, 0 off"})
    mixup: float = field(default=0.0, metadata={"help": "mixup alpha (0: off)"})
    cutmix: float = field(default=0.0, metadata={"help": "cutmix alpha (0: off)"})
    mixup_prob: float = field(default=1.0, metadata={"help": "probability of applying mixup or cutmix"})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "probability of cutmix when both are on"})
    mixup_mode: str = field(default="batch", metadata={"help": "mixup per batch, pair or elem"})
    smoothing: float = field(default=0.1, metadata={"help": "label smoothing"})
    # optimizer (timm create_optimizer_v2)
    opt: str = field(default="adamw", metadata={"help": "optimizer: adamw, sgd, lamb, rmsproptf, ..."})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default: lr_base scaled by batch)"})
    lr_base: float = field(default=1e-3, metadata={"help": "learning rate at lr_base_size global batch"})
    lr_base_size: int = field(default=512, metadata={"help": "global batch that lr_base refers to"})
    lr_base_scale: str = field(default="linear", metadata={"help": "how lr grows with the batch: linear or sqrt"})
    weight_decay: float = field(default=0.05, metadata={"help": "weight decay"})
    momentum: float = field(default=0.9, metadata={"help": "SGD / RMSProp momentum"})
    opt_eps: float | None = field(default=None, metadata={"help": "optimizer epsilon"})
    opt_betas: tuple[float, ...] | None = field(default=None, metadata={"help": "optimizer betas"})
    clip_grad: float | None = field(default=None, metadata={"help": "gradient clipping threshold"})
    clip_mode: str = field(default="norm", metadata={"help": "gradient clipping: norm, value or agc"})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    # schedule (timm create_scheduler_v2)
    epochs: int = field(default=30, metadata={"help": "epochs of the schedule (cooldown epochs come on top)"})
    sched: str = field(default="cosine", metadata={"help": "lr schedule: cosine, step, multistep, poly, ..."})
    sched_on_updates: bool = field(default=True, metadata={"help": "move the lr every optimizer step"})
    warmup_epochs: int = field(default=3, metadata={"help": "linear warm-up epochs"})
    warmup_lr: float = field(default=1e-5, metadata={"help": "lr at the start of the warm-up"})
    min_lr: float = field(default=1e-6, metadata={"help": "lr at the end of the schedule"})
    cooldown_epochs: int = field(default=0, metadata={"help": "epochs at min_lr after the schedule"})
    decay_epochs: float = field(default=90, metadata={"help": "step schedule: epochs between decays"})
    decay_milestones: tuple[int, ...] = field(default=(90, 180, 270), metadata={"help": "multistep epochs"})
    decay_rate: float = field(default=0.1, metadata={"help": "step schedule: decay factor"})
    # model EMA
    model_ema: bool = field(default=False, metadata={"help": "keep an exponential moving average of the weights"})
    model_ema_decay: float = field(default=0.9998, metadata={"help": "EMA decay"})
    model_ema_warmup: bool = field(default=False, metadata={"help": "EMA decay warm-up (timm ModelEmaV3)"})
    # knowledge distillation (DeiT)
    distillation_type: str = field(default="none", metadata={"help": "none, soft (KL) or hard (teacher argmax)"})
    teacher_model: str = field(default="", metadata={"help": "teacher: a zoo or timm model name"})
    teacher_path: str = field(default="", metadata={"help": "teacher checkpoint file (default: its released weights)"})
    distillation_alpha: float = field(default=0.5, metadata={"help": "weight of the distillation loss"})
    distillation_tau: float = field(default=1.0, metadata={"help": "soft distillation temperature"})
    # fine-tuning
    freeze: tuple[str, ...] = field(
        default=(), metadata={"help": "freeze parameters under these module prefixes ('backbone': all but the head)"}
    )
    freeze_bn: bool = field(default=False, metadata={"help": "freeze every BatchNorm (running statistics kept)"})
    bn_tune: bool = field(default=True, metadata={"help": "frozen ConvBN blocks run in tune mode (folded on the fly)"})
    # gradual pruning (blocks.make_pruner)
    prune_to: float = field(default=0.0, metadata={"help": "final sparsity of gradual magnitude pruning (0: off)"})
    prune_start: str = field(default="0", metadata={"help": "pruning start: optimizer steps (N) or epochs (Nep)"})
    prune_end: str = field(default="75%", metadata={"help": "pruning end: steps (N), epochs (Nep) or % of training"})
    prune_freq: int = field(default=100, metadata={"help": "optimizer steps between mask updates"})
    prune_pattern: str = field(default="unstructured", metadata={"help": "sparsity pattern (unstructured, 1x4, 2:4)"})
    # quantization-aware training (blocks.qat): fine-tune the deployed model under INT8 fake quantization
    qat: bool = field(
        default=False, metadata={"help": "QAT: fine-tune the deployed --pretrained model with INT8 fake quantization"}
    )
    qat_reduce_range: str = field(
        default="auto", metadata={"help": "7-bit QAT weights: auto (x86 without VNNI, where 8 bits saturate), on, off"}
    )
    # precision, device, distributed
    device: str = field(default="", metadata={"help": "cpu, cuda, cuda:1 (default: cuda when available)"})
    amp: bool = field(default=False, metadata={"help": "mixed precision (bf16 on CPU, fp16 on CUDA by default)"})
    amp_dtype: str = field(default="", metadata={"help": "float16 or bfloat16 (default by device)"})
    sync_bn: bool = field(default=False, metadata={"help": "SyncBatchNorm under DDP (CUDA only)"})
    dist_bn: str = field(default="reduce", metadata={"help": "average BN statistics across ranks before eval"})
    # run
    output: str = field(default="out/train", metadata={"help": "output directory"})
    resume: str = field(default="", metadata={"help": "an earlier output directory or its last_state.pt"})
    seed: int = field(default=42, metadata={"help": "random seed"})
    deterministic: bool = field(default=False, metadata={"help": "deterministic algorithms (bitwise resume)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    log_interval: int = field(default=10, metadata={"help": "optimizer steps between progress updates"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    eval_metric: str = field(default="top1", metadata={"help": "metric that picks best.safetensors"})
    plot: bool = field(default=True, metadata={"help": "write curves.png at the end"})

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "grad_accum_steps", "log_interval", "prune_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.prune_to < 1.0:
            raise ValueError(f"prune_to is a sparsity in [0, 1), got {self.prune_to}")
        if self.qat and self.prune_to > 0:
            raise ValueError("qat and prune_to cannot be combined: prune first, then fine-tune with qat")
        if self.distillation_type != "none" and not self.teacher_model:
            raise ValueError(f"distillation_type={self.distillation_type!r} needs teacher_model")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError("mixup/cutmix need an even batch_size")
        self.scale, self.ratio = tuple(self.scale), tuple(self.ratio)
        self.freeze = tuple(self.freeze)
        self.decay_milestones = tuple(self.decay_milestones)
        if self.opt_betas is not None:
            self.opt_betas = tuple(self.opt_betas)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> TrainConfig:
        """Build from a mapping of field names; unknown names raise with suggestions."""
        return cls(**check_fields(values, origin))

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Load a ``config.json`` written by an earlier run."""
        return cls.from_dict(json.loads(Path(path).read_text()), origin=str(path))


def field_types() -> dict[str, Any]:
    """``{field name: resolved type}`` of :class:`TrainConfig`."""
    return typing.get_type_hints(TrainConfig)


def check_fields(values: dict[str, Any], origin: str) -> dict[str, Any]:
    """Reject unknown field names (with the closest known ones), so that a typo in a recipe never passes silently."""
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"{origin}: unknown setting {key!r}.{hint}")
    return dict(values)


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``train/recipes``."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A shipped recipe by name (``efficientvit``) or any TOML file by path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPE_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no recipe {str(name_or_path)!r}: not a file, and not one of {', '.join(list_recipes())}")


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """Settings of a TOML recipe (a ``[recipe]`` table with ``description``/``source`` is documentation only).

    Raises:
        FileNotFoundError: no such recipe.
        ValueError: malformed TOML or an unknown setting.
    """
    path = recipe_path(name_or_path)
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from e
    values.pop("recipe", None)
    return check_fields(values, origin=str(path))
