"""The training loop: :func:`fit` takes a :class:`TrainConfig` and runs it, single-process or under ``torchrun``.

Everything the loop is made of is built in ``build.py``/``data.py``; this file is the loop itself, top to bottom.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import blocks

from . import checkpoint as ckpt
from .build import (
    DistillationLoss,
    apply_freeze,
    autocast_and_scaler,
    build_criterion,
    build_model,
    build_optimizer,
    build_pruner,
    build_scheduler,
    build_teacher,
    effective_lr,
    model_img_size,
)
from .config import TrainConfig
from .data import batches, build_datasets, build_loaders, build_transforms
from .distributed import DistEnv, all_sum, gather_objects, setup, teardown
from .metrics import MetricsLog, evaluate, plot_curves

__all__ = ["fit", "NonFiniteLossError"]

_log = logging.getLogger("train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def _torch_settings(cfg: TrainConfig) -> Iterator[None]:
    """Thread count and determinism for the run, restored afterwards (fit may be called inside a larger program)."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = torch.cuda.is_available() and not cfg.deterministic
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def _wrap(model: nn.Module, cfg: TrainConfig, env: DistEnv) -> nn.Module:
    """The module the loop calls: optionally compiled, DDP-wrapped under torchrun. ``model`` stays the plain one."""
    net: nn.Module = model
    if cfg.torchcompile:
        net = torch.compile(net, backend=cfg.torchcompile)
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return net


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: Any, model: nn.Module, cfg: TrainConfig) -> None:
    from timm.utils import dispatch_clip_grad

    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
    if cfg.clip_grad:
        dispatch_clip_grad([p for p in model.parameters() if p.requires_grad], cfg.clip_grad, mode=cfg.clip_mode)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _check_finite(value: float, where: str, output: Path) -> float:
    """``value`` unless it is NaN/inf, in which case the run stops before anything is written."""
    if not math.isfinite(value):
        kept = output / ckpt.STATE_FILE
        raise NonFiniteLossError(
            f"{where} is {value}; stopped. The last good checkpoint is kept: "
            f"{kept if kept.exists() else '(none written yet)'}. Try a lower --lr, --clip-grad or --amp-dtype bfloat16."
        )
    return value


def _mean_loss(loss_sum: torch.Tensor, count: int, env: DistEnv) -> float:
    """Mean training loss so far over all ranks (so that every rank sees a NaN at the same step and stops together)."""
    total, n = all_sum(env, [loss_sum.item(), float(count)])
    return total / max(n, 1.0)


def fit(config: TrainConfig) -> dict[str, Any]:
    """Train ``config.model`` as configured; returns the best metric, the last epoch's record and the output paths.

    Under ``torchrun --nproc_per_node=N`` each process calls this; rank 0 logs and writes files.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        train.data.BadImageError: an unreadable image with ``on_bad_image='stop'``.
    """
    env = setup(config.device)
    try:
        with _torch_settings(config):
            return _fit(config, env)
    finally:
        teardown(env)


@dataclass
class _Run:
    """Everything :func:`_fit` drives, built once by :func:`_build`."""

    model: nn.Module  # the plain model (what is saved); ``net`` wraps it for compile / DDP
    net: nn.Module
    train_loader: Any
    val_loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    num_epochs: int
    pruner: Any
    ema: Any
    autocast: Any
    scaler: Any
    criterion: DistillationLoss
    mixup: Any
    refreeze: Any
    meta: dict[str, str]
    img_size: int
    num_classes: int

    @property
    def extra(self) -> list[Any]:
        """Non-module step-scheduled objects (the pruner)."""
        return [self.pruner] if self.pruner is not None else []


def _build(cfg: TrainConfig, env: DistEnv) -> _Run:
    _seed(cfg.seed)  # the same on every rank: identical initial weights (and EMA copies) everywhere
    if cfg.sync_bn and env.distributed and env.device.type != "cuda":
        raise ValueError("sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU kernel); use dist_bn=reduce")
    data = build_datasets(cfg)
    num_classes = cfg.num_classes or data.num_classes
    model = build_model(cfg, num_classes).to(env.device)
    img_size = model_img_size(cfg, model)
    refreeze = apply_freeze(model, cfg)
    if cfg.sync_bn and env.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    transforms = build_transforms(cfg, model.pretrained_cfg, img_size)
    train_loader, val_loader = build_loaders(cfg, data, transforms, env.rank, env.world)
    if hasattr(model, "qat"):  # QAT starts from ranges calibrated on a few training batches
        from blocks.qat import calibrate

        calibrate(model, (x.to(env.device) for x, _ in batches(train_loader, cfg.on_bad_image)))
    updates_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum_steps)
    optimizer = build_optimizer(model, cfg, effective_lr(cfg, env.world))
    scheduler, num_epochs = build_scheduler(optimizer, cfg, updates_per_epoch)
    pruner = build_pruner(model, cfg, updates_per_epoch, num_epochs * updates_per_epoch)
    ema = None
    if cfg.model_ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup)
    autocast, scaler = autocast_and_scaler(cfg, env.device)
    teacher = build_teacher(cfg, num_classes, env.device) if cfg.distillation_type != "none" else None
    criterion = DistillationLoss(
        build_criterion(cfg), teacher, cfg.distillation_type, cfg.distillation_alpha, cfg.distillation_tau
    )
    return _Run(
        model=model,
        net=_wrap(model, cfg, env),
        train_loader=train_loader,
        val_loader=val_loader,
        optimizer=optimizer,
        scheduler=scheduler,
        num_epochs=num_epochs,
        pruner=pruner,
        ema=ema,
        autocast=autocast,
        scaler=scaler,
        criterion=criterion,
        mixup=_mixup(cfg, num_classes),
        refreeze=refreeze,
        meta=ckpt.weights_metadata(cfg.model, num_classes, img_size, cfg.model_kwargs, **_qat_meta(model)),
        img_size=img_size,
        num_classes=num_classes,
    )


