"""``zoo export`` end to end on a small model trained here on ``digits``.

One CLI run (module fixture) exports a briefly trained EfficientViT-M0 at 32 px with ``--fold-input-norm
--dynamic-batch`` to ONNX, INT8 ONNX (digits calibration), ``.ort``, CoreML and TensorRT. There is no GPU here, so
TensorRT must fail at once with a clear message and a non-zero exit while every other format is written. Each
artifact is then checked independently of the exporter's own checks: borders against the unfolded model plus
normalization, symbolic batch at 1 and 3, INT8 accuracy on the digits validation split, the ``.ort`` file, the
CoreML package and the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

import weights
import zoo
from export.cli import main
from export.data import load_digits, normalize
from export.manifest import path_sha256

pytestmark = pytest.mark.xdist_group("export_e2e")

NAME, SIZE = "efficientvit_m0", 32


def _train_digits(epochs: int = 4) -> torch.nn.Module:
    """A few epochs of AdamW + one-cycle on the digits train split (about 97% on the val split)."""
    torch.manual_seed(0)
    model = zoo.create_model(NAME, num_classes=10, img_size=SIZE)
    data = load_digits(SIZE, "train")
    x, y = normalize(data.pixels, model.pretrained_cfg["mean"], model.pretrained_cfg["std"]), data.labels
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = epochs * (len(y) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(perm) - 63, 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    model = _train_digits()
    path = tmp_path_factory.mktemp("ckpt") / "digits_m0.safetensors"
    meta = {"classes": json.dumps([f"digit {i}" for i in range(10)]), "recipe": "test"}
    weights.save_safetensors(model.state_dict(), path, metadata=meta)
    return model, path


@pytest.fixture(scope="module")
def run(trained, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The CLI run every test below inspects."""
    import contextlib
    import io

    _, ckpt = trained
    out = tmp_path_factory.mktemp("export") / "artifacts"
    argv = [
        "--model", NAME, "--checkpoint", str(ckpt), "--imgsz", str(SIZE),
        "--formats", "onnx,onnx-int8,ort,coreml,tensorrt", "--fold-input-norm", "--dynamic-batch",
        "--calib-data", "digits", "--calib-size", "64", "--max-int8-drop", "1.0",
        "--latency-seconds", "0.2", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    manifest = json.loads((out / "manifest.json").read_text())
    return {"code": code, "out": out, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "manifest": manifest}


def test_tensorrt_without_gpu_fails_clearly_and_keeps_the_rest(run: dict) -> None:
    assert run["code"] == 1
    assert "tensorrt failed" in run["stderr"] and "NVIDIA GPU" in run["stderr"]
    formats = run["manifest"]["formats"]
    assert formats["tensorrt"]["status"] == "failed" and "CUDA" in formats["tensorrt"]["error"]
    assert formats["tensorrt"]["seconds"] < 5, "must fail at once, before building anything"
    for fmt in ("onnx", "onnx-int8", "ort", "coreml"):
        assert formats[fmt]["status"] == "ok", formats[fmt]
    names = sorted(p.name for p in run["out"].iterdir())
    assert names == sorted(
        [f"{NAME}.onnx", f"{NAME}.int8.onnx", f"{NAME}.ort", f"{NAME}.mlpackage", "manifest.json"]
    ), names  # no engine, no timing cache, no staging directory left behind
    assert "tensorrt" in run["stdout"] and "failed" in run["stdout"]  # the summary table


def _pixels_with_borders(n: int) -> torch.Tensor:
    """Pixels in [0, 1] whose borders are far from the mean pixel: a white frame and a black one, plus noise."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(n, 3, SIZE, SIZE, generator=gen)
    x[0, :, :2, :], x[0, :, -2:, :], x[0, :, :, :2], x[0, :, :, -2:] = 1.0, 1.0, 1.0, 1.0
    x[1, :, :2, :], x[1, :, -2:, :], x[1, :, :, :2], x[1, :, :, -2:] = 0.0, 0.0, 0.0, 0.0
    return x


def test_onnx_folded_input_norm_borders_and_dynamic_batch(run: dict, trained) -> None:
    import onnx

    from export import run_onnx

    model, _ = trained
    path = run["out"] / f"{NAME}.onnx"
    graph = onnx.load(str(path))
    ops = [n.op_type for n in graph.graph.node]
    assert "Sub" in ops[:3], f"the mean subtraction must be the first op, got {ops[:3]}"
    assert "BatchNormalization" not in ops
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch must be symbolic"
    cfg = model.pretrained_cfg
    for batch in (1, 3):
        pixels = _pixels_with_borders(3)[:batch]
        with torch.no_grad():
            ref = model(normalize(pixels, cfg["mean"], cfg["std"]))  # the unfolded, train-time model
        out = run_onnx(path, pixels)
        assert out.shape == (batch, 10)
        assert rel_err(out, ref) <= 1e-4, f"batch {batch}"


def test_folding_the_mean_into_the_bias_would_fail_the_border_check(trained) -> None:
    """The border test can fail: the naive fold (mean and std both into the first conv) is wrong at the borders."""
    import blocks

    model, _ = trained
    cfg = model.pretrained_cfg
    naive = blocks.reparameterize_model(model)
    conv = naive.patch_embed.conv1.conv
    mean, std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
    with torch.no_grad():
        conv.bias -= (conv.weight * (mean / std).view(1, 3, 1, 1)).sum((1, 2, 3))
        conv.weight /= std.view(1, 3, 1, 1)
    pixels = _pixels_with_borders(2)
    with torch.no_grad():
        ref = model(normalize(pixels, cfg["mean"], cfg["std"]))
        assert rel_err(naive(pixels), ref) > 1e-3


def test_int8_accuracy_on_digits(run: dict, trained) -> None:
    from export import run_onnx

    model, _ = trained
    val = load_digits(SIZE, "val")
    fp32 = run_onnx(run["out"] / f"{NAME}.onnx", val.pixels)
    int8 = run_onnx(run["out"] / f"{NAME}.int8.onnx", val.pixels)
    acc32 = 100 * (fp32.argmax(1) == val.labels).float().mean().item()
    acc8 = 100 * (int8.argmax(1) == val.labels).float().mean().item()
    assert acc32 > 85, f"the test's model should have learned digits ({acc32:.1f}%)"
    assert acc32 - acc8 <= 1.0, f"INT8 top-1 {acc8:.2f} vs FP32 {acc32:.2f}"
    rec = run["manifest"]["formats"]["onnx-int8"]
    assert rec["top1"]["top1_fp32"] == pytest.approx(acc32, abs=1e-6)
    assert rec["calibration"]["source"] == "digits" and rec["quantization"]["format"] == "QDQ"
    assert rec["latency_ratio_int8_over_fp32"] > 0
    import onnx

    ops = {n.op_type for n in onnx.load(str(run["out"] / f"{NAME}.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_ort_format_runs_with_parity(run: dict) -> None:
    from export import run_onnx

    pixels = _pixels_with_borders(3)
    ref = run_onnx(run["out"] / f"{NAME}.onnx", pixels)
    out = run_onnx(run["out"] / f"{NAME}.ort", pixels)
    assert rel_err(out, ref) <= 1e-4
    assert (run["out"] / f"{NAME}.ort").read_bytes()[4:8] == b"ORTM"  # flatbuffer file identifier


def test_coreml_package(run: dict) -> None:
    from export.coreml_export import validate_coreml_package

    path = run["out"] / f"{NAME}.mlpackage"
    classes = [f"digit {i}" for i in range(10)]
    info = validate_coreml_package(path, (1, 3, SIZE, SIZE), 10, classes, expect_image=True)
    assert info["metadata"]["model"] == NAME
    pre = json.loads(info["metadata"]["preprocessing"])
    assert pre["folded"]["mean"].startswith("kept as a per-channel subtraction")
    with pytest.raises(AssertionError, match="class labels"):
        validate_coreml_package(path, (1, 3, SIZE, SIZE), 10, classes[::-1], expect_image=True)


def test_manifest(run: dict, trained) -> None:
    _, ckpt = trained
    m = run["manifest"]
    assert m["model"]["name"] == NAME and m["model"]["num_classes"] == 10
    assert m["checkpoint"]["sha256"] == weights.sha256sum(ckpt)
    assert m["classes"] == [f"digit {i}" for i in range(10)]
    assert m["remaining_norms"] == {} and m["fold"]["parity_random"] <= 1e-5 and m["fold"]["parity_real"] <= 1e-5
    assert m["fold"]["bn_statistics"] == "checkpoint"
    assert m["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    pre = m["preprocessing"]
    assert pre["mean"] == list(zoo.get_family(NAME).default_cfg.mean) and pre["channel_order"] == "RGB"
    assert "patch_embed.conv1.conv" in pre["folded"]["std"]
    assert m["toolchain"]["torch"] == torch.__version__.split("+")[0] or m["toolchain"]["torch"]
    assert m["sparsity"]["layers"] and 0 <= m["sparsity"]["overall"] <= 1
    for fmt, rec in m["formats"].items():
        for f in rec.get("files", []):
            assert path_sha256(run["out"] / f["file"]) == f["sha256"], fmt
    assert m["formats"]["onnx"]["parity"]["error"] <= 1e-4 and m["formats"]["onnx"]["exporter"] == "dynamo"
    assert m["latency_ms"]["onnxruntime fp32"] > 0
