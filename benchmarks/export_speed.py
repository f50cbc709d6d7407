"""What the exporter buys at inference time, measured side by side in one run (a benchmark, not a test).

For each model: onnxruntime latency of the folded export (``zoo export``'s FP32 ONNX) versus the same model exported
unfolded (a plain ``torch.onnx.export`` of the eval-mode model), the INT8 Q/DQ export versus FP32, and ExecuTorch
(XNNPACK) versus onnxruntime when ExecuTorch is installed. All candidates of a model are timed in alternation
(``export.latency.time_side_by_side``) at batch 1 with the same thread count; the ratios are what to read.

    python benchmarks/export_speed.py                                  # efficientvit_m0/m4 + first of each family
    python benchmarks/export_speed.py --models efficientvit_m0 --no-executorch --threads 2
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from export import ExportOptions, export_model, export_onnx  # noqa: E402
from export.executorch_export import executorch_status, load_pte  # noqa: E402
from export.latency import time_side_by_side  # noqa: E402
from export.onnx_export import ort_session, run_onnx  # noqa: E402


def default_models() -> list[str]:
    """EfficientViT-M0 and M4, plus the first variant of every other registered family."""
    names = ["efficientvit_m0", "efficientvit_m4"]
    for fam in zoo.list_families():
        if fam.name != "efficientvit" and fam.variants:
            names.append(sorted(fam.variants)[0])
    return names


def bench_model(name: str, threads: int, seconds: float, executorch: bool, tmp: Path) -> dict[str, float]:
    """Median latency (ms) of each candidate for one model."""
    # Fresh weights: latency does not depend on their values (dense kernels), and a model given synthetic BN
    # statistics is ill-conditioned on image-like inputs (fp32 itself drifts ~1e-2 from fp64), failing parity.
    model = zoo.create_model(name).eval()
    size = tuple(model.pretrained_cfg["input_size"])
    formats = ("onnx", "onnx-int8") + (("executorch",) if executorch else ())
    opts = ExportOptions(formats=formats, latency_seconds=0, threads=threads, calib_size=16, zeroq_steps=20)
    res = export_model(copy.deepcopy(model), tmp / name, opts)
    if not res.ok:
        print(f"{name}: some formats failed: {res.failed}")
    unfolded = tmp / f"{name}.unfolded.onnx"
    export_onnx(model, unfolded, size)
    x = torch.randn(1, *size)
    sessions = {
        "ort unfolded": ort_session(unfolded, threads),
        "ort folded": ort_session(tmp / name / f"{name}.onnx", threads),
    }
    if (tmp / name / f"{name}.int8.onnx").is_file():
        sessions["ort int8"] = ort_session(tmp / name / f"{name}.int8.onnx", threads)
    cands = {k: (lambda s=s: run_onnx(s, x)) for k, s in sessions.items()}
    if executorch and (tmp / name / f"{name}.pte").is_file():
        pte = load_pte(tmp / name / f"{name}.pte")
        cands["executorch xnnpack"] = lambda: pte(x)
    timing = time_side_by_side(cands, warmup=5, min_runs=20, min_seconds=seconds)
    return {k: t.median_ms for k, t in timing.items()}


def main() -> None:
    """Parse flags, run every model, print medians and ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0, help="time per candidate")
    p.add_argument("--no-executorch", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    version, reason = executorch_status()
    use_et = not args.no_executorch and reason is None
    if not args.no_executorch and reason:
        print(f"ExecuTorch skipped: {reason}")
    print(f"# {platform.processor() or platform.machine()}, {args.threads} thread(s), batch 1, medians in ms")
    header = (
        f"{'model':18s} {'unfolded':>9s} {'folded':>9s} {'int8':>9s} {'pte':>9s}  folded/unfolded  int8/fp32  pte/ort"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models or default_models():
            ms = bench_model(name, args.threads, args.seconds, use_et, Path(tmp))
            get = ms.get
            r1 = get("ort folded") / get("ort unfolded")
            r2 = get("ort int8", float("nan")) / get("ort folded")
            r3 = get("executorch xnnpack", float("nan")) / get("ort folded")
            cols = [get(k, float("nan")) for k in ("ort unfolded", "ort folded", "ort int8", "executorch xnnpack")]
            print(f"{name:18s} " + " ".join(f"{c:9.3f}" for c in cols) + f"  {r1:15.3f}  {r2:9.3f}  {r3:7.3f}")


if __name__ == "__main__":
    main()