def _qat_meta(model: nn.Module) -> dict[str, str]:
    """A QAT run's checkpoints say so (deployed form, learned ranges): ``zoo.create_model`` rebuilds the QAT graph."""
    return {"qat": json.dumps(model.qat)} if hasattr(model, "qat") else {}


# settings that define the lr schedule: when a resume changes one (e.g. more epochs), the new schedule applies
_SCHEDULE_FIELDS = (
    "epochs", "sched", "sched_on_updates", "warmup_epochs", "warmup_lr", "min_lr", "cooldown_epochs",
    "decay_epochs", "decay_milestones", "decay_rate", "lr", "lr_base", "lr_base_size", "lr_base_scale",
    "batch_size", "grad_accum_steps",
)  # fmt: skip


def _restore(run: _Run, state: dict[str, Any], cfg: TrainConfig, env: DistEnv) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    now, then = cfg.to_dict(), state["config"]
    changed = [k for k in _SCHEDULE_FIELDS if now[k] != then.get(k)]
    if changed:
        _log.warning("resuming with changed %s: the lr follows the new schedule from here", ", ".join(changed))
    else:
        run.scheduler.load_state_dict(state["scheduler"])
    for obj, key in ((run.ema, "ema"), (run.scaler, "scaler"), (run.pruner, "pruner")):
        if obj is not None:
            if state.get(key) is None:
                raise ValueError(f"cannot resume: the checkpoint has no {key} state but this run uses one")
            (obj.module if key == "ema" else obj).load_state_dict(state[key])
    rngs = state["rng"]
    if len(rngs) == env.world:
        ckpt.set_rng_state(rngs[env.rank])
    else:
        _log.warning("resuming with %d processes instead of %d: RNG streams restart", env.world, len(rngs))


def _training_state(run: _Run, cfg: TrainConfig, epoch: int, step: int, best: Any, best_epoch: int, rngs: list):
    """The resumable state after ``epoch`` epochs: tensors and plain containers only (weights_only-loadable)."""
    return {
        "format": ckpt.FORMAT,
        "epoch": epoch,
        "step": step,
        "best": best,
        "best_epoch": best_epoch,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "ema": run.ema.module.state_dict() if run.ema is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "pruner": run.pruner.state_dict() if run.pruner is not None else None,
        "rng": rngs,
        "config": cfg.to_dict(),
    }


def _distribute_bn(run: _Run, cfg: TrainConfig, env: DistEnv) -> None:
    """Average (or broadcast) BatchNorm statistics across ranks so that every rank evaluates the same model."""
    if env.distributed and cfg.dist_bn and not cfg.sync_bn:
        from timm.utils import distribute_bn

        for m in (run.model, run.ema.module if run.ema is not None else None):
            if m is not None:
                distribute_bn(m, env.world, reduce=cfg.dist_bn == "reduce")


