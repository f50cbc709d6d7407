"""INT8 per family: today's post-training settings vs accuracy-aware PTQ vs QAT, on onnxruntime and ExecuTorch.

For one model of each family, trained briefly on the bundled digits at 64 px (cached under
``$ZOO_CACHE/bench-int8/<model>``: a second run reuses the checkpoints), it exports and measures on this machine:

* ``fp32``: the FP32 ONNX's top-1 on the digits validation split (the INT8 gate's held-out images);
* ``ptq-plain``: what the exporter did before the gate (MinMax calibration, full 8-bit weights, no op kept in float,
  Q/DQ on every Conv / MatMul / Gemm / Add input), with the gate switched off so that the figures are recorded
  however bad;
* ``ptq-aware``: the exporter's default accuracy-aware search (calibration methods, 7-bit weights where this CPU
  saturates 8-bit products, sensitive ops kept in float, Q/DQ placement timed here), under the default budget
  (drop <= 1 point, agreement >= 98%);
* ``qat``: ``zoo train --qat`` for ``--qat-epochs`` from the FP32 checkpoint, exported from its learned ranges; its
  drop is reported against its own FP32 twin (the gate) and against the original FP32 model;
* with ExecuTorch installed, ``executorch-int8`` (PT2E + XNNPACK) of the FP32 and of the QAT-trained weights.

Latency ratios are INT8 / FP32 medians measured side by side in the same export (batch 1). Results go to
``benchmarks/results/int8.jsonl`` (one line per model, appended as they finish), the table to
``benchmarks/results/int8.md`` and the plot (drop vs latency ratio) to ``benchmarks/results/int8.png``.

    python benchmarks/int8.py                      # every family (long: minutes per model on 2 cores)
    python benchmarks/int8.py --models efficientvit_m0,mobilenetv2_100
    python benchmarks/int8.py --report             # table and plot from the results file only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: One model per family: the smallest (fastest to train) variant.
MODELS = (
    "efficientvit_m0", "mobilenetv2_100", "mobilenetv1_075", "tinynet_e", "efficientnet_b0", "fbnetc_100",
    "proxylessnas_mobile", "spnasnet_100", "simplenetv1_small_m1_05", "ese_vovnet19b_slim_dw", "efficientmod_xxs",
    "efficientformer_l1", "resnetrs50", "deit_t_prepbn", "pvt_t_prepbn", "swin_t_prepbn", "slab_cswin_t",
    "t2t_vit_14_un", "sparse_mobilenetv1_075_s90",
)  # fmt: skip
RESULTS = ROOT / "benchmarks" / "results"


def _train(model: str, out: Path, epochs: int, qat_from: Path | None = None) -> Path:
    """A cached digits run (64 px); returns its last checkpoint (never picked on the validation split)."""
    from train import TrainConfig, fit, load_recipe

    last = out / "last.safetensors"
    if last.is_file() and (out / "done").is_file():
        return last
    values = load_recipe("digits_qat" if qat_from else "digits")
    values.update(model=model, epochs=epochs, output=str(out), progress=False, plot=False, img_size=64)
    if qat_from:
        values["pretrained"] = str(qat_from)
    fit(TrainConfig(**values))
    (out / "done").write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return last


def _export(model: str, ckpt: Path, out: Path, formats: tuple[str, ...], **opts) -> dict:
    from export import ExportOptions, export_model

    options = ExportOptions(formats=formats, calib_data="digits", img_size=64, latency_seconds=1.0, **opts)
    res = export_model(model, out, options, checkpoint=ckpt)
    return res.manifest["formats"]


def _figures(rec: dict | None) -> dict:
    if not rec:
        return {}
    top = rec.get("top1") or {}
    q = rec.get("quantization") or {}
    floats = q.get("float_nodes") or []
    return {
        "status": rec.get("status"),
        "top1_fp32": top.get("top1_fp32"),
        "top1_int8": top.get("top1_int8"),
        "drop": top.get("drop"),
        "agreement": top.get("agreement"),
        "latency_ratio": rec.get("latency_ratio_int8_over_fp32"),
        "float_ops": len(floats) if isinstance(floats, list) else None,
        "weights": q.get("weights"),
        "error": rec.get("error"),
    }


def run_model(model: str, cache: Path, epochs: int, qat_epochs: int, executorch: bool) -> dict:
    base = cache / model
    fp32 = _train(model, base / f"fp32-e{epochs}", epochs)
    qat = _train(model, base / f"qat-e{epochs}-{qat_epochs}", qat_epochs, qat_from=fp32)
    et = ("executorch", "executorch-int8") if executorch else ()
    row: dict = {"model": model, "epochs": epochs, "qat_epochs": qat_epochs}
    plain = _export(
        model, fp32, base / "x-plain", ("onnx", "onnx-int8"), int8_calibration=("minmax",), int8_reduce_range="off",
        int8_fallback=False, int8_placement="qdq", max_int8_drop=100.0, min_int8_agreement=0.0, min_int8_cosine=-1.0,
    )  # fmt: skip
    row["fp32_top1"] = _figures(plain["onnx-int8"]).get("top1_fp32")
    row["ptq_plain"] = _figures(plain["onnx-int8"])
    aware = _export(model, fp32, base / "x-aware", ("onnx", "onnx-int8", *et))
    row["ptq_aware"] = _figures(aware["onnx-int8"])
    row["et_ptq"] = _figures(aware.get("executorch-int8"))
    q = _export(model, qat, base / "x-qat", ("onnx", "onnx-int8", *et))
    row["qat"] = _figures(q["onnx-int8"])
    row["et_qat"] = _figures(q.get("executorch-int8"))
    for key in ("qat", "et_qat"):
        if row[key].get("top1_int8") is not None and row["fp32_top1"] is not None:
            row[key]["drop_vs_original_fp32"] = row["fp32_top1"] - row[key]["top1_int8"]
    return row


def _cell(fig: dict, drop_key: str = "drop") -> str:
    if not fig or fig.get("top1_int8") is None:
        return "-" if not fig else f"{fig.get('status')}"
    ratio = f", {fig['latency_ratio']:.2f}x" if fig.get("latency_ratio") else ""
    flag = "" if fig.get("status") == "ok" else " FAILED"
    return f"{fig['top1_int8']:.1f} ({fig[drop_key]:+.1f} pt{ratio}){flag}"


def report(rows: list[dict], cpu: str) -> str:
    """The Markdown table (and the plot next to it)."""
    lines = [
        f"INT8 top-1 on digits val (360 images, 64 px) and its drop vs FP32; INT8/FP32 latency ratio (batch 1), "
        f"measured on {cpu}.",
        "",
        "| model (FP32 + QAT epochs) | FP32 | ORT plain PTQ | ORT accuracy-aware PTQ "
        "| ORT QAT (vs its twin / vs original) | ExecuTorch PTQ | ExecuTorch QAT weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error'][:80]} | | | | | |")
            continue
        q = r["qat"]
        qat = _cell(q)
        if q.get("drop_vs_original_fp32") is not None:
            qat += f" / {q['drop_vs_original_fp32']:+.1f} pt"
        name = f"{r['model']} ({r['epochs']}+{r['qat_epochs']} ep)"
        cells = [_cell(r["ptq_plain"]), _cell(r["ptq_aware"]), qat, _cell(r["et_ptq"]), _cell(r["et_qat"])]
        lines.append(f"| {name} | {r['fp32_top1']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, cpu: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for key, label, marker in (("ptq_plain", "plain PTQ", "x"), ("ptq_aware", "accuracy-aware PTQ", "o"),
                               ("qat", "QAT", "^"), ("et_ptq", "ExecuTorch PTQ", "s")):  # fmt: skip
        ok = [r for r in rows if "error" not in r and r.get(key, {}).get("latency_ratio")]
        pts = [(r[key]["latency_ratio"], r[key]["drop"], r["model"]) for r in ok if r[key].get("drop") is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
            for x, y, name in pts:
                ax.annotate(name, (x, y), fontsize=6, alpha=0.7)
    ax.axhline(1.0, color="red", lw=0.8, ls="--", label="budget: 1 point")
    ax.axvline(1.0, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("INT8 / FP32 latency (batch 1; < 1 is faster)")
    ax.set_ylabel("top-1 drop vs FP32 (points, digits val)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title(f"INT8 per family, {cpu}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--epochs", type=int, default=10, help="FP32 training epochs on digits (the demo recipe's 10)")
    p.add_argument("--qat-epochs", type=int, default=6, help="QAT epochs (the digits_qat recipe's 6)")
    p.add_argument("--results", default=str(RESULTS / "int8.jsonl"))
    p.add_argument("--report", action="store_true", help="only rebuild the table and plot from --results")
    args = p.parse_args()

    import weights
    from export.executorch_export import executorch_status
    from export.int8 import int8_capability

    cap = int8_capability()
    cpu = f"{cap['cpu']} ({'with' if cap['int8_dot_product'] else 'no'} int8 dot products: {' '.join(cap['isa'])})"
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    if not args.report:
        cache = weights.cache_dir() / "bench-int8"
        executorch = executorch_status()[1] is None
        for model in args.models.split(","):
            t0 = time.perf_counter()
            print(f"[int8-bench] {model} ...", file=sys.stderr, flush=True)
            try:
                row = run_model(model, cache, args.epochs, args.qat_epochs, executorch)
            except Exception as e:  # noqa: BLE001 - one model's failure is a row of the table, not the end
                traceback.print_exc()
                row = {"model": model, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
            row.update(cpu=cpu, seconds=round(time.perf_counter() - t0, 1))
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[int8-bench] {model} done in {row['seconds']:.0f} s", file=sys.stderr, flush=True)
    rows: dict[str, dict] = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        rows[r["model"]] = r  # the latest run of each model
    ordered = list(rows.values())
    table = report(ordered, ordered[0]["cpu"] if ordered else cpu)
    (results.parent / "int8.md").write_text(table)
    if ordered:
        plot(ordered, results.parent / "int8.png", ordered[0]["cpu"])
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
