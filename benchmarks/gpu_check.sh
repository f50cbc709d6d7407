#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build TensorRT engines for a few models with `zoo export` and print their parity
# (against onnxruntime on the same ONNX) and latency. Needs `pip install -e '.[export,tensorrt]'` (tensorrt 11.x);
# onnxruntime-gpu makes the reference run on the GPU too.
#
#   benchmarks/gpu_check.sh                                   # efficientvit_m0 and efficientvit_m4
#   MODELS="efficientvit_m2" OUT=/tmp/trt benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
MODELS=${MODELS:-"efficientvit_m0 efficientvit_m4"}
OUT=${OUT:-out/gpu_check}
export PYTHONPATH=${PYTHONPATH:-.}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA GPU visible to torch')"
"$PY" -c "import tensorrt as trt; print('TensorRT', trt.__version__)" \
  || { echo "gpu_check: TensorRT missing: pip install 'efficient-zoo[tensorrt]'" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true

status=0
for m in $MODELS; do
  # FP16 engine from the FP16 ONNX and INT8 engine from the Q/DQ ONNX (data-free calibration), dynamic batch 1..64.
  # These are freshly initialised models, whose near-tied logits say nothing about INT8 accuracy: the INT8 gate's
  # budget is opened here (its figures, measured on the GPU, are still printed); a trained checkpoint keeps the default.
  "$PY" -m export --model "$m" --formats onnx,onnx-int8,tensorrt --half --dynamic-batch --batch 8 \
    --min-int8-agreement 0 --min-int8-cosine 0 --latency-seconds 2 --out "$OUT/$m" || status=1
  # FP32 engine with 2:4 sparse kernels allowed, static batch 1.
  "$PY" -m export --model "$m" --formats onnx,tensorrt --trt-sparse --latency-seconds 2 --out "$OUT/$m-fp32" || status=1
done

"$PY" - "$OUT" $MODELS <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"\n{'run':26s} {'engine':7s} {'parity err':>11s} {'tol':>7s}  GPU latency ms (median)")
for m in sys.argv[2:]:
    for run in (m, f"{m}-fp32"):
        man = out / run / "manifest.json"
        if not man.is_file():
            print(f"{run:26s} no manifest")
            continue
        rec = json.loads(man.read_text())["formats"].get("tensorrt", {})
        if rec.get("status") != "ok":
            print(f"{run:26s} FAILED: {rec.get('error')}")
            continue
        lat = rec.get("latency_gpu_ms", {})
        for prec, eng in rec["engines"].items():
            p = eng["parity"]
            times = ", ".join(f"{k} {v:.3f}" for k, v in lat.items() if k.endswith(prec))
            print(f"{run:26s} {prec:7s} {p['error']:11.2e} {p['tol']:7.0e}  {times}")
            if "top1" in eng:
                t = eng["top1"]
                print(f"{'':26s} INT8 gate on {t.get('measured_on')}: agreement {t['agreement']:.1f}%, cosine {t['cosine']:.4f}")
        if {"tensorrt int8", "tensorrt fp16"} <= set(lat):
            print(f"{run:26s} INT8 / FP16 engine latency: {lat['tensorrt int8'] / lat['tensorrt fp16']:.2f}")
PYEOF
exit $status