def _fit(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    out = Path(cfg.output)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    run = _build(cfg, env)
    model, net, optimizer, scheduler = run.model, run.net, run.optimizer, run.scheduler
    scaler, ema = run.scaler, run.ema
    has_schedules = bool(run.extra or blocks.scheduled_modules(model))
    accum, higher_better = cfg.grad_accum_steps, cfg.eval_metric != "loss"

    # --- where it starts: fresh, or exactly where a checkpoint left off ---
    epoch0, step, best, best_epoch = 0, 0, None, 0
    _seed(cfg.seed + env.rank)  # from here on, each rank draws its own augmentations
    if cfg.resume:
        state = ckpt.load_state(cfg.resume)
        _restore(run, state, cfg, env)
        epoch0, step, best, best_epoch = state["epoch"], state["step"], state["best"], state["best_epoch"]
        scheduler.step(epoch0)
        scheduler.step_update(step)
        if env.is_main:
            _log.info("resumed from %s at epoch %d, step %d", cfg.resume, epoch0, step)
    if has_schedules:
        blocks.set_step(model, step, extra=run.extra)
    log = MetricsLog(out, env.is_main, resumed_epoch=epoch0)

    for epoch in range(epoch0, run.num_epochs):
        run.train_loader.sampler.set_epoch(epoch)
        net.train()
        run.refreeze()  # model.train() put frozen bare BatchNorms back in training mode
        loss_sum, seen, n_batches = torch.zeros((), device=env.device), 0, len(run.train_loader)
        lr = optimizer.param_groups[0]["lr"]
        show = cfg.progress and env.is_main
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{run.num_epochs}", disable=not show, leave=False)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(batches(run.train_loader, cfg.on_bad_image)):
            if has_schedules and i % accum == 0:
                blocks.set_step(model, step, extra=run.extra)  # schedules see the step about to be taken
            x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
            if run.mixup is not None:
                x, y = run.mixup(*_even(x, y))
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            boundary = (i + 1) % accum == 0 or i + 1 == n_batches
            cycle = min(accum, n_batches - (i // accum) * accum)  # the last cycle of an epoch may be shorter
            # DDP all-reduces gradients on every backward; skip that for all but the last micro-batch of a step
            sync = contextlib.nullcontext() if boundary or not env.distributed else net.no_sync()
            with sync:
                with run.autocast():
                    loss = run.criterion(x, net(x), y)
                (scaler.scale(loss / cycle) if scaler is not None else loss / cycle).backward()
            loss_sum += loss.detach() * x.shape[0]  # no .item() here: a host sync every step would cost throughput
            seen += x.shape[0]
            if boundary:
                lr = optimizer.param_groups[0]["lr"]  # the lr this step uses (recorded below)
                _optimizer_step(optimizer, scaler, model, cfg)
                step += 1
                scheduler.step_update(num_updates=step)
                if ema is not None:
                    ema.update(model, step=step)
                if step % cfg.log_interval == 0:
                    mean = _mean_loss(loss_sum, seen, env)
                    _check_finite(mean, f"the training loss at epoch {epoch + 1}, step {step}", out)
                    ips = seen * env.world / (time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}", refresh=False)
            bar.update(1)
        bar.close()
        train_time = time.perf_counter() - t0
        train_loss = _check_finite(_mean_loss(loss_sum, seen, env), f"the training loss of epoch {epoch + 1}", out)
        images = all_sum(env, [float(seen)])[0]
        scheduler.step(epoch + 1)

        # --- evaluate, record, checkpoint (rank 0 writes; every rank takes part in the collectives) ---
        _distribute_bn(run, cfg, env)
        eval_model = ema.module if ema is not None else model
        val = evaluate(eval_model, run.val_loader, env, run.autocast, cfg.on_bad_image, cfg.channels_last)
        _check_finite(val["val_loss"], f"the validation loss after epoch {epoch + 1}", out)  # NaN weights: no save
        metric = val[f"val_{cfg.eval_metric}"]
        improved = best is None or (metric > best if higher_better else metric < best)
        if improved:
            best, best_epoch = metric, epoch + 1
        record = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": train_loss,
            **val,
            "lr": lr,
            "img_per_s": images / train_time,
            "epoch_time_s": time.perf_counter() - t0,
            "evaluated": "ema" if ema is not None else "model",
            f"best_{cfg.eval_metric}": best,
        }
        rngs = gather_objects(env, ckpt.rng_state())
        if env.is_main:
            # metrics first: a kill before the state write leaves a record that the resume drops and redoes
            log.append(record)
            _log.info(_summary(record, run.num_epochs))
            meta = {**run.meta, "epoch": epoch + 1}
            if improved:
                ckpt.save_weights(eval_model, out / "best.safetensors", {**meta, "weights": record["evaluated"]})
            state = _training_state(run, cfg, epoch + 1, step, best, best_epoch, rngs)
            ckpt.save_state(out / ckpt.STATE_FILE, state)
            ckpt.save_weights(model, out / "last.safetensors", {**meta, "weights": "model"})

    if env.is_main and cfg.plot and log.records:
        plot_curves(log.records, out / "curves.png")
    return {
        "best": best,
        "best_epoch": best_epoch,
        "eval_metric": cfg.eval_metric,
        "last": log.records[-1] if log.records else None,
        "output": str(out),
        "img_size": run.img_size,
        "num_classes": run.num_classes,
    }


def _mixup(cfg: TrainConfig, num_classes: int) -> Any:
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        mode=cfg.mixup_mode,
        label_smoothing=cfg.smoothing,
        num_classes=num_classes,
    )


def _even(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup pairs samples: drop the last one of an odd batch (only after skipping unreadable images)."""
    n = x.shape[0] - x.shape[0] % 2
    return x[:n], y[:n]


def _summary(r: dict[str, Any], num_epochs: int) -> str:
    return (
        f"epoch {r['epoch']}/{num_epochs}  train_loss {r['train_loss']:.4f}  val_loss {r['val_loss']:.4f}  "
        f"top1 {r['val_top1']:.2f}  top5 {r['val_top5']:.2f}  lr {r['lr']:.2e}  {r['img_per_s']:.0f} img/s"
    )
