"""Load what is to be exported: a registered model (fresh, ``--pretrained`` or a checkpoint) or a user's module.

A checkpoint's classifier size decides the model's ``num_classes`` (a model trained on 10 classes exports with 10
outputs, not with the ImageNet head the registry defaults to). Class names come from a ``classes`` JSON list in a
safetensors file's metadata, which the training loop writes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import weights
import zoo

from .errors import ExportInputError

__all__ = ["Loaded", "load_for_export"]


@dataclass
class Loaded:
    """A model ready for folding, with everything the manifest says about where it came from."""

    model: nn.Module
    name: str
    family: Any | None
    cfg: dict[str, Any]
    input_size: tuple[int, int, int]
    classes: list[str] | None
    checkpoint: dict[str, Any] | None
    bn_identity: bool
    num_classes: int
    create_args: dict[str, Any] = field(default_factory=dict)
    qat: nn.Module | None = None  # the QAT graph of a ``zoo train --qat`` checkpoint (its INT8 ranges were learned)


def _accepts(name: str, arg: str) -> bool:
    family = zoo.get_family(name)
    cls = typing.get_type_hints(family.variants[name]).get("return", family.model_cls)
    return arg in inspect.signature(cls.__init__).parameters


def _bn_is_identity(model: nn.Module) -> bool:
    """True when every BatchNorm still has a fresh model's statistics (mean 0, var 1): nothing was trained."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    return all(torch.all(b.running_mean == 0) and torch.all(b.running_var == 1) for b in bns)


def _checkpoint_meta(path: Path) -> dict[str, str]:
    try:
        return weights.read_safetensors_metadata(path)
    except Exception:  # noqa: BLE001 - not a safetensors file: no metadata
        return {}


def _classes_from_meta(meta: dict[str, str], path: Path) -> list[str] | None:
    raw = meta.get("classes")
    if raw is None:
        return None
    try:
        classes = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ExportInputError(f"{path}: metadata 'classes' is not JSON ({e}): {raw[:80]!r}") from e
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ExportInputError(f"{path}: metadata 'classes' must be a JSON list of strings, got {raw[:80]!r}")
    return classes


def _int_from_meta(meta: dict[str, str], key: str, path: Path) -> int | None:
    """An integer the training loop recorded in the metadata (``img_size``, ``num_classes``), if any."""
    if key not in meta:
        return None
    try:
        value = json.loads(meta[key])
        return int(value[-1] if isinstance(value, list) else value)  # "32" or an input size "[3, 32, 32]"
    except (ValueError, TypeError, IndexError) as e:
        raise ExportInputError(f"{path}: metadata {key!r} is not an integer: {meta[key][:40]!r}") from e


def _checkpoint_classes(name: str, path: Path, create: dict[str, Any]) -> int | None:
    """The classifier size stored in a checkpoint (any key layout the family knows), or None if it has none."""
    family = zoo.get_family(name)
    sd = weights.load_checkpoint(path)
    target = zoo.create_model(name, **create).state_dict()
    _layout, converted = weights.detect_layout(sd, target, family.converters)
    for cls in family.cfgs[name].classifier:
        w = converted.get(f"{cls}.weight")
        if w is not None:
            return int(w.shape[0])
    return None


