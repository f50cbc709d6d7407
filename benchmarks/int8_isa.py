"""INT8 accuracy on another CPU's int8 kernels: this machine natively, and an AVX2 CPU without VNNI under emulation.

onnxruntime picks its int8 kernels from the CPU (cpuid). Without VNNI, x86 kernels sum pairs of u8 x s8 products in
saturating 16 bits, so an INT8 file that is accurate on an AVX-512-VNNI machine can collapse on an AVX2-only one.
This script makes that visible on any x86-64 machine: it quantizes a digits-trained checkpoint with full 8-bit and
with 7-bit weights (``reduce_range``), and scores both on the digits validation split natively and under
``qemu-x86_64 -cpu max`` (Debian's ``qemu-user``: QEMU's TCG offers AVX2 but neither AVX-512 nor VNNI, so
onnxruntime runs its AVX2 kernels). Emulation is slow (minutes for 120 images): it measures accuracy, never speed.

    python benchmarks/int8_isa.py --checkpoint out/demo/train/best.safetensors --images 120
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_EVAL = """
import sys, numpy as np, onnxruntime as ort
d = np.load(sys.argv[1])
for f in sys.argv[2:]:
    s = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    out = np.concatenate([s.run(None, {"input": d["x"][i:i + 20]})[0] for i in range(0, len(d["x"]), 20)])
    print(f, 100 * float((out.argmax(1) == d["y"]).mean()), flush=True)
"""


def _score(python: str, data: Path, files: list[Path], emulate: bool) -> dict[str, float]:
    cmd = [python, "-c", _EVAL, str(data), *map(str, files)]
    if emulate:
        cmd = ["qemu-x86_64", "-cpu", "max", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {Path(line.rsplit(" ", 1)[0]).name: float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="efficientvit_m0")
    p.add_argument("--checkpoint", required=True, help="a digits-trained checkpoint (make demo writes one)")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--images", type=int, default=120, help="validation images scored (emulation is slow)")
    p.add_argument("--no-emulation", action="store_true", help="native only")
    args = p.parse_args()

    import numpy as np

    import blocks
    import zoo
    from export.data import load_digits, normalize
    from export.int8 import int8_capability
    from export.onnx_export import export_onnx
    from export.quantize import quantize_int8

    model = zoo.create_model(args.model, pretrained=args.checkpoint, num_classes=10, img_size=args.img_size).eval()
    cfg = model.pretrained_cfg
    deployed = blocks.reparameterize_model(model)
    tmp = Path(tempfile.mkdtemp(prefix="int8_isa_"))
    try:
        fp32 = tmp / "fp32.onnx"
        export_onnx(deployed, fp32, (3, args.img_size, args.img_size), batch=20)
        calib = normalize(
            load_digits(args.img_size, "train", cfg["crop_pct"], cfg["interpolation"]).pixels[:64],
            cfg["mean"],
            cfg["std"],
        )
        files = [fp32]
        for rr in (False, True):
            files.append(tmp / f"int8_reduce_range_{'on' if rr else 'off'}.onnx")
            quantize_int8(fp32, files[-1], calib[:60], 20, reduce_range=rr)  # the file's batch is 20
        val = load_digits(args.img_size, "val", cfg["crop_pct"], cfg["interpolation"])
        n = args.images - args.images % 20
        data = tmp / "val.npz"
        np.savez(data, x=normalize(val.pixels[:n], cfg["mean"], cfg["std"]).numpy(), y=val.labels[:n].numpy())
        cap = int8_capability()
        rows = {f"native: {cap['cpu']} ({', '.join(cap['isa'])})": _score(sys.executable, data, files, False)}
        if not args.no_emulation:
            if shutil.which("qemu-x86_64") is None:
                print("qemu-x86_64 not found (apt-get install qemu-user); emulated column skipped", file=sys.stderr)
            else:
                print("emulating an AVX2 CPU without VNNI (qemu TCG): minutes...", file=sys.stderr, flush=True)
                rows["emulated: qemu -cpu max (AVX2, no AVX-512, no VNNI)"] = _score(sys.executable, data, files, True)
        print(f"\n{args.model} at {args.img_size} px, digits val, {n} images, top-1 %")
        print(f"{'kernels':64s} {'FP32':>6s} {'INT8 8-bit':>10s} {'INT8 7-bit':>10s}")
        for label, r in rows.items():
            v = [r[f.name] for f in files]
            print(f"{label:64s} {v[0]:6.1f} {v[1]:10.1f} {v[2]:10.1f}")
        print(json.dumps(rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
