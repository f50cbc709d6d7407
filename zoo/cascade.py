"""Window-based early-exit cascades of independently trained members (an ensemble run stage by stage).

Xia & Bouganis, "Window-Based Early-Exit Cascades for Uncertainty Estimation: When Deep Ensembles are More Efficient
than Single Models", ICCV 2023, arXiv 2303.08010; code github.com/Guoxoug/window-early-exit (MIT).

Stage ``k`` runs member ``k`` on the samples that reached it and averages the softmax probabilities of members
``0..k`` (the running deep-ensemble average, in float64 as the authors do). Its uncertainty score decides: a sample
whose score lies inside the stage's window ``[lo, hi]`` (both ends included) is passed on to the next member, one
outside exits with the ensemble average of the stages it reached. The last stage has no window: everything left exits
there. A single exit threshold ``t`` (exit when confident) is the window ``[0, t]``.

Scores (higher = more confident, all in [0, 1]):

* ``msp``: the maximum softmax probability; at a later stage the mean of the reached members' MSPs (the authors'
  default: they average the members' scores themselves);
* ``entropy``: ``1 - H(p) / log(C)``, the normalized negative entropy (a monotone map of the authors' ``-H``, so the
  same ranking, but in [0, 1] like the MSP), averaged over the reached members likewise;
* ``ensemble_msp``: the maximum of the averaged probabilities (the authors' ``confidence_ens``).

The cascade's ``logits`` are ``log`` of the averaged probabilities (for a stage-0 exit: ``log_softmax`` of member 0's
logits), so ``softmax(logits)`` is the ensemble's prediction and ``argmax`` its class.

Deviations from the authors' code: any number of stages (the paper evaluates two); windows are fitted by
``zoo cascade fit`` (``train/cascade.py``), which also offers a MACs budget and an accuracy target.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

import weights

from .info import count_macs
from .registry import UnknownModelError, create_model, get_family

__all__ = [
    "SCORES",
    "Cascade",
    "CascadeError",
    "CascadeOutput",
    "cascade_decisions",
    "exit_stages",
    "expected_macs",
    "load_trained",
    "member_scores",
    "read_cascade_json",
    "stage_outputs",
]

SCORES = ("msp", "entropy", "ensemble_msp")
FORMAT = "efficient-zoo cascade"
_REQUIRED = ("members", "score", "windows", "expected_macs", "fitted_on")
_MEMBER_KEYS = ("checkpoint", "sha256")


class CascadeError(ValueError):
    """A cascade that cannot be built: bad windows or score, members that do not fit together, a bad cascade.json."""


class CascadeOutput(NamedTuple):
    """What :class:`Cascade` returns: ``logits`` (B, C), log of the averaged probabilities of the reached stages, and
    ``exit_stage`` (B,) int64, the 0-based stage each sample exited at."""

    logits: torch.Tensor
    exit_stage: torch.Tensor


def _check_score(score: str) -> str:
    if score not in SCORES:
        close = difflib.get_close_matches(str(score), SCORES, n=2, cutoff=0.4)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise CascadeError(f"unknown cascade score {score!r}; choose from {', '.join(SCORES)}.{hint}")
    return score


def _check_windows(windows: Sequence[Sequence[float]], n_members: int) -> list[tuple[float, float]]:
    if n_members < 2:
        raise CascadeError(f"a cascade needs at least 2 members, got {n_members}")
    windows = [tuple(float(v) for v in w) for w in windows]
    if len(windows) != n_members - 1:
        raise CascadeError(
            f"{n_members} members need {n_members - 1} windows (a (lo, hi) per stage but the last), got {len(windows)}"
        )
    for k, w in enumerate(windows):
        if len(w) != 2 or not (0.0 <= w[0] <= w[1] <= 1.0) or any(math.isnan(v) for v in w):
            raise CascadeError(f"window {k} must be (lo, hi) with 0 <= lo <= hi <= 1 (scores lie in [0, 1]), got {w}")
    return windows


def member_scores(probs: torch.Tensor, score: str) -> torch.Tensor:
    """One member's (or, for ``ensemble_msp``, the averaged) confidence per sample from probabilities (N, C)."""
    if score == "entropy":
        ent = -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1)
        return 1.0 - ent / math.log(probs.shape[-1])
    return probs.max(-1).values


