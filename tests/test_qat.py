"""Quantization-aware training: where the fake quantizers go, the loop's --qat run, its checkpoint, and the INT8
export made from the learned ranges (no calibration), judged by the same gate as post-training quantization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from train_helpers import make_imagefolder, tiny_config

import zoo
from blocks import qat
from train import fit
from weights import WeightsError, read_safetensors_metadata, save_safetensors

pytestmark = pytest.mark.xdist_group("qat")
MODEL = "mobilenetv1_075"  # a small graph: the ONNX exports stay quick


class _Net(nn.Module):
    """conv -> relu -> conv, a residual add, a bias-like add of a constant, a matmul of activations, a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.register_buffer("offset", torch.randn(1, 8, 1, 1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = y + self.c2(y)  # residual: both inputs quantized
        y = y + self.offset  # constant operand: stays float
        t = y.flatten(2)  # B, C, H, W -> B, C, HW
        g = torch.matmul(t, t.transpose(1, 2)).mean(-1)  # B, C
        return self.fc(g)


def _calibrated(net: nn.Module, size=(3, 8, 8)) -> torch.fx.GraphModule:
    gm = qat.prepare_qat(net.eval(), size)
    qat.calibrate(gm, [torch.randn(4, *size) for _ in range(3)])
    return gm.eval()


def test_placement_gradients_and_export_form() -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    gm = _calibrated(net)
    acts, weights = dict(gm.qat_act.items()), dict(gm.qat_weight.items())
    assert set(weights) == {"c1__weight", "c2__weight", "fc__weight"}
    # x (c1), relu (c2 and the residual add), conv2d_1 (the add), t and its transpose (matmul), the fc input;
    # the add of the constant offset gets none
    assert len(acts) == 6, sorted(acts)
    add_inputs = [n for n in gm.graph.nodes if n.target is torch.ops.aten.add.Tensor]
    quantized = [all(getattr(a, "op", "") == "call_module" for a in n.args[:2]) for n in add_inputs]
    assert quantized == [True, False]
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        fq, ref = gm(x), net(x)
    assert not torch.equal(fq, ref), "fake quantization changes the output"
    assert torch.nn.functional.cosine_similarity(fq, ref, dim=-1).min() > 0.99
    # straight-through gradients reach every parameter
    gm.train()
    qat.set_observing(gm, False)
    gm(x).pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gm.parameters())
    gm.eval()
    frozen = qat.export_form(gm)
    with torch.no_grad():
        assert torch.allclose(frozen(x), gm(x), atol=1e-5, rtol=1e-5)
    assert all(b.dtype == torch.int8 for n, b in frozen.named_buffers() if n.endswith(".q"))


def test_weights_quantize_per_channel_at_the_bit_width() -> None:
    w = torch.randn(5, 3, 3, 3)
    for qmax in (127, 63):
        q = qat.WeightQuant(5, qmax)(w)
        steps = (q / q.abs().flatten(1).amax(1).view(-1, 1, 1, 1) * qmax).round()
        assert torch.allclose(q.abs().flatten(1).amax(1), w.abs().flatten(1).amax(1), rtol=1e-6)
        assert steps.unique().numel() <= 2 * qmax + 1


def test_uncalibrated_graph_cannot_be_exported() -> None:
    gm = qat.prepare_qat(_Net().eval(), (3, 8, 8))
    with pytest.raises(ValueError, match="never saw data"):
        qat.export_form(gm)


def test_onnx_of_the_qat_graph_is_int8_and_matches(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from export import export_onnx, run_onnx

    torch.manual_seed(0)
    gm = _calibrated(_Net())
    frozen = qat.export_form(gm)
    path = tmp_path / "qat.onnx"
    export_onnx(frozen, path, (3, 8, 8), dynamic_batch=True)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") == len(gm.qat_act)
    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert len(int8) >= 3, "the conv / linear weights are stored as int8"
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        ref = frozen(x)
    out = torch.as_tensor(run_onnx(path, x))
    assert torch.nn.functional.cosine_similarity(out, ref, dim=-1).min() > 0.99


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("qat")
    data = make_imagefolder(root / "data")
    fit(tiny_config(data, root / "fp32", epochs=1, model=MODEL))
    fp32 = str(root / "fp32" / "last.safetensors")
    result = fit(tiny_config(data, root / "qat", epochs=1, lr=1e-4, model=MODEL, qat=True, pretrained=fp32))
    return {"root": root, "data": data, "ckpt": root / "qat" / "last.safetensors", "result": result}


def test_qat_run_writes_a_checkpoint_with_its_ranges(qat_run: dict) -> None:
    meta = read_safetensors_metadata(qat_run["ckpt"])
    record = json.loads(meta["qat"])
    assert record["version"] == qat.QAT_VERSION and record["input_size"] == [3, 16, 16]
    assert record["weight_bits"] in (7, 8) and record["activations"] > 10
    assert zoo.qat_settings(qat_run["ckpt"]) == record
    gm = zoo.create_model(MODEL, pretrained=qat_run["ckpt"], num_classes=3)
    ranges = qat.qat_ranges(gm)
    assert len(ranges) == record["activations"] and all(v > 0 for v in ranges.values())
    again = zoo.create_model(MODEL, pretrained=qat_run["ckpt"], num_classes=3)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(gm(x), again(x))
    assert qat_run["result"]["best"] is not None


def test_qat_checkpoint_of_another_graph_is_refused(qat_run: dict, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    meta = read_safetensors_metadata(qat_run["ckpt"])
    record = {**json.loads(meta["qat"]), "signature": "0" * 16}
    bad = tmp_path / "other.safetensors"
    save_safetensors(load_file(qat_run["ckpt"]), bad, metadata={**meta, "qat": json.dumps(record)})
    with pytest.raises(WeightsError, match="another graph"):
        zoo.create_model(MODEL, pretrained=bad, num_classes=3)
    with pytest.raises(ValueError, match="features_only"):
        zoo.create_model(MODEL, pretrained=qat_run["ckpt"], num_classes=3, features_only=True)


def test_qat_needs_a_trained_model_and_no_pruning(qat_run: dict) -> None:
    with pytest.raises(ValueError, match="pretrained"):
        fit(tiny_config(qat_run["data"], qat_run["root"] / "x", qat=True))
    with pytest.raises(ValueError, match="prune"):
        tiny_config(qat_run["data"], qat_run["root"] / "y", qat=True, pretrained="a.safetensors", prune_to=0.5)


def test_export_uses_the_learned_ranges(qat_run: dict, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from export import ExportInputError, ExportOptions, export_model

    data = qat_run["data"]
    opts = ExportOptions(
        formats=("onnx", "onnx-int8"), calib_data=str(data / "train"), val_data=str(data / "val"),
        fold_input_norm=True, latency_seconds=0, max_int8_drop=100.0, min_int8_agreement=0.0,
    )  # fmt: skip
    res = export_model(MODEL, tmp_path / "out", opts, checkpoint=qat_run["ckpt"])
    rec = res.formats["onnx-int8"]
    assert rec["status"] == "ok", rec
    q = rec["quantization"]
    assert q["tool"].startswith("QAT") and "no calibration" in q["ranges"]
    assert q["quantize_nodes"] == json.loads(read_safetensors_metadata(qat_run["ckpt"])["qat"])["activations"]
    assert q["input_normalization"].startswith("Sub + Mul")
    assert {"drop", "agreement", "cosine"} <= set(rec["top1"])
    assert (tmp_path / "out" / f"{MODEL}.int8.onnx").is_file()
    with pytest.raises(ExportInputError, match="QAT-trained at input"):
        export_model(MODEL, tmp_path / "o2", ExportOptions(img_size=32), checkpoint=qat_run["ckpt"])


def test_executorch_int8_takes_the_learned_ranges(qat_run: dict, tmp_path: Path) -> None:
    pytest.importorskip("executorch")
    from export import ExportOptions, export_model

    data = qat_run["data"]
    opts = ExportOptions(
        formats=("executorch-int8",), calib_data=str(data / "train"), val_data=str(data / "val"),
        latency_seconds=0, max_int8_drop=100.0, min_int8_agreement=0.0,
    )  # fmt: skip
    rec = export_model(MODEL, tmp_path / "et", opts, checkpoint=qat_run["ckpt"]).formats["executorch-int8"]
    assert rec["status"] == "ok", rec
    used, observed = (int(w) for w in rec["quantization"]["qat"].split(" activation")[0].split()[2::2])
    assert 0 < used <= observed, rec["quantization"]["qat"]
