"""``zoo cascade fit`` and ``zoo cascade eval``: choose a cascade's windows on held-out images, then measure it.

The images are the training run's validation split (``digits``: the 360 images ``zoo train`` validates on; a
directory: its ``val/`` ImageFolder split), cut in two stratified halves: the **fit** half (the first, third, ...
image of each class, in dataset order) chooses the windows, the **report** half (the others) gives every number
``zoo cascade eval`` prints, so windows are never chosen on the images they are judged on.

Selective-classification figures follow the authors' evaluation (``utils/eval_utils.py`` of
Guoxoug/window-early-exit): samples are ranked by the confidence they exited with, the risk at coverage ``c`` is the
error rate of the ``c`` most confident fraction, AURC the trapezoidal area under the risk-coverage curve.

Targets of ``fit``:

* ``macs:R`` -- the most accurate windows (ties: lower AURC, then more of the budget used, then the lowest window)
  whose expected MACs per image on the fit half are at most ``R`` times member 0's; windows searched over score
  quantiles of the fit half;
* ``accuracy`` or ``accuracy:A`` -- the cheapest windows reaching accuracy ``A`` on the fit half (default: the full
  ensemble's accuracy there);
* ``risk:R@coverage`` -- the authors' window strategy: ``tau`` is the confidence at which the stage's risk-coverage
  curve reaches risk ``R`` (the largest coverage with risk <= R; the authors take the point of risk closest to R),
  and the window spans ``--width`` (default 0.2, theirs) of the fit half's score quantiles centred on ``tau``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import weights
import zoo
from zoo.cascade import FORMAT, CascadeError, exit_stages, expected_macs, load_trained, member_path, stage_outputs

__all__ = ["Split", "fit_windows", "load_split", "main", "risk_coverage", "selective_metrics"]

COVERAGE = 0.8  # the coverage of the reported risk@coverage (the authors' risk@80)


# ----------------------------------------------------------------------------------------------------------------- data
@dataclass
class Split:
    """The fit and report halves of a validation split (datasets without transforms) and what they are."""

    fit: Any
    report: Any
    description: str


def _halves(targets: Sequence[int]) -> tuple[list[int], list[int]]:
    """Stratified halves: per class, images in dataset order alternate fit, report, fit, ..."""
    seen: dict[int, int] = {}
    fit, report = [], []
    for i, t in enumerate(targets):
        (fit if seen.get(t, 0) % 2 == 0 else report).append(i)
        seen[t] = seen.get(t, 0) + 1
    return fit, report


def load_split(data: str, half: str = "first") -> Split:
    """The fit and report halves of ``data``'s validation split (``digits`` or an ImageFolder root).

    ``half="second"`` swaps them (the 2nd, 4th, ... image of each class fit the windows), for a second fold.
    """
    from torch.utils.data import Subset

    from .config import TrainConfig
    from .data import build_datasets

    bundle = build_datasets(TrainConfig(data=data))
    val = bundle.val
    targets = val.targets if hasattr(val, "targets") else [t for _, t in val.samples]
    if half not in ("first", "second"):
        raise CascadeError(f"fit half must be 'first' or 'second', got {half!r}")
    fit, report = _halves(targets)
    order = "1st, 3rd, 5th"
    if half == "second":
        fit, report, order = report, fit, "2nd, 4th, 6th"
    what = "train's digits validation split" if data == "digits" else f"{data}/val (ImageFolder)"
    text = (
        f"{what} ({len(targets)} images), the fit half ({len(fit)} images: per class, the {order} ... image in "
        f"dataset order); the report half ({len(report)} images) is held out for zoo cascade eval"
    )
    return Split(Subset(val, fit), Subset(val, report), text)


@torch.no_grad()
def member_logits(model: torch.nn.Module, dataset: Any, batch_size: int = 128, label: str = "") -> torch.Tensor:
    """Logits (N, C) of ``model`` on ``dataset`` under the model's own evaluation transform (as ``zoo validate``)."""
    from .config import TrainConfig
    from .data import build_transforms

    cfg = dict(model.pretrained_cfg)
    _, evaluate = build_transforms(TrainConfig(), cfg, int(cfg["input_size"][-1]))
    base = dataset.dataset
    base.transform = evaluate
    model.eval()
    out = []
    t0 = time.time()
    for start in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        out.append(model(x).float())
    print(f"  logits of {label or cfg['architecture']}: {len(dataset)} images in {time.time() - t0:.1f} s", flush=True)
    return torch.cat(out)