class _Running:
    """The running ensemble of one batch of samples: summed probabilities and summed member scores."""

    def __init__(self, score: str) -> None:
        self.score, self.n = score, 0
        self.prob_sum: torch.Tensor | None = None
        self.score_sum: torch.Tensor | None = None

    def add(self, logits: torch.Tensor) -> None:
        p = logits.double().softmax(-1)
        s = member_scores(p, self.score)
        self.prob_sum = p if self.prob_sum is None else self.prob_sum + p
        self.score_sum = s if self.score_sum is None else self.score_sum + s
        self.n += 1

    def probs(self) -> torch.Tensor:
        return self.prob_sum / self.n

    def stage_score(self) -> torch.Tensor:
        if self.score == "ensemble_msp":
            return member_scores(self.probs(), "msp")
        return self.score_sum / self.n

    def keep(self, mask: torch.Tensor) -> None:
        self.prob_sum, self.score_sum = self.prob_sum[mask], self.score_sum[mask]


def _exits(score: torch.Tensor, window: tuple[float, float] | None) -> torch.Tensor:
    """True where a sample leaves at this stage: outside ``[lo, hi]``, or everything at the last stage."""
    if window is None:
        return torch.ones_like(score, dtype=torch.bool)
    return (score < window[0]) | (score > window[1])


def stage_outputs(member_logits: Sequence[torch.Tensor], score: str = "msp") -> tuple[torch.Tensor, torch.Tensor]:
    """Every stage's running-ensemble output on every sample, as if all samples reached every stage.

    Args:
        member_logits: one (N, C) tensor per member, all on the same N samples.
        score: one of :data:`SCORES`.

    Returns:
        ``(log_probs (K, N, C), scores (K, N))`` in float64: stage ``k`` averages members ``0..k``.
    """
    _check_score(score)
    run = _Running(score)
    logp, conf = [], []
    for logits in member_logits:
        run.add(logits)
        logp.append(run.probs().log())
        conf.append(run.stage_score())
    return torch.stack(logp), torch.stack(conf)


def exit_stages(scores: torch.Tensor, windows: Sequence[Sequence[float]]) -> torch.Tensor:
    """The stage (0-based, int64) each sample exits at, from its per-stage scores (K, N) and the windows."""
    windows = _check_windows(windows, scores.shape[0])
    stage = torch.full((scores.shape[1],), scores.shape[0] - 1, dtype=torch.int64)
    open_ = torch.ones(scores.shape[1], dtype=torch.bool)
    for k, w in enumerate(windows):
        leave = open_ & _exits(scores[k], w)
        stage[leave] = k
        open_ &= ~leave
    return stage


