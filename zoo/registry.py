"""The model registry: families register their variants; ``create_model`` builds one, strictly.

A family file builds a :class:`Family` (paper, converters, weights table, reported numbers) and decorates one small
function per variant with ``@FAMILY.register``. The function's return annotation names the model class, whose
constructor signature is the list of accepted overrides: a misspelled argument raises with suggestions instead of
disappearing into a ``**kwargs`` sink.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from weights import (
    Converter,
    WeightsError,
    WeightSpec,
    fetch_weights,
    load_checkpoint,
    load_into,
    read_safetensors_metadata,
)

__all__ = [
    "Paper",
    "Reported",
    "PretrainedCfg",
    "Family",
    "UnknownModelError",
    "create_model",
    "list_models",
    "list_families",
    "get_family",
    "load_pretrained",
]


@dataclass(frozen=True)
class Paper:
    """Where a family comes from."""

    title: str
    arxiv: str
    venue: str
    repo: str
    code_license: str
    weights_license: str


@dataclass(frozen=True)
class Reported:
    """Numbers a paper (or the weights' publisher) reports for one variant. None where nothing was published.

    ``macs_g`` is in multiply-accumulates (what papers call "FLOPs"); ``latency`` is free text with its hardware.
    """

    params_m: float | None = None
    macs_g: float | None = None
    top1: float | None = None
    resolution: int = 224
    latency: str = ""
    source: str = ""
    dataset: str = "imagenet-1k"  # what ``top1`` was measured on


@dataclass(frozen=True)
class PretrainedCfg:
    """Preprocessing and head description of a variant, as timm's ``pretrained_cfg``."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    num_classes: int = 1000
    first_conv: str = ""
    classifier: tuple[str, ...] = ()


@dataclass
class Family:
    """A registered model family (one ``zoo/<family>.py`` file).

    Attributes:
        name: family name, e.g. ``"efficientvit"``.
        paper: provenance.
        model_cls: the model class.
        default_cfg: pretrained config shared by the variants (each may override fields).
        converters: ``{layout: state_dict -> state_dict}`` for foreign checkpoint layouts (``"original"``, ``"timm"``).
        weights: ``{variant: WeightSpec}`` of released checkpoints.
        reported: ``{variant: Reported}`` published numbers.
        blocks: names of the ``blocks`` the family is built from.
        remaining_norms: normalization layers that cannot fold and stay in the deployed graph.
        timm_names: ``{variant: timm model name}`` for variants timm also implements.
        card_notes: free text (Markdown) for the family's section of ``MODEL_CARDS.md``, for what the fields above
            cannot say: why the ``remaining_norms`` stay, evaluation behaviour during a schedule, notes on weights.
    """

    name: str
    paper: Paper
    model_cls: type[nn.Module]
    default_cfg: PretrainedCfg = field(default_factory=PretrainedCfg)
    converters: Mapping[str, Converter] = field(default_factory=dict)
    weights: Mapping[str, WeightSpec] = field(default_factory=dict)
    reported: Mapping[str, Reported] = field(default_factory=dict)
    blocks: tuple[str, ...] = ()
    remaining_norms: tuple[str, ...] = ()
    timm_names: Mapping[str, str] = field(default_factory=dict)
    card_notes: str = ""
    variants: dict[str, Callable[..., nn.Module]] = field(default_factory=dict)
    cfgs: dict[str, PretrainedCfg] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name in _FAMILIES:
            raise ValueError(f"family {self.name!r} registered twice")
        _FAMILIES[self.name] = self

    def register(self, fn: Callable[..., nn.Module] | None = None, **cfg: Any) -> Any:
        """Decorator registering a variant function; keyword arguments override fields of ``default_cfg``."""

        def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            name = f.__name__
            if name in _MODELS:
                raise ValueError(f"model {name!r} registered twice")
            self.variants[name] = f
            self.cfgs[name] = dataclasses.replace(self.default_cfg, **cfg)
            _MODELS[name] = self
            return f

        return deco(fn) if fn is not None else deco


_FAMILIES: dict[str, Family] = {}
_MODELS: dict[str, Family] = {}


class UnknownModelError(ValueError):
    """No registered model has that name; the message suggests close ones."""


def _suggest(word: str, options: Sequence[str], n: int = 6) -> str:
    scored = sorted((-difflib.SequenceMatcher(None, word, o).ratio(), o) for o in options)
    close = [o for r, o in scored if -r >= 0.6][:n]
    if not close:
        close = [o for o in options if word.split("_")[0] in o][:n]
    return f" Did you mean: {', '.join(close)}?" if close else ""


def get_family(name: str) -> Family:
    """The family a registered model name belongs to (or a family name)."""
    if name in _MODELS:
        return _MODELS[name]
    if name in _FAMILIES:
        return _FAMILIES[name]
    raise UnknownModelError(f"unknown model {name!r}." + _suggest(name, sorted(_MODELS)) + " See zoo.list_models().")


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style wildcard (``"efficientvit_*"``) or substring."""
    names = sorted(_MODELS)
    if not pattern:
        return names
    if not any(c in pattern for c in "*?["):
        return [n for n in names if pattern in n]
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def list_families() -> list[Family]:
    """Registered families in registration order."""
    return list(_FAMILIES.values())


def _check_overrides(name: str, model_cls: type[nn.Module], overrides: Mapping[str, Any]) -> None:
    params = inspect.signature(model_cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "cfg")]
    for key in overrides:
        if key not in accepted:
            raise TypeError(
                f"{name}: unknown argument {key!r}." + _suggest(key, accepted, 3) + f" Accepted: {', '.join(accepted)}."
            )


def create_model(
    name: str,
    pretrained: bool | str | Path = False,
    num_classes: int | None = None,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered name (see :func:`list_models`).
        pretrained: ``True`` for the variant's released weights (downloaded into the cache and checked), or a path to
            a checkpoint file (``.safetensors``/``.pth``) in this project's, the original authors' or timm's layout.
        num_classes: classifier size; default the pretrained config's. A pretrained classifier of another size is
            dropped with a warning.
        in_chans: input channels.
        drop_path_rate: stochastic depth rate.
        features_only: return a backbone giving multi-scale feature maps (with ``feature_info``) instead.
        out_indices: which feature levels ``features_only`` returns (default all).
        **overrides: other constructor arguments of the model class (``drop_rate``, ``img_size``, ...).

    Raises:
        UnknownModelError: unknown name (with suggestions).
        TypeError: unknown override.
        weights.WeightsError: the weights cannot be found, read or matched.
    """
    family = get_family(name)
    if name not in family.variants:
        raise UnknownModelError(f"{name!r} is a family; pick a model: {', '.join(sorted(family.variants))}")
    fn = family.variants[name]
    model_cls = typing.get_type_hints(fn).get("return", family.model_cls)
    _check_overrides(name, model_cls, overrides)
    cfg = family.cfgs[name]
    model = fn(
        num_classes=cfg.num_classes if num_classes is None else num_classes,
        in_chans=in_chans,
        drop_path_rate=drop_path_rate,
        **overrides,
    )
    size = overrides.get("img_size", cfg.input_size[1:])
    size = (size, size) if isinstance(size, int) else tuple(size)
    model.pretrained_cfg = {
        **dataclasses.asdict(cfg),
        "input_size": (in_chans, *size),
        "architecture": name,
        "family": family.name,
        "num_classes": model.num_classes,
    }
    qat = qat_settings(pretrained) if pretrained and pretrained is not True else None
    if qat is not None:
        if features_only:
            raise ValueError(f"{pretrained} is a QAT checkpoint (a whole quantized graph): features_only cannot apply")
        return _load_qat(model, name, Path(pretrained), qat)
    if pretrained:
        load_pretrained(model, name, pretrained)
    if features_only:
        from .features import FeatureExtractor

        return FeatureExtractor(model, out_indices)
    return model


def qat_settings(path: str | Path) -> dict[str, Any] | None:
    """The QAT record of a checkpoint written by ``zoo train --qat`` (None for any other checkpoint)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    qat = read_safetensors_metadata(path).get("qat")
    return json.loads(qat) if qat else None


def _load_qat(model: nn.Module, name: str, path: Path, qat: dict[str, Any]) -> nn.Module:
    """A QAT checkpoint holds the deployed model's weights and the learned INT8 ranges: rebuild that graph
    (``blocks.qat.prepare_qat`` on the deployed form, at the trained input size) and load both, strictly."""
    import blocks
    from blocks import qat as bq

    if qat.get("version") != bq.QAT_VERSION:
        raise WeightsError(f"{path}: QAT checkpoint version {qat.get('version')}, this code reads {bq.QAT_VERSION}")
    deployed = blocks.reparameterize_model(model.eval())
    gm = bq.prepare_qat(deployed, tuple(qat["input_size"]), reduce_range=qat["weight_bits"] == 7)
    if bq.qat_signature(gm) != qat["signature"]:
        raise WeightsError(
            f"{path}: its INT8 ranges were learned on another graph of {name} (signature {qat['signature']}, this "
            f"build gives {bq.qat_signature(gm)}; trained with torch {qat.get('torch')}, this is "
            f"{torch.__version__}): run zoo train --qat again from the float checkpoint"
        )
    try:
        bq.load_qat_state(gm, load_checkpoint(path), context=f"{name} <- {path}")
    except ValueError as e:
        raise WeightsError(str(e)) from e
    return gm.eval()


def load_pretrained(model: nn.Module, name: str, pretrained: bool | str | Path) -> str:
    """Load released (``True``) or local (path) weights into a model built as ``name``; returns the layout found."""
    family = get_family(name)
    if pretrained is True:
        spec = family.weights.get(name)
        if spec is None:
            raise FileNotFoundError(
                f"{name} has no released weights registered. Pass pretrained=<path to a checkpoint> instead."
            )
        path = fetch_weights(spec)
    else:
        path = Path(pretrained)
    sd = load_checkpoint(path, prefer_ema=pretrained is True and spec.prefer_ema)
    return load_into(model, sd, family.converters, classifier=family.cfgs[name].classifier, context=f"{name} <- {path}")
