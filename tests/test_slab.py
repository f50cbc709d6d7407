"""SLAB families (DeiT, Swin, PVT, CSwin) against the authors' code: parameter counts, key layouts, recorded outputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from helpers import rel_err

import blocks
import zoo
from blocks import ChannelAffine, PRepBN
from weights import load_checkpoint, load_into
from zoo.slab_cswin import SlabCSwin, SlabCSwinCfg
from zoo.slab_deit import SlabDeiT, SlabDeiTCfg
from zoo.slab_deit import convert_original as convert_deit
from zoo.slab_pvt import SlabPvt, SlabPvtCfg
from zoo.slab_swin import SlabSwin, SlabSwinCfg

DATA = Path(__file__).parent / "data"
# Parameter counts of the authors' builders (1000 classes, 224 px), measured by running their code.
PARAMS = {
    "deit_t_prepbn": 5_717_441,
    "deit_s_prepbn": 22_069_889,
    "slab_deit_t": 6_198_401,
    "slab_deit_s": 22_992_641,
    "swin_t_prepbn": 28_288_383,
    "slab_swin_t": 29_216_605,
    "slab_swin_s": 50_552_965,
    "slab_swin_b": 89_029_373,
    "pvt_t_prepbn": 13_239_554,
    "pvt_s_prepbn": 24_507_801,
    "pvt_m_prepbn": 44_253_117,
    "slab_pvt_t": 12_157_692,
    "slab_cswin_t": 21_227_807,
    "slab_cswin_s": 35_494_205,
}
# MACs at 224 px of the authors' models, counted with the same counter (torch.utils.flop_counter, halved).
MACS = {"deit_t_prepbn": 1_253_683_200, "slab_deit_t": 1_139_086_848, "slab_swin_t": 4_483_341_312,
        "slab_pvt_t": 2_035_901_440, "pvt_s_prepbn": 3_805_960_192,
        "slab_cswin_t": 4_324_253_184}  # fmt: skip
SLAB_FAMILIES = ("slab_deit", "slab_swin", "slab_pvt", "slab_cswin")


def test_every_slab_variant_is_covered() -> None:
    names = [n for n in zoo.list_models() if zoo.get_family(n).name in SLAB_FAMILIES]
    assert sorted(names) == sorted(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_params_equal_original_and_release_layout_converts(name: str) -> None:
    """Exact parameter count; every key of the authors' model (names and shapes recorded) maps onto ours."""
    keys = json.loads((DATA / "slab_original_keys.json").read_text())[name]
    with torch.device("meta"):
        model = zoo.create_model(name)
    assert zoo.count_params(model) == PARAMS[name]
    sd = {k: torch.zeros(()).expand(shape) if shape else torch.tensor(0) for k, shape in keys.items()}
    for k in [k for k in sd if k.endswith(".total_step")]:
        sd[k] = torch.tensor(300_000)
    converted = zoo.get_family(name).converters["original"](sd)
    target = model.state_dict()
    assert sorted(converted) == sorted(target)
    assert all(tuple(converted[k].shape) == tuple(target[k].shape) for k in target)


@pytest.mark.parametrize("name", sorted(MACS))
def test_macs_equal_original(name: str) -> None:
    with torch.device("meta"):  # counted from shapes alone
        model = zoo.create_model(name)
    assert zoo.count_macs(model, (3, 224, 224)) == MACS[name]


def _build(fname: str) -> tuple[torch.nn.Module, dict]:
    blob = torch.load(DATA / fname, weights_only=True)
    c = blob["cfg"]
    if fname.startswith(("slab_deit", "deit")):
        cfg = SlabDeiTCfg(
            c["embed_dim"], c["depth"], c["num_heads"], c["linear_attn"], c["prepbn_steps"], patch_size=c["patch_size"]
        )
        model = SlabDeiT(cfg, num_classes=c["num_classes"], img_size=c["img_size"])
    elif "cswin" in fname:
        cfg = SlabCSwinCfg(
            tuple(c["depth"]),
            c["embed_dim"],
            tuple(c["num_heads"]),
            c["attn_type"],
            tuple(c["split_size"]),
            tuple(int(s) for s in c["la_split_size"].split("-")),
            c["prepbn_steps"],
        )
        model = SlabCSwin(cfg, num_classes=c["num_classes"], img_size=c["img_size"])
    elif "swin" in fname:
        depths, heads = tuple(c["depths"]), tuple(c["num_heads"])
        cfg = SlabSwinCfg(c["embed_dim"], depths, heads, c["attn_type"], c["window_size"], c["prepbn_steps"])
        model = SlabSwin(cfg, num_classes=c["num_classes"], img_size=c["img_size"])
    else:
        cfg = SlabPvtCfg(
            tuple(c["depths"]),
            c["attn_type"] == "LLLL",
            c["prepbn_steps"],
            tuple(c["embed_dims"]),
            tuple(c["num_heads"]),
            tuple(c["mlp_ratios"]),
            tuple(c["sr_ratios"]),
        )
        model = SlabPvt(cfg, num_classes=c["num_classes"], img_size=c["img_size"])
    return model, blob


