"""VoVNet / VoVNetV2 against timm (parameters, MACs, logits from timm state dicts) and the authors' V1 code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import rel_err

import blocks
import zoo
from blocks import EffectiveSE, OsaBlock, SeparableConvBN
from weights import load_checkpoint, load_into
from zoo.vovnet import VoVNet, VoVNetCfg, convert_original, convert_timm

DATA = Path(__file__).parent / "data"
TIMM = (
    "vovnet39a",
    "vovnet57a",
    "ese_vovnet19b_slim_dw",
    "ese_vovnet19b_dw",
    "ese_vovnet19b_slim",
    "ese_vovnet39b",
    "ese_vovnet57b",
    "ese_vovnet99b",
)
# timm 1.0's parameter counts and GMACs at 224 (its benchmark table rounds to two decimals)
PARAMS = {
    "vovnet39": 22_600_296,
    "vovnet57": 36_640_296,
    "vovnet39a": 22_600_296,
    "vovnet57a": 36_640_296,
    "ese_vovnet19b_slim_dw": 1_897_752,
    "ese_vovnet19b_dw": 6_543_080,
    "ese_vovnet19b_slim": 3_166_136,
    "ese_vovnet39b": 24_568_936,
    "ese_vovnet57b": 38_608_936,
    "ese_vovnet99b": 63_199_272,
}
GMACS = {"ese_vovnet19b_slim_dw": 0.40, "ese_vovnet19b_dw": 1.33, "ese_vovnet19b_slim": 1.69, "vovnet39a": 7.07}
# odd sizes through the ceil-mode pools: 80 -> 40 -> 20 -> 20 -> 10 -> 5 -> 3
SIZE = (3, 80, 80)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_params_equal_timm(name: str) -> None:
    assert zoo.count_params(zoo.create_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(GMACS))
def test_macs_match_timm(name: str) -> None:
    macs = zoo.count_macs(zoo.create_model(name), (3, 224, 224))
    assert abs(macs / 1e9 - GMACS[name]) / GMACS[name] < 0.01


@pytest.mark.parametrize("name", TIMM)
def test_timm_state_dict_reproduces_timm_logits(name: str) -> None:
    timm = pytest.importorskip("timm")
    ref = timm.create_model(name)
    blocks.make_bn_realistic(ref, SIZE)
    ours = zoo.create_model(name)
    assert load_into(ours, ref.state_dict(), zoo.get_family(name).converters) == "timm"
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        expect = ref(x)
        assert rel_err(ours.eval()(x), expect) <= 1e-4
        deployed = blocks.reparameterize_model(ours)
        assert blocks.remaining_norms(deployed) == {}
        assert rel_err(deployed(x), expect) <= 1e-3  # deep BN stacks folded: float32 rounding only


def test_deploy_error_of_the_deepest_plain_vovnet_is_float32_rounding() -> None:
    """vovnet57a's folded graph drifts ~1e-4 from the unfolded one in float32; in float64 the two agree exactly."""
    model = blocks.make_bn_realistic(zoo.create_model("vovnet57a"), SIZE).double()
    deployed = blocks.reparameterize_model(model)
    x = torch.randn(2, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-10


def test_feature_levels_match_timm() -> None:
    timm = pytest.importorskip("timm")
    ref = timm.create_model("ese_vovnet19b_dw", features_only=True)
    ours = zoo.create_model("ese_vovnet19b_dw", features_only=True)
    assert ours.feature_info.channels() == ref.feature_info.channels()
    assert ours.feature_info.reduction() == ref.feature_info.reduction()


def _tiny_original(residual: bool) -> tuple[VoVNet, dict]:
    blob = torch.load(DATA / "vovnet_tiny_original.pth", weights_only=True)
    c = blob["cfg"]
    cfg = VoVNetCfg(
        (64, 64, 128),
        tuple(c["stage_ch"]),
        tuple(c["concat_ch"]),
        c["layer_per_block"],
        tuple(c["block_per_stage"]),
        residual=residual,
        depthwise=False,
        ese=False,
    )
    return VoVNet(cfg, num_classes=c["num_classes"]), blob


def test_original_checkpoint_reproduces_original_outputs() -> None:
    """The authors' code (tiny channels, 2 blocks in stages 4-5) with its output: reproduced only with the identity."""
    model, blob = _tiny_original(residual=True)
    assert load_into(model, blob["model"], zoo.get_family("vovnet").converters) == "original"
    plain, _ = _tiny_original(residual=False)
    load_into(plain, blob["model"], zoo.get_family("vovnet").converters)
    with torch.no_grad():
        assert rel_err(model.eval()(blob["x"]), blob["y"]) <= 1e-5
        assert rel_err(blocks.reparameterize_model(model)(blob["x"]), blob["y"]) <= 1e-4
        assert rel_err(plain.eval()(blob["x"]), blob["y"]) > 0.05


@pytest.mark.parametrize("name", ["vovnet39", "vovnet57"])
def test_original_release_layout_converts_completely(name: str) -> None:
    """Every key of the authors' VoVNet-39/57 (names and shapes recorded from their code) maps onto ours, strictly."""
    keys = json.loads((DATA / "vovnet_original_keys.json").read_text())[name]
    sd = {k: torch.randn(shape) if shape else torch.tensor(0) for k, shape in keys.items()}
    model = zoo.create_model(name)
    assert load_into(model, sd, zoo.get_family(name).converters) == "original"
    got = model.state_dict()
    assert torch.equal(got["stem.2.bn.running_var"], sd["stem.stem_3/norm.running_var"])
    assert torch.equal(
        got["stages.3.blocks.1.conv_mid.4.conv.weight"], sd["stage5.OSA5_2.layers.4.OSA5_2_4/conv.weight"]
    )
    concat = sd["stage4.OSA4_1.concat.OSA4_1_concat/norm.weight"]
    assert torch.equal(got["stages.2.blocks.0.conv_concat.bn.weight"], concat)
    assert torch.equal(got["head.weight"], sd["classifier.weight"])
    assert zoo.get_family(name).weights[name].url.startswith("https://dl.dropbox.com/s/")


def test_converters_are_pure_and_reject_other_layouts() -> None:
    sd = load_checkpoint(DATA / "vovnet_tiny_original.pth")
    before = {k: v.clone() for k, v in sd.items()}
    convert_original(sd)
    assert all(torch.equal(sd[k], before[k]) for k in sd) and sd.keys() == before.keys()
    with pytest.raises(KeyError, match="not an original VoVNet"):
        convert_original({"stem.0.conv.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="not a timm VoVNet"):
        convert_timm(sd)
    assert "head.weight" in convert_timm({"stem.0.conv.weight": torch.zeros(1), "stages.0.x": 0, "head.fc.weight": 0})


@pytest.mark.parametrize(("depthwise", "in_chs"), [(False, 16), (True, 16), (True, 12)])
def test_osa_block_shapes_and_deploy(depthwise: bool, in_chs: int) -> None:
    blk = OsaBlock(in_chs, 12, 16, layers=3, residual=in_chs == 16, depthwise=depthwise, attn=True)
    assert (blk.conv_reduction is not None) == (depthwise and in_chs != 12)
    assert blk.conv_concat.conv.in_channels == in_chs + 3 * 12
    blocks.make_bn_realistic(blk, (in_chs, 9, 7))
    x = torch.randn(2, in_chs, 9, 7)
    with torch.no_grad():
        ref = blk(x)
        assert ref.shape == (2, 16, 9, 7)
        dep = blocks.reparameterize_model(blk)
        assert rel_err(dep(x), ref) < 1e-5 and blocks.remaining_norms(dep) == {}


def test_osa_block_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="in_chs == out_chs"):
        OsaBlock(8, 4, 16, layers=2, residual=True)
    with pytest.raises(ValueError, match="at least one"):
        OsaBlock(8, 4, 16, layers=0)


def test_ese_is_one_full_width_conv_and_hard_sigmoid() -> None:
    ese = EffectiveSE(6)
    assert ese.fc.weight.shape == (6, 6, 1, 1) and ese.fc.bias is not None
    x = torch.randn(2, 6, 5, 5)
    s = ese.fc(x.mean((2, 3), keepdim=True))
    assert rel_err(ese(x), x * torch.clamp(s + 3, 0, 6) / 6) < 1e-6


def test_separable_conv_folds_into_pointwise() -> None:
    conv = SeparableConvBN(8, 12, stride=2)
    blocks.make_bn_realistic(conv, (8, 10, 10))
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        ref = conv(x)
        conv.reparameterize()
        conv.reparameterize()
        assert conv.deployed and isinstance(conv.bn, torch.nn.Identity) and conv.conv_pw.bias is not None
        assert ref.shape == (2, 12, 5, 5) and rel_err(conv(x), ref) < 1e-5


def test_vs_timm_picks_the_timm_variants() -> None:
    fam = zoo.get_family("vovnet")
    assert set(fam.timm_names) == set(TIMM) and all(fam.timm_names[n] == n for n in TIMM)
    assert fam.remaining_norms == ()
