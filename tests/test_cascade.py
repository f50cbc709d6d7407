"""Early-exit cascades: the window logic on constructed scores, MAC accounting by hand, cascade.json round trip and
its validation, ``zoo cascade fit`` / ``eval`` end to end, and the exported cascade against the PyTorch one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import weights
import zoo
from train.cascade import fit_windows, pooled, risk_coverage, selective_metrics
from train.cascade import main as cascade_main
from train.checkpoint import save_weights, weights_metadata
from zoo.cascade import CascadeError, cascade_decisions, exit_stages, expected_macs, stage_outputs


class Table(nn.Module):
    """A 'model' returning fixed logits per sample: input (B, 1) holds the sample's row in ``logits``; records the
    rows of every batch it is called on."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits.float())
        self.num_classes = logits.shape[1]
        self.seen: list[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0].long()
        self.seen.append(rows.tolist())
        return self.table[rows]


def _logits_with_msp(msp: list[float], classes: int = 10) -> torch.Tensor:
    """Logits whose softmax has maximum ``msp[i]`` at class ``i % classes``, the rest spread evenly."""
    out = torch.empty(len(msp), classes, dtype=torch.float64)
    for i, p in enumerate(msp):
        probs = torch.full((classes,), (1 - p) / (classes - 1), dtype=torch.float64)
        probs[i % classes] = p
        out[i] = probs.log()
    return out


def _rows(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)[:, None]


# ------------------------------------------------------------------------------------------------- window logic
def test_exits_where_the_windows_say_and_averages_reached_stages() -> None:
    msp0 = [0.95, 0.50, 0.30, 0.70, 0.12, 0.60]
    msp1 = [0.90, 0.90, 0.40, 0.20, 0.80, 0.62]
    l0, l1 = _logits_with_msp(msp0), _logits_with_msp(msp1)
    l2 = _logits_with_msp([0.5] * 6)
    members = [Table(l0), Table(l1), Table(l2)]
    # stage 0 passes 0.25..0.75: rows 1, 2, 3, 5; stage 1 (mean MSP of members 0, 1) passes 0.3..0.5
    cascade = zoo.Cascade(members, [(0.25, 0.75), (0.3, 0.5)], input_size=(1, 1, 1))
    out = cascade(_rows(6))
    # row 1: (0.5+0.9)/2 = 0.7 -> exits at 1; row 2: 0.35 -> on; row 3: 0.45 -> on; row 5: 0.61 -> exits at 1
    assert out.exit_stage.tolist() == [0, 1, 2, 2, 0, 1]
    assert out.exit_stage.dtype == torch.int64
    p = [lg.softmax(-1) for lg in (l0, l1, l2)]
    expect = torch.stack(
        [p[0][0].log(), ((p[0][1] + p[1][1]) / 2).log(), ((p[0][2] + p[1][2] + p[2][2]) / 3).log(),
         ((p[0][3] + p[1][3] + p[2][3]) / 3).log(), p[0][4].log(), ((p[0][5] + p[1][5]) / 2).log()]
    ).float()  # fmt: skip
    torch.testing.assert_close(out.logits, expect, rtol=0, atol=1e-6)
    # compaction: later members only ran on what was passed on, in the original order
    assert members[0].seen == [[0, 1, 2, 3, 4, 5]] and members[1].seen == [[1, 2, 3, 5]] and members[2].seen == [[2, 3]]


def test_window_edges_are_inclusive_and_single_threshold() -> None:
    scores = torch.tensor([[0.2, 0.3, 0.5, 0.7, 0.71, 0.29]], dtype=torch.float64).repeat(2, 1)
    assert exit_stages(scores, [(0.3, 0.7)]).tolist() == [0, 1, 1, 1, 0, 0]
    assert exit_stages(scores, [(0.0, 0.5)]).tolist() == [1, 1, 1, 0, 0, 1]  # one threshold: pass what is unsure


