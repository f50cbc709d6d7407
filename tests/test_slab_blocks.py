"""SLAB's blocks: the PRepBN schedule, RepBN folding, simplified linear attention against a naive reference."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import rel_err
from torch import nn

import blocks
from blocks import (
    PRepBN,
    RepBN,
    SimplifiedLinearAttention,
    SlabBlock,
    fold_affine_into_conv_input,
    fold_affine_into_conv_output,
    fold_affine_into_linear,
    make_repbn_norm,
    norm_affine,
    prepbn_lambda,
)


def _realistic(norm: nn.Module, dim: int, seed: int = 0) -> nn.Module:
    """Random BN affine and running statistics, alpha != 1, LN affine != identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in norm.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.copy_(torch.rand(dim, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(dim, generator=gen))
                m.running_mean.copy_(torch.randn(dim, generator=gen))
                m.running_var.copy_(torch.rand(dim, generator=gen) + 0.2)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(dim, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(dim, generator=gen))
            elif isinstance(m, RepBN):
                m.alpha.fill_(0.7)
    return norm


# ---------------------------------------------------------------- the PRepBN schedule


@pytest.mark.parametrize(
    "step, warmup, lam",
    [(0, 0, 1.0), (50, 0, 0.5), (75, 0, 0.25), (100, 0, 0.0), (10_000, 0, 0.0), (0, 20, 1.0), (20, 20, 1.0),
     (70, 20, 0.5), (120, 20, 0.0)],
)  # fmt: skip
def test_lambda_is_linear_from_one_to_zero(step: int, warmup: int, lam: float) -> None:
    assert prepbn_lambda(step, 100, warmup).item() == pytest.approx(lam)
    norm = PRepBN(8, total_steps=100, warmup_steps=warmup)
    norm.set_step(step)
    assert norm.lam.item() == pytest.approx(lam)


@pytest.mark.parametrize("step", [0, 30, 100])
def test_train_output_mixes_layernorm_and_repbn(step: int) -> None:
    norm = _realistic(PRepBN(16, total_steps=100), 16).train()
    norm.set_step(step)
    x = torch.randn(4, 10, 16) * 3 + 1
    lam = 1 - step / 100
    expect = lam * norm.ln(x) + (1 - lam) * norm.repbn(x)
    assert rel_err(norm(x), expect) < 1e-6


def test_warmup_is_layernorm_only_and_leaves_bn_statistics() -> None:
    norm = _realistic(PRepBN(16, total_steps=100, warmup_steps=10), 16).train()
    x = torch.randn(4, 10, 16) * 3 + 1
    stats = norm.repbn.bn.running_mean.clone()
    norm.set_step(9)
    assert torch.equal(norm(x), norm.ln(x))
    assert torch.equal(norm.repbn.bn.running_mean, stats)
    norm.set_step(10)  # the decay starts at lambda = 1: LN output, but the BN branch runs
    assert rel_err(norm(x), norm.ln(x)) < 1e-6
    assert not torch.equal(norm.repbn.bn.running_mean, stats)


@pytest.mark.parametrize("step", [0, 40, 100])
def test_eval_uses_repbn_only_at_any_step(step: int) -> None:
    norm = _realistic(PRepBN(16, total_steps=100), 16).eval()
    norm.set_step(step)
    x = torch.randn(4, 10, 16)
    assert torch.equal(norm(x), norm.repbn(x))


def test_set_step_is_idempotent_jumpable_and_forward_counts_nothing() -> None:
    x = torch.randn(4, 10, 16)
    norm = _realistic(PRepBN(16, total_steps=100), 16).train()
    outs = {}
    for step in (10, 10, 70, 5, 70, 400):  # repeated, forward, backward, beyond the end
        norm.set_step(step)
        out = norm(x)
        norm(x)  # more training calls at the same step do not move the schedule
        assert int(norm.step) == step
        if step in outs:
            assert rel_err(out, outs[step]) < 1e-6
        outs[step] = out
        fresh = copy.deepcopy(norm)
        fresh.step.zero_()
        fresh.set_step(step)
        assert rel_err(fresh(x), out) < 1e-6
    with pytest.raises(ValueError):
        norm.set_step(-1)
    with pytest.raises(TypeError):
        norm.set_step(1.5)


def test_schedule_is_restored_from_a_state_dict() -> None:
    a = _realistic(PRepBN(16, total_steps=100), 16)
    a.set_step(37)
    sd = a.state_dict()
    assert int(sd["step"]) == 37
    b = PRepBN(16, total_steps=100)
    b.load_state_dict(sd)
    assert b.lam.item() == pytest.approx(0.63)
    x = torch.randn(4, 10, 16)
    assert torch.equal(a.train()(x), b.train()(x))


def test_set_step_reaches_every_prepbn_of_a_model_and_the_checkpoint() -> None:
    import zoo

    model = zoo.create_model("slab_deit_t", img_size=32, prepbn_steps=1000)
    norms = [m for m in model.modules() if isinstance(m, PRepBN)]
    assert len(norms) == 2 * 12 + 1
    assert blocks.set_step(model, 250) == len(norms)
    assert all(int(m.step) == 250 and m.lam.item() == pytest.approx(0.75) for m in norms)
    wrapped = nn.Module()
    wrapped.module = model  # DDP-style wrapper: unwrapped by blocks.set_step
    blocks.set_step(wrapped, 600)
    resumed = zoo.create_model("slab_deit_t", img_size=32, prepbn_steps=1000)
    resumed.load_state_dict(model.state_dict())
    assert all(int(m.step) == 600 for m in resumed.modules() if isinstance(m, PRepBN))


def test_norm_factory_and_errors() -> None:
    assert type(make_repbn_norm(8, 0)) is RepBN
    assert type(make_repbn_norm(8, 10, 2)) is PRepBN
    with pytest.raises(ValueError, match="warmup"):
        make_repbn_norm(8, 0, 5)
    with pytest.raises(ValueError):
        PRepBN(8, total_steps=0)
    with pytest.raises(TypeError, match="cannot be folded"):
        norm_affine(nn.LayerNorm(8))


# ---------------------------------------------------------------- RepBN folding


def test_repbn_is_bn_plus_alpha_x_and_its_eval_form_is_affine() -> None:
    norm = _realistic(RepBN(12), 12)
    x = torch.randn(3, 7, 12)
    norm.train()
    expect = norm.bn(x.transpose(1, 2)).transpose(1, 2) + 0.7 * x
    assert rel_err(norm(x), expect) < 1e-6
    norm.eval()
    scale, shift = norm.affine()
    assert rel_err(norm(x), x * scale + shift) < 1e-6


@pytest.mark.parametrize("bias", [True, False])
def test_fold_affine_into_linear(bias: bool) -> None:
    norm, lin = _realistic(RepBN(12), 12).eval(), nn.Linear(12, 20, bias=bias)
    x = torch.randn(3, 7, 12)
    folded = fold_affine_into_linear(lin, *norm_affine(norm))
    with torch.no_grad():
        assert rel_err(folded(x), lin(norm(x))) < 1e-5


def test_fold_affine_into_convs() -> None:
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    x = torch.randn(2, 6, 8, 8)
    sr = nn.Conv2d(6, 10, 4, 4)
    with torch.no_grad():
        ref = sr(x * scale[:, None, None] + shift[:, None, None])
        assert rel_err(fold_affine_into_conv_input(sr, scale, shift)(x), ref) < 1e-5
        conv = nn.Conv2d(3, 6, 3, padding=1)
        y = torch.randn(2, 3, 8, 8)
        ref = conv(y) * scale[:, None, None] + shift[:, None, None]
        assert rel_err(fold_affine_into_conv_output(conv, scale, shift)(y), ref) < 1e-5
    with pytest.raises(ValueError, match="unpadded"):
        fold_affine_into_conv_input(nn.Conv2d(6, 6, 3, padding=1), scale, shift)


@pytest.mark.parametrize("steps", [0, 100])
def test_slab_block_folds_every_norm(steps: int) -> None:
    norm_layer = lambda d: make_repbn_norm(d, steps)  # noqa: E731
    attn = SimplifiedLinearAttention(24, 3, (4, 4))
    block = SlabBlock(24, attn, norm_layer, mlp_ratio=2)
    for i, m in enumerate(m for m in block.modules() if isinstance(m, (RepBN, PRepBN))):
        _realistic(m, 24, seed=i)
    block.eval()
    x = torch.randn(2, 16, 24)
    deployed = blocks.reparameterize_model(block)
    with torch.no_grad():
        assert rel_err(deployed(x), block(x)) < 1e-5
    assert blocks.remaining_norms(deployed) == {}
    assert blocks.is_deployed(deployed)


# ---------------------------------------------------------------- simplified linear attention


def _naive_sla(attn: SimplifiedLinearAttention, x: torch.Tensor) -> torch.Tensor:
    """Per head and token, the explicit weights relu(q_i).relu(k_j) normalised over j, plus the dwc of V."""
    b, n, c = x.shape
    h, d = attn.num_heads, attn.head_dim
    if attn.separate_kv:
        q, (k, v) = attn.q(x), attn.kv(x).chunk(2, -1)
    else:
        q, k, v = attn.qkv(x).chunk(3, -1)
    k = k + attn.positional_encoding
    out = torch.zeros(b, n, c)
    for bi in range(b):
        for hi in range(h):
            sl = slice(hi * d, (hi + 1) * d)
            qh, kh, vh = q[bi, :, sl].relu(), k[bi, :, sl].relu(), v[bi, :, sl]
            w = qh @ kh.T  # N, N
            out[bi, :, sl] = (w @ vh) / (w.sum(-1, keepdim=True) + 1e-6)
            grid = vh.T.reshape(1, d, *attn.grid)  # N, d -> 1, d, H, W
            out[bi, :, sl] += attn.dwc(grid).reshape(d, n).T
    return attn.proj(out)


@pytest.mark.parametrize("grid, heads, separate", [((4, 4), 2, False), ((2, 3), 4, True), ((7, 7), 1, False)])
def test_linear_attention_matches_naive_reference(grid: tuple[int, int], heads: int, separate: bool) -> None:
    attn = SimplifiedLinearAttention(16, heads, grid, kernel_size=3, separate_kv=separate)
    nn.init.normal_(attn.positional_encoding, std=0.5)
    x = torch.randn(2, grid[0] * grid[1], 16)
    with torch.no_grad():
        ref = _naive_sla(attn, x)
        assert rel_err(attn(x), ref) < 1e-5
        attn.kv_first = not attn.kv_first  # the other product order gives the same result
        assert rel_err(attn(x), ref) < 1e-5


def test_linear_attention_product_order_follows_cost() -> None:
    assert SimplifiedLinearAttention(64, 2, (14, 14)).kv_first  # N=196 > head dim 32
    assert not SimplifiedLinearAttention(64, 1, (2, 2)).kv_first  # N=4 < head dim 64


def test_linear_attention_fold_input_affine() -> None:
    attn = SimplifiedLinearAttention(16, 2, (3, 3), separate_kv=True)
    scale, shift = torch.rand(16) + 0.5, torch.randn(16)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        ref = attn(x * scale + shift)
        attn.fold_input_affine(scale, shift)
        assert rel_err(attn(x), ref) < 1e-5
