"""``MODEL_CARDS.md`` is generated from the registry, and stays in sync with it.

The sync check is split so that it fits the test budget: rendering builds no model (params/MACs come from the
committed ``model_stats.json``), and each cached entry is checked against its model's architecture with a cheap
fingerprint (parameter count with the large weights on the meta device, and the input size). ``zoo cards`` fixes
either failure.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest

import zoo
from export import cards
from export.cards import BENCH_PATH, PLOT_PATH, STATS_PATH, architecture_fingerprint, load_json, render_cards

ROOT = Path(__file__).resolve().parents[1]
STATS = load_json(ROOT / STATS_PATH) or {}
HINT = "run `zoo cards` (from the repository root) to update MODEL_CARDS.md and benchmarks/results/model_stats.json"


def test_cards_file_in_sync_with_registry() -> None:
    assert set(STATS) == set(zoo.list_models()), HINT
    plot = PLOT_PATH if (ROOT / PLOT_PATH).exists() else None
    expected = render_cards(STATS, load_json(ROOT / BENCH_PATH), BENCH_PATH, plot)
    assert (ROOT / "MODEL_CARDS.md").read_text() == expected, HINT


@pytest.mark.parametrize("name", zoo.list_models())
def test_cached_stats_match_architecture(name: str) -> None:
    fp = architecture_fingerprint(name)
    assert name in STATS, HINT
    assert (STATS[name]["params"], STATS[name]["input_size"]) == (fp["params"], fp["input_size"]), HINT


def test_fingerprint_counts_like_a_real_build() -> None:
    fp = architecture_fingerprint("efficientvit_m5")
    assert fp == {"params": zoo.count_params(zoo.create_model("efficientvit_m5")), "input_size": [3, 224, 224]}


def test_tested_exports_are_registry_tests() -> None:
    source = (ROOT / "tests" / "test_registry.py").read_text()
    for test_name, _ in cards.TESTED_EXPORTS:
        assert re.search(rf"^def {test_name}\(subject", source, re.M), f"the cards claim {test_name} runs for all"


def _bench(rows: list[dict]) -> dict:
    versions = {"torch": "x", "onnxruntime": "y"}
    machine = {"cpu": "Test CPU 9000", "threads": 2, "date": "2026-01-01", "versions": versions}
    settings = {"imgsz": None, "min_runs": 20, "warmup": 5}
    return {"machine": machine, "settings": settings, "skipped": {}, "results": rows}


def _row(model: str, runtime: str, status: str = "ok", ms: float = 1.0, size: int = 224, reason: str = "") -> dict:
    return {
        "model": model,
        "runtime": runtime,
        "batch": 1,
        "status": status,
        "median_ms": ms,
        "input_size": [3, size, size],
        "reason": reason,
    }


def test_render_family_section(monkeypatch) -> None:
    family = copy.copy(zoo.get_family("efficientvit"))  # a copy: Family() itself would register a second family
    family.card_notes = "PRepBN evaluates as RepBN | note."
    family.remaining_norms = ("LayerNorm",)
    m1_weights = dataclasses.replace(family.weights["efficientvit_m1"], top1=69)
    family.weights = {**family.weights, "efficientvit_m1": m1_weights}
    monkeypatch.setattr(cards.zoo, "list_families", lambda: [family])
    rows = [
        _row("efficientvit_m0", "onnxruntime", ms=3.14159),
        _row("efficientvit_m0", "deployed", ms=7.5),
        _row("efficientvit_m0", "onnxruntime-int8", ms=2.0),
        _row("efficientvit_m1", "onnxruntime", ms=4.0, size=128),
        _row("efficientvit_m1", "deployed", status="error", reason="RuntimeError: boom"),
        {**_row("efficientvit_m1", "onnxruntime", ms=99.0), "batch": 16},  # batch 16: not in the cards
    ]
    stats = {"efficientvit_m0": {"params": 2_349_436, "macs": 79_193_600, "input_size": [3, 224, 224]}}
    text = render_cards(stats, _bench(rows), "b.json", plot="p.png")
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| `")}
    m0, m1 = lines["| `efficientvit_m0`"], lines["| `efficientvit_m1`"]
    assert "| 2.349 M / 2.3 M | 79.2 M / 79 M | 63.2 | V100 27,644 img/s" in m0
    assert "| 3.14 | 7.50 | ONNX, CoreML, INT8 ONNX | [original](https://github.com/" in m0
    assert "timm `efficientvit_m0`" in m0
    assert "| ? / 3 M | ? / 167 M |" in m1  # not measured yet: visibly missing, not invented
    assert "| 4.00 @128 | failed | ONNX, CoreML |" in m1
    assert "efficientvit_m1.pth) (top-1 69); timm" in m1 and "(top-1" not in m0  # weights scoring unlike the paper
    assert "Benchmark failures here: `efficientvit_m1` deployed: RuntimeError: boom." in text
    assert "PRepBN evaluates as RepBN | note." in text
    assert "- Norms left after folding: `LayerNorm` (cannot fold" in text
    assert "Test CPU 9000, 2 threads, batch 1" in text and "![Paper top-1 against latency measured here](p.png)" in text
    assert "6 models in 1 family." in text and "| [efficientvit](#efficientvit) |" in text
    no_bench = render_cards(stats, None, "b.json", plot=None)
    assert "no benchmark results file (`b.json`) yet" in no_bench and "![" not in no_bench
    assert "| — | — | ONNX, CoreML |" in no_bench


def test_cards_command_measures_only_what_changed(tmp_path, capsys, monkeypatch) -> None:
    # two models keep the command's fingerprint checks cheap however many families are registered
    names = ["efficientvit_m0", "efficientvit_m1"]
    monkeypatch.setattr(cards.zoo, "list_models", lambda pattern=None: names)
    stats = {"efficientvit_m1": STATS["efficientvit_m1"]}
    stats["removed_model"] = {"params": 1, "macs": 1, "input_size": [3, 224, 224]}
    stats_path, out = tmp_path / "stats.json", tmp_path / "CARDS.md"
    stats_path.write_text(cards._dump_stats(stats))
    argv = ["--out", str(out), "--stats", str(stats_path), "--bench", str(tmp_path / "none.json")]
    argv += ["--plot", str(tmp_path / "none.png")]
    assert cards.main([*argv, "--check"]) == 1
    assert "out of date for efficientvit_m0, removed_model" in capsys.readouterr().err
    assert cards.main(argv) == 0
    assert "measured 1: efficientvit_m0" in capsys.readouterr().out
    new = load_json(stats_path)
    assert set(new) == set(names)
    assert new["efficientvit_m0"]["params"] == 2_349_436 and 78e6 < new["efficientvit_m0"]["macs"] < 80e6
    assert cards.main([*argv, "--check"]) == 0
    capsys.readouterr()
    assert cards.main([*argv, "--remeasure", "*m1"]) == 0  # e.g. after a change in how MACs are counted
    assert "measured 1: efficientvit_m1" in capsys.readouterr().out
    assert cards.main([*argv, "--check"]) == 0
    out.write_text(out.read_text().replace("63.2", "63.3"))
    assert cards.main([*argv, "--check"]) == 1
    assert "differs from what zoo cards renders" in capsys.readouterr().err


def test_top1_names_its_dataset_when_not_imagenet() -> None:
    cifar = zoo.get_family("simplenet_cifar_5m").reported["simplenet_cifar_5m"]
    assert cards._top1_text(cifar) == "95.51 (CIFAR-10)"
    assert cards._top1_text(zoo.get_family("efficientvit_m0").reported["efficientvit_m0"]) == "63.2"
    assert cards._top1_text(None) == "—"
