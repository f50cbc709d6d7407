"""Fast Sparse ConvNets on this CPU: deployed dense models against deployed sparse ones, side by side in one run.

For MobileNetV1-1.0, MobileNetV2-1.0 and EfficientNet-B0: the deployed dense model and the deployed sparse model at
70/80/90% sparsity (random masks at that sparsity, paper structure), batch 1, 2 threads, timed in alternation;
end-to-end latency ratios (dense / sparse, > 1 means the sparse model is faster) and, per model and sparsity, the
ratio over the 1x1 convolutions alone (each 1x1 conv timed on its real input, dense op against the layer's deployed
forward, which picks sparse or dense by the cost model). The dense model also runs under onnxruntime (same
threads) as a stronger dense baseline: eager PyTorch runs batch-1 1x1 convolutions through its generic
im2col + GEMM path, not oneDNN.

    python benchmarks/sparse.py                          # the table
    python benchmarks/sparse.py --calibrate              # re-fit the cost model of the sparse kernel in use

``--calibrate`` times the dense 1x1 convolution against the CSR product over a grid of layer shapes and
densities and prints the least-squares fit of :class:`blocks.sparse.KernelCostModel` and how often its decision
agrees with the measurement.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import blocks  # noqa: E402
import zoo  # noqa: E402
from blocks import native  # noqa: E402
from blocks.sparse import KernelCostModel, SparseConv2d, active_cost_model, prune_random, sparse_kernel_is_faster  # noqa: E402
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


def _time_layer(layer: SparseConv2d, w: torch.Tensor, x: torch.Tensor, min_seconds: float) -> tuple[float, float]:
    """Dense and CSR latency (us) of one deployed layer: the lowest of 3 medians, as the machine is shared."""
    csr, bias, _ = layer._csr_weight()
    cands = {"dense": lambda: F.conv2d(x, w, layer.bias), "sparse": lambda: layer._sparse_forward(x, csr, bias)}
    best = {"dense": float("inf"), "sparse": float("inf")}
    with torch.inference_mode():
        for _ in range(3):
            res = time_side_by_side(cands, warmup=2, min_runs=5, min_seconds=min_seconds / 3)
            best = {k: min(best[k], res[k].median_ms * 1e3) for k in best}
    return best["dense"], best["sparse"]


def measure_grid(min_seconds: float) -> np.ndarray:
    """Rows ``(out, in, nnz, cols, dense_us, sparse_us)`` over the calibration grid."""
    rows = []
    for cin, cout in _GRID_CHANNELS:
        for cols in _GRID_COLS:
            if cin * cout * cols > 2e8:  # larger than any layer of the benchmarked models
                continue
            side = int(cols**0.5)
            x = torch.randn(1, cin, side, side)
            for density in _GRID_DENSITY:
                layer, w = _layer_pair(cin, cout, density)
                dense_us, sparse_us = _time_layer(layer, w, x, min_seconds)
                rows.append((cout, cin, int((w != 0).sum()), side * side, dense_us, sparse_us))
    return np.array(rows, dtype=np.float64)


def _robust_nnls(features: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error, refitted without the worst outliers (a shared machine)."""
    from scipy.optimize import nnls

    keep = np.ones(len(t), dtype=bool)
    for _ in range(3):
        coef = nnls(features[keep] / t[keep, None], np.ones(keep.sum()))[0]
        rel = np.abs(features @ coef - t) / t
        keep = rel <= max(0.5, np.quantile(rel, 0.9))
    return coef