def cascade_decisions(
    member_logits: Sequence[torch.Tensor], windows: Sequence[Sequence[float]], score: str = "msp"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cascade's outcome from every member's logits on every sample (offline, as the authors evaluate).

    Computes exactly what :class:`Cascade` computes with its compacted batches, from logits cached once per member,
    so that windows can be searched and curves drawn without rerunning the models.

    Args:
        member_logits: one (N, C) tensor per member, all on the same N samples.
        windows: one ``(lo, hi)`` per stage but the last.
        score: one of :data:`SCORES`.

    Returns:
        ``(log_probs (N, C) float64, exit_stage (N,) int64, exit_score (N,) float64)``: the output, where each sample
        exited, and the score it exited with (the selective-classification confidence).
    """
    logp, conf = stage_outputs(member_logits, score)
    stage = exit_stages(conf, windows)
    rows = torch.arange(stage.numel())
    return logp[stage, rows], stage, conf[stage, rows]


def expected_macs(exit_stage: torch.Tensor, member_macs: Sequence[int]) -> float:
    """Mean MACs per image: a sample that exits at stage ``k`` ran members ``0..k``."""
    cum = torch.tensor(member_macs, dtype=torch.float64).cumsum(0)
    return float(cum[exit_stage].mean()) if exit_stage.numel() else 0.0


class Cascade(nn.Module):
    """An early-exit cascade: members run in order, each only on the samples the previous stage's window passed on.

    Args:
        members: the models, in cascade order (same classes, same input; independently trained, e.g. ``zoo train``
            with different ``--seed``s).
        windows: one ``(lo, hi)`` per stage but the last: a sample whose score lies in ``[lo, hi]`` goes on.
        score: ``msp`` (default), ``entropy`` or ``ensemble_msp`` (see the module docstring).
        input_size: (C, H, W) of the members' input, for the MAC count (default: the members' ``pretrained_cfg``).

    Raises:
        CascadeError: unknown score, wrong number or range of windows, members with different classes or inputs.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        windows: Sequence[Sequence[float]],
        score: str = "msp",
        input_size: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.windows = _check_windows(windows, len(members))
        self.score = _check_score(score)
        self.members = nn.ModuleList(members)
        common = _common_input(members)  # raises when the members' pretrained_cfg input sizes differ
        self.input_size = tuple(input_size) if input_size is not None else common
        _check_classes(members)
        self.num_classes = getattr(members[0], "num_classes", None)
        self.source: dict[str, Any] | None = None  # the cascade.json it was read from, if any
        self._macs: list[int] | None = None
        self.eval()

    @property
    def member_macs(self) -> list[int]:
        """MACs of one image through each member (``zoo.count_macs``), counted once."""
        if self._macs is None:
            if self.input_size is None:
                raise CascadeError("members carry no pretrained_cfg input size: pass input_size= to count MACs")
            self._macs = [count_macs(m, self.input_size) for m in self.members]
        return self._macs

    def expected_macs(self, exit_stage: torch.Tensor) -> float:
        """Mean MACs per image of a batch that exited at ``exit_stage``."""
        return expected_macs(exit_stage, self.member_macs)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> CascadeOutput:
        """Run the cascade on a batch; exited samples are never recomputed, the rest go on as a smaller batch."""
        if self.training:
            raise RuntimeError(
                "zoo.Cascade runs in eval mode only: its members are trained independently (zoo train --seed N) and "
                "the windows fitted afterwards (zoo cascade fit); call cascade.eval()"
            )
        n = x.shape[0]
        out: torch.Tensor | None = None
        stage = torch.full((n,), len(self.members) - 1, dtype=torch.int64, device=x.device)
        idx = torch.arange(n, device=x.device)  # original positions of the samples still running
        run = _Running(self.score)
        for k, member in enumerate(self.members):
            run.add(member(x))
            probs, s = run.probs(), run.stage_score()
            if out is None:
                out = torch.empty(n, probs.shape[1], dtype=torch.float32, device=x.device)
            leave = _exits(s, self.windows[k] if k < len(self.windows) else None)
            out[idx[leave]] = probs[leave].log().float()
            stage[idx[leave]] = k
            stay = ~leave
            if not bool(stay.any()):
                break
            idx, x = idx[stay], x[stay]  # compaction: only the samples passed on run the next member
            run.keep(stay)
        return CascadeOutput(out, stage)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Cascade:
        """Rebuild the cascade ``zoo cascade fit`` wrote: checkpoints checked against their sha256, then loaded.

        Raises:
            CascadeError: unreadable or incomplete file, missing checkpoint, sha256 mismatch, members that differ.
            zoo.UnknownModelError: a member names a model that is not registered (with suggestions).
        """
        spec = read_cascade_json(path)
        base = Path(path).parent
        metas = [_member_meta(m, base, k)[1] for k, m in enumerate(spec["members"])]
        _check_metas(metas)
        members = [_load_member(m, base, k, meta) for k, (m, meta) in enumerate(zip(spec["members"], metas))]
        sizes = [tuple(m.pretrained_cfg["input_size"]) for m in members]
        cascade = cls(members, spec["windows"], spec["score"], input_size=sizes[0])
        cascade.source = spec
        return cascade


def _common_input(members: Sequence[nn.Module]) -> tuple[int, int, int] | None:
    sizes = [tuple(getattr(m, "pretrained_cfg", {}).get("input_size", ())) or None for m in members]
    known = {s for s in sizes if s is not None}
    if len(known) > 1:
        listed = ", ".join(f"member {k}: {s}" for k, s in enumerate(sizes))
        raise CascadeError(f"cascade members take different input sizes ({listed}); all must take the same input")
    mean_std = {
        (tuple(m.pretrained_cfg.get("mean", ())), tuple(m.pretrained_cfg.get("std", ())))
        for m in members
        if getattr(m, "pretrained_cfg", None)
    }
    if len(mean_std) > 1:
        raise CascadeError(f"cascade members normalize inputs differently ({sorted(mean_std)}); one input feeds all")
    return known.pop() if known else None


def _check_classes(members: Sequence[nn.Module]) -> None:
    counts = [getattr(m, "num_classes", None) for m in members]
    if len({c for c in counts if c is not None}) > 1:
        listed = ", ".join(f"member {k}: {c}" for k, c in enumerate(counts))
        raise CascadeError(f"cascade members have different numbers of classes ({listed}); all must classify alike")


