"""The shared inverted-residual blocks and stage builder: timm's rounding and depth semantics, shapes, skips, hooks."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import rel_err
from torch import nn

from blocks import make_bn_realistic, remaining_norms, reparameterize_model
from blocks.inverted_residual import (
    ChannelShuffle,
    DepthwiseSeparable,
    InvertedResidual,
    build_stages,
    decode_arch,
    parse_block,
    round_channels,
)

EFFNET = [
    ["ds_r1_k3_s1_c16_se0.25"],
    ["ir_r2_k3_s2_e6_c24_se0.25"],
    ["ir_r2_k5_s2_e6_c40_se0.25"],
    ["ir_r3_k3_s2_e6_c80_se0.25"],
    ["ir_r3_k5_s1_e6_c112_se0.25"],
    ["ir_r4_k5_s2_e6_c192_se0.25"],
    ["ir_r1_k3_s1_e6_c320_se0.25"],
]
MIXED = [  # several definitions per stage (FBNet-C), where the redistribution of scaled repeats matters
    ["ir_r1_k3_s1_e1_c16"],
    ["ir_r1_k3_s2_e6_c24", "ir_r2_k3_s1_e1_c24"],
    ["ir_r1_k5_s2_e6_c32", "ir_r1_k5_s1_e3_c32", "ir_r1_k5_s1_e6_c32", "ir_r1_k3_s1_e6_c32"],
    ["ir_r3_k5_s1_e6_c112", "ir_r1_k5_s1_e3_c112"],
]


def test_round_channels_matches_timm() -> None:
    from timm.models._efficientnet_builder import round_channels as timm_round

    for c in (8, 16, 24, 32, 40, 64, 96, 112, 320, 1024, 1280):
        for m in (0.35, 0.5, 0.51, 0.54, 0.75, 1.0, 1.1, 1.4, 1.8, 2.0):
            assert round_channels(c, m) == timm_round(c, m), (c, m)
    assert round_channels(32, 1.4) == 48 and round_channels(1280, 0.51) == 656


@pytest.mark.parametrize("arch", [EFFNET, MIXED], ids=["effnet", "mixed"])
@pytest.mark.parametrize("mult,trunc", [(1.0, "ceil"), (1.1, "ceil"), (1.8, "ceil"), (0.6, "round"), (1.2, "round")])
def test_depth_scaling_matches_timm(arch, mult: float, trunc: str) -> None:
    from timm.models._efficientnet_builder import decode_arch_def

    ref = decode_arch_def(arch, mult, depth_trunc=trunc)
    ours = decode_arch(arch, mult, trunc)
    assert [len(s) for s in ours] == [len(s) for s in ref]
    for so, sr in zip(ours, ref):
        for i, (b, r) in enumerate(zip(so, sr)):
            # timm keeps the stride of every repeat and zeroes it in the builder; ours keeps it on the first only
            stride = r["stride"] if i == 0 else 1
            assert (b.out_chs, b.kernel, b.stride, b.exp_ratio) == (
                r["out_chs"],
                r["dw_kernel_size"],
                stride,
                r.get("exp_ratio", 1.0),
            )


def test_parse_block_options_and_errors() -> None:
    b, r = parse_block("ir_r3_k5_s2_e6_c40_se0.25_nhs_g2_noskip")
    assert r == 3 and (b.kind, b.kernel, b.stride, b.exp_ratio, b.out_chs) == ("ir", 5, 2, 6.0, 40)
    assert (b.se_ratio, b.act, b.pw_groups, b.skip) == (0.25, "hard_swish", 2, False)
    assert parse_block("dsa_r1_k3_s1_c64")[0].skip is False  # MobileNetV1 blocks never skip
    for bad, msg in [
        ("xx_r1_k3_s1_c8", "unknown block type"),
        ("ir_r1_k3_s1_c8", "missing"),
        ("ir_r1_k3_s1_e6_c8_q7", "cannot parse"),
        ("ds_r1_k3_s1_e6_c8", "ir' blocks only"),
        ("ir_r1_k3_s3_e6_c8", "stride"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_block(bad)
    with pytest.raises(TypeError, match="sequence of block strings"):
        decode_arch(["ir_r1_k3_s1_e6_c8"])


BLOCK_CASES = [  # kind, in, out, kernel, stride, exp, se, groups, skip expected
    ("ds", 16, 16, 3, 1, 1, 4, 1, True),
    ("dsa", 16, 32, 3, 2, 1, 0, 1, False),
    ("ir", 16, 16, 5, 1, 6, 4, 1, True),
    ("ir", 16, 24, 3, 2, 6, 0, 1, False),
    ("ir", 24, 24, 7, 1, 3, 0, 2, True),
    ("ir", 24, 24, 3, 1, 1, 0, 1, True),
]


def _block(case, drop_path: float = 0.0) -> nn.Module:
    kind, cin, cout, k, s, e, se, g, _ = case
    if kind == "ir":
        return InvertedResidual(cin, cout, cin * e, k, s, nn.SiLU, se_chs=se, pw_groups=g, drop_path=drop_path)
    return DepthwiseSeparable(cin, cout, k, s, nn.ReLU6, pw_act=kind == "dsa", se_chs=se, drop_path=drop_path)


@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-k{c[3]}s{c[4]}e{c[5]}g{c[7]}")
def test_block_shapes_skip_and_deploy(case) -> None:
    cin, cout, s, skip = case[1], case[2], case[4], case[8]
    m = make_bn_realistic(_block(case), (cin, 10, 10))
    assert m.has_skip is skip
    x = torch.randn(2, cin, 10, 10)
    with torch.no_grad():
        y = m(x)
        assert y.shape == (2, cout, (10 - 1) // s + 1, (10 - 1) // s + 1)
        if skip:  # the skip really adds the input: zeroing the last BN's affine leaves the identity
            z = copy.deepcopy(m)
            last = z.conv_pwl if hasattr(z, "conv_pwl") else z.conv_pw
            last.bn.weight.zero_()
            last.bn.bias.zero_()
            last.bn.running_mean.zero_()
            assert torch.equal(z(x), x)
        dep = reparameterize_model(m)
        assert not remaining_norms(dep)
        assert rel_err(dep(x), y) < 1e-5


def test_drop_path_only_on_skip_blocks() -> None:
    with_skip, without = _block(BLOCK_CASES[2], 0.2), _block(BLOCK_CASES[3], 0.2)
    assert type(with_skip.drop_path).__name__ == "DropPath"
    assert isinstance(without.drop_path, nn.Identity)
    x = torch.randn(8, 16, 6, 6)
    with_skip.train()
    torch.manual_seed(1)
    a = with_skip(x)
    with_skip.eval()
    assert not torch.allclose(a, with_skip(x))  # some samples dropped their branch in train mode


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]


class _MarkedConv(nn.Conv2d):
    """A Conv2d subclass standing in for a sparse conv."""


def test_pw_conv_layer_reaches_every_pointwise_conv() -> None:
    stages, feats, out = build_stages(
        16, decode_arch(EFFNET[:3] + [["ir_r1_k3_s1_e6_c32_g2"]]), pw_conv_layer=_MarkedConv
    )
    convs = [m for m in stages.modules() if isinstance(m, nn.Conv2d)]
    marked = [c for c in convs if isinstance(c, _MarkedConv)]
    assert marked and all(c.kernel_size == (1, 1) and c.in_channels > 1 for c in marked)
    # the only plain 1x1 convs left are the squeeze-excitation ones (pooled 1x1 maps, dense by design)
    plain_pw = [c for c in convs if not isinstance(c, _MarkedConv) and c.kernel_size == (1, 1)]
    se = [m for n, m in stages.named_modules() if ".se.fc" in f".{n}"]
    assert len(plain_pw) == len(se)
    assert all(c.groups == c.in_channels for c in convs if c.kernel_size != (1, 1))  # depthwise stay dense
    assert out == 32 and [f["reduction"] for f in feats] == [2, 4, 8]


def test_build_stages_feature_levels_and_stem_level() -> None:
    _, feats, _ = build_stages(8, decode_arch([["ir_r1_k3_s2_e6_c16"], ["ir_r2_k3_s1_e6_c16"], ["ir_r1_k3_s2_e6_c24"]]))
    assert [(f["module"], f["reduction"], f["num_chs"]) for f in feats] == [
        ("stem", 2, 8),
        ("blocks.1", 4, 16),
        ("blocks.2", 8, 24),
    ]