def fit_cost_model(r: np.ndarray) -> KernelCostModel:
    """Fit :class:`KernelCostModel` to calibration rows and print how often its decisions match the timings."""
    out_f, in_f, nnz, cols, td, ts = r.T
    cd = _robust_nnls(np.stack([np.ones_like(td), out_f * in_f * cols, (in_f + out_f) * cols], 1), td)
    cs = _robust_nnls(np.stack([np.ones_like(ts), nnz * cols, out_f * cols], 1), ts)
    inv = lambda c: float(1 / max(c, 1e-12))  # noqa: E731
    fit = KernelCostModel(float(cd[0]), inv(cd[1]), inv(cd[2]), float(cs[0]), inv(cs[1]), inv(cs[2]))
    for name, model in (("current", active_cost_model()), ("fitted", fit)):
        pred = np.array(
            [
                model.sparse_us(int(o), int(n), int(c)) < model.dense_us(int(o), int(i), int(c))
                for o, i, n, c in zip(out_f, in_f, nnz, cols)
            ]
        )
        truth = ts < td
        best = np.minimum(td, ts).sum()
        chosen = np.where(pred, ts, td).sum()
        print(
            f"{name}: {model}\n  decision agrees on {np.mean(pred == truth):.0%} of {len(r)} shapes; its choices "
            f"take {chosen / best - 1:.1%} longer than the best ones (always dense: {td.sum() / best - 1:.1%})"
        )
    return fit


def calibrate(min_seconds: float, csv_path: str, fit_only: bool = False) -> KernelCostModel:
    """Time dense vs CSR over the grid (or read the rows of an earlier run) and fit the cost model."""
    if fit_only:
        r = np.loadtxt(csv_path, delimiter=",", skiprows=1)
    else:
        r = measure_grid(min_seconds)
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(csv_path, r, delimiter=",", header="out,in,nnz,cols,dense_us,sparse_us", comments="")
    return fit_cost_model(r)


MODELS = {  # dense model -> its sparse variant (the paper's structure; re-masked at each benchmarked sparsity)
    "mobilenetv1_100": "sparse_mobilenetv1_100_s90",
    "mobilenetv2_100": "sparse_mobilenetv2_100_s85",
    "efficientnet_b0": "sparse_efficientnet_b0_s80",
}


def _deployed_pair(dense_name: str, sparse_name: str, sparsities: list[float]) -> tuple[nn.Module, dict]:
    dense = zoo.create_model(dense_name)
    sparse = {}
    for s in sparsities:
        model = zoo.create_model(sparse_name)
        model.load_state_dict(dense.state_dict())  # the dense weights, with dense masks
        prune_random(model, s)  # then random masks at s, in the variant's structure
        sparse[s] = blocks.reparameterize_model(model)
    return blocks.reparameterize_model(dense), sparse


def _pw_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of every 1x1 sparse conv of ``model`` (names as in the dense model)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, args[0]))
        for name, m in model.named_modules()
        if isinstance(m, SparseConv2d)
    ]
    model(x)
    for h in hooks:
        h.remove()
    return seen


def _ort_runner(model: nn.Module, size: tuple[int, int, int], threads: int, tmp: Path):
    """The dense model under onnxruntime (a stronger dense baseline than eager PyTorch at batch 1)."""
    import onnxruntime as ort

    from export import export_onnx

    path = tmp / "dense.onnx"
    export_onnx(model, path, size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spinning threads slowing the others
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})


def bench_model(
    dense_name: str, sparsities: list[float], min_seconds: float, ort_threads: int = 0
) -> tuple[dict, list[dict]]:
    """End-to-end medians (ms) and per-1x1-conv medians (ms) of the dense and sparse deployed models."""
    dense, sparse = _deployed_pair(dense_name, MODELS[dense_name], sparsities)
    size = tuple(dense.pretrained_cfg["input_size"])
    x = torch.randn(1, *size)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        cands = {"dense": lambda: dense(x)} | {f"s{s:.0%}": (lambda m=m: m(x)) for s, m in sparse.items()}
        if ort_threads:
            run_ort = _ort_runner(dense, size, ort_threads, Path(tmp))
            cands["dense_ort"] = lambda: run_ort(x)
        e2e = {k: v.median_ms for k, v in time_side_by_side(cands, min_seconds=min_seconds).items()}
        inputs = _pw_inputs(sparse[sparsities[0]], x)
        dense_mods = dict(dense.named_modules())
        layers = []
        for name, inp in inputs.items():
            row = {"layer": name, "in": inp.shape[1], "out": dense_mods[name].out_channels, "hw": inp.shape[2]}
            cands = {"dense": lambda m=dense_mods[name], t=inp: m(t)}
            for s, model in sparse.items():
                mod = model.get_submodule(name)
                cands[f"s{s:.0%}"] = lambda m=mod, t=inp: m(t)
                csr, _, nnz = mod._csr_weight()
                hw = inp.shape[2] * inp.shape[3]
                row[f"kernel_s{s:.0%}"] = "csr" if sparse_kernel_is_faster(row["out"], row["in"], nnz, hw) else "dense"
            row |= {k: v.median_ms for k, v in time_side_by_side(cands, min_seconds=min_seconds / 10).items()}
            layers.append(row)
    return e2e, layers