def read_cascade_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a cascade.json (keys, members, windows, score); the checkpoints are not opened here."""
    path = Path(path)
    if not path.is_file():
        raise CascadeError(f"cascade file not found: {path}")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CascadeError(f"{path} is not valid JSON (corrupt or truncated?): {e}") from e
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise CascadeError(f'{path} is not a cascade.json written by zoo cascade fit (no "format": "{FORMAT}")')
    missing = [k for k in _REQUIRED if k not in spec]
    if missing:
        raise CascadeError(f"{path}: missing key(s) {', '.join(missing)} (a cascade.json has {', '.join(_REQUIRED)})")
    if not isinstance(spec["members"], list) or not spec["members"]:
        raise CascadeError(f"{path}: 'members' must be a non-empty list")
    for k, m in enumerate(spec["members"]):
        absent = [key for key in _MEMBER_KEYS if not isinstance(m, dict) or key not in m]
        if absent:
            raise CascadeError(f"{path}: member {k} lacks {', '.join(absent)} (each member has checkpoint and sha256)")
    _check_score(spec["score"])
    _check_windows(spec["windows"], len(spec["members"]))
    return spec


def member_path(member: dict[str, Any], base: Path) -> Path:
    """A member's checkpoint path: absolute, or relative to the cascade.json's folder."""
    p = Path(member["checkpoint"])
    return p if p.is_absolute() else base / p


def _member_meta(member: dict[str, Any], base: Path, k: int) -> tuple[Path, dict[str, str]]:
    """A member's checkpoint path and its ``zoo train`` metadata, after the sha256 and the model name are checked."""
    path = member_path(member, base)
    if not path.is_file():
        raise CascadeError(f"member {k}: checkpoint not found: {path}")
    digest = weights.sha256sum(path)
    if digest != member["sha256"]:
        raise CascadeError(
            f"member {k}: {path} has sha256 {digest[:16]}..., the cascade was fitted with {member['sha256'][:16]}...: "
            "the checkpoint changed since zoo cascade fit; refit the cascade"
        )
    try:
        meta = weights.read_safetensors_metadata(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a file that is not one
        raise CascadeError(f"member {k}: {path} is not a readable safetensors checkpoint ({e})") from e
    if meta.get("format") != "efficient-zoo train":
        raise CascadeError(f"member {k}: {path} has no zoo train metadata (model, classes, input size)")
    name = meta["model"]
    try:
        family = get_family(name)
    except UnknownModelError as e:
        raise UnknownModelError(f"member {k} ({path}): {e}") from e
    if name not in family.variants:
        raise UnknownModelError(f"member {k} ({path}): {name!r} is a family, not a model")
    return path, meta


def _check_metas(metas: Sequence[dict[str, str]]) -> None:
    """Members must agree on classes and input size: said before any weights are loaded."""
    for key, what in (("num_classes", "numbers of classes"), ("img_size", "input sizes")):
        values = [m.get(key) for m in metas]
        if len(set(values)) > 1:
            listed = ", ".join(f"member {k}: {v}" for k, v in enumerate(values))
            raise CascadeError(f"cascade members have different {what} ({listed}); all must take the same")


def load_trained(path: str | os.PathLike) -> nn.Module:
    """A model rebuilt (eval mode) from a ``zoo train`` checkpoint: its metadata names model, classes, input size."""
    p = Path(path).resolve()
    if not p.is_file():
        raise CascadeError(f"checkpoint not found: {p}")
    return _load_member({"checkpoint": str(p), "sha256": weights.sha256sum(p)}, p.parent, 0)


def _load_member(member: dict[str, Any], base: Path, k: int, meta: dict[str, str] | None = None) -> nn.Module:
    path, meta = _member_meta(member, base, k) if meta is None else (member_path(member, base), meta)
    name = meta["model"]
    family = get_family(name)
    kwargs = json.loads(meta.get("model_kwargs", "{}"))
    img = int(meta["img_size"]) if "img_size" in meta else None
    cls = typing.get_type_hints(family.variants[name]).get("return", family.model_cls)
    if img is not None and "img_size" in inspect.signature(cls.__init__).parameters:
        kwargs.setdefault("img_size", img)
    model = create_model(name, pretrained=str(path), num_classes=int(meta["num_classes"]), **kwargs)
    if img is not None:  # the size it was trained at, also for models of any input size
        model.pretrained_cfg["input_size"] = (model.pretrained_cfg["input_size"][0], img, img)
    return model.eval()
