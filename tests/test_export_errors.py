"""The exporter on bad input and failed checks: clear errors, non-zero exits, nothing half-written."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from test_export_tiny import Tiny
from torch import nn

import blocks
import weights
import zoo
from export import ExportInputError, ExportOptions, FoldCheckError, export_model
from export.cli import main


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = int(e.code)
    return code, out.getvalue(), err.getvalue()


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


def test_parity_failure_writes_nothing_for_that_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export import fold, formats

    monkeypatch.setitem(formats.TOLERANCES, "fp32", 1e-12)  # no fp32 runtime can meet this...
    monkeypatch.setattr(fold, "FLOOR_FACTOR", 0.0)  # ...nor the noise floor then
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
