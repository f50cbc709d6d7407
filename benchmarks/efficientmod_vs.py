"""EfficientMod-s against the models its paper compares with, measured side by side in one run.

The paper claims a better speed-accuracy trade-off than EfficientFormerV2-S2 and MobileViTv2-1.0. This times our
``efficientmod_s`` (deployed: layer scales folded; eager and onnxruntime) against timm's ``efficientformerv2_s2`` and
``mobilevitv2_100`` (eager and onnxruntime), at batch 1 with 2 threads, all candidates in alternation, and prints the
ratios of each candidate's median latency to ours in the same runtime, with parameters and MACs counted here
(``zoo.count_macs``, which, like the paper's fvcore count, misses EfficientMod's attention products: 85 M MACs).

    python benchmarks/efficientmod_vs.py --min-seconds 2 --out out/benchmarks/efficientmod_vs.csv

On a shared machine with more busy threads than cores, run it (and ``vs_timm.py``) with ``OMP_WAIT_POLICY=PASSIVE``:
spinning OpenMP threads that get descheduled otherwise inflate the eager latencies by tens of times.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import blocks  # noqa: E402
import zoo  # noqa: E402
from export import export_onnx  # noqa: E402
from export.latency import time_side_by_side  # noqa: E402

#: timm's models the paper compares EfficientMod-s with; ours is deployed before timing.
RIVALS = ("efficientformerv2_s2", "mobilevitv2_100")
OURS = "efficientmod_s"


def _ort_session(model: torch.nn.Module, size: tuple[int, int, int], threads: int, tmp: Path):
    import onnxruntime as ort

    path = tmp / f"{id(model)}.onnx"
    export_onnx(model, path, size, batch=1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # no busy-waiting threads left behind to slow the torch candidates timed in alternation
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})


def build_models() -> dict[str, torch.nn.Module]:
    """Our deployed ``efficientmod_s`` and timm's rivals, in eval mode."""
    import timm

    models = {OURS: blocks.reparameterize_model(zoo.create_model(OURS))}
    for name in RIVALS:
        models[name] = timm.create_model(name).eval()
    return models


def bench(
    threads: int, min_seconds: float, size: tuple[int, int, int]
) -> tuple[dict[str, float], dict[str, tuple[int, int]]]:
    """Median latency (ms) of each model in eager PyTorch and in onnxruntime, batch 1; params and MACs of each."""
    models = build_models()
    facts = {n: (zoo.count_params(m), zoo.count_macs(m, size)) for n, m in models.items()}
    x = torch.randn(1, *size)
    with tempfile.TemporaryDirectory() as tmp:
        cands = {}
        for name, model in models.items():
            ort_run = _ort_session(model, size, threads, Path(tmp))
            cands[f"{name}/eager"] = lambda m=model: m(x)
            cands[f"{name}/onnxruntime"] = lambda r=ort_run: r(x)
        with torch.inference_mode():
            res = time_side_by_side(cands, min_seconds=min_seconds)
    return {k: v.median_ms for k, v in res.items()}, facts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per candidate (at least)")
    p.add_argument("--size", type=int, default=224, help="input side")
    p.add_argument("--out", default="out/benchmarks/efficientmod_vs.csv")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    t, facts = bench(args.threads, args.min_seconds, (3, args.size, args.size))
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, batch 1")
    print(f"{'model':22s} {'runtime':12s} {'ms':>8s} {'x ours':>7s} {'params M':>9s} {'GMACs':>6s}")
    rows = []
    for label, ms in t.items():
        name, runtime = label.split("/")
        ratio = ms / t[f"{OURS}/{runtime}"]
        params, macs = facts[name]
        rows.append(
            {
                "model": name,
                "runtime": runtime,
                "median_ms": round(ms, 3),
                "ratio_to_ours": round(ratio, 3),
                "params": params,
                "macs": macs,
            }
        )
        print(f"{name:22s} {runtime:12s} {ms:8.2f} {ratio:7.2f} {params / 1e6:9.2f} {macs / 1e9:6.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
