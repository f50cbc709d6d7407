"""Throughput of ``zoo train`` (``train.fit``) against a bare forward / backward / step loop, side by side.

Both candidates train the same model on the same data (the same DataLoader and transforms, built by
``train.data``), with the same optimizer (timm's factory), loss and batch size, for one epoch per call; the calls
alternate (``export.latency.time_side_by_side``) so that machine noise hits both alike. Reported per candidate:

* ``img/s``: images of the training phase divided by its wall time, data loading included and validation and
  checkpointing excluded (for ``zoo train`` this is the ``img_per_s`` it writes to metrics.jsonl);
* ``epoch s``: the whole call, including building the model and, for ``zoo train``, validation and checkpoints.

The loop's overhead is ``1 - img/s(zoo train) / img/s(bare)``; the goal is under 5%.

    python benchmarks/train_overhead.py                       # digits recipe: EfficientViT-M0, 64 px, batch 64
    python benchmarks/train_overhead.py --rounds 5 --threads 2 --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from export.latency import time_side_by_side  # noqa: E402
from train.build import build_criterion, build_model, build_optimizer, model_img_size  # noqa: E402
from train.data import batches, build_datasets, build_loaders, build_transforms  # noqa: E402


def bare_epoch(cfg: train.TrainConfig, device: torch.device) -> float:
    """One epoch of the plainest loop over the same model, data, optimizer and loss; returns images/s."""
    data = build_datasets(cfg)
    model = build_model(cfg, data.num_classes).to(device)
    transforms = build_transforms(cfg, model.pretrained_cfg, model_img_size(cfg, model))
    loader, _ = build_loaders(cfg, data, transforms, rank=0, world=1)
    optimizer = build_optimizer(model, cfg, cfg.lr)
    criterion = build_criterion(cfg)
    model.train()
    seen, t0 = 0, time.perf_counter()
    for x, y in batches(loader, "skip"):
        x, y = x.to(device), y.to(device)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="digits", help="recipe giving model, data and batch size")
    p.add_argument("--rounds", type=int, default=3, help="timed epochs per candidate")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for both")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None)
    args = p.parse_args()
    values = train.load_recipe(args.recipe)
    values.update(epochs=1, warmup_epochs=0, progress=False, plot=False, threads=args.threads, device=args.device)
    if args.batch_size:
        values["batch_size"] = args.batch_size
    cfg = train.TrainConfig.from_dict(values)
    if cfg.lr is None:
        cfg = cfg.replace(lr=cfg.lr_base)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rates: dict[str, list[float]] = {"bare loop": [], "zoo train": []}

    with tempfile.TemporaryDirectory() as tmp:

        def run_bare() -> None:
            rates["bare loop"].append(bare_epoch(cfg, device))

        def run_fit() -> None:
            rates["zoo train"].append(train.fit(cfg.replace(output=tmp))["last"]["img_per_s"])

        timings = time_side_by_side(
            {"bare loop": run_bare, "zoo train": run_fit}, warmup=1, min_runs=args.rounds, min_seconds=0.0
        )
    where = f"{args.device}, {args.threads} thread(s)"
    print(f"{cfg.model} @ {cfg.img_size} px, {cfg.data}, batch {cfg.batch_size}, {where}")
    print(f"{'candidate':12s} {'img/s (median)':>15s} {'runs':>5s} {'epoch s':>8s}")
    for name, r in rates.items():
        runs = r[1:]  # the first call of each was the untimed warm-up
        print(f"{name:12s} {statistics.median(runs):15.1f} {len(runs):5d} {timings[name].median_ms / 1e3:8.2f}")
    bare, fit = (statistics.median(rates[k][1:]) for k in ("bare loop", "zoo train"))
    print(f"loop overhead: {100 * (1 - fit / bare):+.1f}% (goal < 5%)")


if __name__ == "__main__":
    main()
