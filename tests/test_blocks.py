"""Block-level tests over shapes, strides and groups: every train-time form against its deploy form."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import rel_err
from torch import nn

from blocks import (
    BNLinear,
    CascadedGroupAttention,
    ConvBN,
    LinearBN,
    LocalWindowAttention,
    Residual,
    make_bn_realistic,
    remaining_norms,
    reparameterize_model,
    set_bn_frozen,
)

CONV_CASES = [  # in, out, kernel, stride, groups, bias, act
    (8, 16, 1, 1, 1, False, None),
    (8, 16, 3, 2, 1, True, nn.ReLU),
    (16, 16, 3, 1, 16, False, None),
    (16, 32, 5, 1, 4, False, nn.Hardswish),
    (12, 12, 7, 2, 12, True, nn.GELU),
]


def _randomize(module: nn.Module, input_size: tuple[int, ...]) -> nn.Module:
    return make_bn_realistic(module, input_size, batches=2, batch_size=4)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-k{c[2]}s{c[3]}g{c[4]}")
def test_convbn_modes(case) -> None:
    cin, cout, k, s, g, bias, act = case
    m = _randomize(ConvBN(cin, cout, k, s, groups=g, bias=bias, act_layer=act), (cin, 9, 9))
    assert m.mode == "eval"
    x = torch.randn(3, cin, 9, 9, requires_grad=True)
    ref = m(x)
    ref.square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    ref_xgrad = x.grad.clone()

    tuned = copy.deepcopy(m)
    tuned.zero_grad()
    tuned.freeze_bn(tune=True)
    tuned.train()  # model.train() must not unfreeze the BN
    assert tuned.mode == "tune"
    x.grad = None
    out = tuned(x)
    assert rel_err(out, ref) < 1e-5
    out.square().sum().backward()
    for n, p in tuned.named_parameters():
        assert rel_err(p.grad, ref_grads[n]) < 1e-4, n
    assert rel_err(x.grad, ref_xgrad) < 1e-4
    stats = tuned.bn.running_mean.clone()
    tuned(x)
    assert torch.equal(tuned.bn.running_mean, stats), "tune mode must not update BN statistics"

    dep = copy.deepcopy(m)
    dep.reparameterize()
    assert dep.mode == "deploy" and isinstance(dep.bn, nn.Identity)
    with torch.no_grad():
        assert rel_err(dep(x), ref) < 1e-5
    w = dep.conv.weight.clone()
    dep.reparameterize()  # idempotent
    assert torch.equal(dep.conv.weight, w)

    built = ConvBN(cin, cout, k, s, groups=g, bias=bias, act_layer=act, deploy=True)
    assert set(built.state_dict()) == set(dep.state_dict())


def test_convbn_train_mode_uses_batch_stats() -> None:
    m = ConvBN(4, 8, 3).train()
    assert m.mode == "train"
    x = torch.randn(4, 4, 6, 6) * 3 + 2
    y = m(x)
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # batch-normalised
    assert m.bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("tokens", [False, True])
def test_linearbn_folds(tokens: bool) -> None:
    m = LinearBN(16, 24)
    shape = (5, 16) if not tokens else (3, 7, 16)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(*shape) * 2 + 1)
    m.eval()
    nn.init.uniform_(m.bn.weight, 0.5, 1.5)
    x = torch.randn(*shape)
    ref = m(x)
    m.reparameterize()
    assert isinstance(m.bn, nn.Identity)
    assert rel_err(m(x), ref) < 1e-5


def test_bnlinear_folds() -> None:
    m = _randomize(BNLinear(32, 10, drop=0.2), (32,))
    x = torch.randn(4, 32)
    ref = m(x)
    m.reparameterize()
    assert rel_err(m(x), ref) < 1e-5
    assert isinstance(m.drop, nn.Identity)


@pytest.mark.parametrize("groups", [1, 8])
def test_residual_folds_identity_into_conv(groups: int) -> None:
    res = _randomize(Residual(ConvBN(8, 8, 3, groups=groups)), (8, 6, 6))
    x = torch.randn(2, 8, 6, 6)
    ref = res(x)
    deployed = reparameterize_model(res)
    assert deployed.identity_folded and isinstance(deployed.m, nn.Conv2d)
    assert rel_err(deployed(x), ref) < 1e-5


def test_residual_keeps_add_for_other_branches() -> None:
    res = _randomize(Residual(ConvBN(8, 8, 3, act_layer=nn.ReLU), drop_path=0.2), (8, 6, 6))
    x = torch.randn(2, 8, 6, 6)
    ref = res(x)
    deployed = reparameterize_model(res)
    assert not deployed.identity_folded and deployed.deployed
    assert rel_err(deployed(x), ref) < 1e-5


@pytest.mark.parametrize("heads,kernels,res", [(4, (5, 5, 5, 5), 7), (2, (7, 5), 4), (3, (7, 5, 3), 5)])
def test_cascaded_group_attention_deploy(heads: int, kernels: tuple[int, ...], res: int) -> None:
    dim = 16 * heads  # value channels per head (2 * 8) equal the per-head input split
    attn = CascadedGroupAttention(dim, 8, heads, attn_ratio=2, resolution=res, kernels=kernels)
    nn.init.normal_(attn.attention_biases, std=0.5)
    _randomize(attn, (dim, res, res))
    x = torch.randn(2, dim, res, res)
    ref = attn(x)
    deployed = reparameterize_model(attn)
    assert "attention_biases" not in dict(deployed.named_parameters())
    assert deployed.attention_bias.shape == (heads, res * res, res * res)
    assert rel_err(deployed(x), ref) < 1e-5
    assert not remaining_norms(deployed)


def test_cascaded_group_attention_cascades() -> None:
    """Head i's input includes head i-1's output: changing the first split changes every head's output."""
    attn = CascadedGroupAttention(32, 8, 2, attn_ratio=2, resolution=4, kernels=(3, 3)).eval()
    with pytest.raises(ValueError, match="cascade"):
        CascadedGroupAttention(48, 16, 4, attn_ratio=2, resolution=4)
    _randomize(attn, (32, 4, 4))
    feats = []
    attn.qkvs[1].register_forward_hook(lambda m, i, o: feats.append(i[0]))
    x = torch.randn(1, 32, 4, 4)
    attn(x)
    x2 = x.clone()
    x2[:, :16] += 1.0
    attn(x2)
    assert not torch.allclose(feats[0], feats[1])


