"""Unified Normalization against the authors' UN1d: training statistics and gradients step by step, eval, folding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import rel_err

import blocks
from blocks import UnifiedNorm, fold_affine_into_linear, norm_affine

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def trace() -> dict:
    return torch.load(DATA / "un_original_trace.pth", weights_only=True)


def test_training_replays_the_original_step_by_step(trace: dict) -> None:
    """Outputs, input/affine gradients and every buffer after each training call equal the original's.

    The trace covers the warm-up (batch statistics), the filling window, the geometric-mean statistics, two outlier
    batches (skipped: running variance written into the window, ``skip_counter``), and iterations past 1000 where the
    gradient compensation ``r`` is clamped instead of fixed at 1.
    """
    c = trace["cfg"]
    un = UnifiedNorm(c["dim"], tuple(c["window_size"]), c["warmup_iters"], c["outlier_filtration"])
    un.load_state_dict(trace["init"])
    un.train()
    skips = []
    for i, step in enumerate(trace["steps"]):
        if i == 8:
            un.iters.fill_(995)
        x = step["x"].clone().requires_grad_()
        y = un(x)
        y.backward(step["dy"])
        assert rel_err(y.detach(), step["y"]) <= 1e-5, i
        assert rel_err(x.grad, step["dx"]) <= 1e-5, i
        assert rel_err(un.weight.grad, step["dweight"]) <= 1e-5, i
        assert rel_err(un.bias.grad, step["dbias"]) <= 1e-5, i
        state = un.state_dict()
        for k, ref in step["state"].items():
            if k in ("weight", "bias"):
                continue
            assert state[k].shape == ref.shape, k
            assert torch.allclose(state[k].to(ref.dtype), ref, rtol=1e-5, atol=1e-7), (i, k)
        skips.append(int(un.skip_counter))
        un.weight.grad = un.bias.grad = None
    assert skips[-1] == 2 and int(un.iters) == 1003  # the trace does exercise the outlier filter and the clamp
    un.eval()
    with torch.no_grad():
        assert rel_err(un(trace["x_eval"]), trace["y_eval"]) <= 1e-6


def test_eval_is_a_per_channel_affine_that_folds_exactly() -> None:
    torch.manual_seed(1)
    un = UnifiedNorm(24).double()
    with torch.no_grad():
        un.weight.uniform_(0.5, 1.5)
        un.bias.normal_(0, 0.1)
        un.running_var.uniform_(0.2, 3.0)
    linear = torch.nn.Linear(24, 10).double()
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    un.eval()
    with torch.no_grad():
        ref = linear(un(x))
        assert torch.allclose(un(x), x * un.weight / torch.sqrt(un.running_var + un.eps) + un.bias, atol=1e-12)
        folded = fold_affine_into_linear(linear, *norm_affine(un))
        assert torch.allclose(folded(x), ref, rtol=0, atol=1e-12)


def test_remaining_norms_sees_an_unfolded_layer() -> None:
    model = torch.nn.Sequential(UnifiedNorm(8), torch.nn.Linear(8, 4))
    assert blocks.remaining_norms(model) == {"UnifiedNorm": 1}


def test_make_bn_realistic_gives_measured_statistics() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), UnifiedNorm(8))
    blocks.make_bn_realistic(model, (5, 6))
    un = model[1]
    assert not torch.allclose(un.running_var, torch.ones(8)) and not torch.allclose(un.weight, torch.ones(8))
    assert un.momentum == 0.9 and not un.training


@pytest.mark.parametrize(
    "kwargs", [{"window_size": 0}, {"window_size": (2, 0)}, {"warmup_iters": -1}, {"momentum": 1.0}]
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="UnifiedNorm needs"):
        UnifiedNorm(8, **kwargs)


def test_window_of_one_always_uses_batch_statistics() -> None:
    un = UnifiedNorm(4, window_size=1, warmup_iters=0, outlier_filtration=True).train()
    for _ in range(3):
        x = torch.randn(2, 5, 4)
        y = un(x)
        var = (x * x).reshape(-1, 4).mean(0)
        assert torch.allclose(y, x / torch.sqrt(var + un.eps), atol=1e-6)
