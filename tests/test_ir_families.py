"""Inverted-residual families (MobileNetV1/V2, EfficientNet, TinyNet, FBNet, ProxylessNAS, SPNASNet) against timm,
the original authors' code (recorded checkpoints and key layouts) and their papers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import rel_err

import blocks
import zoo
from weights import load_into
from zoo.irnet import InvertedResidualNet, IRNetCfg

DATA = Path(__file__).parent / "data"
IR_FAMILIES = ("mobilenetv1", "mobilenetv2", "efficientnet", "tinynet", "spnasnet", "fbnet", "proxylessnas")
TIMM_MODELS = sorted(n for f in IR_FAMILIES for n in zoo.get_family(f).timm_names)
# Parameter counts of timm's implementations (1000 classes), recorded from timm 1.0.
TIMM_PARAMS = {
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "mobilenetv1_100": 4_231_976,
    "mobilenetv2_100": 3_504_872,
    "mobilenetv2_140": 6_108_776,
    "tinynet_a": 6_187_972,
    "tinynet_b": 3_730_562,
    "tinynet_c": 2_457_234,
    "tinynet_d": 2_338_446,
    "tinynet_e": 2_042_972,
    "spnasnet_100": 4_421_616,
    "fbnetc_100": 5_572_200,
}


def _timm_model(name: str) -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    family = zoo.get_family(name)
    return timm.create_model(family.timm_names[name], **_TIMM_KWARGS.get(name, {}))


_TIMM_KWARGS: dict[str, dict] = {"fbnetc_100": {"bn_eps": 1e-3}}  # timm's pretrained FBNet-C uses epsilon 1e-3


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_state_dict_reproduces_timm_logits(name: str) -> None:
    ref = _timm_model(name)
    ours = zoo.create_model(name)
    assert zoo.count_params(ours) == zoo.count_params(ref) == TIMM_PARAMS[name]
    size = (3, 64, 64)
    blocks.make_bn_realistic(ref, size)
    assert load_into(ours, ref.state_dict(), zoo.get_family(name).converters) == "timm"
    x = torch.randn(2, *size)
    with torch.no_grad():
        assert rel_err(ours.eval()(x), ref(x)) <= 1e-4
    assert [f["num_chs"] for f in ours.feature_info] == [f["num_chs"] for f in ref.feature_info]
    assert [f["reduction"] for f in ours.feature_info] == [f["reduction"] for f in ref.feature_info]


def _dw_sep_params(chs: list[int], strides_ignored: bool = True) -> int:
    """Params of a MobileNetV1 (conv BN ReLU stem, then dw 3x3 + BN, pw 1x1 + BN per block, 1000-way linear)."""
    n = 3 * 9 * chs[0] + 2 * chs[0]
    for cin, cout in zip(chs[:-1], chs[1:]):
        n += cin * 9 + 2 * cin + cin * cout + 2 * cout
    return n + chs[-1] * 1000 + 1000


@pytest.mark.parametrize(
    "name,chs,paper_macs",
    [
        ("mobilenetv1_075", [24, 48, 96, 96, 192, 192, 384, 384, 384, 384, 384, 384, 768, 768], 325e6),
        ("mobilenetv1_100", [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024], 569e6),
        ("mobilenetv1_140", [48, 88, 176, 176, 360, 360, 720, 720, 720, 720, 720, 720, 1432, 1432], None),
    ],
)
def test_mobilenetv1_widths(name: str, chs: list[int], paper_macs: float | None) -> None:
    model = zoo.create_model(name)
    assert zoo.count_params(model) == _dw_sep_params(chs)
    if paper_macs:
        assert abs(zoo.count_macs(model, (3, 224, 224)) - paper_macs) / paper_macs < 0.005


@pytest.mark.parametrize(
    "name,paper_macs",
    [
        ("mobilenetv2_100", 300e6),
        ("efficientnet_b0", 390e6),
        ("tinynet_a", 339e6),
        ("tinynet_e", 24e6),
        ("fbnetc_100", 383e6),
        ("proxylessnas_mobile", 320e6),
    ],
)
def test_macs_match_paper(name: str, paper_macs: float) -> None:
    model = zoo.create_model(name)
    macs = zoo.count_macs(model, model.pretrained_cfg["input_size"])
    assert abs(macs - paper_macs) / paper_macs < 0.015


def test_tinynet_resolutions_and_depths() -> None:
    sizes = {n: zoo.create_model(n).pretrained_cfg["input_size"][1] for n in zoo.list_models("tinynet_*")}
    assert sizes == {"tinynet_a": 192, "tinynet_b": 188, "tinynet_c": 184, "tinynet_d": 152, "tinynet_e": 106}
    depths = [len(s) for s in zoo.create_model("tinynet_e").blocks]  # r_d 0.6, rounded per stage
    assert depths == [1, 1, 1, 2, 2, 2, 1]


def _param_count(shapes: dict[str, list[int]]) -> int:
    """Parameters of a recorded state dict: everything but BN running statistics."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(int(torch.tensor(s).prod()) for k, s in shapes.items() if not k.endswith(skip))


