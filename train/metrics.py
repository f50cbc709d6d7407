"""Evaluation (top-1 / top-5 / loss, summed exactly over DDP ranks) and the run's records: JSON lines, CSV, plot."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from weights import atomic_write

from .data import batches
from .distributed import DistEnv, all_sum

__all__ = ["evaluate", "MetricsLog", "plot_curves"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    env: DistEnv,
    autocast: Callable[[], Any],
    on_bad_image: str = "skip",
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy, top-1 / top-5 accuracy (%) and image count over the validation set (all ranks' slices)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    correct = torch.zeros(2, dtype=torch.float64, device=env.device)
    count = 0
    for x, y in batches(loader, on_bad_image):
        x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            out = model(x)
        out = out.float()
        loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").double()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        hit = top == y[:, None]
        correct += torch.stack([hit[:, :1].any(1).sum(), hit.any(1).sum()]).double()
        count += y.numel()
    model.train(was_training)
    loss, top1, top5, n = all_sum(env, [loss_sum.item(), *correct.tolist(), float(count)])
    if n == 0:
        raise RuntimeError("the validation set yielded no readable images")
    return {"val_loss": loss / n, "val_top1": 100.0 * top1 / n, "val_top5": 100.0 * top5 / n, "val_images": int(n)}


class MetricsLog:
    """``metrics.jsonl`` (one record per epoch) and ``metrics.csv`` in the output directory; rank 0 writes.

    On resume, records of epochs after the resumed one (written before the kill, never checkpointed) are dropped.
    """

    def __init__(self, output: Path, enabled: bool, resumed_epoch: int = 0) -> None:
        self.jsonl, self.csv = output / "metrics.jsonl", output / "metrics.csv"
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        if resumed_epoch and self.jsonl.is_file():
            lines = self.jsonl.read_text().splitlines()
            self.records = [r for r in map(json.loads, filter(None, lines)) if r["epoch"] <= resumed_epoch]
        if enabled:
            self._rewrite()

    def append(self, record: dict[str, Any]) -> None:
        """Add one epoch's record and rewrite both files atomically."""
        self.records.append(record)
        if self.enabled:
            self._rewrite()

    def _rewrite(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(self.jsonl, lambda tmp: Path(tmp).write_text(text))
        keys = list(dict.fromkeys(k for r in self.records for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write(self.csv, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def plot_curves(records: list[dict[str, Any]], path: Path) -> Path:
    """Loss (train, val) and accuracy (top-1, top-5) against epoch, as a PNG (matplotlib Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in records], label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [r["val_top1"] for r in records], label="top-1")
    ax_acc.plot(epochs, [r["val_top5"] for r in records], label="top-5")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