@pytest.mark.parametrize("score", zoo.cascade.SCORES)
def test_compacted_forward_equals_offline_decisions_in_any_order(score: str) -> None:
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(40, 5, generator=g) * s for s in (1.0, 2.0, 3.0)]
    _, conf = stage_outputs(logits, score)
    windows = [(float(conf[k].quantile(0.2)), float(conf[k].quantile(0.8))) for k in range(2)]
    cascade = zoo.Cascade([Table(lg) for lg in logits], windows, score, input_size=(1, 1, 1))
    perm = torch.randperm(40, generator=g)
    out = cascade(_rows(40)[perm])
    logp, stage, _ = cascade_decisions(logits, windows, score)
    assert out.exit_stage.tolist() == stage[perm].tolist()
    assert set(stage.tolist()) == {0, 1, 2}  # every stage is exercised
    torch.testing.assert_close(out.logits, logp[perm].float(), rtol=0, atol=1e-6)


def test_refuses_training_mode_and_bad_arguments() -> None:
    members = [Table(torch.zeros(2, 3)), Table(torch.zeros(2, 3))]
    cascade = zoo.Cascade(members, [(0.0, 0.5)], input_size=(1, 1, 1))
    with pytest.raises(RuntimeError, match="eval mode only"):
        cascade.train()(_rows(2))
    with pytest.raises(CascadeError, match="Did you mean msp"):
        zoo.Cascade(members, [(0.0, 0.5)], score="mps")
    with pytest.raises(CascadeError, match="need 1 windows"):
        zoo.Cascade(members, [(0.0, 0.5), (0.1, 0.2)])
    with pytest.raises(CascadeError, match="0 <= lo <= hi <= 1"):
        zoo.Cascade(members, [(0.6, 0.5)])
    with pytest.raises(CascadeError, match="different numbers of classes"):
        zoo.Cascade([Table(torch.zeros(2, 3)), Table(torch.zeros(2, 4))], [(0.0, 0.5)])


# ------------------------------------------------------------------------------------------------------------ MACs
class _Conv(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 1, bias=False)
        self.fc = nn.Linear(width, 5)
        self.num_classes = 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def test_mac_accounting_by_hand() -> None:
    members = [_Conv(4), _Conv(8)]
    cascade = zoo.Cascade(members, [(0.0, 1.0)], input_size=(3, 8, 8))
    hand = [3 * 4 * 8 * 8 + 4 * 5, 3 * 8 * 8 * 8 + 8 * 5]  # 1x1 conv over 64 pixels + the linear head
    assert cascade.member_macs == hand
    # window (0, 1) passes everything: every image pays for both members
    out = cascade(torch.randn(6, 3, 8, 8))
    assert out.exit_stage.tolist() == [1] * 6 and cascade.expected_macs(out.exit_stage) == hand[0] + hand[1]
    stages = torch.tensor([0, 0, 0, 1])
    assert expected_macs(stages, hand) == (3 * hand[0] + (hand[0] + hand[1])) / 4
    assert expected_macs(torch.tensor([0, 2, 1]), [10, 20, 30]) == (10 + 60 + 30) / 3


# ------------------------------------------------------------------------------------------------ metrics and fit
def test_selective_metrics_by_hand() -> None:
    correct = torch.tensor([True, False, True, True])
    conf = torch.tensor([0.9, 0.8, 0.7, 0.1])
    risk, cov, _ = risk_coverage(correct, conf)
    assert risk.tolist() == [0, 0, 0.5, 1 / 3, 0.25] and cov.tolist() == [0, 0.25, 0.5, 0.75, 1]
    m = selective_metrics(correct, conf, coverage=0.5)
    assert m["accuracy"] == 75.0 and m["risk_at_coverage"] == 50.0
    trapz = 0.25 * ((0 + 0) + (0 + 0.5) + (0.5 + 1 / 3) + (1 / 3 + 0.25)) / 2
    assert math.isclose(m["aurc"], 100 * trapz)
    # two folds pool into the figures of their images together; MACs and exits weighted by images
    folds = [
        {"name": "c", "kind": "cascade", "expected_macs": 10.0, "exit_fractions": [1.0, 0.0],
         "per_image": {"correct": [1, 0], "conf": [0.9, 0.8]}},
        {"name": "c", "kind": "cascade", "expected_macs": 25.0, "exit_fractions": [0.5, 0.5],
         "per_image": {"correct": [1, 1], "conf": [0.7, 0.1]}},
    ]  # fmt: skip
    both = pooled(folds, coverage=0.5)
    assert both["images"] == 4 and both["expected_macs"] == 17.5 and both["exit_fractions"] == [0.75, 0.25]
    assert {k: both[k] for k in m} == m


