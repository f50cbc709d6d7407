"""Our models against timm's implementation of the same architecture, measured side by side in one run.

For every registered model that timm also implements: latency of timm's model (eager), ours (eager), ours deployed
(eager) and ours deployed under onnxruntime, at batch 1 and 16 with 2 threads. Prints a table of ratios against
timm eager and writes it to CSV.

    python benchmarks/vs_timm.py                        # all timm-compatible models
    python benchmarks/vs_timm.py --models 'efficientvit_m[04]' --batches 1 --out out/vs_timm.csv
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
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


def _ort_session(model: torch.nn.Module, size: tuple[int, int, int], batch: int, threads: int, tmp: Path):
    import onnxruntime as ort

    path = tmp / "m.onnx"
    export_onnx(model, path, size, batch=batch)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # no busy-waiting threads left behind to slow the torch candidates timed in alternation
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})


def bench_model(name: str, batch: int, threads: int, min_seconds: float) -> dict[str, float]:
    """Median latency (ms) of timm eager, ours eager, ours deployed eager and ours deployed onnxruntime."""
    import timm

    family = zoo.get_family(name)
    timm_name = family.timm_names[name]
    ours = zoo.create_model(name).eval()
    size = tuple(ours.pretrained_cfg["input_size"])
    ref = timm.create_model(timm_name).eval()
    deployed = blocks.reparameterize_model(ours)
    x = torch.randn(batch, *size)
    with tempfile.TemporaryDirectory() as tmp:
        ort_run = _ort_session(deployed, size, batch, threads, Path(tmp))
        with torch.inference_mode():
            cands = {
                "timm_eager": lambda: ref(x),
                "ours_eager": lambda: ours(x),
                "ours_deployed": lambda: deployed(x),
                "ours_onnxruntime": lambda: ort_run(x),
            }
            res = time_side_by_side(cands, min_seconds=min_seconds)
    return {k: v.median_ms for k, v in res.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="*", help="wildcard over registered names (default: all timm-compatible)")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per candidate (at least)")
    p.add_argument("--out", default="out/benchmarks/vs_timm.csv")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    names = [n for n in zoo.list_models() if fnmatch.fnmatch(n, args.models) and zoo.get_family(n).timm_names.get(n)]
    if not names:
        print(f"no timm-compatible model matches {args.models!r}", file=sys.stderr)
        return 1
    rows = []
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    hdr = f"{'model':28s} {'batch':>5s} {'timm ms':>9s} {'ours/timm':>10s} {'deployed/timm':>14s} {'ort/timm':>9s}"
    print(hdr)
    from tqdm import tqdm

    grid = [(n, int(b)) for n in names for b in args.batches.split(",")]
    for name, batch in tqdm(grid, desc="vs_timm", file=sys.stderr, leave=False):
        t = bench_model(name, batch, args.threads, args.min_seconds)
        base = t["timm_eager"]
        row = {
            "model": name,
            "batch": batch,
            **{f"{k}_ms": round(v, 3) for k, v in t.items()},
            "ours_eager_ratio": round(t["ours_eager"] / base, 3),
            "ours_deployed_ratio": round(t["ours_deployed"] / base, 3),
            "ours_onnxruntime_ratio": round(t["ours_onnxruntime"] / base, 3),
        }
        rows.append(row)
        tqdm.write(
            f"{name:28s} {batch:5d} {base:9.2f} {row['ours_eager_ratio']:10.3f} "
            f"{row['ours_deployed_ratio']:14.3f} {row['ours_onnxruntime_ratio']:9.3f}",
            file=sys.stdout,
        )
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
