"""What a run is made of: the model (and teacher), frozen layers, optimizer, schedule, losses, precision, pruner.

Each builder takes the config and returns one object, so that :func:`train.loop.fit` reads as the training loop only.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import typing
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import blocks
import zoo
from weights import load_checkpoint

from .config import TrainConfig

__all__ = [
    "accepts_arg",
    "build_model",
    "model_img_size",
    "apply_freeze",
    "effective_lr",
    "build_optimizer",
    "build_scheduler",
    "build_criterion",
    "DistillationLoss",
    "build_teacher",
    "classifier_must_fit",
    "autocast_and_scaler",
    "parse_when",
    "build_pruner",
]


def accepts_arg(name: str, arg: str) -> bool:
    """Whether registered model ``name``'s constructor takes ``arg`` (e.g. fixed-geometry models take img_size)."""
    family = zoo.get_family(name)
    cls = typing.get_type_hints(family.variants[name]).get("return", family.model_cls)
    return arg in inspect.signature(cls.__init__).parameters


def _pretrained_arg(value: bool | str) -> bool | str:
    if isinstance(value, str) and value.lower() in ("", "false", "0"):
        return False
    if isinstance(value, str) and value.lower() in ("true", "1"):
        return True
    return value


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The student, from the registry; ``img_size``, dropout and extra kwargs passed where the model takes them."""
    if cfg.model not in zoo.list_models():
        zoo.get_family(cfg.model)  # raises UnknownModelError with suggestions
    kwargs: dict[str, Any] = dict(cfg.model_kwargs)
    if cfg.img_size is not None and accepts_arg(cfg.model, "img_size"):
        kwargs.setdefault("img_size", cfg.img_size)
    if cfg.drop is not None:
        kwargs["drop_rate"] = cfg.drop
    if cfg.drop_path is not None:
        kwargs["drop_path_rate"] = cfg.drop_path
    model = zoo.create_model(cfg.model, pretrained=_pretrained_arg(cfg.pretrained), num_classes=num_classes, **kwargs)
    if cfg.qat and not _pretrained_arg(cfg.pretrained):
        raise ValueError("qat fine-tunes a trained model: give --pretrained <checkpoint of zoo train> (or released)")
    if cfg.qat and not hasattr(model, "qat"):  # (a QAT checkpoint comes back as its QAT graph: training continues)
        model = _to_qat(model, cfg)
    return model


def _to_qat(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The deployed model under INT8 fake quantization (``blocks.qat``), at the input size it trains at."""
    from blocks import qat

    side = model_img_size(cfg, model)
    size = (int(model.pretrained_cfg["input_size"][0]), side, side)
    rr = {"auto": qat.default_reduce_range(), "on": True, "off": False}[cfg.qat_reduce_range]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return qat.prepare_qat(blocks.reparameterize_model(model.eval()), size, reduce_range=rr)


def model_img_size(cfg: TrainConfig, model: nn.Module) -> int:
    """The input side to train at: ``cfg.img_size`` or the model's pretrained config."""
    return cfg.img_size if cfg.img_size is not None else int(model.pretrained_cfg["input_size"][-1])


def _head_prefixes(model: nn.Module) -> set[str]:
    """Top-level modules that hold the classifier (``head.linear`` -> ``head``): what ``freeze=backbone`` trains."""
    names = model.pretrained_cfg.get("classifier") or ()
    return {n.split(".")[0] for n in names}


