"""File sizes of the deployed sparse models: exported with dense zeros against sparse encodings of the same weights.

For each Fast Sparse ConvNets variant (at its paper sparsity, deployed: BN folded, zeros kept): the ONNX file (every
conv weight dense, zeros stored), the same file deflate-compressed (what an app package or a download gives), and a
safetensors file of the deployed weights with every sparse layer stored as CSR (int32 ``indptr``, int16 column
``indices``, float32 ``values``; the other weights dense), which is what a runtime reading sparse weights needs.
No timing: sizes only, deterministic for a seed.

    python benchmarks/sparse_sizes.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import blocks  # noqa: E402
import zoo  # noqa: E402
from blocks.sparse import sparse_layers  # noqa: E402
from export import export_onnx  # noqa: E402

MODELS = ["sparse_mobilenetv1_100_s90", "sparse_mobilenetv2_100_s85", "sparse_efficientnet_b0_s80"]


def csr_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The deployed weights with every sparse layer's weight as CSR (``.indptr``/``.indices``/``.values``)."""
    sparse = {name + ".weight": layer for name, layer in sparse_layers(model)}
    out = {}
    for key, t in model.state_dict().items():
        if key.endswith(".mask"):
            continue  # the CSR structure is the mask
        if key in sparse:
            mat = t.reshape(t.shape[0], -1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                csr = mat.to_sparse_csr()
            if mat.shape[1] > 32767:
                raise ValueError(f"{key}: {mat.shape[1]} input channels do not fit int16 column indices")
            out[key[: -len("weight")] + "indptr"] = csr.crow_indices().int()
            out[key[: -len("weight")] + "indices"] = csr.col_indices().short()
            out[key[: -len("weight")] + "values"] = csr.values().contiguous()
        else:
            out[key] = t.contiguous()
    return out


def sizes(name: str, tmp: Path) -> dict[str, float]:
    """Bytes of each encoding of ``name``'s deployed weights."""
    from safetensors.torch import save_file

    model = zoo.create_model(name)
    deployed = blocks.reparameterize_model(model)
    size = tuple(model.pretrained_cfg["input_size"])
    onnx_path = tmp / f"{name}.onnx"
    export_onnx(deployed, onnx_path, size)
    raw = onnx_path.read_bytes()
    csr_path = tmp / f"{name}.csr.safetensors"
    save_file(csr_state_dict(deployed), str(csr_path))
    dense_path = tmp / f"{name}.dense.safetensors"
    save_file({k: v.contiguous() for k, v in deployed.state_dict().items() if not k.endswith(".mask")}, str(dense_path))
    return {
        "sparsity": blocks.model_sparsity(model),
        "onnx": len(raw),
        "onnx_deflate": len(zlib.compress(raw, 9)),
        "dense_safetensors": dense_path.stat().st_size,
        "csr_safetensors": csr_path.stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    print(f"{'model':28s} {'sparsity':>8s} {'onnx MB':>8s} {'deflated':>8s} {'dense st':>8s} {'CSR st':>8s}  CSR/onnx")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            s = sizes(name, Path(tmp))
            mb = {k: v / 2**20 for k, v in s.items() if k != "sparsity"}
            print(
                f"{name:28s} {s['sparsity']:8.0%} {mb['onnx']:8.2f} {mb['onnx_deflate']:8.2f} "
                f"{mb['dense_safetensors']:8.2f} {mb['csr_safetensors']:8.2f}  {s['csr_safetensors'] / s['onnx']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
