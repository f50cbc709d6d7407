"""Fast Sparse ConvNets on this CPU: deployed dense models against deployed sparse ones, side by side in one run.

For MobileNetV1-1.0, MobileNetV2-1.0 and EfficientNet-B0: the deployed dense model and the deployed sparse model at
70/80/90% sparsity (random masks at that sparsity, paper structure), batch 1, 2 threads, timed in alternation;
end-to-end latency ratios (dense / sparse, > 1 means the sparse model is faster) and, per model and sparsity, the
ratio over the 1x1 convolutions alone (each 1x1 conv timed on its real input, dense op against the layer's deployed
forward, which runs sparse or dense as measured on this machine on first use, :mod:`blocks.sparse_plan`). The dense
model also runs under onnxruntime (same threads) as a stronger dense baseline. The header names the CPU, its ISA,
the sparse kernel build and the load average, which every figure taken from the table must quote.

    python benchmarks/sparse.py                                      # the table
    python benchmarks/sparse.py --models mobilenetv1_100 --sparsities 0.9 --march haswell --avx2-dense

``--march haswell`` builds the sparse kernel for AVX2/FMA (``ZOO_SPARSE_MARCH``) and ``--avx2-dense`` restricts
torch's dense kernels to AVX2 (``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``, ``ATEN_CPU_CAPABILITY``, set before
torch is imported): on an AVX-512 CPU, an emulation of an AVX2-only one (same cores, caches and clock).
``ZOO_SPARSE_PLAN=sparse`` forces every sparse layer onto the sparse product (the kernel alone, no decisions).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import warnings
from pathlib import Path

if "--avx2-dense" in sys.argv:  # before torch is imported
    os.environ.update(ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2", ATEN_CPU_CAPABILITY="avx2")
for _i, _a in enumerate(sys.argv):  # the kernel's -march, before blocks.native builds it
    if _a == "--march" and _i + 1 < len(sys.argv):
        os.environ["ZOO_SPARSE_MARCH"] = sys.argv[_i + 1]

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import blocks  # noqa: E402
import zoo  # noqa: E402
from blocks import native  # noqa: E402
from blocks.sparse import SparseConv2d, prune_random  # noqa: E402
from export.latency import time_side_by_side  # noqa: E402

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
                mod(inp)  # decided here (or already, end to end)
                plan = mod._last_plan
                row[f"kernel_s{s:.0%}"] = "?" if plan is None else ("csr" if plan[1].sparse else "dense")
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
        print(f"\nPer 1x1 conv, {name}: dense/sparse ratio (kernel chosen by measurement: csr = the sparse product)")
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
    p.add_argument("--march", default=None, help="build the sparse kernel for this -march (e.g. haswell)")
    p.add_argument("--avx2-dense", action="store_true", help="restrict torch's dense kernels to AVX2")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"CPU: {native.cpu_info()['model']}; ISA: {native.isa_summary()}; load average {os.getloadavg()[0]:.2f}")
    print(f"torch {torch.__version__}, dense kernels {torch.backends.cpu.get_cpu_capability()}", end="")
    print(f" (ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}), {args.threads} threads")
    status = native.kernel_status().split("; plans:")[0]
    print(f"sparse product: {status}; decisions: ZOO_SPARSE_PLAN={os.environ.get('ZOO_SPARSE_PLAN', 'measure')}")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    ort_threads = 0 if args.no_ort else args.threads
    results = {name: bench_model(name, sparsities, args.min_seconds, ort_threads) for name in args.models.split(",")}
    rows = _print_tables(results, sparsities)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