@pytest.mark.parametrize(
    "name,key_file",
    [
        ("fbneta_100", "fbnet_original_keys.json:fbnet_a"),
        ("fbnetb_100", "fbnet_original_keys.json:fbnet_b"),
        ("proxylessnas_mobile", "proxylessnas_original_keys.json:proxylessnas_mobile"),
        ("proxylessnas_gpu", "proxylessnas_original_keys.json:proxylessnas_gpu"),
        ("proxylessnas_cpu", "proxylessnas_original_keys.json:proxylessnas_cpu"),
    ],
)
def test_original_release_layout_converts_completely(name: str, key_file: str, tmp_path) -> None:
    """Every key of the authors' model (names and shapes recorded from their code) maps onto ours, strictly."""
    file, entry = key_file.split(":")
    shapes = json.loads((DATA / file).read_text())[entry]
    model = zoo.create_model(name)
    assert zoo.count_params(model) == _param_count(shapes)
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=gen) if s else torch.tensor(0) for k, s in shapes.items()}
    path = tmp_path / "orig.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    got = zoo.create_model(name, pretrained=path).state_dict()
    first = "backbone.stages.xif0_0.conv.weight" if "fbnet" in name else "first_conv.conv.weight"
    assert torch.equal(got["stem.conv.weight"], sd[first])
    head = "head.conv.weight" if "fbnet" in name else "classifier.linear.weight"
    assert torch.equal(got["classifier.weight"], sd[head].flatten(1))


_TINY = {
    "fbnet": IRNetCfg(
        (
            ("ir_r1_k3_s2_e3_c16", "ir_r1_k3_s1_e1_c16"),
            ("ir_r1_k5_s2_e6_c24", "ir_r1_k5_s1_e1_c24_g2", "ir_r1_k3_s1_e3_c32"),
        ),
        stem_size=8,
        num_features=64,
        conv_bias=True,
        always_pw=False,
    ),
    "proxylessnas": IRNetCfg(
        (
            ("ds_r1_k3_s1_c8",),
            ("ir_r1_k5_s2_e3_c16", "ir_r1_k3_s1_e3_c16"),
            ("ir_r1_k7_s2_e3_c24", "ir_r1_k3_s1_e3_c24", "ir_r2_k5_s1_e3_c24"),
            ("ir_r1_k7_s2_e6_c40",),
        ),
        stem_size=16,
        num_features=64,
        act="relu6",
        bn_eps=1e-3,
    ),
}


@pytest.mark.parametrize("family", sorted(_TINY))
def test_original_checkpoint_reproduces_original_outputs(family: str) -> None:
    """Checkpoints written by the authors' code (tiny configs with grouped/shuffled blocks, skipped and zero
    positions, conv biases) and their outputs; see tests/data/README.md."""
    blob = torch.load(DATA / f"{family}_tiny_original.pth", weights_only=True)
    model = InvertedResidualNet(_TINY[family], num_classes=10)
    assert load_into(model, blob["state_dict"], zoo.get_family(family).converters) == "original"
    with torch.no_grad():
        assert rel_err(model.eval()(blob["x"]), blob["y"]) <= 1e-5
        assert rel_err(blocks.reparameterize_model(model)(blob["x"]), blob["y"]) <= 1e-4


@pytest.mark.parametrize("family", sorted(_TINY))
def test_convert_original_is_pure_and_rejects_timm(family: str) -> None:
    convert = zoo.get_family(family).converters["original"]
    sd = torch.load(DATA / f"{family}_tiny_original.pth", weights_only=True)["state_dict"]
    before = {k: v.clone() for k, v in sd.items()}
    convert(sd)
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)
    with pytest.raises(KeyError):
        convert(_timm_model("spnasnet_100").state_dict())


def test_convert_timm_is_pure_and_rejects_foreign_layouts() -> None:
    from zoo.efficientnet import convert_timm

    ref = _timm_model("efficientnet_b0")
    sd = ref.state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    out = convert_timm(sd)
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)
    assert torch.equal(out["blocks.1.0.conv_pwl.bn.running_var"], sd["blocks.1.0.bn3.running_var"])
    assert torch.equal(out["blocks.0.0.conv_pw.bn.weight"], sd["blocks.0.0.bn2.weight"])  # ds block: bn2 is the pw's
    assert torch.equal(out["blocks.6.0.se.fc2.bias"], sd["blocks.6.0.se.conv_expand.bias"])
    with pytest.raises(KeyError, match="conv_stem"):
        convert_timm(zoo.create_model("efficientnet_b0").state_dict())


def test_pw_conv_and_classifier_layer_hooks() -> None:
    class MarkedConv(torch.nn.Conv2d):
        pass

    class MarkedLinear(torch.nn.Linear):
        pass

    model = zoo.create_model("mobilenetv2_100", pw_conv_layer=MarkedConv, classifier_layer=MarkedLinear, num_classes=5)
    assert isinstance(model.head.conv, MarkedConv) and isinstance(model.classifier, MarkedLinear)
    assert not isinstance(model.stem.conv, MarkedConv)
    pw = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert all(isinstance(m, MarkedConv) for m in pw)
    model.reset_classifier(3)
    assert isinstance(model.classifier, MarkedLinear) and model.classifier.out_features == 3