def apply_freeze(model: nn.Module, cfg: TrainConfig) -> Callable[[], None]:
    """Freeze the parameters under ``cfg.freeze`` (and BatchNorms where asked); return the re-freeze hook.

    Frozen modules keep their BN statistics: ConvBN blocks switch to tune mode (eval statistics, folded on the fly,
    which is exact and saves the BN activation memory); bare BN layers go to eval mode, which ``model.train()`` undoes,
    hence the returned function that the loop calls after every ``model.train()``.
    """
    prefixes = list(cfg.freeze)
    if "backbone" in prefixes:
        heads = _head_prefixes(model)
        if not heads:
            raise ValueError(f"{cfg.model}: freeze=backbone needs the model's classifier names in pretrained_cfg")
        prefixes.remove("backbone")
        prefixes += [n for n, _ in model.named_children() if n not in heads]
    frozen: list[nn.Module] = []
    for prefix in prefixes:
        try:
            module = model.get_submodule(prefix)
        except AttributeError as e:
            top = ", ".join(n for n, _ in model.named_children())
            raise ValueError(f"freeze: {cfg.model} has no module {prefix!r} (top-level modules: {top})") from e
        module.requires_grad_(False)
        frozen.append(module)
    if cfg.freeze_bn:
        frozen = [model]
    if not frozen:
        return lambda: None

    def refreeze() -> None:
        for module in frozen:
            blocks.set_bn_frozen(module, tune=cfg.bn_tune)

    refreeze()
    return refreeze


def effective_lr(cfg: TrainConfig, world: int) -> float:
    """``cfg.lr``, or ``lr_base`` scaled from ``lr_base_size`` to the global batch (timm's rule)."""
    if cfg.lr is not None:
        return cfg.lr
    ratio = cfg.batch_size * world * cfg.grad_accum_steps / cfg.lr_base_size
    return cfg.lr_base * (ratio if cfg.lr_base_scale == "linear" else math.sqrt(ratio))


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory; no weight decay on biases, norms and the model's ``no_weight_decay()`` set."""
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {}
    if cfg.opt_eps is not None:
        kwargs["eps"] = cfg.opt_eps
    if cfg.opt_betas is not None:
        kwargs["betas"] = tuple(cfg.opt_betas)
    return create_optimizer_v2(
        model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, **kwargs
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_epoch: int) -> tuple[Any, int]:
    """timm's scheduler factory; returns ``(scheduler, total epochs including cooldown)``."""
    from timm.scheduler import create_scheduler_v2

    return create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        decay_epochs=cfg.decay_epochs,
        decay_milestones=list(cfg.decay_milestones),
        cooldown_epochs=cfg.cooldown_epochs,
        decay_rate=cfg.decay_rate,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=not cfg.sched_on_updates,
        updates_per_epoch=updates_per_epoch,
    )


