"""The INT8 gate, accuracy-aware quantization, the CPU capability, and parity judged against the noise floor.

Everything here asserts behaviour that holds on any x86-64 (or ARM) CPU: the gate's arithmetic on constructed
logits, the search on a model built to be hostile to per-tensor INT8 (an outlier channel that only a float op can
carry, whatever the int8 kernels), the CPU table on given flag sets, and parity verdicts on a correct model whose
fp32 rounding is amplified past any fixed tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import blocks
from export import ExportOptions, export_model
from export import int8 as int8_mod
from export.fold import judge_parity, noise_floor
from export.int8 import Int8Budget, default_reduce_range, evaluate_int8, int8_capability


def test_gate_on_constructed_logits() -> None:
    labels = torch.arange(100) % 10
    fp32 = torch.nn.functional.one_hot(labels, 10).float() * 5
    q = fp32.clone()
    q[:3] = torch.nn.functional.one_hot((labels[:3] + 1) % 10, 10).float() * 5  # 3 flips: 97% agreement
    v = evaluate_int8(fp32, q, labels, Int8Budget(max_drop=1.0, min_agreement=98.0))
    assert v["top1_fp32"] == pytest.approx(100) and v["top1_int8"] == pytest.approx(97)
    assert v["drop"] == pytest.approx(3) and v["agreement"] == pytest.approx(97) and not v["passed"]
    assert len(v["violations"]) == 2 and "drop 3.00 points > 1" in v["violations"][0]
    ok = evaluate_int8(fp32, q, labels, Int8Budget(max_drop=3.0, min_agreement=97.0))
    assert ok["passed"] and ok["violations"] == []
    # without labels: agreement and the logits' cosine
    noisy = fp32 + 0.5 * torch.randn(fp32.shape, generator=torch.Generator().manual_seed(0))
    v = evaluate_int8(fp32, noisy, None, Int8Budget(min_agreement=0, min_cosine=0.999))
    assert "drop" not in v and v["cosine"] < 0.999 and not v["passed"] and "cosine" in v["violations"][0]


@pytest.mark.parametrize(
    ("arch", "flags", "dot", "risk"),
    [
        ("x86_64", {"avx2", "fma"}, False, True),  # AMD EPYC / Haswell: saturating 16-bit u8 x s8 pairs
        ("x86_64", {"avx2", "avx512f"}, False, True),  # Skylake-X without VNNI
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, True, False),
        ("x86_64", {"avx2", "avx_vnni"}, True, False),  # Alder Lake / Zen 5 AVX-VNNI
        ("aarch64", {"asimd", "asimddp"}, True, False),
        ("aarch64", {"asimd"}, False, False),
    ],
)
def test_cpu_capability_and_reduce_range(monkeypatch, arch: str, flags: set, dot: bool, risk: bool) -> None:
    monkeypatch.setattr(int8_mod, "_cpu_flags", lambda: ("some cpu", set(flags)))
    monkeypatch.setattr(int8_mod.platform, "machine", lambda: arch)
    cap = int8_capability()
    assert cap["int8_dot_product"] is dot and cap["saturation_risk"] is risk and cap["cpu"] == "some cpu"
    assert default_reduce_range(cap) is risk


def test_this_cpu_is_read() -> None:
    cap = int8_capability()
    assert cap["cpu"] and cap["arch"] and isinstance(cap["isa"], list)


class Hostile(nn.Module):
    """Per-tensor INT8 cannot carry ``c2``'s input: one channel is 5,000x the others (and ``c2`` scales it back), so
    at 8 bits the other channels round to nothing. Keeping ``c2`` in float is the fix the search must find."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 6
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.c3, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 6)
        with torch.no_grad():
            self.c1.weight[0] *= 5000
            self.c1.bias[0] = self.c1.bias[0].abs() * 5000
            self.c2.weight[:, 0] /= 5000
        self.pretrained_cfg = {"input_size": (3, 16, 16)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(torch.relu(self.c3(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def hostile_exports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(0)
    model = Hostile().eval()
    base = tmp_path_factory.mktemp("int8")
    budget = {"min_int8_agreement": 0.0, "min_int8_cosine": 0.9995, "calib_size": 32, "latency_seconds": 0}
    search = export_model(model, base / "search", ExportOptions(formats=("onnx-int8",), **budget))
    plain = export_model(model, base / "plain", ExportOptions(formats=("onnx-int8",), int8_fallback=False, **budget))
    return {"search": search, "plain": plain, "base": base}


def test_over_budget_fails_with_figures_and_leaves_no_file(hostile_exports: dict) -> None:
    res = hostile_exports["plain"]
    rec = res.formats["onnx-int8"]
    assert not res.ok and rec["status"] == "failed" and "INT8 over budget" in rec["error"] and "cosine" in rec["error"]
    assert rec["top1"]["cosine"] < 0.9995 and rec["top1"]["violations"] and not rec["top1"]["passed"]
    assert rec["top1"]["cpu"]["cpu"] and rec["search"]["attempts"]
    assert sorted(p.name for p in res.out_dir.iterdir()) == ["manifest.json"]
    assert json.loads((res.out_dir / "manifest.json").read_text())["formats"]["onnx-int8"]["status"] == "failed"
    assert "onnx-int8" in res.summary and "failed" in res.summary


def test_search_keeps_the_hostile_op_in_float_and_meets_the_budget(hostile_exports: dict) -> None:
    import onnx

    res = hostile_exports["search"]
    rec = res.formats["onnx-int8"]
    assert res.ok and rec["status"] == "ok", rec.get("error")
    q = rec["quantization"]
    first = q["search"]["attempts"][0]
    assert first["float_ops"] == 0 and not first["passed"], "fully quantized must be over budget (the test's premise)"
    assert rec["top1"]["passed"] and rec["top1"]["cosine"] >= 0.9995
    float_nodes = [f["node"] for f in q["float_nodes"]]
    graph = onnx.load(str(res.out_dir / "hostile.int8.onnx")).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert float_nodes and float_nodes[0] == convs[1].name, "c2 is the most sensitive op"
    assert "sensitivity rank 1/" in q["float_nodes"][0]["why"]
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert producers.get(convs[1].input[0]) != "DequantizeLinear", "c2's input must stay float"
    assert producers.get(convs[2].input[0]) == "DequantizeLinear", "c3 is still quantized"
    assert q["quantized_ops_count"] == q["search"]["quantizable_ops"] - len(float_nodes)


class Chaotic(nn.Module):
    """Correct but chaotic: ten steps of the logistic map double fp32 rounding each time, so fp32 runtimes differ by
    ~1e-3 relative and no fixed tolerance of 1e-4 / 1e-5 can judge it."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 4
        self.features = nn.Sequential(
            blocks.ConvBN(3, 8, 3, act_layer=nn.ReLU), blocks.ConvBN(8, 8, 3, act_layer=nn.ReLU)
        )
        self.head = nn.Linear(8, 4)
        self.pretrained_cfg = {"input_size": (3, 16, 16), "first_conv": "features.0.conv"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.features(x).mean((2, 3)))
        for _ in range(18):
            z = 3.9 * z * (1 - z)
        return self.head(z)


def test_chaotic_but_correct_model_passes_every_check(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = blocks.make_bn_realistic(Chaotic(), (3, 16, 16))
    assert noise_floor(model, torch.randn(2, 3, 16, 16))[0] > 1e-4, "the test's premise: rounding is amplified"
    res = export_model(
        model, tmp_path / "out", ExportOptions(formats=("onnx",), fold_input_norm=True, latency_seconds=0)
    )
    assert res.ok, res.failed
    fold, par = res.manifest["fold"], res.formats["onnx"]["parity"]
    assert fold["parity_random"] > fold["tol"] and fold["noise_floor_random"] > 0  # judged by the floor, reported
    assert fold["input_fold"]["noise_floor"] >= 0 and par["noise_floor"] > 0 and "error_vs_float64" in par


def test_wrong_fold_in_a_chaotic_model_is_still_caught(tmp_path: Path) -> None:
    from test_export_errors import _WrongFold

    from export import FoldCheckError

    torch.manual_seed(0)
    model = Chaotic()
    model.features[0] = _WrongFold(3, 8, 3, act_layer=nn.ReLU)
    model.features[1] = nn.Identity()
    model = blocks.make_bn_realistic(model, (3, 16, 16))
    with pytest.raises(FoldCheckError, match="folded model differs"):
        export_model(model, tmp_path / "out", ExportOptions(formats=("onnx",)))
    assert not (tmp_path / "out").exists()


def test_judge_parity() -> None:
    assert judge_parity(1e-5, None, None, 1e-4)  # within tolerance
    assert judge_parity(3e-3, 2e-3, 1e-3, 1e-4)  # fp32 noise amplified: within 10x the floor
    assert not judge_parity(1e-1, 1e-1, 1e-6, 1e-4)  # a missing bias in a well-conditioned model
    assert not judge_parity(3e-3, 2e-3, None, 1e-4)


class _Residual(nn.Module):
    """Two residual Adds and a dozen convs: enough ops for grouped sensitivities, Adds for the placement choice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(10))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for i, conv in enumerate(self.body):
            y = torch.relu(conv(x))
            x = x + y if i % 5 == 4 else y
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("faster", ["qdq", "qdq-float-add"])
def test_placement_follows_the_timer_and_the_budget(tmp_path: Path, faster: str) -> None:
    import onnx

    from export import export_onnx, run_onnx
    from export.int8 import Int8Budget, search_onnx_int8

    torch.manual_seed(0)
    model = _Residual().eval()
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model, fp32, (3, 8, 8))
    calib, gate_x = torch.rand(16, 3, 8, 8), torch.rand(16, 3, 8, 8)
    timed: list[set] = []

    def timer(files: dict[str, Path]) -> dict[str, float]:  # a stand-in for the runtime: the test fixes the winner
        timed.append(set(files))
        return {k: 1.0 if k == faster else 2.0 for k in files}

    def run(p: Path, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.as_tensor(run_onnx(p, x[i : i + 1])) for i in range(len(x))])

    out = tmp_path / "int8.onnx"
    budget = Int8Budget(min_agreement=0.0, min_cosine=0.0)
    settings, _ = search_onnx_int8(
        fp32, out, calib, 1, (gate_x, None, "random"), run, budget, ("minmax",), False, quiet=True, timer=timer
    )
    assert timed == [{"qdq", "qdq-float-add"}]
    assert settings["search"]["placement"]["chosen"] == faster
    from export.quantize import quantize_int8

    def pairs(path: Path) -> int:
        return [n.op_type for n in onnx.load(str(path)).graph.node].count("QuantizeLinear")

    quantize_int8(fp32, tmp_path / "with_add.onnx", calib, 1)  # Q/DQ on the Adds too: the default placement
    assert ("Add" in settings["quantized_ops"]) == (faster == "qdq")
    if faster == "qdq":
        assert pairs(out) == pairs(tmp_path / "with_add.onnx"), "the file written is the placement chosen"
    else:
        assert pairs(out) < pairs(tmp_path / "with_add.onnx"), "the file written is the placement chosen"


def test_grouped_sensitivities_rank_every_op_and_refine_the_worst() -> None:
    from export.int8 import _sensitivities

    nodes = [(f"n{i}", "Conv") for i in range(40)]

    class P:  # error drops most when n7 is dequantized; every candidate's error is the sum over quantized ops
        count = 0

        def build(self, method: str, exclude=(), out=None):
            P.count += 1
            return _Gone(set(exclude)), {}

        def distance(self, path) -> float:
            return sum(10.0 if n == "n7" else 1.0 for n, _ in nodes if n not in path.excluded)

    rows = _sensitivities(P(), "minmax", nodes, quiet=True, groups=8, refine=2)
    assert sorted(r["node"] for r in rows) == sorted(n for n, _ in nodes)
    assert rows[0]["node"] == "n7" and not rows[0]["estimated"]
    assert any(r["estimated"] for r in rows), "ops outside the refined groups carry their group's estimate"
    assert P.count == 1 + 8 + 2 * 5, "one full build, eight groups, then the two worst groups op by op"


class _Gone:
    def __init__(self, excluded: set) -> None:
        self.excluded = excluded

    def unlink(self) -> None:
        pass


def test_placement_option() -> None:
    from export import ExportInputError
    from export.formats import _placement_timer

    with pytest.raises(ExportInputError, match="int8_placement"):
        ExportOptions(int8_placement="qoperator")

    class J:  # what _placement_timer reads of a job
        probes = [("random", torch.rand(1, 3, 8, 8))]

    for opts, timed in (
        (ExportOptions(formats=("onnx-int8",)), True),
        (ExportOptions(formats=("onnx-int8",), int8_placement="qdq"), False),
        (ExportOptions(formats=("onnx-int8", "tensorrt")), False),
        (ExportOptions(formats=("onnx-int8",), latency_seconds=0), False),
    ):
        J.opts = opts
        assert (_placement_timer(J) is not None) == timed, opts
