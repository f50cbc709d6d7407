"""The formats exercised on a tiny module through the Python API (``export_model`` accepts any ``nn.Module``).

CoreML image input with the folded mean and class labels, the ExecuTorch ``.pte`` (fp32 and INT8) run back with
ExecuTorch's runtime, data-free (ZeroQ) INT8 calibration, and the FP16 ONNX.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import blocks
import zoo
from export import ExportOptions, export_model
from export.executorch_export import executorch_status


class Tiny(nn.Module):
    """Two ConvBN layers, pooling and a linear classifier; 16 px RGB input."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            blocks.ConvBN(3, 8, 3, act_layer=nn.ReLU), blocks.ConvBN(8, 16, 3, stride=2, act_layer=nn.ReLU)
        )
        self.head = nn.Linear(16, num_classes)
        self.pretrained_cfg = {"input_size": (3, 16, 16), "architecture": "tiny", "first_conv": "features.0.conv"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_tiny_module_coreml_pte_and_data_free_int8(tmp_path: Path) -> None:
    """On a module: CoreML image input with the folded mean and class labels, the ExecuTorch .pte checked with
    ExecuTorch's runtime, INT8 calibrated data-free from the BN statistics."""
    from export.coreml_export import validate_coreml_package

    model = Tiny().eval()
    blocks.make_bn_realistic(model, (3, 16, 16))  # a "trained" model: non-trivial statistics to match
    opts = ExportOptions(
        formats=("coreml", "executorch", "executorch-int8", "onnx-int8"),
        fold_input_norm=True,
        pixel_range=255,
        zeroq_steps=30,
        calib_size=16,
        latency_seconds=0.1,
        min_int8_agreement=50,  # plumbing, not accuracy: a random model's near-tied logits (tests/test_int8.py
        min_int8_cosine=0.0,  # judges the budget itself)
    )
    classes = ["a", "b", "c", "d", "e"]
    res = export_model(model, tmp_path / "out", opts, classes=classes)
    info = validate_coreml_package(tmp_path / "out" / "tiny.mlpackage", (1, 3, 16, 16), 5, classes, expect_image=True)
    assert json.loads(info["metadata"]["classes"]) == classes and info["metadata"]["model"] == "tiny"
    assert res.formats["coreml"]["input"].startswith("RGB image; ImageType scale/bias subtract the mean")
    version, reason = executorch_status()
    rec = res.formats["executorch"]
    if reason is not None:  # not installed / incompatible: the precise reason, and nothing written
        assert rec["status"] == "failed" and rec["error"] == reason and "torch" in reason
        assert not (tmp_path / "out" / "tiny.pte").exists()
    else:
        from export.executorch_export import load_pte

        assert rec["status"] == "ok" and rec["parity"]["error"] <= 1e-4, rec
        pixels = torch.rand(1, 3, 16, 16) * 255  # --pixel-range 255: raw pixels in, normalization inside
        with torch.no_grad():
            ref = blocks.reparameterize_model(model)(_norm(pixels / 255))
        assert (load_pte(tmp_path / "out" / "tiny.pte")(pixels) - ref).abs().max() <= 1e-4 * ref.abs().max()
        q8 = res.formats["executorch-int8"]
        assert q8["status"] == "ok" and q8["parity"]["error"] < 0.1 and q8["top1"]["agreement"] >= 50, q8
    q = res.formats["onnx-int8"]
    assert q["status"] == "ok" and q["calibration"]["source"].startswith("data-free: ZeroQ")
    assert q["top1"]["agreement"] >= 50


def _norm(pixels01: torch.Tensor) -> torch.Tensor:
    from export.data import normalize

    cfg = zoo.PretrainedCfg()
    return normalize(pixels01, cfg.mean, cfg.std)


def test_zeroq_matches_bn_statistics() -> None:
    from export.quantize import synthesize_zeroq

    model = Tiny().eval()
    blocks.make_bn_realistic(model, (3, 16, 16))
    bn = model.features[1].bn
    seen = {}
    model.features[1].conv.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))

    def gap(pixels: torch.Tensor) -> float:
        with torch.no_grad():
            model((pixels - 0.45) / 0.225)
        x = seen["x"]
        return (x.mean((0, 2, 3)) - bn.running_mean).abs().mean().item()

    rand = torch.sigmoid(torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5)
    synth = synthesize_zeroq(model, (3, 16, 16), (0.45,) * 3, (0.225,) * 3, num=16, steps=60)
    assert synth.shape == (16, 3, 16, 16) and 0 <= synth.min() and synth.max() <= 1
    assert gap(synth) < 0.5 * gap(rand)


def test_half_onnx(tmp_path: Path) -> None:
    """``--half``: an FP16 ONNX (float16 weights, float32 input/output, symbolic batch) within the fp16 tolerance."""
    import onnx

    model = Tiny().eval()
    blocks.make_bn_realistic(model, (3, 16, 16))
    opts = ExportOptions(formats=("onnx",), half=True, dynamic_batch=True, latency_seconds=0)
    res = export_model(model, tmp_path, opts)
    rec = res.formats["onnx"]
    assert rec["status"] == "ok" and rec["fp16"]["parity"]["error"] <= rec["fp16"]["parity"]["tol"] == 5e-2
    assert [f["file"] for f in rec["files"]] == ["tiny.onnx", "tiny.fp16.onnx"]
    graph = onnx.load(str(tmp_path / "tiny.fp16.onnx")).graph
    f16 = onnx.TensorProto.FLOAT16
    assert {i.data_type for i in graph.initializer if i.dims and len(i.dims) == 4} == {f16}  # conv weights
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_calibration_and_validation_from_an_image_folder(tmp_path: Path) -> None:
    """``--calib-data DIR`` / ``--val-data DIR``: images of any size resized and center-cropped as the model's
    config says; an ImageFolder layout gives labels, so the INT8 report has top-1 accuracies."""
    import numpy as np
    from PIL import Image

    from export.data import load_image_dir

    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "d", "e"]
    for i, cls in enumerate(classes):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for j in range(2):
            arr = rng.integers(0, 256, (20 + 4 * j, 24, 3), dtype=np.uint8)  # not square, not 16 px
            Image.fromarray(arr).save(tmp_path / "images" / cls / f"{i}_{j}.png")
    data = load_image_dir(tmp_path / "images", 16, 0.875, "bicubic")
    assert data.pixels.shape == (10, 3, 16, 16) and 0 <= data.pixels.min() and data.pixels.max() <= 1
    assert data.classes == classes and data.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    model = Tiny().eval()
    blocks.make_bn_realistic(model, (3, 16, 16))
    folder = str(tmp_path / "images")
    loose = {"max_int8_drop": 100.0, "min_int8_agreement": 0.0, "min_int8_cosine": 0.0}  # plumbing, not accuracy
    opts = ExportOptions(formats=("onnx-int8",), calib_data=folder, val_data=folder, latency_seconds=0, **loose)
    res = export_model(model, tmp_path / "out", opts)
    q = res.formats["onnx-int8"]
    assert q["status"] == "ok", q
    assert q["calibration"] == {"source": folder, "images": 10}
    assert q["top1"]["images"] == 10 and "top1_int8" in q["top1"] and q["top1"]["data"] == folder
