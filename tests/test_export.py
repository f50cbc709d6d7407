"""``zoo export`` end to end on a small model trained here on ``digits``.

One CLI run (module fixture) exports a briefly trained EfficientViT-M0 at 32 px with ``--fold-input-norm
--dynamic-batch`` to ONNX, INT8 ONNX (digits calibration), ``.ort`` and TensorRT. There is no GPU here, so TensorRT
must fail at once with a clear message and a non-zero exit while every other format is written. Each artifact is
then checked independently of the exporter's own checks: borders against the unfolded model plus normalization,
symbolic batch at 1 and 3, INT8 accuracy on the digits validation split, the ``.ort`` file and the manifest. (CoreML
conversion of every registered model is in ``test_registry.py``; the CoreML image input with the folded mean, class
labels and metadata, and the ExecuTorch ``.pte``, are checked on a tiny module in ``test_export_errors.py``.)
"""

from __future__ import annotations

import json
import os
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

NAME, SIZE = "efficientvit_m0", 32
# every test here reads one CLI run: on one xdist worker, so that the other never sits waiting on its lock
pytestmark = pytest.mark.xdist_group("export_e2e")


def _train_digits(epochs: int = 4) -> torch.nn.Module:
    """Four epochs of AdamW + one-cycle on the digits train split (about 98% on the val split), on one thread so
    that the model is the same whatever the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
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
    torch.set_num_threads(threads)
    return model.eval()


def _train_and_export(shared: Path) -> None:
    """Train, save the checkpoint with class names in its metadata, run the CLI; results into ``shared``."""
    import contextlib
    import io

    model = _train_digits()
    ckpt = shared / "digits_m0.safetensors"
    meta = {"classes": json.dumps([f"digit {i}" for i in range(10)]), "recipe": "test"}
    weights.save_safetensors(model.state_dict(), ckpt, metadata=meta)
    argv = [
        "--model", NAME, "--checkpoint", str(ckpt), "--imgsz", str(SIZE),
        "--formats", "onnx,onnx-int8,ort,tensorrt", "--fold-input-norm", "--dynamic-batch",
        "--calib-data", "digits", "--calib-size", "64", "--max-int8-drop", "1.0",
        "--latency-seconds", "0.2", "--threads", "1", "--out", str(shared / "artifacts"),
    ]  # fmt: skip
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    result = {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
    (shared / "result.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The CLI run every test below inspects: made once per session, shared by the xdist workers (file lock)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    shared = root / "export_e2e"
    with FileLock(str(root / "export_e2e.lock")):
        if not (shared / "result.json").is_file():
            shared.mkdir(exist_ok=True)
            _train_and_export(shared)
    result = json.loads((shared / "result.json").read_text())
    out = shared / "artifacts"
    return {
        **result,
        "out": out,
        "ckpt": shared / "digits_m0.safetensors",
        "manifest": json.loads((out / "manifest.json").read_text()),
    }


@pytest.fixture(scope="module")
def trained(run: dict) -> torch.nn.Module:
    """The trained model in train-time form, loaded back from the checkpoint."""
    return zoo.create_model(NAME, pretrained=run["ckpt"], num_classes=10, img_size=SIZE).eval()


def test_tensorrt_without_gpu_fails_clearly_and_keeps_the_rest(run: dict) -> None:
    assert run["code"] == 1
    assert "tensorrt failed" in run["stderr"] and "NVIDIA GPU" in run["stderr"]
    formats = run["manifest"]["formats"]
    assert formats["tensorrt"]["status"] == "failed" and "CUDA" in formats["tensorrt"]["error"]
    assert formats["tensorrt"]["seconds"] < 5, "must fail at once, before building anything"
    for fmt in ("onnx", "onnx-int8", "ort"):
        assert formats[fmt]["status"] == "ok", formats[fmt]
    names = sorted(p.name for p in run["out"].iterdir())
    expected = [f"{NAME}.onnx", f"{NAME}.int8.onnx", f"{NAME}.ort", "manifest.json"]
    assert names == sorted(expected), names  # no engine, no timing cache, no staging directory left behind
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

    model = trained
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

    model = trained
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


def test_int8_accuracy_on_digits(run: dict) -> None:
    from export import run_onnx

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


def test_manifest(run: dict) -> None:
    ckpt = run["ckpt"]
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