@pytest.mark.parametrize("res,window", [(14, 7), (9, 7), (8, 4), (5, 7)])
def test_local_window_attention_matches_per_window(res: int, window: int) -> None:
    lwa = LocalWindowAttention(32, 8, 2, attn_ratio=2, resolution=res, window_resolution=window, kernels=(3, 3))
    nn.init.normal_(lwa.attn.attention_biases, std=0.5)
    _randomize(lwa, (32, res, res))
    x = torch.randn(2, 32, res, res)
    out = lwa(x)
    if res <= window:
        assert torch.allclose(out, lwa.attn(x))
        return
    pad = (window - res % window) % window
    xp = nn.functional.pad(x, (0, pad, 0, pad))
    expect = torch.zeros_like(xp)
    for i in range(0, res + pad, window):
        for j in range(0, res + pad, window):
            expect[:, :, i : i + window, j : j + window] = lwa.attn(xp[:, :, i : i + window, j : j + window])
    assert rel_err(out, expect[:, :, :res, :res]) < 1e-5


def test_set_bn_frozen_keeps_statistics() -> None:
    model = nn.Sequential(ConvBN(3, 8, 3, act_layer=nn.ReLU), nn.BatchNorm2d(8))
    _randomize(model, (3, 8, 8))
    n = set_bn_frozen(model, tune=True)
    model.train()
    set_bn_frozen(model, tune=True)
    assert n == 1 and model[0].mode == "tune" and not model[1].training
    before = [b.clone() for b in model.buffers()]
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    assert model[0].conv.weight.grad is not None and model[0].bn.weight.grad is not None


def test_reparameterize_model_copies_by_default() -> None:
    model = nn.Sequential(ConvBN(3, 8, 3), nn.Dropout(0.5))
    deployed = reparameterize_model(model)
    assert model[0].mode != "deploy" and deployed[0].mode == "deploy"
    assert isinstance(deployed[1], nn.Identity)


class _Lambda(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def set_step(self, step: int) -> None:
        self.step.fill_(step)


def test_set_step_reaches_nested_and_wrapped_modules() -> None:
    from blocks import set_step

    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(_Lambda(), _Lambda()))

    class Wrapper(nn.Module):  # stands in for DistributedDataParallel's .module
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.module = m

    seen = []

    class Extra:
        def set_step(self, step: int) -> None:
            seen.append(step)

    assert set_step(Wrapper(model), 41, extra=[Extra()]) == 3
    assert model[1][0].step.item() == 41 and model[1][1].step.item() == 41 and seen == [41]
