"""Inverted-residual families (MobileNetV1/V2, EfficientNet, ...) against timm and their papers."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_err

import blocks
import zoo
from weights import load_into

IR_FAMILIES = ("mobilenetv1", "mobilenetv2", "efficientnet")
TIMM_MODELS = sorted(n for f in IR_FAMILIES for n in zoo.get_family(f).timm_names)
# Parameter counts of timm's implementations (1000 classes), recorded from timm 1.0.
TIMM_PARAMS = {
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "mobilenetv1_100": 4_231_976,
    "mobilenetv2_100": 3_504_872,
    "mobilenetv2_140": 6_108_776,
}


def _timm_model(name: str) -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    family = zoo.get_family(name)
    return timm.create_model(family.timm_names[name], **_TIMM_KWARGS.get(name, {}))


_TIMM_KWARGS: dict[str, dict] = {}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_state_dict_reproduces_timm_logits(name: str) -> None:
    ref = _timm_model(name)
    ours = zoo.create_model(name)
    assert zoo.count_params(ours) == zoo.count_params(ref) == TIMM_PARAMS[name]
    size = (3, 96, 96)
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


@pytest.mark.parametrize("name,paper_macs", [("mobilenetv2_100", 300e6), ("efficientnet_b0", 390e6)])
def test_macs_match_paper(name: str, paper_macs: float) -> None:
    assert abs(zoo.count_macs(zoo.create_model(name), (3, 224, 224)) - paper_macs) / paper_macs < 0.015


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