ORIGINAL_FILES = [
    ("slab_deit_tiny_original.pth", "slab_deit"),
    ("deit_prepbn_tiny_original.pth", "slab_deit"),
    ("slab_swin_tiny_original.pth", "slab_swin"),
    ("swin_repbn_tiny_original.pth", "slab_swin"),
    ("pvt_prepbn_tiny_original.pth", "slab_pvt"),
    ("slab_pvt_tiny_original.pth", "slab_pvt"),
    ("slab_cswin_tiny_original.pth", "slab_cswin"),
]


@pytest.mark.parametrize("fname, family", ORIGINAL_FILES, ids=[f[0].split("_original")[0] for f in ORIGINAL_FILES])
def test_original_checkpoint_reproduces_original_outputs(fname: str, family: str) -> None:
    """Checkpoints written by the authors' code (tiny configs): eval, training at lambda = 0.4, and deployed."""
    model, blob = _build(fname)
    assert load_into(model, blob["model"], zoo.get_family(family).converters) == "original"
    x = blob["x"]
    with torch.no_grad():
        assert rel_err(model.eval()(x), blob["y"]) <= 1e-5
        if "y_train" in blob:  # LinearNorm counters iter=40 of total_step=100 -> our step 60, lambda 0.4
            norms = [m for m in model.modules() if isinstance(m, PRepBN)]
            assert norms and all(int(m.step) == 60 and m.lam.item() == pytest.approx(0.4) for m in norms)
            assert rel_err(copy.deepcopy(model).train()(x), blob["y_train"]) <= 1e-5  # (updates BN statistics)
        deployed = blocks.reparameterize_model(model)
        assert rel_err(deployed(x), blob["y"]) <= 1e-4
    assert blocks.remaining_norms(deployed) == {}


def test_convert_original_is_pure_and_rejects_a_warmup_checkpoint() -> None:
    sd = load_checkpoint(DATA / "slab_deit_tiny_original.pth")
    before = {k: v.clone() for k, v in sd.items()}
    convert_deit(sd)
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)
    sd["blocks.0.norm1.warm"] = torch.tensor(5)
    with pytest.raises(ValueError, match="warm-up"):
        convert_deit(sd)
    with pytest.raises(KeyError):
        convert_deit({"stages.0.weight": torch.zeros(1)})


NORM_OPS = {"LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization"}
STATISTIC_OPS = {"Sqrt", "Pow", "ReduceSumSquare", "ReduceL2", "ReduceMax", "ReduceMin"}


@pytest.mark.parametrize("name, pools", [("slab_deit_t", 1), ("deit_s_prepbn", 0)])
def test_deployed_deit_onnx_has_no_normalization(name: str, pools: int, tmp_path) -> None:
    """After the LN-to-RepBN decay, the exported graph has no norm node, no statistics, nothing but pooling means."""
    onnx = pytest.importorskip("onnx")
    from export import export_onnx, run_onnx

    model = zoo.create_model(name, img_size=64)
    assert blocks.set_step(model, 300_000) > 0  # lambda = 0: training is over
    assert all(m.lam.item() == 0 for m in model.modules() if isinstance(m, PRepBN))
    blocks.make_bn_realistic(model, (3, 64, 64))
    deployed = blocks.reparameterize_model(model)
    assert blocks.remaining_norms(deployed) == {}
    path = tmp_path / f"{name}.onnx"
    assert export_onnx(deployed, path, (3, 64, 64))["exporter"] == "dynamo"
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert not NORM_OPS & set(ops) and not STATISTIC_OPS & set(ops), sorted(set(ops))
    assert ops.count("ReduceMean") == pools  # SLAB-DeiT's token average, nothing else
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)
    assert rel_err(run_onnx(path, x), ref) <= 1e-4
    assert rel_err(deployed(x), ref) <= 1e-4


