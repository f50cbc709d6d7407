"""Fast Sparse ConvNets on this CPU: deployed dense models against deployed sparse ones, side by side in one run.

For MobileNetV1-1.0, MobileNetV2-1.0 and EfficientNet-B0: the deployed dense model and the deployed sparse model at
70/80/90% sparsity (random masks at that sparsity, paper structure), batch 1, 2 threads, timed in alternation;
end-to-end latency ratios (dense / sparse, > 1 means the sparse model is faster) and, per model and sparsity, the
ratio over the 1x1 convolutions alone (each 1x1 conv timed on its real input, dense op against the layer's deployed
forward, which picks sparse or dense by the cost model).

    python benchmarks/sparse.py                          # the table
    python benchmarks/sparse.py --calibrate              # re-fit blocks.sparse.COST_MODEL on this machine

``--calibrate`` times the dense 1x1 convolution against the CSR product over a grid of layer shapes and
densities and prints the least-squares fit of :class:`blocks.sparse.KernelCostModel` and how often its decision
agrees with the measurement.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import blocks  # noqa: E402
from blocks.sparse import COST_MODEL, KernelCostModel, SparseConv2d  # noqa: E402
from export.latency import time_side_by_side  # noqa: E402

# (in, out) channel pairs of the 1x1 convs of MobileNetV1/V2 and EfficientNet-B0, with the spatial sizes they see.
_GRID_CHANNELS = [(32, 64), (64, 128), (128, 256), (256, 512), (512, 512), (1024, 1024), (16, 96), (96, 24)]
_GRID_CHANNELS += [(144, 32), (192, 64), (384, 64), (576, 160), (960, 320), (320, 1280), (1280, 1000)]
_GRID_COLS = [1, 49, 196, 784, 3136, 12544]
_GRID_DENSITY = [0.05, 0.1, 0.2, 0.3, 0.5]


def _layer_pair(cin: int, cout: int, density: float) -> tuple[SparseConv2d, torch.Tensor]:
    layer = SparseConv2d(cin, cout, bias=True)
    blocks.prune_magnitude(layer, 1.0 - density)
    layer.reparameterize()
    return layer, layer.weight.detach().clone()


def calibrate(min_seconds: float, csv_path: str | None = None) -> KernelCostModel:
    """Time dense vs CSR over the grid, fit the cost model, print it and its agreement with the measurements."""
    import numpy as np

    rows = []
    for cin, cout in _GRID_CHANNELS:
        for cols in _GRID_COLS:
            if cin * cout * cols > 2e8:  # larger than any layer of the benchmarked models
                continue
            side = int(cols**0.5)
            x = torch.randn(1, cin, side, side)
            for density in _GRID_DENSITY:
                layer, w = _layer_pair(cin, cout, density)
                nnz = int((w != 0).sum())
                csr, bias, _ = layer._csr_weight()
                with torch.inference_mode():
                    res = time_side_by_side(
                        {
                            "dense": lambda: F.conv2d(x, w, layer.bias),
                            "sparse": lambda: layer._sparse_forward(x, csr, bias),
                        },
                        warmup=2,
                        min_runs=7,
                        min_seconds=min_seconds,
                    )
                rows.append((cout, cin, nnz, side * side, res["dense"].median_ms * 1e3, res["sparse"].median_ms * 1e3))
    r = np.array(rows, dtype=np.float64)
    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(csv_path, r, delimiter=",", header="out,in,nnz,cols,dense_us,sparse_us", comments="")
    out_f, in_f, nnz, cols, td, ts = r.T
    # Weighted least squares (weights 1/t): the decision depends on relative, not absolute, errors.
    ad = np.stack([np.ones_like(td), out_f * in_f * cols], 1) / td[:, None]
    cd = np.linalg.lstsq(ad, np.ones_like(td), rcond=None)[0]
    as_ = np.stack([np.ones_like(ts), nnz * cols, out_f * cols], 1) / ts[:, None]
    cs = np.linalg.lstsq(as_, np.ones_like(ts), rcond=None)[0]
    cd, cs = np.maximum(cd, 1e-9), np.maximum(cs, 1e-9)
    fit = KernelCostModel(float(cd[0]), float(1 / cd[1]), float(cs[0]), float(1 / cs[1]), float(1 / cs[2]))
    for name, model in (("current", COST_MODEL), ("fitted", fit)):
        pred = np.array(
            [
                model.sparse_us(int(o), int(n), int(c)) < model.dense_us(int(o), int(i), int(c))
                for o, i, n, c in zip(out_f, in_f, nnz, cols)
            ]
        )
        truth = ts < td
        lost = np.where(pred != truth, np.abs(td - ts), 0).sum() / np.minimum(td, ts).sum()
        print(
            f"{name}: {model}\n  decision agrees on {np.mean(pred == truth):.0%} of {len(r)} shapes; "
            f"time lost to wrong decisions {lost:.1%} of the best-choice total"
        )
    return fit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calibrate", action="store_true", help="fit the kernel cost model instead")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per candidate (at least)")
    p.add_argument("--csv", default="out/benchmarks/sparse_calibration.csv", help="raw calibration timings")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    calibrate(args.min_seconds, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
