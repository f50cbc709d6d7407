"""Training as separate processes: a SIGKILLed run resumes bitwise, and torchrun runs DDP with 2 CPU processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file
from train_helpers import ROOT, cli_env, make_imagefolder, run_cli

# Every source of randomness on: augmentation (RandAugment, random erasing), mixup/cutmix, drop path, EMA.
RANDOM_RUN = [
    "--img-size", "16", "-b", "8", "--epochs", "3", "--warmup-epochs", "1", "--lr", "2e-3", "-j", "0",
    "--threads", "1", "--deterministic", "--no-progress", "--no-plot", "--seed", "3",
    "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0",
    "--drop-path", "0.1", "--model-ema", "--model-ema-decay", "0.9",
]  # fmt: skip


def _records(out) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sigkill_then_resume_is_bitwise_identical(tmp_path) -> None:
    data = make_imagefolder(tmp_path / "data")
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run_cli([*RANDOM_RUN, "--data", str(data), "--output", str(full)])
    assert r.returncode == 0, r.stderr
    cmd = [sys.executable, "-m", "train", *RANDOM_RUN, "--data", str(data), "--output", str(killed)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (killed / "last_state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-epoch 2 (or writing epoch 1's weights): the resume must not notice
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    state = torch.load(killed / "last_state.pt", weights_only=True)
    assert 1 <= state["epoch"] < 3
    r = run_cli(["--resume", str(killed)])
    assert r.returncode == 0, r.stderr
    a, b = load_file(full / "last.safetensors"), load_file(killed / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = torch.load(full / "last_state.pt", weights_only=True)["ema"]
    eb = torch.load(killed / "last_state.pt", weights_only=True)["ema"]
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    ra, rb = _records(full), _records(killed)
    assert [r["epoch"] for r in rb] == [1, 2, 3]
    for x, y in zip(ra, rb):
        assert {k: x[k] for k in ("train_loss", "val_loss", "val_top1")} == {
            k: y[k] for k in ("train_loss", "val_loss", "val_top1")
        }


def test_torchrun_two_cpu_processes(tmp_path) -> None:
    data = make_imagefolder(tmp_path / "data")
    out = tmp_path / "ddp"
    args = ["--data", str(data), "--img-size", "16", "-b", "4", "--epochs", "2", "-j", "0", "--threads", "1"]
    args += ["--no-progress", "--output", str(out)]
    r = run_cli(["--nproc_per_node=2", "-m", "train", *args], module="torch.distributed.run", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    records = _records(out)
    assert [rec["epoch"] for rec in records] == [1, 2]  # rank 0 alone writes: one record per epoch
    assert records[-1]["step"] == 2 * (48 // (2 * 4))  # each rank sees half of the 48 images per epoch
    assert records[-1]["val_images"] == 12  # the two validation slices add up to the whole set
    assert r.stdout.count("epoch 2/2") == 1  # only rank 0 logs
    assert (out / "best.safetensors").exists() and (out / "curves.png").exists()