def test_shifted_windows_export_with_dynamo(tmp_path) -> None:
    """Masked (shifted) softmax windows and partitioned linear-attention windows, exported without fallback."""
    pytest.importorskip("onnx")
    from export import export_onnx, run_onnx

    model, blob = _build("slab_swin_tiny_original.pth")
    load_into(model, blob["model"], zoo.get_family("slab_swin").converters)
    deployed = blocks.reparameterize_model(model)
    shifts = [b.attn.g.shift for s in deployed.stages for b in s.blocks]
    assert shifts == [0, 7, 0, 3, 0, 0]
    path = tmp_path / "swin.onnx"
    assert export_onnx(deployed, path, (3, 112, 112), dynamic_batch=True)["exporter"] == "dynamo"
    x = torch.cat([blob["x"], blob["x"].flip(0)])
    assert rel_err(run_onnx(path, x), torch.cat([blob["y"], blob["y"].flip(0)])) <= 1e-4


def test_cswin_stripes_export_with_dynamo(tmp_path) -> None:
    """Two-branch stripes of both attention kinds (the registry tests' 64 px maps clamp to global ones), exported."""
    pytest.importorskip("onnx")
    from export import export_onnx, run_onnx

    model, blob = _build("slab_cswin_tiny_original.pth")
    load_into(model, blob["model"], zoo.get_family("slab_cswin").converters)
    deployed = blocks.reparameterize_model(model)
    branches = [len(b.attn.attns) for s in deployed.stages for b in s.blocks]
    assert branches == [2, 2, 2, 1, 1]
    path = tmp_path / "cswin.onnx"
    assert export_onnx(deployed, path, (3, 64, 64), dynamic_batch=True)["exporter"] == "dynamo"
    x = torch.cat([blob["x"], blob["x"].flip(0)])
    assert rel_err(run_onnx(path, x), torch.cat([blob["y"], blob["y"].flip(0)])) <= 1e-4


def test_headless_deploy_keeps_the_final_norm_as_an_affine() -> None:
    model, blob = _build("slab_swin_tiny_original.pth")
    load_into(model, blob["model"], zoo.get_family("slab_swin").converters)
    model.eval().reset_classifier(0)
    x = blob["x"]
    with torch.no_grad():
        ref = model(x)
        deployed = blocks.reparameterize_model(model)
        assert isinstance(deployed.norm, ChannelAffine) and blocks.remaining_norms(deployed) == {}
        assert rel_err(deployed(x), ref) <= 1e-5
    with pytest.raises(RuntimeError, match="before reparameterizing"):
        deployed.reset_classifier(5)


def test_swin_geometry_must_divide_into_windows() -> None:
    with pytest.raises(ValueError, match="windows"):
        zoo.create_model("swin_t_prepbn", img_size=64)
    with pytest.raises(ValueError, match="multiple of 32"):
        zoo.create_model("slab_swin_t", img_size=100)


def test_prepbn_schedule_is_configurable_per_model() -> None:
    model = zoo.create_model("pvt_t_prepbn", img_size=64, prepbn_steps=500, prepbn_warmup=20)
    norms = [m for m in model.modules() if isinstance(m, PRepBN)]
    assert norms and all(m.total_steps == 500 and m.warmup_steps == 20 for m in norms)
    plain = zoo.create_model("slab_deit_t", img_size=32, prepbn_steps=0)
    assert not any(isinstance(m, PRepBN) for m in plain.modules())


def test_model_info_reports_paper_and_weights() -> None:
    info = zoo.model_info("slab_swin_s", macs=False)
    assert info["params"] == PARAMS["slab_swin_s"]
    assert info["reported"]["top1"] == 83.6 and info["paper"]["arxiv"] == "2405.11582"
    assert info["weights"]["url"].endswith("/ckpts/slab_swin_small.pth")
    assert info["remaining_norms"] == []
