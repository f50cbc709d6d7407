"""SLAB's point is speed: deployed SLAB models (no norms left, linear attention) against timm's LayerNorm originals.

Side by side in one run, batch 1 by default, 2 threads: timm's model and our deployed model, each eager and under
onnxruntime. ``deit_t_prepbn`` is DeiT-T with every LayerNorm replaced by RepBN (folded away at deploy), against
timm's ``deit_tiny_patch16_224``; ``slab_swin_t`` (RepBN, linear attention in stages 1-2) against timm's
``swin_tiny_patch4_window7_224``. Prints ratios ours / timm per runtime and writes a CSV.

    python benchmarks/slab_vs_timm.py
    python benchmarks/slab_vs_timm.py --pairs deit_t_prepbn:deit_tiny_patch16_224 --min-seconds 5
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

PAIRS = "deit_t_prepbn:deit_tiny_patch16_224,slab_swin_t:swin_tiny_patch4_window7_224"


def _ort_session(model: torch.nn.Module, size: tuple[int, int, int], batch: int, threads: int, path: Path):
    import onnxruntime as ort

    export_onnx(model, path, size, batch=batch)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # no busy-waiting threads left behind to slow the torch candidates timed in alternation
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})


def bench_pair(ours_name: str, timm_name: str, batch: int, threads: int, min_seconds: float) -> dict[str, float]:
    """Median latency (ms) of timm and ours-deployed, eager and onnxruntime, timed in alternation."""
    import timm

    ours = blocks.reparameterize_model(zoo.create_model(ours_name))
    size = tuple(ours.pretrained_cfg["input_size"])
    ref = timm.create_model(timm_name).eval()
    x = torch.randn(batch, *size)
    with tempfile.TemporaryDirectory() as tmp:
        ort_timm = _ort_session(ref, size, batch, threads, Path(tmp) / "timm.onnx")
        ort_ours = _ort_session(ours, size, batch, threads, Path(tmp) / "ours.onnx")
        with torch.inference_mode():
            cands = {
                "timm_eager": lambda: ref(x),
                "ours_eager": lambda: ours(x),
                "timm_onnxruntime": lambda: ort_timm(x),
                "ours_onnxruntime": lambda: ort_ours(x),
            }
            res = time_side_by_side(cands, min_seconds=min_seconds)
    return {k: v.median_ms for k, v in res.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default=PAIRS, help="comma-separated ours:timm model pairs")
    p.add_argument("--batches", default="1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=3.0, help="timed seconds per candidate (at least)")
    p.add_argument("--out", default="out/benchmarks/slab_vs_timm.csv")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    pairs = [tuple(s.split(":")) for s in args.pairs.split(",")]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"{'ours (deployed)':16s} {'timm':30s} {'batch':>5s} {'eager ours/timm':>16s} {'ort ours/timm':>14s}")
    rows = []
    for ours_name, timm_name in pairs:
        for batch in (int(b) for b in args.batches.split(",")):
            t = bench_pair(ours_name, timm_name, batch, args.threads, args.min_seconds)
            row = {
                "ours": ours_name,
                "timm": timm_name,
                "batch": batch,
                **{f"{k}_ms": round(v, 3) for k, v in t.items()},
                "eager_ratio": round(t["ours_eager"] / t["timm_eager"], 3),
                "onnxruntime_ratio": round(t["ours_onnxruntime"] / t["timm_onnxruntime"], 3),
            }
            rows.append(row)
            ratios = f"{row['eager_ratio']:16.3f} {row['onnxruntime_ratio']:14.3f}"
            timm_ms = f"(timm {t['timm_eager']:.1f} / {t['timm_onnxruntime']:.1f} ms)"
            print(f"{ours_name:16s} {timm_name:30s} {batch:5d} {ratios}   {timm_ms}", flush=True)
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
