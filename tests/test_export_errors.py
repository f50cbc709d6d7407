"""The exporter on bad input and failed checks: clear errors, non-zero exits, nothing half-written.

Also the formats exercised on a tiny module through the Python API (``export_model`` accepts any ``nn.Module``):
the ExecuTorch ``.pte`` with its runtime parity, data-free (ZeroQ) INT8 calibration, and a parity failure.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from torch import nn

import blocks
import weights
import zoo
from export import ExportInputError, ExportOptions, FoldCheckError, export_model
from export.cli import main
from export.executorch_export import executorch_status


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = int(e.code)
    return code, out.getvalue(), err.getvalue()


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


def test_unknown_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, err = _cli(["--model", "efficientvit_mo", "--out", str(out)])
    assert code == 2 and "unknown model 'efficientvit_mo'" in err and "efficientvit_m0" in err
    assert not out.exists()


def test_checkpoint_of_another_model_lists_keys(tmp_path: Path) -> None:
    ckpt = tmp_path / "m1.safetensors"
    weights.save_safetensors(zoo.create_model("efficientvit_m1", img_size=32).state_dict(), ckpt)
    out = tmp_path / "out"
    code, _, err = _cli(["--model", "efficientvit_m0", "--checkpoint", str(ckpt), "--imgsz", "32", "--out", str(out)])
    assert code == 2 and "checkpoint does not match the model" in err
    assert "shape mismatches" in err and "patch_embed.conv1.conv.weight" in err
    assert not out.exists()


def test_unwritable_output_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code, _, err = _cli(["--model", "efficientvit_m0", "--out", str(blocker / "out")])
    assert code == 2 and "not writable" in err
    code, _, err = _cli(["--model", "efficientvit_m0", "--out", str(blocker)])
    assert code == 2 and "is not a directory" in err
    assert blocker.read_text() == "not a directory" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_unknown_format(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, err = _cli(["--model", "efficientvit_m0", "--formats", "onnx,tflite", "--out", str(out)])
    assert code == 2 and "unknown format(s) tflite" in err and "onnx-int8" in err
    assert not out.exists()
    with pytest.raises(ExportInputError, match="unknown format"):
        ExportOptions(formats=("onnx", "tflite"))


def test_pte_parity_and_data_free_int8(tmp_path: Path) -> None:
    """ExecuTorch .pte checked with ExecuTorch's runtime; INT8 calibrated data-free from the BN statistics."""
    model = Tiny().eval()
    blocks.make_bn_realistic(model, (3, 16, 16))  # a "trained" model: non-trivial statistics to match
    opts = ExportOptions(formats=("executorch", "onnx-int8"), zeroq_steps=30, calib_size=16, latency_seconds=0.1)
    version, reason = executorch_status()
    res = export_model(model, tmp_path / "out", opts)
    rec = res.formats["executorch"]
    if reason is not None:  # not installed / incompatible: the precise reason, and nothing written
        assert rec["status"] == "failed" and rec["error"] == reason and "torch" in reason
        assert not (tmp_path / "out" / "tiny.pte").exists()
    else:
        from export.executorch_export import load_pte

        assert rec["status"] == "ok" and rec["parity"]["error"] <= 1e-4, rec
        x = torch.rand(1, 3, 16, 16)
        with torch.no_grad():
            ref = blocks.reparameterize_model(model)(x)
        assert (load_pte(tmp_path / "out" / "tiny.pte")(x) - ref).abs().max() <= 1e-4 * ref.abs().max()
    q = res.formats["onnx-int8"]
    assert q["status"] == "ok" and q["calibration"]["source"].startswith("data-free: ZeroQ")
    assert q["top1"]["agreement"] >= 50


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


def test_parity_failure_writes_nothing_for_that_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export import formats

    monkeypatch.setitem(formats.TOLERANCES, "fp32", 1e-12)  # no fp32 runtime can meet this
    out = tmp_path / "out"
    res = export_model(Tiny().eval(), out, ExportOptions(formats=("onnx", "ort"), latency_seconds=0))
    assert not res.ok
    err = res.failed["onnx"]
    assert "parity check failed: relative error" in err and "> tolerance 1.0e-12" in err
    assert "needs the onnx file" in res.failed["ort"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


class _WrongFold(blocks.ConvBN):
    """A ConvBN whose deploy form forgets the BN shift: the fold check must catch it."""

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deployed:
            return
        shift = self.bn.bias.clone()
        super().reparameterize()
        self.conv.bias -= shift


def test_wrong_fold_is_caught_and_nothing_written(tmp_path: Path) -> None:
    model = Tiny()
    model.features[0] = _WrongFold(3, 8, 3, act_layer=nn.ReLU)
    out = tmp_path / "out"
    with pytest.raises(FoldCheckError, match="folded model differs"):
        export_model(model, out, ExportOptions(formats=("onnx",)))
    assert not out.exists()
