"""The speed / accuracy Pareto plot: latency measured here against the ImageNet top-1 the papers report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["pareto_points", "pareto_front", "plot_pareto"]

# a marker per family as well as a colour: neighbouring colours of tab20 are hard to tell apart
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")


def pareto_points(result: dict[str, Any], runtime: str, batch: int = 1) -> list[dict[str, Any]]:
    """``{"model", "family", "latency_ms", "top1"}`` of every model measured on ``runtime`` at ``batch``.

    Models without a reported ImageNet-1k top-1 (e.g. a CIFAR-10 variant), or not measured there, cannot be placed
    on the plot's axis and are left out.
    """
    return [
        {"model": r["model"], "family": r["family"], "latency_ms": r["median_ms"], "top1": r["top1_paper"]}
        for r in result["results"]
        if r["runtime"] == runtime
        and r["batch"] == batch
        and r["status"] == "ok"
        and r["top1_paper"] is not None
        and _imagenet_top1(r["model"])
    ]


def _imagenet_top1(name: str) -> bool:
    """Whether the top-1 the registry reports for ``name`` is ImageNet-1k's (unknown models: assumed so)."""
    import zoo

    try:
        reported = zoo.get_family(name).reported.get(name)
    except Exception:  # noqa: BLE001 - a results file from another checkout may name models not registered here
        return True
    return reported is None or reported.dataset == "imagenet-1k"


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on both axes (faster and at least as accurate), fastest first."""
    front: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda p: (p["latency_ms"], -p["top1"])):
        if not front or p["top1"] > front[-1]["top1"]:
            front.append(p)
    return front


def _overlaps(box: Any, placed: list[Any]) -> bool:
    return any(box.overlaps(b) for b in placed)


def _place_labels(ax: Any, points: list[dict[str, Any]], fontsize: float) -> None:
    """Label each point, trying a few offsets so that labels do not overlap each other (greedy, left to right)."""
    offsets = [(4, 3, "left", "bottom"), (4, -3, "left", "top"), (-4, 3, "right", "bottom"), (-4, -3, "right", "top")]
    offsets += [(0, 8, "center", "bottom"), (0, -8, "center", "top"), (6, 12, "left", "bottom")]
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    inside = ax.get_window_extent(renderer)
    for p in sorted(points, key=lambda p: (p["latency_ms"], p["top1"])):
        for i, (dx, dy, ha, va) in enumerate(offsets):
            text = ax.annotate(
                p["model"],
                (p["latency_ms"], p["top1"]),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=fontsize,
            )
            box = text.get_window_extent(renderer).expanded(1.02, 1.05)
            fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if (fits and not _overlaps(box, placed)) or i == len(offsets) - 1:
                placed.append(box)
                break
            text.remove()


def plot_pareto(result: dict[str, Any], runtime: str, path: str | os.PathLike, batch: int = 1) -> int:
    """Draw paper top-1 against latency measured on ``runtime`` (log scale), one colour per family, to a PNG.

    Args:
        result: a ``zoo bench`` results dict (``export.bench.run_bench``, or its JSON file loaded).
        runtime: which runtime's latency to plot.
        path: output PNG.
        batch: which batch size's latency.

    Returns:
        The number of models plotted.

    Raises:
        ValueError: nothing to plot for that runtime and batch.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    points = pareto_points(result, runtime, batch)
    if not points:
        raise ValueError(f"no model with a reported top-1 was measured on {runtime!r} at batch {batch}")
    families = sorted({p["family"] for p in points})
    cmap = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(13, 7.5), dpi=130)
    for i, fam in enumerate(families):
        pts = sorted((p for p in points if p["family"] == fam), key=lambda p: p["latency_ms"])
        xs, ys = [p["latency_ms"] for p in pts], [p["top1"] for p in pts]
        ax.scatter(xs, ys, color=cmap(i % cmap.N), marker=_MARKERS[i % len(_MARKERS)], label=fam, s=40, zorder=3)
    front = pareto_front(points)
    ax.step(
        [p["latency_ms"] for p in front],
        [p["top1"] for p in front],
        where="post",
        color="black",
        linestyle="--",
        linewidth=0.9,
        alpha=0.6,
        label="Pareto front",
    )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # minor labels at 2x, 3x and 5x each decade only: every minor tick labelled crowds the axis
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.margins(x=0.12, y=0.08)
    ax.grid(True, which="both", alpha=0.25)
    m = result["machine"]
    ax.set_xlabel(f"latency, ms (median, {runtime}, batch {batch}, {m['threads']} threads; log scale)")
    ax.set_ylabel("ImageNet top-1 (%, as the papers report)")
    ax.set_title(f"Paper top-1 vs {runtime} latency measured on {m['cpu']} ({m['date']})", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="family", title_fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    _place_labels(ax, points, fontsize=7 if len(points) <= 40 else 5.5)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return len(points)
