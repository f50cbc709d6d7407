"""ResNet-RS against timm's implementation (the weights' publisher) and the published numbers."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err
from torch.utils.flop_counter import FlopCounterMode

import blocks
import zoo
from weights import compare_state_dicts, detect_layout, load_into

NAMES = ["resnetrs50", "resnetrs101", "resnetrs152", "resnetrs200", "resnetrs270", "resnetrs350", "resnetrs420"]
# timm's parameter counts (1000 classes).
PARAMS = dict(zip(NAMES, (35_691_912, 63_618_696, 86_621_576, 93_209_992, 129_861_448, 163_956_168, 191_891_656)))


def _meta(create, name: str) -> torch.nn.Module:
    """A model on the meta device: structure, names and shapes without allocating or initialising weights."""
    with torch.device("meta"):
        return create(name)


@pytest.mark.parametrize("name", NAMES)
def test_params_layout_and_resolution_equal_timm(name: str) -> None:
    """Same parameter count as timm, every timm key maps onto ours, same evaluation resolution and crop."""
    timm = pytest.importorskip("timm")
    ours, ref = _meta(zoo.create_model, name), _meta(timm.create_model, name)
    assert zoo.count_params(ours) == zoo.count_params(ref) == PARAMS[name]
    layout, converted = detect_layout(ref.state_dict(), ours.state_dict(), zoo.get_family(name).converters)
    assert layout == "timm"
    assert compare_state_dicts(converted, ours.state_dict()) == ([], [], [])
    assert ours.pretrained_cfg["input_size"] == ref.pretrained_cfg["input_size"]
    assert ours.pretrained_cfg["crop_pct"] == ref.pretrained_cfg["crop_pct"]


@pytest.mark.parametrize("name", ["resnetrs50", "resnetrs101"])
def test_macs_match_timm_benchmark(name: str) -> None:
    """timm's benchmark: 2.29 GMACs at 160 px (RS-50), 6.04 at 192 px (RS-101)."""
    published = {"resnetrs50": 2.29, "resnetrs101": 6.04}[name]
    model = _meta(zoo.create_model, name).eval()
    counter = FlopCounterMode(display=False)
    with torch.device("meta"), counter, torch.no_grad():
        model(torch.zeros(1, *model.pretrained_cfg["input_size"]))
    assert abs(counter.get_total_flops() / 2e9 - published) / published < 0.01


@pytest.mark.parametrize("name", NAMES)
def test_timm_state_dict_reproduces_timm_logits(name: str) -> None:
    """timm's model with random He-normal convs and realistic BN; ours built from its converted state dict."""
    timm = pytest.importorskip("timm")
    # Built on the meta device and filled here: constructing and initialising 100-190 M parameters twice would
    # dominate the test, and the statistics that matter (BN) are set by make_bn_realistic anyway.
    ref = _meta(timm.create_model, name).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            fan_out = p.shape[0] * p[0, 0].numel() if p.dim() == 4 else 1
            p.copy_(torch.randn(p.shape, generator=gen) * ((2 / fan_out) ** 0.5 if p.dim() == 4 else 0.01))
    blocks.make_bn_realistic(ref, (3, 64, 64), batches=1)
    ours = _meta(zoo.create_model, name)
    layout, converted = detect_layout(ref.state_dict(), ours.state_dict(), zoo.get_family(name).converters)
    assert layout == "timm"
    ours.load_state_dict(converted, strict=True, assign=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ours.eval()(x), ref(x)) <= 1e-4


def test_timm_checkpoint_loads_through_load_into() -> None:
    """The ordinary path (a real timm model's state dict through ``load_into``) on the smallest variant."""
    timm = pytest.importorskip("timm")
    ref = timm.create_model("resnetrs50")
    blocks.make_bn_realistic(ref, (3, 64, 64), batches=1)
    ours = zoo.create_model("resnetrs50")
    assert load_into(ours, ref.state_dict(), zoo.get_family("resnetrs50").converters) == "timm"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ours.eval()(x), ref(x)) <= 1e-4


def test_deploy_folding_is_exact_in_float64() -> None:
    """Folding is exact: in float64 the deployed model matches to rounding (the registry-wide float32 tolerances of
    the deep variants reflect the random nets' own float32 noise, not the folding)."""
    model = zoo.create_model("resnetrs50").double()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=gen, dtype=torch.float64) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=gen, dtype=torch.float64) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=gen, dtype=torch.float64) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64) + 0.5
    model.eval()
    deployed = blocks.reparameterize_model(model)
    assert blocks.remaining_norms(deployed) == {}
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) <= 1e-10


def test_zero_init_last_bn_and_shortcuts() -> None:
    model = zoo.create_model("resnetrs50")
    block0, block1 = model.stages[1][0], model.stages[1][1]
    assert torch.all(block0.conv3.bn.weight == 0) and torch.all(block0.conv1.bn.weight == 1)
    assert isinstance(block0.downsample.pool, torch.nn.AvgPool2d) and block0.conv2.conv.stride == (2, 2)
    assert not hasattr(model.stages[0][0].downsample, "pool")  # stride-1 projection: no pooling
    assert isinstance(block1.downsample, torch.nn.Identity)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
