"""Dense-or-sparse decisions made on this machine (``blocks/sparse_plan.py``): the rule on injected timings, the
per-machine cache (reuse across processes, corrupt / foreign entries rebuilt, racing writers, unwritable folder), and
exports untouched by timing. No test times anything: every timing is injected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

import blocks
from blocks import SparseConv2d, SparseLinear, native, prune_magnitude, sparse_plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def plans(monkeypatch, tmp_path):
    """An empty plan cache under ``tmp_path`` and a recorder of how often timings were taken (injected ones)."""
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    monkeypatch.delenv("ZOO_SPARSE_PLAN", raising=False)
    sparse_plan.reset()
    calls: list[int] = []
    timings = {"dense": [2.0] * 5, "sparse": [1.0] * 5}  # sparse 2x faster unless a test says otherwise

    def fake_measure(dense, sparse):
        calls.append(1)
        return list(timings["dense"]), list(timings["sparse"])

    monkeypatch.setattr(sparse_plan, "measure", fake_measure)
    yield calls, timings
    sparse_plan.reset()


def _layer(cin: int = 64, cout: int = 48) -> SparseConv2d:
    conv = SparseConv2d(cin, cout)
    prune_magnitude(conv, 0.9)
    conv.reparameterize()
    return conv


# ---------------------------------------------------------------------------------------------- the decision rule


@pytest.mark.parametrize(
    ("dense", "sparse", "expected"),
    [
        ([2.0, 2.1, 1.9, 2.0, 2.0], [1.0, 1.1, 0.9, 1.0, 1.0], True),  # a clear win
        ([1.0, 1.0, 1.0, 1.0, 1.0], [1.01, 0.99, 1.0, 1.02, 0.98], False),  # a tie is noise: dense
        ([1.0, 1.0, 1.0, 1.0, 1.0], [0.99, 0.985, 0.99, 0.98, 0.99], False),  # 1-2% better: within the margin
        ([1.0, 1.0, 1.0, 1.0, 1.0], [1.2, 1.3, 1.25, 1.2, 1.4], False),  # sparse slower: dense
        ([1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 2.0, 2.0, 2.0, 2.0], False),  # one lucky sample, lost the other rounds
        ([9.0, 1.0, 1.0, 9.0, 1.0], [4.0, 0.5, 0.5, 4.0, 0.5], True),  # load spikes hit both alike
        ([1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 3.0, 0.5, 0.5], True),  # one preempted sparse sample: still a win
    ],
)
def test_decision_rule_on_measured_numbers(dense: list, sparse: list, expected: bool) -> None:
    assert sparse_plan.choose_sparse(dense, sparse) is expected


def test_never_slower_than_dense_by_more_than_noise() -> None:
    """Over a sweep of true speed-ups with noisy paired samples, no chosen sparse layer is slower than the margin."""
    gen = torch.Generator().manual_seed(0)
    for true_ratio in [0.5, 0.8, 0.9, 0.95, 0.99, 1.0, 1.01, 1.05, 1.2, 2.0]:  # dense / sparse
        for _ in range(50):
            noise = 1 + 0.01 * torch.randn(2, 7, generator=gen)  # 1% timing noise
            dense = (1.0 * noise[0]).tolist()
            sparse = (1.0 / true_ratio * noise[1]).tolist()
            if sparse_plan.choose_sparse(dense, sparse):
                assert true_ratio > 1.0, f"sparse chosen at a true ratio of {true_ratio}"
        if true_ratio >= 1.2:  # and a clear win is taken
            assert sparse_plan.choose_sparse([1.0] * 7, [1.0 / true_ratio] * 7)


def test_decision_rule_refuses_bad_samples() -> None:
    with pytest.raises(ValueError, match="paired samples"):
        sparse_plan.choose_sparse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        sparse_plan.choose_sparse([1.0], [0.0])


def test_losing_layer_runs_dense(plans, monkeypatch) -> None:
    calls, timings = plans
    timings["sparse"] = [3.0] * 5  # sparse 1.5x slower on this "machine"
    conv = _layer()
    spmm = []
    monkeypatch.setattr(native, "native_spmm", lambda *a, **k: spmm.append(1))
    monkeypatch.setattr(native, "product", lambda: lambda *a: spmm.append(1))
    x = torch.randn(1, 64, 10, 10)
    with torch.no_grad():
        assert rel_err(conv(x), F.conv2d(x, conv.weight, conv.bias)) <= 1e-6
        conv(x)
    assert calls == [1] and not spmm  # measured once, then dense every time
    assert blocks.sparse.kernel_decisions(conv)[""]["kernel"] == "dense"


def test_winning_layer_runs_sparse_and_manifest_reports_it(plans) -> None:
    calls, _ = plans
    conv, lin = _layer(), SparseLinear(64, 10)
    prune_magnitude(lin, 0.8)
    lin.reparameterize()
    model = torch.nn.ModuleDict({"pw": conv, "fc": lin})
    x, rows = torch.randn(2, 64, 9, 9), torch.randn(3, 64)
    with torch.no_grad():
        assert rel_err(conv(x), F.conv2d(x, conv.weight, conv.bias)) <= 1e-5
        assert rel_err(lin(rows), F.linear(rows, lin.weight, lin.bias)) <= 1e-5
    report = blocks.sparse.kernel_decisions(model)
    assert report["pw"]["kernel"] == "sparse" and report["pw"]["ratio"] == 2.0 and report["fc"]["kernel"] == "sparse"
    assert "input=2x9x9" in report["pw"]["signature"] and "rows=3" in report["fc"]["signature"]
    assert len(calls) == 2
    from export.manifest import sparsity

    block = sparsity(model)["kernel"]
    assert block["layers"] == report and "plans:" in block["status"] and block["cpu"] == native.cpu_info()["model"]
    status = native.kernel_status()
    assert "2 layer shapes measured" in status and "conv1x1 48x64" in status


# ---------------------------------------------------------------------------------------------- the cache


def _signature_entries(path: Path) -> dict:
    return json.loads(path.read_text())["plans"]


@pytest.mark.parametrize("damage", ["truncated", "not json", "other format", "other cpu", "bad entry"])
def test_corrupt_or_foreign_cache_is_ignored_and_rebuilt(plans, damage: str) -> None:
    calls, _ = plans
    conv = _layer()
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        conv(x)
    path = sparse_plan.cache_path()
    good = json.loads(path.read_text())
    sig = next(iter(good["plans"]))
    if damage == "truncated":
        path.write_text(path.read_text()[:40])
    elif damage == "not json":
        path.write_bytes(b"\x00\xffgarbage")
    elif damage == "other format":
        path.write_text(json.dumps({**good, "version": 99}))
    elif damage == "other cpu":  # e.g. a cache folder copied from another machine
        path.write_text(json.dumps({**good, "machine": {**good["machine"], "cpu": "AMD EPYC 7B13"}}))
    else:
        path.write_text(json.dumps({**good, "plans": {sig: {"sparse": "maybe"}}}))
    sparse_plan.reset()
    conv._csr = None  # the layer forgets too: a new process
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        conv(x)
    assert len(calls) == 2, "the damaged plan must be measured again"
    if damage != "bad entry":
        assert any("ignored" in str(w.message) for w in caught)
    rebuilt = json.loads(path.read_text())
    assert rebuilt["machine"] == sparse_plan.machine_key() and rebuilt["plans"][sig]["sparse"] is True


def test_cache_key_covers_threads_and_kernel(plans, monkeypatch) -> None:
    before = torch.get_num_threads()
    key1 = sparse_plan.cache_path()
    torch.set_num_threads(1 if before != 1 else 2)
    try:
        assert sparse_plan.cache_path() != key1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(native, "kernel_build", lambda: "spmm-0000000000000000")
    assert sparse_plan.cache_path() != key1


def test_unwritable_cache_still_decides(plans, monkeypatch, tmp_path) -> None:
    calls, _ = plans
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("ZOO_CACHE", str(blocked))  # <file>/sparse-plans cannot be created
    sparse_plan.reset()
    conv = _layer()
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        out = conv(x)
        conv(x)
    assert rel_err(out, F.conv2d(x, conv.weight, conv.bias)) <= 1e-5
    assert calls == [1] and "not writable" in sparse_plan.cache_status()
    assert "not writable" in native.kernel_status()


_RACER = """
import sys, torch
from blocks import sparse_plan
def no_timing(*a): raise SystemExit("measured again what the cache holds")
sparse_plan.measure = no_timing
torch.set_num_threads({threads})
d = sparse_plan.decide({known!r}, None, None)  # written by the parent process: reused, not measured
assert (d.source, d.sparse, d.ratio) == ("cache", True, 2.0), d
sparse_plan.measure = lambda d, s: ([2.0] * 3, [1.0] * 3)
for i in range(40):
    sparse_plan.decide(f"racer{{sys.argv[1]}} layer{{i}}", None, None)