def targets_of(dataset: Any) -> torch.Tensor:
    """The labels of a ``Subset`` of a training dataset, without reading its images."""
    base = dataset.dataset
    targets = base.targets if hasattr(base, "targets") else [t for _, t in base.samples]
    return torch.tensor([targets[i] for i in dataset.indices])


# -------------------------------------------------------------------------------------------------------------- metrics
def risk_coverage(correct: torch.Tensor, conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(risk, coverage, thresholds)``: risk of the ``i`` most confident samples for ``i = 0..N`` (risk 0 at 0)."""
    order = torch.argsort(conf.double(), descending=True, stable=True)
    errors = (~correct[order].bool()).double().cumsum(0)
    n = torch.arange(1, len(conf) + 1, dtype=torch.float64)
    risk = torch.cat([torch.zeros(1, dtype=torch.float64), errors / n])
    return risk, torch.linspace(0, 1, len(conf) + 1, dtype=torch.float64), conf.double()[order]


def selective_metrics(correct: torch.Tensor, conf: torch.Tensor, coverage: float = COVERAGE) -> dict[str, float]:
    """Accuracy, risk at ``coverage`` and AURC (all in %) of predictions ranked by ``conf``."""
    risk, cov, _ = risk_coverage(correct, conf)
    at = int(torch.argmin((cov - coverage).abs()))
    return {
        "accuracy": 100.0 * float(correct.double().mean()),
        "risk_at_coverage": 100.0 * float(risk[at]),
        "aurc": 100.0 * float(torch.trapezoid(risk, cov)),
    }


def _single_conf(logits: torch.Tensor, score: str) -> torch.Tensor:
    return stage_outputs([logits], "msp" if score == "ensemble_msp" else score)[1][0]


def cascade_metrics(
    logp: torch.Tensor,
    conf: torch.Tensor,
    labels: torch.Tensor,
    windows: Sequence,
    macs: Sequence[int],
    coverage: float = COVERAGE,
    per_image: bool = False,
) -> dict[str, Any]:
    """Accuracy, MACs and selective figures of the cascade with ``windows`` from precomputed stage outputs
    (``per_image``: also each image's correctness, exit score and MACs, to pool folds later)."""
    stage = exit_stages(conf, windows)
    rows = torch.arange(stage.numel())
    correct = logp[stage, rows].argmax(-1) == labels
    res = selective_metrics(correct, conf[stage, rows], coverage)
    res["expected_macs"] = expected_macs(stage, macs)
    res["exit_fractions"] = [float((stage == k).double().mean()) for k in range(len(macs))]
    if per_image:
        cum = torch.tensor(macs, dtype=torch.float64).cumsum(0)
        res.update(_per_image(correct, conf[stage, rows]), macs_per_image=cum[stage].tolist())
    return res


def _per_image(correct: torch.Tensor, conf: torch.Tensor) -> dict[str, list]:
    return {"per_image": {"correct": correct.int().tolist(), "conf": conf.double().tolist()}}


def pooled(rows: Sequence[dict[str, Any]], coverage: float = COVERAGE) -> dict[str, Any]:
    """One row's figures over several folds' report halves (images concatenated; MACs and exits weighted)."""
    correct = torch.tensor([c for r in rows for c in r["per_image"]["correct"]], dtype=torch.bool)
    conf = torch.tensor([c for r in rows for c in r["per_image"]["conf"]], dtype=torch.float64)
    n = [len(r["per_image"]["correct"]) for r in rows]
    out = {
        "name": rows[0]["name"],
        "kind": rows[0]["kind"],
        "images": sum(n),
        **selective_metrics(correct, conf, coverage),
    }
    out["expected_macs"] = sum(k * r["expected_macs"] for k, r in zip(n, rows)) / sum(n)
    if "exit_fractions" in rows[0]:
        fr = zip(*[[k * f for f in r["exit_fractions"]] for k, r in zip(n, rows)])
        out["exit_fractions"] = [sum(f) / sum(n) for f in fr]
    return out


# ------------------------------------------------------------------------------------------------------------------ fit
def _quantile_window(scores: torch.Tensor, a: float, b: float) -> tuple[float, float]:
    """``[q(a), q(b)]`` of ``scores``; the ends 0 and 1 stay open (lo 0, hi 1) like a single threshold."""
    lo = 0.0 if a <= 0 else float(torch.quantile(scores, a))
    hi = 1.0 if b >= 1 else float(torch.quantile(scores, b))
    return lo, max(lo, hi)


def _tau_window(scores: torch.Tensor, correct: torch.Tensor, risk_target: float, width: float) -> tuple[float, float]:
    risk, _, thresholds = risk_coverage(correct, scores)
    i = int(torch.nonzero(risk <= risk_target).max())  # largest coverage within the risk target
    tau = float(thresholds[max(i - 1, 0)])
    q = float((scores < tau).double().mean())
    return _quantile_window(scores, max(0.0, q - width / 2), min(1.0, q + width / 2))


def _parse_target(target: str) -> tuple[str, float | None]:
    kind, _, value = target.partition(":")
    try:
        if kind == "macs" and value:
            return "macs", float(value)
        if kind == "accuracy":
            return "accuracy", float(value) if value else None
        if kind == "risk" and value.endswith("@coverage"):
            return "risk", float(value.removesuffix("@coverage"))
    except ValueError:
        pass
    raise CascadeError(f"--target {target!r}: expected macs:R (e.g. macs:1.3), risk:R@coverage or accuracy[:A]")


def fit_windows(
    member_logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    macs: Sequence[int],
    target: str,
    score: str = "msp",
    width: float = 0.2,
) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """Choose the windows for ``target`` on these (fit-half) logits; returns them and their fit-half figures."""
    kind, value = _parse_target(target)
    logp, conf = stage_outputs(member_logits, score)
    k_stages = len(member_logits)
    correct = logp.argmax(-1) == labels  # K, N
    if kind == "risk":
        windows: list[tuple[float, float]] = []
        for k in range(k_stages - 1):
            reach = exit_stages(conf, [*windows, *[(0.0, 1.0)] * (k_stages - 1 - k)]) >= k if k else None
            sel = reach if reach is not None and int(reach.sum()) >= 10 else torch.ones_like(labels, dtype=torch.bool)
            windows.append(_tau_window(conf[k][sel], correct[k][sel], value, width))
        return windows, cascade_metrics(logp, conf, labels, windows, macs)
    step = {1: 0.05, 2: 0.1}.get(k_stages - 1, 0.2)
    grid = [round(i * step, 6) for i in range(round(1 / step) + 1)]
    per_stage = [
        sorted({_quantile_window(conf[k], a, b) for a, b in itertools.combinations(grid, 2)})
        for k in range(k_stages - 1)
    ]
    combos = list(itertools.product(*per_stage))
    print(f"  searching {len(combos)} window settings for {target}", flush=True)
    full = cascade_metrics(logp, conf, labels, [(0.0, 1.0)] * (k_stages - 1), macs)
    best, best_key, cheapest = None, None, float("inf")
    for windows in combos:
        res = cascade_metrics(logp, conf, labels, list(windows), macs)
        cheapest = min(cheapest, res["expected_macs"])
        if kind == "macs":
            if res["expected_macs"] > value * macs[0] * (1 + 1e-9):
                continue
            # ties: lower AURC, then more of the budget spent (closer to the full ensemble, which generalizes better
            # from a small fit set than the narrowest window that happens to tie on it), then the lowest window
            key = (-res["accuracy"], res["aurc"], -res["expected_macs"])
        else:
            goal = full["accuracy"] if value is None else 100.0 * value if value <= 1 else value
            if res["accuracy"] < goal - 1e-9:
                continue
            key = (res["expected_macs"], res["aurc"], -res["accuracy"])
        if best_key is None or key < best_key:
            best, best_key = list(windows), key
    if best is None:
        raise CascadeError(
            f"no window setting meets {target} on the fit half: the cheapest of the {len(combos)} searched costs "
            f"{cheapest / macs[0]:.2f}x member 0's MACs (scores too concentrated to cut a narrow window?)"
        )
    return best, cascade_metrics(logp, conf, labels, best, macs)


def _members_from(arg: str) -> list[Path]:
    paths = [Path(p.strip()) for p in arg.split(",") if p.strip()]
    if len(paths) < 2:
        raise CascadeError(f"--members needs at least 2 comma-separated checkpoints, got {arg!r}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CascadeError(f"--members: checkpoint(s) not found: {', '.join(missing)}")
    return paths


def fit(args: argparse.Namespace) -> int:
    """``zoo cascade fit``: member logits on the fit half, the window search, ``DIR/cascade.json`` written."""
    paths = _members_from(args.members)
    out = Path(args.out)
    split = load_split(args.data, args.fit_half)
    members = [load_trained(p) for p in paths]
    cascade = zoo.Cascade(members, [(0.0, 1.0)] * (len(members) - 1), args.score)  # validates classes and inputs
    macs = cascade.member_macs
    labels = targets_of(split.fit)
    logits = [member_logits(m, split.fit, label=str(p)) for m, p in zip(members, paths)]
    windows, res = fit_windows(logits, labels, macs, args.target, args.score, args.width)
    out.mkdir(parents=True, exist_ok=True)
    spec = {
        "format": FORMAT,
        "version": 1,
        "members": [
            {
                "checkpoint": os.path.relpath(p.resolve(), out.resolve()),
                "sha256": weights.sha256sum(p),
                "model": m.pretrained_cfg["architecture"],
                "num_classes": m.num_classes,
                "input_size": list(m.pretrained_cfg["input_size"]),
                "macs": mc,
            }
            for p, m, mc in zip(paths, members, macs)
        ],
        "score": args.score,
        "windows": [list(w) for w in windows],
        "target": args.target,
        "expected_macs": res["expected_macs"],
        "expected_macs_over_member0": res["expected_macs"] / macs[0],
        "fitted_on": {
            "data": args.data,
            "half": args.fit_half,
            "split": split.description,
            "images": len(labels),
            "result": res,
        },
    }
    weights.atomic_write(out / "cascade.json", lambda tmp: Path(tmp).write_text(json.dumps(spec, indent=2) + "\n"))
    print(
        f"windows {[tuple(round(v, 4) for v in w) for w in windows]} ({args.score}); on the fit half: accuracy "
        f"{res['accuracy']:.2f}%, {res['expected_macs'] / 1e6:.2f} MMACs/image "
        f"({res['expected_macs'] / macs[0]:.2f}x member 0), exits {[round(f, 3) for f in res['exit_fractions']]}"
    )
    print(f"wrote {out / 'cascade.json'}")
    return 0


# ----------------------------------------------------------------------------------------------------------------- eval
def evaluate(
    spec: dict[str, Any],
    member_logits_: Sequence[torch.Tensor],
    labels: torch.Tensor,
    fit_logits: Sequence[torch.Tensor],
    singles: dict[str, tuple[torch.Tensor, int]],
    coverage: float = COVERAGE,
) -> dict[str, Any]:
    """Rows of the eval table and the trade-off curve (report half), from cached logits.

    The curve keeps each fitted window's centre (as a quantile of the fit half's stage scores) and sweeps the
    fraction passed on from 0 to 1 (the authors' window family), evaluated on the report half.
    """
    score, windows = spec["score"], [tuple(w) for w in spec["windows"]]
    macs = [m["macs"] for m in spec["members"]]
    logp, conf = stage_outputs(member_logits_, score)
    rows = []
    for name, (lg, mc) in singles.items():
        correct, c = lg.argmax(-1) == labels, _single_conf(lg, score)
        r = selective_metrics(correct, c, coverage)
        rows.append({"name": name, "kind": "single", "expected_macs": mc, **r, **_per_image(correct, c)})
    k = len(macs)
    full = cascade_metrics(logp, conf, labels, [(0.0, 1.0)] * (k - 1), macs, coverage, per_image=True)
    rows.append({"name": f"ensemble of all {k} (every image, every member)", "kind": "ensemble", **full})
    rows.append(
        {
            "name": f"cascade ({spec.get('target', 'fitted')})",
            "kind": "cascade",
            **cascade_metrics(logp, conf, labels, windows, macs, coverage, per_image=True),
        }
    )
    _, fit_conf = stage_outputs(fit_logits, score)
    centres = [float((fit_conf[i] < (lo + hi) / 2).double().mean()) for i, (lo, hi) in enumerate(windows)]
    curve = []
    for width in [i / 10 for i in range(21)]:  # up to 2: a window centred anywhere grows to pass everything
        ws = [
            _quantile_window(fit_conf[i], max(0.0, c - width / 2), min(1.0, c + width / 2))
            for i, c in enumerate(centres)
        ]
        if width == 0:
            ws = [(1.0, 1.0)] * (k - 1)  # nothing passed on (an MSP of exactly 1 aside)
        curve.append({"width": width, "windows": ws, **cascade_metrics(logp, conf, labels, ws, macs, coverage)})
    return {"rows": rows, "curve": curve, "macs_unit": macs[0], "coverage": coverage}


def table_text(result: dict[str, Any]) -> str:
    """The eval table as Markdown."""
    unit = result["macs_unit"]
    lines = [
        f"| model | top-1 % | MMACs/image | x member 0 | risk@{result['coverage']:.0%} cov. % | AURC % | exits/stage |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        exits = " / ".join(f"{f:.2f}" for f in r.get("exit_fractions", [])) or "—"
        lines.append(
            f"| {r['name']} | {r['accuracy']:.2f} | {r['expected_macs'] / 1e6:.2f} | {r['expected_macs'] / unit:.2f} "
            f"| {r['risk_at_coverage']:.2f} | {r['aurc']:.3f} | {exits} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], curves: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, title: str) -> Path:
    """Accuracy and AURC against expected MACs (one point per window width, singles as markers) and the
    risk-coverage curves, as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    xs = [c["expected_macs"] / 1e6 for c in result["curve"]]
    for ax, key, label in (
        (axes[0], "accuracy", "top-1 %"),
        (axes[1], "aurc", "AURC % (area under risk-coverage; lower is better)"),
    ):
        ax.plot(
            xs, [c[key] for c in result["curve"]], "-o", ms=3, color="tab:blue", label="cascade, window width swept"
        )
        for r, marker in zip(result["rows"], itertools.cycle("sD^vP")):
            styles = {"cascade": dict(marker="*", s=220, color="tab:red", zorder=5), "ensemble": dict(marker="X", s=90)}
            style = styles.get(r["kind"], dict(marker=marker, s=60))
            ax.scatter([r["expected_macs"] / 1e6], [r[key]], label=r["name"], **style)
        ax.set_xlabel("expected MMACs / image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for name, (risk, cov) in curves.items():
        axes[2].plot(cov.numpy(), 100 * risk.numpy(), label=name)
    risky = [float(cov[int(torch.nonzero(risk > 0).min())]) for risk, cov in curves.values() if bool((risk > 0).any())]
    axes[2].set_xlim(max(0.0, min(risky, default=0.05) - 0.05), 1.0)  # the curves are flat at 0 before the 1st error
    axes[2].set_xlabel("coverage")
    axes[2].set_ylabel("risk %")
    axes[2].set_title("risk-coverage (lower is better)")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    weights.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return path


def run_eval(
    cascade_json: str | Path,
    data: str,
    compare: Sequence[str] = (),
    out: str | Path | None = None,
    coverage: float = COVERAGE,
) -> dict:
    """``zoo cascade eval`` as a function: table, JSON and PNG written next to ``cascade_json`` (or into ``out``)."""
    path = Path(cascade_json)
    cascade = zoo.Cascade.from_json(path)  # checks every sha256
    spec = cascade.source
    split = load_split(data, spec["fitted_on"].get("half", "first") if isinstance(spec["fitted_on"], dict) else "first")
    labels = targets_of(split.report)
    names = [
        f"member {k}: {m.get('model', '?')} ({member_path(m, path.parent).parent.name})"
        for k, m in enumerate(spec["members"])
    ]
    logits = [member_logits(m, split.report, label=n) for m, n in zip(cascade.members, names)]
    fit_logits = [member_logits(m, split.fit, label=n + " (fit half)") for m, n in zip(cascade.members, names)]
    singles = {n: (lg, mc) for n, lg, mc in zip(names, logits, cascade.member_macs)}
    for c in compare:
        model = load_trained(c)
        n = f"single {model.pretrained_cfg['architecture']} ({Path(c).parent.name})"
        singles[n] = (
            member_logits(model, split.report, label=n),
            zoo.count_macs(model, model.pretrained_cfg["input_size"]),
        )
    result = evaluate(spec, logits, labels, fit_logits, singles, coverage)
    logp, conf = stage_outputs(logits, spec["score"])
    windows = [tuple(w) for w in spec["windows"]]
    stage = exit_stages(conf, windows)
    rows = torch.arange(stage.numel())
    curves = {
        n: risk_coverage(lg.argmax(-1) == labels, _single_conf(lg, spec["score"]))[:2] for n, (lg, _) in singles.items()
    }
    curves["cascade"] = risk_coverage(logp[stage, rows].argmax(-1) == labels, conf[stage, rows])[:2]
    out_dir = Path(out) if out else path.parent
    result.update(cascade=str(path), data=data, report_split=split.description, images=len(labels))
    text = table_text(result)
    weights.atomic_write(out_dir / "eval.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    weights.atomic_write(out_dir / "eval.md", lambda tmp: Path(tmp).write_text(text + "\n"))
    where = f"{path.parent.name}/{path.name}"
    title = f"{where} on the report half of {data} ({len(labels)} images); windows fitted on the other half"
    result["plot"] = str(plot(result, curves, out_dir / "eval.png", title))
    print(text)
    print(f"wrote {out_dir / 'eval.json'}, {out_dir / 'eval.md'}, {result['plot']}")
    return result


# ------------------------------------------------------------------------------------------------------------------ cli
def _eval_cli(args: argparse.Namespace) -> int:
    run_eval(args.cascade, args.data, [c for c in args.compare.split(",") if c], args.out, args.coverage)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``zoo cascade``."""
    p = argparse.ArgumentParser(prog="zoo cascade", description="Window-based early-exit cascades (fit, eval).")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="choose the windows on the fit half of the validation split; write cascade.json")
    f.add_argument("--members", required=True, help="comma-separated zoo train checkpoints, in cascade order")
    f.add_argument("--data", default="digits", help="'digits' or an ImageFolder root with train/ and val/")
    f.add_argument("--target", required=True, help="macs:R (x member 0's MACs), risk:R@coverage or accuracy[:A]")
    f.add_argument("--score", default="msp", choices=zoo.cascade.SCORES, help="uncertainty score (default msp)")
    f.add_argument("--width", type=float, default=0.2, help="risk target: fraction of images per window (0.2)")
    f.add_argument("--out", required=True, help="output directory (cascade.json)")
    f.add_argument("--fit-half", choices=("first", "second"), default="first", help="which half fits (a 2nd fold)")
    f.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    f.set_defaults(fn=fit)
    e = sub.add_parser("eval", help="table and plot on the report half, against the single members and --compare")
    e.add_argument("cascade", help="a cascade.json written by zoo cascade fit")
    e.add_argument("--data", default="digits", help="the data it was fitted on ('digits' or the same directory)")
    e.add_argument("--compare", default="", help="comma-separated checkpoints of other single models (e.g. M2)")
    e.add_argument("--out", default=None, help="folder for eval.json / eval.md / eval.png (default: cascade's)")
    e.add_argument("--coverage", type=float, default=COVERAGE, help=f"coverage of the risk column ({COVERAGE})")
    e.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    e.set_defaults(fn=_eval_cli)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``zoo cascade``."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    threads = torch.get_num_threads()
    # small batches of small models: a 2nd thread gains little, and on a busy machine spinning threads cost 10x+
    torch.set_num_threads(args.threads)
    try:
        return int(args.fn(args) or 0)
    except (CascadeError, zoo.UnknownModelError, weights.WeightsError, FileNotFoundError) as e:
        print(f"zoo cascade {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