def _load_registered(
    name: str, checkpoint: str | Path | None, pretrained: bool, img_size: int | None, num_classes: int | None
) -> Loaded:
    family = zoo.get_family(name)  # UnknownModelError with suggestions
    if name not in family.variants:
        raise zoo.UnknownModelError(f"{name!r} is a family; pick a model: {', '.join(sorted(family.variants))}")
    if checkpoint is not None and pretrained:
        raise ExportInputError("give either a checkpoint or --pretrained, not both")
    create: dict[str, Any] = {}
    ckpt_info, classes, meta, qat_graph = None, None, {}, None
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise ExportInputError(f"checkpoint file not found: {path}")
        meta = _checkpoint_meta(path)
        trained = (zoo.qat_settings(path) or {}).get("input_size")
        if trained and img_size and img_size != trained[-1]:
            raise ExportInputError(
                f"{path} was QAT-trained at input {tuple(trained)}; its INT8 graph is fixed to it, so it cannot "
                f"export at {img_size} px: drop --imgsz or give {trained[-1]}"
            )
        img_size = img_size or _int_from_meta(meta, "img_size", path)
    if img_size is not None and _accepts(name, "img_size"):
        create["img_size"] = img_size
    if checkpoint is not None:
        classes = _classes_from_meta(meta, path)
        n = num_classes or (len(classes) if classes else None) or _int_from_meta(meta, "num_classes", path)
        n = n or _checkpoint_classes(name, path, create)
        if n is not None:
            create["num_classes"] = n
        model = zoo.create_model(name, pretrained=path, **create)
        ckpt_info = {"path": str(path), "sha256": weights.sha256sum(path), "metadata": meta}
        if hasattr(model, "qat"):
            qat_graph, model = model, _float_twin(name, create, model)
    else:
        if num_classes is not None:
            create["num_classes"] = num_classes
        model = zoo.create_model(name, pretrained=pretrained, **create)
        if pretrained:
            spec = family.weights[name]
            ckpt_info = {"path": str(weights.cached_path(spec)), "url": spec.url, "sha256": spec.sha256}
    if classes is not None and len(classes) != model.num_classes:
        raise ExportInputError(f"checkpoint lists {len(classes)} classes but its classifier has {model.num_classes}")
    cfg = dict(model.pretrained_cfg)
    if img_size is not None:  # models without a fixed geometry take any size: export at the one asked for
        cfg["input_size"] = (cfg["input_size"][0], img_size, img_size)
    size = tuple(cfg["input_size"])
    bn_identity = _bn_is_identity(model) and qat_graph is None
    return Loaded(
        model, name, family, cfg, size, classes, ckpt_info, bn_identity, model.num_classes, create, qat=qat_graph
    )


def _float_twin(name: str, create: dict[str, Any], qat_graph: nn.Module) -> nn.Module:
    """The deployed model with a QAT graph's float weights: what the FP32 formats (and the INT8 gate's FP32 twin)
    are made from. The QAT graph keeps the deployed model's parameter names, so the weights load strictly."""
    import blocks
    from blocks.qat import float_state

    twin = blocks.reparameterize_model(zoo.create_model(name, **create).eval())
    twin.load_state_dict(float_state(qat_graph), strict=True)
    twin.pretrained_cfg = {**twin.pretrained_cfg, "input_size": tuple(qat_graph.qat["input_size"])}
    return twin


def _load_module(model: nn.Module, img_size: int | None, classes: list[str] | None) -> Loaded:
    """A user's own module: preprocessing from its ``pretrained_cfg`` when it has one, else ImageNet defaults."""
    cfg = {**dataclasses.asdict(zoo.PretrainedCfg()), **dict(getattr(model, "pretrained_cfg", None) or {})}
    c = int(cfg["input_size"][0])
    side = img_size or int(cfg["input_size"][1])
    cfg["input_size"] = (c, side, side)
    name = str(cfg.get("architecture") or type(model).__name__.lower())
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:  # no attribute: the output width tells
        with torch.no_grad():
            num_classes = int(model.eval()(torch.zeros(1, c, side, side)).shape[-1])
    return Loaded(model, name, None, cfg, (c, side, side), classes, None, _bn_is_identity(model), num_classes)


def load_for_export(
    model: str | nn.Module,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    img_size: int | None = None,
    num_classes: int | None = None,
    classes: list[str] | None = None,
) -> Loaded:
    """Build (registered name) or wrap (module) the model to export.

    Raises:
        zoo.UnknownModelError: unknown name, with suggestions.
        weights.WeightsError: the checkpoint cannot be read or does not match (every mismatched key listed).
        ExportInputError: contradictory arguments or bad checkpoint metadata.
    """
    if isinstance(model, nn.Module):
        if checkpoint is not None or pretrained:
            raise ExportInputError("a checkpoint or --pretrained needs a registered model name, not a module")
        loaded = _load_module(model, img_size, classes)
    else:
        loaded = _load_registered(model, checkpoint, pretrained, img_size, num_classes)
        if classes is not None:
            loaded.classes = list(classes)
    if loaded.classes is not None and len(loaded.classes) != loaded.num_classes:
        raise ExportInputError(f"{len(loaded.classes)} class names for a model with {loaded.num_classes} outputs")
    return loaded