"""


def test_second_processes_reuse_the_cache_and_race_safely(plans, tmp_path) -> None:
    """Two fresh interpreters reuse the parent's plan, then add 40 each at once: all 81 kept, the file whole."""
    calls, _ = plans
    with torch.no_grad():
        _layer()(torch.randn(1, 64, 8, 8))
    path = sparse_plan.cache_path()
    assert calls == [1] and path.parent == tmp_path / "sparse-plans"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ZOO_CACHE": str(tmp_path)}
    code = _RACER.format(threads=torch.get_num_threads(), known=next(iter(_signature_entries(path))))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stderr=subprocess.PIPE) for i in (0, 1)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    entries = _signature_entries(path)
    assert len(entries) == 81 and all(v["sparse"] for v in entries.values())
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


# ---------------------------------------------------------------------------------------------- forced plans, export


def test_forced_plans_and_bad_policy(plans, monkeypatch) -> None:
    calls, _ = plans
    conv = _layer()
    x = torch.randn(1, 64, 8, 8)
    monkeypatch.setenv("ZOO_SPARSE_PLAN", "dense")
    with torch.no_grad():
        conv(x)
    assert blocks.sparse.kernel_decisions(conv)[""] == {"kernel": "dense", "signature": conv._last_plan[0],
                                                        "source": "forced"}  # fmt: skip
    monkeypatch.setenv("ZOO_SPARSE_PLAN", "fastest")
    conv._csr = None
    with pytest.raises(ValueError, match="use measure, dense or sparse"), torch.no_grad():
        conv(x)
    assert not calls


def test_export_is_not_affected_by_timing(plans, monkeypatch) -> None:
    """Tracing never times anything and the traced graph is the dense one, whatever the layer decided."""
    calls, _ = plans
    conv = _layer()
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        conv(x)  # decided: sparse
    assert conv._last_plan[1].sparse and calls == [1]
    monkeypatch.setattr(sparse_plan, "measure", lambda *a: pytest.fail("timing while exporting"))
    conv._csr = None  # even a layer that would decide afresh
    graph = torch.export.export(conv, (x,)).graph_module.code
    assert "conv2d" in graph and "spmm" not in graph
    traced = torch.jit.trace(conv, x)
    assert "aten::_convolution" in str(traced.graph)
