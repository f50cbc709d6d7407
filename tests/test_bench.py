"""``zoo bench``: the command on one tiny model, skip reasons, failures recorded per runtime, memory, Pareto front."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import zoo
from export import bench
from export.bench import BenchSettings, bench_model, main, skip_reason
from export.memory import peak_tensor_memory
from export.pareto import pareto_front, pareto_points

# Tiny settings: EfficientViT-M0 at 64 px, a handful of timed runs (this checks the machinery, not the speed).
FAST = ["--warmup", "1", "--min-runs", "3", "--max-runs", "3", "--min-seconds", "0"]
ALL_RUNTIMES = "eager,deployed,onnxruntime,onnxruntime-int8,tensorrt,coreml"


def test_bench_command_tiny_model(tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "res" / "bench.json"
    argv = ["--models", "efficientvit_m0", "--runtimes", ALL_RUNTIMES, "--threads", "1", "--imgsz", "64"]
    assert main([*argv, *FAST, "--out", str(out), "--plot", "onnxruntime"]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cpu"] == bench._cpu_model() and result["machine"]["threads"] == 1
    assert result["machine"]["versions"]["torch"] == torch.__version__.split("+")[0]
    rows = {r["runtime"]: r for r in result["results"]}
    assert list(rows) == ALL_RUNTIMES.split(",")
    model = zoo.create_model("efficientvit_m0", img_size=64)
    for rt in ("eager", "deployed", "onnxruntime"):
        r = rows[rt]
        assert r["status"] == "ok" and r["input_size"] == [3, 64, 64] and r["runs"] == 3
        assert 0 < r["median_ms"] <= r["p90_ms"]
        assert r["throughput_ips"] == pytest.approx(1e3 / r["median_ms"], rel=1e-3)
        assert r["params"] == zoo.count_params(model) and r["macs"] == zoo.count_macs(model, (3, 64, 64))
        assert r["top1_paper"] == 63.2
    assert rows["eager"]["peak_mem_mb"] > 0 and rows["onnxruntime"]["peak_mem_mb"] is None
    assert rows["deployed"]["params_deployed"] < rows["deployed"]["params"]  # BN folded away
    for rt in ("onnxruntime-int8", "tensorrt", "coreml"):
        reason = skip_reason(rt)
        if reason:
            assert rows[rt]["status"] == "skipped" and rows[rt]["reason"] == result["skipped"][rt] == reason
        else:
            assert rows[rt]["status"] == "ok" and rows[rt]["median_ms"] > 0
    with open(out.with_suffix(".csv")) as f:
        table = list(csv.DictReader(f))
    assert [r["runtime"] for r in table] == list(rows) and table[0]["cpu"] == result["machine"]["cpu"]
    assert table[0]["input_size"] == "3x64x64"
    png = out.parent / "pareto_onnxruntime.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "efficientvit_m0" in printed and "skipped tensorrt:" in printed
    # re-plotting from the file needs no measurement; a runtime that was not measured is a clear error
    assert main(["--plot-from", str(out), "--plot", "eager", "--plot-out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").exists()
    assert main(["--plot-from", str(out), "--plot", "tensorrt"]) == 2
    assert "no model with a reported top-1 was measured on 'tensorrt'" in capsys.readouterr().err


def test_batches_and_a_failing_runtime(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(bench, "_ort_runner", broken)
    settings = BenchSettings(threads=1, imgsz=64, warmup=1, min_runs=2, max_runs=2, min_seconds=0)
    rows = bench_model("efficientvit_m0", ["eager", "onnxruntime"], [1, 2], settings)
    status = {(r["runtime"], r["batch"]): r for r in rows}
    assert set(status) == {("eager", 1), ("eager", 2), ("onnxruntime", 1), ("onnxruntime", 2)}
    assert status["eager", 1]["status"] == status["eager", 2]["status"] == "ok"
    assert status["onnxruntime", 1]["status"] == "error" and status["onnxruntime", 1]["reason"] == "RuntimeError: boom"
    assert status["eager", 2]["peak_mem_mb"] > status["eager", 1]["peak_mem_mb"]


def test_skip_reasons(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs a CUDA GPU" in skip_reason("tensorrt")
    assert "no CUDA GPU is visible" in skip_reason("eager", device="cuda")
    assert skip_reason("eager") is None and skip_reason("deployed") is None and skip_reason("compile") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_version = bench._version
    monkeypatch.setattr(bench, "_version", lambda p: None if p == "tensorrt" else real_version(p))
    assert "tensorrt is not installed" in skip_reason("tensorrt")
    monkeypatch.setattr(bench, "_version", lambda p: "11.0" if p == "tensorrt" else real_version(p))
    monkeypatch.setattr(bench, "_exporter_has", lambda module: False)
    assert "not part of this build's exporter (no export.tensorrt_export)" in skip_reason("tensorrt")
    assert "not part of this build's exporter (no export.quantize)" in skip_reason("onnxruntime-int8")
    monkeypatch.setattr(bench.platform, "system", lambda: "Linux")
    assert "CoreML runs only on macOS (this is Linux)" in skip_reason("coreml")
    monkeypatch.setattr(bench.platform, "system", lambda: "Darwin")
    if real_version("coremltools"):
        assert skip_reason("coreml") is None
    with pytest.raises(ValueError, match="unknown runtime 'onnx'; choose from eager, deployed"):
        skip_reason("onnx")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runtimes", "eager,tensorrtt"], "unknown runtime 'tensorrtt'"),
        (["--batch", "1,0"], "--batch must be positive integers"),
        (["--batch", "one"], "--batch must be comma-separated integers"),
        (["--models", "no_such_model*"], "no registered model matches 'no_such_model*'"),
    ],
)
def test_bad_arguments(argv, message, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_peak_tensor_memory_counts_live_storages() -> None:
    mib = 2**20

    def fn() -> torch.Tensor:
        a = torch.empty(mib // 4)  # 1 MiB live
        b = a + 1  # 2 MiB live
        del a
        c = b * 2  # 2 MiB live (a freed)
        return c.view(-1)  # a view allocates nothing

    assert peak_tensor_memory(fn) == 2 * mib
    x = torch.randn(mib // 4)
    w = torch.randn(256, 1024)  # 1 MiB "weight": its transposed view is not an allocation
    assert peak_tensor_memory(lambda: x.add_(1)) == 0  # in place: nothing new
    assert peak_tensor_memory(lambda: torch.nn.functional.linear(x[:1024].view(1, 1024), w)) == 256 * 4


def test_peak_tensor_memory_with_sparse_tensors() -> None:
    """A CSR weight (what deployed sparse layers multiply with) is an input, its product a new dense tensor."""
    w = torch.randn(64, 128)
    w[torch.rand_like(w) < 0.9] = 0
    csr, x = w.to_sparse_csr(), torch.randn(128, 32)
    assert peak_tensor_memory(lambda: torch.mm(csr, x)) == 64 * 32 * 4
    made = peak_tensor_memory(lambda: w.to_sparse_csr())  # index and value arrays of a new sparse tensor
    assert made >= int((w != 0).sum()) * 4


def test_deployed_sparse_model_is_measured() -> None:
    settings = BenchSettings(threads=1, imgsz=64, warmup=1, min_runs=2, max_runs=2, min_seconds=0)
    rows = bench_model("sparse_mobilenetv1_075_s90", ["deployed"], [1], settings)
    assert rows[0]["status"] == "ok" and rows[0]["peak_mem_mb"] > 0 and rows[0]["reason"] == ""


def test_failures_stay_in_their_rows(monkeypatch, tmp_path) -> None:
    settings = BenchSettings(threads=1, imgsz=64, warmup=1, min_runs=2, max_runs=2, min_seconds=0)
    real_subject = bench._subject

    def subject(name, settings):
        if name == "efficientvit_m1":
            raise RuntimeError("cannot build")
        return real_subject(name, settings)

    def no_memory(fn, device="cpu"):
        raise NotImplementedError("no storage")

    monkeypatch.setattr(bench, "_subject", subject)
    monkeypatch.setattr(bench, "peak_tensor_memory", no_memory)
    result = bench.run_bench(["efficientvit_m1", "efficientvit_m0"], ["eager"], [1], settings)
    by_model = {r["model"]: r for r in result["results"]}
    assert by_model["efficientvit_m1"]["status"] == "error"
    assert by_model["efficientvit_m1"]["reason"] == "model preparation failed: RuntimeError: cannot build"
    bench.write_results(result, tmp_path / "r.json")  # error rows are written like the others
    assert "model preparation failed" in (tmp_path / "r.csv").read_text()
    m0 = by_model["efficientvit_m0"]
    assert m0["status"] == "ok" and m0["median_ms"] > 0 and m0["peak_mem_mb"] is None
    assert m0["reason"] == "peak memory not measured: NotImplementedError: no storage"


def test_pareto_front() -> None:
    pts = [
        {"model": "a", "latency_ms": 1.0, "top1": 70.0},
        {"model": "b", "latency_ms": 2.0, "top1": 69.0},  # slower and worse than a
        {"model": "c", "latency_ms": 3.0, "top1": 75.0},
        {"model": "d", "latency_ms": 3.0, "top1": 74.0},  # as fast as c, worse
        {"model": "e", "latency_ms": 9.0, "top1": 80.0},
    ]
    assert [p["model"] for p in pareto_front(pts)] == ["a", "c", "e"]


def test_pareto_points_keep_imagenet_top1_only() -> None:
    def row(model: str, top1: float | None) -> dict:
        return {"model": model, "family": "f", "runtime": "onnxruntime", "batch": 1, "status": "ok"} | {
            "median_ms": 1.0,
            "top1_paper": top1,
        }

    result = {"results": [row("simplenetv1_5m_m1", 71.9), row("simplenet_cifar_5m", 95.5), row("tinynet_e", None)]}
    # a CIFAR-10 accuracy has no place on an ImageNet axis; a model with no top-1 cannot be placed
    assert [p["model"] for p in pareto_points(result, "onnxruntime")] == ["simplenetv1_5m_m1"]
    assert zoo.get_family("simplenet_cifar_5m").reported["simplenet_cifar_5m"].dataset == "cifar-10"
