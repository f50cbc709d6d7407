"""The native sparse kernel alone: builds of ``blocks/csrc/spmm.c`` against the dense 1x1 convolution, per layer.

Each build (a ``-march`` and optionally a strip shape ``vw.nv.ch``: floats per vector, vectors per strip,
multiply-add chains) is compiled into a temporary folder, checked exact against torch, and timed side by side with
the dense op (``F.conv2d``, what a deployed dense model runs) on the 1x1 convolutions of MobileNetV1-1.0 at 224 px
(batch 1), at one sparsity. Prints, per layer, the dense time and for every build the dense/sparse latency ratio
(> 1: sparse faster) and the sparse kernel's effective arithmetic rate (2 * nnz * pixels / time).

    python benchmarks/sparse_kernel.py --marchs native,haswell
    python benchmarks/sparse_kernel.py --marchs haswell --shapes 8.4.2,8.4.1,8.2.2,8.6.2 --avx2-dense
    python benchmarks/sparse_kernel.py --sources first=old_spmm.c,current=blocks/csrc/spmm.c --plot out/k.png

``--avx2-dense`` restricts torch's dense kernels to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``,
``ATEN_CPU_CAPABILITY=avx2``, set before torch is imported): with an AVX2 build of the sparse kernel, an emulation of
an AVX2-only CPU on an AVX-512 one (same cores, caches and clock, so only an approximation).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
from pathlib import Path

if "--avx2-dense" in sys.argv:  # before torch is imported
    os.environ.update(ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2", ATEN_CPU_CAPABILITY="avx2")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blocks import native  # noqa: E402
from export.latency import time_side_by_side  # noqa: E402

#: (in, out, pixels per side) of the 1x1 convolutions of MobileNetV1-1.0 at 224 px
MBV1_LAYERS = [(32, 64, 112), (64, 128, 56), (128, 128, 56), (128, 256, 28), (256, 256, 28), (256, 512, 14)]
MBV1_LAYERS += [(512, 512, 14), (512, 1024, 7), (1024, 1024, 7)]


def _load_any(path: Path) -> tuple[ctypes._CFuncPtr, str]:
    """The product of a kernel library, also of an earlier ABI (no configuration string)."""
    lib = ctypes.CDLL(str(path))
    config = "abi 1 (64-float vectors)"
    if hasattr(lib, "zoo_spmm_config"):
        lib.zoo_spmm_config.restype = ctypes.c_char_p
        config = lib.zoo_spmm_config().decode()
    fn = lib.zoo_spmm_f32
    ptr = ctypes.c_void_p
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_int]
    fn.restype = None
    return fn, config


def build_variants(marchs: list[str], shapes: list[str], sources: dict[str, Path], folder: Path) -> dict[str, tuple]:
    """``{label: (fn, config)}`` for every source x -march x strip shape this CPU can run."""
    out = {}
    default = native.SOURCE
    try:
        for tag, source in sources.items():
            native.SOURCE = source
            for march in marchs:
                if not native.cpu_supports(march):
                    print(f"skipped -march={march}: this CPU lacks {native.X86_TARGETS.get(march, '?')}")
                    continue
                for shape in shapes or [""]:
                    defines = dict(zip(("ZOO_VW", "ZOO_NV", "ZOO_CH"), map(int, shape.split(".")))) if shape else None
                    lib = folder / f"spmm-{tag}-{march}-{shape or 'default'}.so"
                    native.compile_kernel(lib, march, defines=defines)
                    fn, config = _load_any(lib)
                    out[f"{tag} {march} {shape}".strip() if len(sources) > 1 else f"{march} {shape or config}"] = (
                        fn, config
                    )  # fmt: skip
    finally:
        native.SOURCE = default
    return out


def plot(rows: list[dict], variants: list[str], title: str, path: Path) -> None:
    """Bars of dense/sparse per layer and build (log scale, 1 = parity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(variants)
    pos = np.arange(len(rows))
    for i, k in enumerate(variants):
        ax.bar(pos + (i - (len(variants) - 1) / 2) * width, [r["dense"] / r[k] for r in rows], width, label=k)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(pos, [r["layer"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("dense / sparse latency (> 1: sparse faster)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _spmm(fn, csr: tuple[torch.Tensor, ...], x: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
    indptr, indices, values = csr
    fn(indptr.numel() - 1, x.shape[1], indptr.data_ptr(), indices.data_ptr(), values.data_ptr(), x.data_ptr(),
       bias.data_ptr(), out.data_ptr(), torch.get_num_threads())  # fmt: skip


def bench(variants: dict[str, tuple], sparsity: float, min_seconds: float) -> list[dict]:
    """Per layer: dense ms and, per variant, sparse ms and GFLOP/s; every variant checked against torch first."""
    rows = []
    for cin, cout, side in MBV1_LAYERS:
        w = torch.randn(cout, cin)
        w[torch.rand_like(w) < sparsity] = 0
        c = w.to_sparse_csr()
        csr = (c.crow_indices().int(), c.col_indices().int(), c.values())
        x, b = torch.randn(1, cin, side, side), torch.randn(cout)
        x2 = x.view(cin, side * side)
        outs = {k: torch.empty(cout, side * side) for k in variants}
        ref = (w.double() @ x2.double() + b.double()[:, None]).float()
        for k, (fn, _) in variants.items():
            _spmm(fn, csr, x2, b, outs[k])
            err = ((outs[k] - ref).abs().max() / ref.abs().max()).item()
            if err > 1e-5:
                raise RuntimeError(f"{k}: relative error {err:.2e} against torch on {cin}->{cout} at {side} px")
        w4 = w.view(cout, cin, 1, 1)
        cands = {"dense": lambda x=x, w4=w4, b=b: F.conv2d(x, w4, b)}
        for k, (fn, _) in variants.items():
            cands[k] = lambda fn=fn, o=outs[k], csr=csr, x2=x2, b=b: _spmm(fn, csr, x2, b, o)
        with torch.inference_mode():
            res = time_side_by_side(cands, warmup=3, min_runs=10, min_seconds=min_seconds)
        nnz = csr[2].numel()
        row = {"layer": f"{cin}->{cout} {side}px", "dense": res["dense"].median_ms}
        for k in variants:
            row[k] = res[k].median_ms
            row[k + " gflops"] = 2 * nnz * side * side / (res[k].median_ms * 1e6)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--marchs", default="native,haswell", help="comma-separated -march values")
    p.add_argument("--shapes", default="", help="comma-separated strip shapes vw.nv.ch (default: the ISA's own)")
    p.add_argument("--sources", default=f"current={native.SOURCE}", help="tag=path,... of spmm.c versions to compare")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of the per-layer ratios")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=0.5, help="timed seconds per layer (all candidates)")
    p.add_argument("--avx2-dense", action="store_true", help="restrict torch's dense kernels to AVX2")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU: {native.cpu_info()['model']}; ISA: {native.isa_summary()}; load: {os.getloadavg()[0]:.2f}")
    print(f"torch {torch.__version__}, dense kernels: {torch.backends.cpu.get_cpu_capability()}", end="")
    print(f" (ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}), {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        sources = dict((kv.split("=", 1)[0], Path(kv.split("=", 1)[1])) for kv in args.sources.split(","))
        shapes = [s for s in args.shapes.split(",") if s]
        variants = build_variants(args.marchs.split(","), shapes, sources, Path(tmp))
        rows = bench(variants, args.sparsity, args.min_seconds)
    print(f"\nMobileNetV1-1.0 1x1 convs at {args.sparsity:.0%}, batch 1: dense ms, per build dense/sparse (GFLOP/s)")
    for k, (_, config) in variants.items():
        print(f"  {k}: {config}")
    print(f"{'layer':18s} {'dense ms':>8s} " + " ".join(f"{k[:22]:>22s}" for k in variants))
    for r in rows:
        cells = " ".join(f"{r['dense'] / r[k]:>13.2f}x ({r[k + ' gflops']:5.1f})" for k in variants)
        print(f"{r['layer']:18s} {r['dense']:8.3f} {cells}")
    tot = {k: sum(r[k] for r in rows) for k in ["dense", *variants]}
    cells = " ".join(f"{tot['dense'] / tot[k]:>21.2f}x" for k in variants)
    print(f"{'all 1x1 convs':18s} {tot['dense']:8.3f} {cells}")
    if args.plot:
        dense_isa = torch.backends.cpu.get_cpu_capability()
        title = (f"MobileNetV1-1.0 1x1 convs at {args.sparsity:.0%}, batch 1, {args.threads} thread(s); "
                 f"{native.cpu_info()['model']}, dense torch {dense_isa}; load {os.getloadavg()[0]:.1f}")  # fmt: skip
        plot(rows, list(variants), title, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