def _print_tables(results: dict, sparsities: list[float]) -> list[dict]:
    cols = [f"s{s:.0%}" for s in sparsities]
    print("\nEnd to end, deployed, batch 1: dense ms, then dense/sparse latency ratio (> 1: sparse faster)")
    print(f"{'model':18s} {'dense ms':>9s} " + " ".join(f"{c:>7s}" for c in cols))
    rows = []
    for name, (e2e, _layers) in results.items():
        print(f"{name:18s} {e2e['dense']:9.2f} " + " ".join(f"{e2e['dense'] / e2e[c]:7.2f}" for c in cols))
        rows.append({"model": name, "scope": "end-to-end", "dense_ms": e2e["dense"]} | {c: e2e[c] for c in cols})
        if "dense_ort" in e2e:
            ort_ms = e2e["dense_ort"]
            print(f"{'  vs onnxruntime':18s} {ort_ms:9.2f} " + " ".join(f"{ort_ms / e2e[c]:7.2f}" for c in cols))
            rows.append(
                {"model": name, "scope": "end-to-end vs onnxruntime", "dense_ms": ort_ms} | {c: e2e[c] for c in cols}
            )
    print("\n1x1 convs only (sum over the layers, each timed on its real input): dense ms, dense/sparse ratio")
    for name, (e2e, layers) in results.items():
        tot = {k: sum(r[k] for r in layers) for k in ["dense", *cols]}
        share = tot["dense"] / e2e["dense"]
        print(
            f"{name:18s} {tot['dense']:9.2f} "
            + " ".join(f"{tot['dense'] / tot[c]:7.2f}" for c in cols)
            + f"   ({share:.0%} of the dense model's time)"
        )
        rows.append({"model": name, "scope": "1x1 convs", "dense_ms": tot["dense"]} | {c: tot[c] for c in cols})
    for name, (_, layers) in results.items():
        print(f"\nPer 1x1 conv, {name}: dense/sparse ratio (kernel the cost model picked: csr = the sparse product)")
        for r in layers:
            cells = " ".join(f"{r['dense'] / r[c]:5.2f} {r['kernel_' + c]:5s}" for c in cols)
            print(f"  {r['layer']:28s} {r['in']:5d}->{r['out']:<5d} {r['hw']:3d}px {r['dense']:7.3f} ms  {cells}")
            rows.append({"model": name, "scope": r["layer"], "dense_ms": r["dense"]} | {c: r[c] for c in cols})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated dense model names")
    p.add_argument("--sparsities", default="0.7,0.8,0.9")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=3.0, help="timed seconds per candidate (at least)")
    p.add_argument("--out", default="out/benchmarks/sparse.csv")
    p.add_argument("--no-ort", action="store_true", help="skip the onnxruntime dense baseline")
    p.add_argument("--calibrate", action="store_true", help="fit the kernel cost model instead")
    p.add_argument("--csv", default="out/benchmarks/sparse_calibration.csv", help="raw calibration timings")
    p.add_argument("--fit-only", action="store_true", help="with --calibrate: refit from --csv, measure nothing")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    print(f"sparse product: {native.kernel_status()} (ZOO_SPARSE_KERNEL=mkl selects torch's MKL product)")
    if args.calibrate:
        calibrate(args.min_seconds, args.csv, args.fit_only)
        return 0
    sparsities = [float(s) for s in args.sparsities.split(",")]
    ort_threads = 0 if args.no_ort else args.threads
    results = {name: bench_model(name, sparsities, args.min_seconds, ort_threads) for name in args.models.split(",")}
    rows = _print_tables(results, sparsities)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