def build_criterion(cfg: TrainConfig) -> nn.Module:
    """Training loss: soft-target CE under mixup (which applies the smoothing), label smoothing, or plain CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.mixup > 0 or cfg.cutmix > 0:
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


class DistillationLoss(nn.Module):
    """DeiT's distillation loss around a base criterion.

    A student with a distillation head returns stacked ``(2, B, C)`` logits in training mode (class head, distillation
    head); other students use their one output for both terms. Without a teacher, both heads learn the labels, since
    at evaluation such a model averages them.

    Args:
        base: loss on the labels (or mixup's soft targets).
        teacher: frozen teacher in eval mode, or None.
        kind: ``none``, ``soft`` (KL divergence at temperature ``tau``, as DeiT) or ``hard`` (CE on teacher argmax).
        alpha: weight of the distillation term.
        tau: soft-distillation temperature.
    """

    def __init__(self, base: nn.Module, teacher: nn.Module | None, kind: str, alpha: float, tau: float) -> None:
        super().__init__()
        self.base, self.teacher, self.kind, self.alpha, self.tau = base, teacher, kind, alpha, tau

    def forward(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out_cls, out_kd = (outputs[0], outputs[1]) if outputs.dim() == 3 else (outputs, outputs)
        base = self.base(out_cls, targets)
        if self.kind == "none" or self.teacher is None:
            return base if outputs.dim() == 2 else (base + self.base(out_kd, targets)) / 2
        with torch.no_grad():
            t = self.teacher(inputs).float()
        if self.kind == "soft":
            T = self.tau
            kd = F.kl_div(
                F.log_softmax(out_kd.float() / T, dim=1), F.log_softmax(t / T, dim=1), reduction="sum", log_target=True
            ) * (T * T / out_kd.numel())
        else:
            kd = F.cross_entropy(out_kd, t.argmax(dim=1))
        return base * (1 - self.alpha) + kd * self.alpha


@contextlib.contextmanager
def classifier_must_fit(what: str) -> Iterator[None]:
    """Turn the loader's "classifier dropped" warning into an error: a teacher or a validated model with a fresh
    classifier would produce noise. Other warnings pass through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if "classifier" in str(w.message):
            raise ValueError(f"{what}: {w.message}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def build_teacher(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    """The frozen teacher: a zoo model (released weights or ``teacher_path``) or a timm model with a checkpoint.

    It sees the student's input, so a zoo teacher with fixed geometry is built for ``cfg.img_size``.

    Raises:
        ValueError: unknown teacher, or a checkpoint whose classifier does not fit ``num_classes``.
    """
    import timm

    name, path = cfg.teacher_model, cfg.teacher_path
    with classifier_must_fit(f"teacher {name} from {path or 'its released weights'}"):
        if name in zoo.list_models():
            kwargs = {"img_size": cfg.img_size} if cfg.img_size and accepts_arg(name, "img_size") else {}
            teacher = zoo.create_model(name, pretrained=path or True, num_classes=num_classes, **kwargs)
        elif timm.is_model(name):
            teacher = timm.create_model(name, pretrained=not path, num_classes=num_classes)
            if path:
                teacher.load_state_dict(load_checkpoint(path))
        else:
            raise ValueError(f"teacher {name!r} is neither a zoo model (zoo list) nor a timm model")
    return teacher.eval().requires_grad_(False).to(device)


def autocast_and_scaler(cfg: TrainConfig, device: torch.device) -> tuple[Callable[[], Any], Any]:
    """Autocast context factory and GradScaler (fp16 only) for ``cfg.amp``: bf16 on CPU, fp16 on CUDA by default."""
    if not cfg.amp:
        return contextlib.nullcontext, None
    dtype_name = cfg.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
    dtype = getattr(torch, dtype_name)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), scaler


def parse_when(value: str, updates_per_epoch: int, total_steps: int) -> int:
    """An optimizer-step count from ``"1000"`` (steps), ``"2ep"`` / ``"2.5ep"`` (epochs) or ``"75%"`` (of training)."""
    v = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ep|epochs?|%)?", v)
    if not m:
        raise ValueError(f"cannot read {value!r}: give optimizer steps (1000), epochs (2ep) or a percentage (75%)")
    number, unit = float(m.group(1)), m.group(2)
    if unit is None:
        return int(number)
    if unit == "%":
        return round(total_steps * number / 100)
    return round(number * updates_per_epoch)


def build_pruner(model: nn.Module, cfg: TrainConfig, updates_per_epoch: int, total_steps: int) -> Any | None:
    """Gradual magnitude pruner (Zhu & Gupta) from ``blocks.make_pruner``, or None when ``prune_to`` is 0."""
    if cfg.prune_to <= 0:
        return None
    make_pruner = getattr(blocks, "make_pruner", None)
    if make_pruner is None:
        raise RuntimeError("--prune-to needs blocks.make_pruner (the sparse blocks), which this install lacks")
    start = parse_when(cfg.prune_start, updates_per_epoch, total_steps)
    end = parse_when(cfg.prune_end, updates_per_epoch, total_steps)
    if not 0 <= start < end <= total_steps:
        raise ValueError(f"pruning window must satisfy 0 <= start ({start}) < end ({end}) <= steps ({total_steps})")
    return make_pruner(model, cfg.prune_to, start, end, cfg.prune_freq, pattern=cfg.prune_pattern)