def test_fit_meets_its_targets() -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (200,), generator=g)
    logits = [torch.randn(200, 5, generator=g) * 2 + 3 * nn.functional.one_hot(labels, 5) for _ in range(2)]
    macs = [100, 100]
    windows, res = fit_windows(logits, labels, macs, "macs:1.3")
    assert res["expected_macs"] <= 130 and 0 < res["exit_fractions"][1] <= 0.3
    _, res_acc = fit_windows(logits, labels, macs, "accuracy")
    full = stage_outputs(logits)[0][1].argmax(-1).eq(labels).double().mean() * 100
    assert res_acc["accuracy"] >= float(full) - 1e-9 and res_acc["expected_macs"] < 200
    windows, res = fit_windows(logits, labels, macs, "risk:0.05@coverage", width=0.2)
    assert abs(res["exit_fractions"][1] - 0.2) <= 0.02  # the authors' window: 20% of the fit scores around tau
    with pytest.raises(CascadeError, match="expected macs:R"):
        fit_windows(logits, labels, macs, "latency:3")


# --------------------------------------------------------------------------- checkpoints, cascade.json, CLI, export
MEMBER = "mobilenetv1_075"  # a plain conv net: its ONNX export takes a fraction of EfficientViT's CPU time


def _checkpoint(path: Path, seed: int, num_classes: int = 10, img_size: int = 32) -> Path:
    import blocks

    torch.manual_seed(seed)
    model = zoo.create_model(MEMBER, num_classes=num_classes).eval()
    blocks.make_bn_realistic(model, (3, img_size, img_size))  # an untrained model's MSPs still spread 0.1..1
    save_weights(model, path, weights_metadata(MEMBER, num_classes, img_size, {}))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two members at 32 px with different seeds, a cascade fitted on digits by the CLI."""
    d = tmp_path_factory.mktemp("cascade")
    a, b = _checkpoint(d / "a.safetensors", 0), _checkpoint(d / "b.safetensors", 1)
    rc = cascade_main(
        ["fit", "--members", f"{a},{b}", "--data", "digits", "--target", "macs:1.5", "--out", str(d / "c")]
    )
    assert rc == 0
    return d / "c" / "cascade.json"


def test_cascade_json_round_trip(fitted: Path) -> None:
    spec = json.loads(fitted.read_text())
    assert {"members", "score", "windows", "expected_macs", "fitted_on"} <= set(spec)
    assert "fit half" in spec["fitted_on"]["split"] and spec["fitted_on"]["images"] == 182
    assert spec["expected_macs"] <= 1.5 * spec["members"][0]["macs"]
    cascade = zoo.Cascade.from_json(fitted)
    assert cascade.windows == [tuple(w) for w in spec["windows"]] and cascade.score == "msp"
    assert cascade.member_macs == [m["macs"] for m in spec["members"]]
    saved = zoo.create_model(MEMBER, num_classes=10, pretrained=str(fitted.parent.parent / "b.safetensors"))
    for (k, v), w in zip(saved.state_dict().items(), cascade.members[1].state_dict().values()):
        assert torch.equal(v, w), k


def _edit(src: Path, dst_dir: Path, change) -> Path:  # noqa: ANN001 - a callable editing the spec in place
    spec = json.loads(src.read_text())
    for m in spec["members"]:
        m["checkpoint"] = str((src.parent / m["checkpoint"]).resolve())
    change(spec)
    dst = dst_dir / "cascade.json"
    dst.write_text(json.dumps(spec))
    return dst


def test_cascade_json_validation(fitted: Path, tmp_path: Path) -> None:
    base = fitted.parent.parent

    def sha(spec: dict) -> None:
        spec["members"][1]["sha256"] = "0" * 64

    with pytest.raises(CascadeError, match="sha256"):
        zoo.Cascade.from_json(_edit(fitted, tmp_path, sha))
    a = base / "a.safetensors"

    def variant(name: str, **meta: str) -> Path:  # member a's weights, with other training metadata
        out = tmp_path / f"{name}.safetensors"
        weights.save_safetensors(weights.load_checkpoint(a), out, {**weights.read_safetensors_metadata(a), **meta})
        return out

    unknown = variant("unknown", model="mobilenetv1_07")

    def member(path: Path):  # noqa: ANN202
        def change(spec: dict) -> None:
            spec["members"][1].update(checkpoint=str(path), sha256=weights.sha256sum(path))

        return change

    with pytest.raises(zoo.UnknownModelError, match="member 1.*mobilenetv1_07'.*Did you mean.*mobilenetv1_075"):
        zoo.Cascade.from_json(_edit(fitted, tmp_path, member(unknown)))
    five = variant("five", num_classes="5")
    with pytest.raises(CascadeError, match="different numbers of classes.*member 0: 10, member 1: 5"):
        zoo.Cascade.from_json(_edit(fitted, tmp_path, member(five)))
    big = variant("big", img_size="48")
    with pytest.raises(CascadeError, match="different input sizes"):
        zoo.Cascade.from_json(_edit(fitted, tmp_path, member(big)))
    with pytest.raises(CascadeError, match="checkpoint not found"):
        zoo.Cascade.from_json(_edit(fitted, tmp_path, lambda s: s["members"][0].update(checkpoint=str(base / "x"))))
    (tmp_path / "bad.json").write_text('{"format": "efficient-zoo cascade", "members": [')
    with pytest.raises(CascadeError, match="not valid JSON"):
        zoo.Cascade.from_json(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text('{"format": "efficient-zoo cascade", "members": [], "score": "msp"}')
    with pytest.raises(CascadeError, match="missing key.*windows, expected_macs, fitted_on"):
        zoo.Cascade.from_json(tmp_path / "short.json")


def test_eval_writes_table_and_plot(fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cascade_main(["eval", str(fitted), "--data", "digits", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| cascade (macs:1.5) |" in text and f"| member 1: {MEMBER}" in text
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == 178 and len(result["curve"]) == 21
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cascade_main(["fit", "--members", str(fitted), "--target", "macs:1", "--out", str(tmp_path)]) == 2


def test_exported_cascade_matches_pytorch(fitted: Path, tmp_path: Path) -> None:
    from export import ExportInputError, ExportOptions, export_cascade, run_cascade
    from export.data import load_digits, normalize

    # windows in the middle of the real scores, so that both stages are exercised
    cascade = zoo.Cascade.from_json(fitted)
    cfg = cascade.members[0].pretrained_cfg
    x = normalize(load_digits(32, "val").pixels[:80], cfg["mean"], cfg["std"])
    with torch.no_grad():
        conf = stage_outputs([m(x) for m in cascade.members])[1]
    window = [float(conf[0].quantile(0.3)), float(conf[0].quantile(0.7))]
    spec = _edit(fitted, tmp_path, lambda s: s.update(windows=[window]))
    policy = export_cascade(spec, tmp_path / "out", ExportOptions(formats=("onnx",), latency_seconds=0))
    assert policy["parity"]["exits_differ"] == 0 and policy["parity"]["logit_error"] <= 1e-4
    assert all(m["artifacts"]["onnx"][0]["file"].startswith(f"member{k}/") for k, m in enumerate(policy["members"]))
    logits, stage = run_cascade(tmp_path / "out", x.numpy())
    ref = zoo.Cascade.from_json(spec)(x)
    assert stage.tolist() == ref.exit_stage.tolist() and set(stage.tolist()) == {0, 1}
    err = abs(logits - ref.logits.numpy()).max() / abs(ref.logits.numpy()).max()
    assert err <= 1e-4
    onnx = tmp_path / "out" / policy["members"][1]["artifacts"]["onnx"][0]["file"]
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(ExportInputError, match="sha256"):
        run_cascade(tmp_path / "out", x.numpy())
