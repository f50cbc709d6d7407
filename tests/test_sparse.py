"""Sparse layers and pruning: masks through training and checkpoints, patterns, schedules, deploy kernel parity."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err
from torch import nn

import blocks
from blocks import ConvBN, SparseConv2d, SparseLinear, make_pruner, prune_magnitude, sparsity_report
from blocks.sparse import compute_mask, expected_pruned, model_sparsity, zhu_gupta_sparsity


class _Tiny(nn.Module):
    """Two sparse 1x1 ConvBNs around a dense depthwise conv, and a sparse classifier."""

    def __init__(self, last_pattern: str | None = None) -> None:
        super().__init__()
        self.pw1 = ConvBN(8, 32, conv_layer=SparseConv2d, act_layer=nn.ReLU)
        self.dw = ConvBN(32, 32, 3, groups=32, act_layer=nn.ReLU)
        self.pw2 = ConvBN(32, 16, conv_layer=SparseConv2d, act_layer=nn.ReLU)
        self.pw2.conv.pattern = last_pattern
        self.fc = SparseLinear(16, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pw2(self.dw(self.pw1(x))).mean((2, 3)))


def _pruned_weights_are_zero(model: nn.Module) -> bool:
    return all(bool((layer.weight[~layer.mask] == 0).all()) for _, layer in blocks.sparse.sparse_layers(model))


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: layer.mask.clone() for n, layer in blocks.sparse.sparse_layers(model)}


# ---------------------------------------------------------------------------------------------- patterns


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 0.9])
def test_unstructured_mask_prunes_exactly_the_smallest(sparsity: float) -> None:
    w = torch.randn(24, 40)
    mask = compute_mask(w, sparsity)
    assert int((~mask).sum()) == round(sparsity * w.numel())
    if 0 < sparsity:
        assert w[mask].abs().min() >= w[~mask].abs().max()


@pytest.mark.parametrize("k", [2, 4])
def test_block_mask_prunes_whole_output_channel_blocks(k: int) -> None:
    w = torch.randn(16, 12)
    mask = compute_mask(w, 0.75, f"block{k}")
    blocks_ = mask.view(16 // k, k, 12)  # out, in -> out/k, k, in
    assert (blocks_.all(1) | ~blocks_.any(1)).all(), "a block is partly pruned"
    assert int((~mask).sum()) == round(0.75 * w.numel() / k) * k
    scores = w.abs().view(16 // k, k, 12).sum(1)
    kept = blocks_.all(1)
    assert scores[kept].min() >= scores[~kept].max()


@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_2_4_mask_keeps_two_of_every_four_input_channels(sparsity: float) -> None:
    w = torch.randn(8, 16)
    mask = compute_mask(w, sparsity, "2:4")
    zeros_per_group = (~mask).view(8, 4, 4).sum(-1)  # out, in -> out, in/4, 4
    assert zeros_per_group.max() <= 2
    assert int((~mask).sum()) == round(sparsity * w.numel())
    if sparsity == 0.5:
        assert (zeros_per_group == 2).all()


def test_mask_errors_are_clear() -> None:
    w = torch.randn(6, 10)
    with pytest.raises(ValueError, match="unknown sparsity pattern"):
        compute_mask(w, 0.5, "block3")
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        compute_mask(w, 1.0)
    with pytest.raises(ValueError, match="at most 50%"):
        compute_mask(torch.randn(4, 8), 0.6, "2:4")
    with pytest.raises(ValueError, match="divisible by 4"):
        compute_mask(w, 0.5, "block4")
    with pytest.raises(ValueError, match="divisible by 4"):
        compute_mask(w, 0.5, "2:4")
    with pytest.raises(ValueError, match="1x1"):
        SparseConv2d(4, 4, 3)
    with pytest.raises(ValueError, match="no SparseConv2d"):
        prune_magnitude(nn.Sequential(nn.Conv2d(3, 3, 1)), 0.5)


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    ],
    ids=["sgd-momentum-wd", "adamw"],
)
@pytest.mark.parametrize("tune", [False, True], ids=["bn-train", "bn-tune"])
def test_mask_survives_optimizer_steps(make_opt, tune: bool) -> None:
    model = _Tiny()
    prune_magnitude(model, 0.75)
    masks = _masks(model)
    if tune:
        blocks.set_bn_frozen(model, tune=True)
    opt = make_opt(model.parameters())
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(4, 8, 6, 6)).square().mean().backward()
        for _, layer in blocks.sparse.sparse_layers(model):
            assert (layer.weight.grad[~layer.mask] == 0).all(), "a pruned weight received gradient"
        opt.step()
        assert _pruned_weights_are_zero(model)
    assert all(torch.equal(masks[n], m) for n, m in _masks(model).items())
    assert any((layer.weight[layer.mask] != 0).all() for _, layer in blocks.sparse.sparse_layers(model))


def test_zeros_stay_zero_when_masks_grow_under_momentum() -> None:
    model = _Tiny()
    pruner = make_pruner(model, 0.8, start_step=0, end_step=6, frequency=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(8):
        blocks.set_step(model, step, extra=[pruner])
        assert _pruned_weights_are_zero(model), f"step {step}"
        opt.zero_grad()
        model(torch.randn(2, 8, 5, 5)).square().mean().backward()
        opt.step()
        sd = model.state_dict()  # what a checkpoint taken now holds
        assert all((sd[f"{n}.weight"][~sd[f"{n}.mask"]] == 0).all() for n in _masks(model))


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_checkpoint_round_trip_keeps_masks(tmp_path, fmt: str) -> None:
    from weights.io import load_checkpoint, save_safetensors

    model = _Tiny(last_pattern="block4")
    prune_magnitude(model, 0.6)
    path = tmp_path / f"m.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_safetensors(model.state_dict(), path)
    else:
        torch.save(model.state_dict(), path)
    other = _Tiny(last_pattern="block4")
    prune_magnitude(other, 0.3)
    other.load_state_dict(load_checkpoint(path))
    assert all(torch.equal(_masks(model)[n], m) for n, m in _masks(other).items())
    x = torch.randn(2, 8, 5, 5)
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(model(x), other(x))
    assert sparsity_report(other) == sparsity_report(model)


def test_dense_checkpoint_loads_dense() -> None:
    dense_sd = {k: v for k, v in _Tiny().state_dict().items() if not k.endswith(".mask")}
    model = _Tiny()
    prune_magnitude(model, 0.5)
    model.load_state_dict(dense_sd)
    assert model_sparsity(model) == 0.0


# ---------------------------------------------------------------------------------------------- schedule


def test_zhu_gupta_schedule_is_monotone_and_exact() -> None:
    start, end, freq = 10, 95, 10
    values = [zhu_gupta_sparsity(t, 0.9, start, end, freq, initial=0.1) for t in range(0, 120)]
    assert values[:start] == [0.0] * start
    assert values[start] == 0.1
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[end] == 0.9 and values[-1] == 0.9
    assert values[end - 1] < 0.9
    assert len(set(values[start : start + freq])) == 1, "sparsity changes between mask updates"
    t = 40
    assert values[t] == pytest.approx(0.9 + (0.1 - 0.9) * (1 - (t - start) / (end - start)) ** 3)


def test_pruner_reaches_exact_target_with_monotone_masks() -> None:
    model = _Tiny(last_pattern="block4")
    pruner = make_pruner(model, 0.85, start_step=3, end_step=40, frequency=7)
    prev = _masks(model)
    seen = []
    for step in range(45):
        pruner.set_step(step)
        now = _masks(model)
        assert all(not (now[n] & ~prev[n]).any() for n in now), f"a pruned weight came back at step {step}"
        prev = now
        seen.append(model_sparsity(model))
    assert all(b >= a for a, b in zip(seen, seen[1:]))
    assert seen[2] == 0.0 and seen[3] == 0.0
    for name, layer in blocks.sparse.sparse_layers(model):
        pattern = layer.pattern or "unstructured"
        assert int((~layer.mask).sum()) == expected_pruned(layer, 0.85, pattern), name
    blocks_ = model.pw2.conv.mask.view(4, 4, 32)  # out, in -> out/4, 4, in
    assert (blocks_.all(1) | ~blocks_.any(1)).all()


def test_pruner_state_dict_round_trip_resumes_identically() -> None:
    def run(steps, model, pruner, opt):
        for step in steps:
            blocks.set_step(model, step, extra=[pruner])
            opt.zero_grad()
            torch.manual_seed(step)
            model(torch.randn(2, 8, 5, 5)).square().mean().backward()
            opt.step()

    torch.manual_seed(1)
    ref = _Tiny()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    ref_pruner = make_pruner(ref, 0.7, 2, 12, frequency=3, initial_sparsity=0.2)
    run(range(6), ref, ref_pruner, ref_opt)
    ckpt = copy.deepcopy({"model": ref.state_dict(), "opt": ref_opt.state_dict(), "pruner": ref_pruner.state_dict()})
    run(range(6, 15), ref, ref_pruner, ref_opt)

    resumed = _Tiny()
    resumed.load_state_dict(ckpt["model"])
    opt = torch.optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
    opt.load_state_dict(ckpt["opt"])
    pruner = make_pruner(resumed, 0.7, 2, 12, frequency=3, initial_sparsity=0.2)
    pruner.load_state_dict(ckpt["pruner"])
    assert pruner.state_dict() == ckpt["pruner"]
    run(range(6, 15), resumed, pruner, opt)
    assert all(torch.equal(_masks(ref)[n], m) for n, m in _masks(resumed).items())
    for (n, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), n
    with pytest.raises(ValueError, match="another schedule"):
        make_pruner(resumed, 0.8, 2, 12, frequency=3).load_state_dict(ckpt["pruner"])


def test_pruner_argument_errors() -> None:
    model = _Tiny()
    with pytest.raises(ValueError, match="initial_sparsity <= final_sparsity"):
        make_pruner(model, 0.5, 0, 10, initial_sparsity=0.6)
    with pytest.raises(ValueError, match="start_step <= end_step"):
        make_pruner(model, 0.5, 10, 5)
    with pytest.raises(ValueError, match="frequency"):
        make_pruner(model, 0.5, 0, 10, frequency=0)
    with pytest.raises(ValueError, match="unknown sparsity pattern"):
        make_pruner(model, 0.5, 0, 10, pattern="1x4")


def test_one_shot_pruning_patterns() -> None:
    model = _Tiny(last_pattern="block4")
    report = prune_magnitude(model, 0.5)
    assert set(report) == {"pw1.conv", "pw2.conv", "fc"}
    assert all(v == 0.5 for v in report.values())
    kept = model.pw2.conv.mask.view(4, 4, 32)  # the layer's own block4 pattern is kept under "unstructured"
    assert (kept.all(1) | ~kept.any(1)).all()
    prune_magnitude(model, 0.5, "2:4")  # an explicit pattern overrides it
    for _, layer in blocks.sparse.sparse_layers(model):
        zeros = (~layer.mask).view(layer.mask.shape[0], -1, 4).sum(-1)  # out, in -> out, in/4, 4
        assert (zeros == 2).all()


# ---------------------------------------------------------------------------------------------- deploy


@pytest.mark.parametrize("shape", [(64, 96, 14, 0.9), (32, 16, 7, 0.5), (24, 40, 9, 0.0)], ids=str)
@pytest.mark.parametrize("batch", [1, 3])
def test_sparse_and_dense_deploy_paths_agree(shape, batch: int) -> None:
    cin, cout, hw, sparsity = shape
    model = nn.Sequential(ConvBN(cin, cout, conv_layer=SparseConv2d, act_layer=nn.ReLU))
    if sparsity:
        prune_magnitude(model, sparsity)
    blocks.make_bn_realistic(model, (cin, hw, hw))
    deployed = blocks.reparameterize_model(model)
    conv = deployed[0].conv
    assert isinstance(conv, SparseConv2d) and conv.deployed
    assert torch.equal(conv.mask, model[0].conv.mask)
    assert (conv.weight[~conv.mask] == 0).all(), "BN folding revived pruned weights"
    x = torch.randn(batch, cin, hw, hw)
    with torch.no_grad():
        dense = F.conv2d(x, conv.weight, conv.bias)
        csr, bias, nnz = conv._csr_weight()
        assert nnz == int(conv.mask.sum())
        sparse = conv._sparse_forward(x, csr, bias)
        assert rel_err(sparse, dense) <= 1e-5
        assert rel_err(conv(x), dense) <= 1e-5
        assert rel_err(deployed(x), model(x)) <= 1e-5


def test_kernel_choice_is_per_layer(monkeypatch, tmp_path) -> None:
    """Each layer runs what its own decision says (decisions injected: timing is blocks/sparse_plan's, tested there)."""
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    seen = []

    def decide(signature, dense, sparse):
        seen.append(signature)
        nnz = int(signature.split("nnz=")[1].split()[0])
        return blocks.sparse_plan.Decision(nnz < 256 * 256 // 2, 2.0, 1.0, 2.0, "measured")

    monkeypatch.setattr(blocks.sparse_plan, "decide", decide)
    sparse = SparseConv2d(256, 256)
    prune_magnitude(sparse, 0.95)
    dense = SparseConv2d(256, 256)
    for layer in (sparse, dense):
        layer.reparameterize()
    x = torch.randn(1, 256, 28, 28)
    calls = []
    for layer in (sparse, dense):
        layer._sparse_forward = lambda x, *a, _f=layer._sparse_forward: calls.append(1) or _f(x, *a)
    with torch.no_grad():
        sparse(x)
        assert calls == [1], "the 95% sparse layer decided sparse"
        dense(x)
        assert calls == [1], "the dense layer decided dense"
        sparse(x)
        assert len(seen) == 2 and calls == [1, 1], "a layer remembers its decision"
    sparse(x.requires_grad_())  # autograd needs the dense op
    assert calls == [1, 1] and len(seen) == 2


def test_sparse_linear_deploy_parity() -> None:
    layer = SparseLinear(320, 200)
    prune_magnitude(layer, 0.9)
    layer.reparameterize()
    x = torch.randn(5, 320)
    with torch.no_grad():
        csr, bias, _ = layer._csr_weight()
        sparse = torch.addmm(bias, csr, x.t()).t()
        dense = F.linear(x, layer.weight, layer.bias)
        assert rel_err(sparse, dense) <= 1e-5
        assert rel_err(layer(x), dense) <= 1e-5


def test_export_sees_dense_weights() -> None:
    conv = SparseConv2d(64, 64)
    prune_magnitude(conv, 0.9)
    conv.reparameterize()
    x = torch.randn(1, 64, 14, 14)
    with torch.no_grad():
        ep = torch.export.export(conv, (x,))
        traced = torch.jit.trace(conv, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("conv" in t for t in targets) and not any("addmm" in t or "sparse" in t for t in targets), targets
    assert "aten::_convolution" in str(traced.graph) and "addmm" not in str(traced.graph)
    with torch.no_grad():
        assert rel_err(ep.module()(x), conv(x)) <= 1e-5


# ---------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different initial weights and masks on each rank
        model = _Tiny()
        prune_magnitude(model, 0.5)
        ddp = DDP(model)  # broadcasts rank 0's parameters and buffers (masks included)
        pruner = make_pruner(ddp, 0.8, start_step=0, end_step=4, frequency=2)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        for step in range(6):
            blocks.set_step(ddp, step, extra=[pruner])
            opt.zero_grad()
            ddp(torch.randn(2, 8, 5, 5)).square().mean().backward()  # different data on each rank
            opt.step()
        blocks.set_step(ddp, 6, extra=[pruner])
        torch.save({k: v for k, v in model.state_dict().items()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_masks_identical_on_all_ranks(tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    masks = [k for k in r0 if k.endswith(".mask")]
    assert len(masks) == 3
    for k in r0:
        if "running_" not in k and "num_batches" not in k:  # BN statistics are per rank (not synchronized)
            assert torch.equal(r0[k], r1[k]), k
    for k in masks:
        assert abs((~r0[k]).float().mean().item() - 0.8) < 0.01, k
        assert (r0[k.replace("mask", "weight")][~r0[k]] == 0).all()


def test_random_masks_need_dense_layers() -> None:
    model = _Tiny(last_pattern="block4")
    report = blocks.sparse.prune_random(model, 0.75)
    assert all(v == 0.75 for v in report.values())
    kept = model.pw2.conv.mask.view(4, 4, 32)  # out, in -> out/4, 4, in
    assert (kept.all(1) | ~kept.any(1)).all()
    with pytest.raises(ValueError, match="needs dense layers"):
        blocks.sparse.prune_random(model, 0.5)
    model.load_state_dict({k: v for k, v in _Tiny().state_dict().items() if not k.endswith(".mask")})
    blocks.sparse.prune_random(model, 0.5)
    for _, layer in blocks.sparse.sparse_layers(model):
        assert (layer.weight[layer.mask] != 0).all()  # kept weights are the dense ones
