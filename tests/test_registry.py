"""Registry-wide tests: every registered model, the same checks, quirks only from ``model_table``.

Per model: forward shape and finiteness; backward reaches every parameter; the model contract (including
``features_only``); deploy parity with realistic BN statistics, nothing foldable left, idempotent second call; ONNX
export of the deployed model with onnxruntime parity at batch 1 and 3 from one dynamic-batch file; CoreML mlprogram
conversion with a structural check of its spec.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from helpers import rel_err
from model_table import settings

import blocks
import zoo

MODELS = zoo.list_models()
# One xdist group per model, so that a model is built once per worker and its tests run together.
PARAMS = [pytest.param(n, marks=pytest.mark.xdist_group(n), id=n) for n in MODELS]


@dataclass
class Subject:
    name: str
    model: torch.nn.Module  # eval mode, realistic BN statistics
    deployed: torch.nn.Module
    input_size: tuple[int, int, int]
    tol: float
    allowed_norms: tuple[str, ...]


def _input_size(name: str, model: torch.nn.Module) -> tuple[int, int, int]:
    s = settings(name)
    return tuple(s["input_size"] or model.pretrained_cfg["input_size"])


@pytest.fixture(scope="module", params=PARAMS)
def subject(request: pytest.FixtureRequest) -> Subject:
    name = request.param
    s = settings(name)
    model = zoo.create_model(name, **s["create"])
    size = _input_size(name, model)
    if s["step"] is not None:
        blocks.set_step(model, s["step"])
    blocks.make_bn_realistic(model, size)
    deployed = blocks.reparameterize_model(model)
    return Subject(name, model, deployed, size, s["tol"], zoo.get_family(name).remaining_norms)


def test_forward_backward(subject: Subject) -> None:
    model = copy.deepcopy(subject.model).train()  # a copy: building the largest models again costs seconds
    x = torch.randn(2, *subject.input_size)
    out = model(x)
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters the loss does not reach: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_contract(subject: Subject) -> None:
    model = copy.deepcopy(subject.model)
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "num_classes"):
        assert key in cfg, key
    assert cfg["num_classes"] == model.num_classes
    assert isinstance(model.num_features, int) and model.num_features > 0
    x = torch.randn(2, *subject.input_size)
    with torch.no_grad():
        full = model(x)
        feats = model.forward_features(x)
        assert rel_err(model.forward_head(feats), full) < 1e-6
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        inter = model.forward_intermediates(x)
        assert len(inter) == len(model.feature_info)
        for f, info in zip(inter, model.feature_info):
            assert f.shape[1] == info["num_chs"], info
            assert {"num_chs", "reduction", "module"} <= set(info)
    params = dict(model.named_parameters())
    assert set(model.no_weight_decay()) <= set(params)
    model.reset_classifier(7)
    assert model.num_classes == 7
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)


def test_features_only(subject: Subject) -> None:
    levels = len(subject.model.feature_info)
    # what create_model(features_only=True) wraps; the creation path itself is tested in test_weights_and_errors.py
    backbone = zoo.FeatureExtractor(copy.deepcopy(subject.model), out_indices=(-1, 0)).eval()
    with torch.no_grad():
        maps = backbone(torch.randn(1, *subject.input_size))
    assert [m.shape[1] for m in maps] == backbone.feature_info.channels()
    assert backbone.feature_info.channels() == [subject.model.feature_info[i]["num_chs"] for i in (levels - 1, 0)]


def test_unknown_override_raises(subject: Subject) -> None:
    with pytest.raises(TypeError, match="drop_path_rat"):
        zoo.create_model(subject.name, drop_pth_rate=0.1)


def test_deploy_parity(subject: Subject) -> None:
    x = torch.randn(2, *subject.input_size)
    with torch.no_grad():
        ref = subject.model(x)
        out = subject.deployed(x)
    assert rel_err(out, ref) <= subject.tol
    left = blocks.remaining_norms(subject.deployed)
    assert set(left) <= set(subject.allowed_norms), f"norms left after folding: {left}"
    assert blocks.is_deployed(subject.deployed)
    again = blocks.reparameterize_model(subject.deployed, inplace=True)
    assert again is subject.deployed
    with torch.no_grad():
        assert torch.equal(again(x), out)


def test_onnx_parity(subject: Subject, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from export import export_onnx, run_onnx

    path = tmp_path / f"{subject.name}.onnx"
    export_onnx(subject.deployed, path, subject.input_size, dynamic_batch=True)
    graph = onnx.load(str(path))
    assert not list(path.parent.glob("*.data")), "expected a single self-contained file"
    if not subject.allowed_norms:
        assert not [n.op_type for n in graph.graph.node if "Normalization" in n.op_type]
    for batch in (1, 3):
        x = torch.randn(batch, *subject.input_size)
        with torch.no_grad():
            ref = subject.deployed(x)
        out = run_onnx(path, x)
        assert out.shape == ref.shape
        err = rel_err(out, ref)
        if err > subject.tol:  # deep nets with realistic BN amplify fp32 rounding: judge against their own floor
            from export.fold import judge_parity, noise_floor, rel_error

            with torch.no_grad():
                floor, _, ref64 = noise_floor(subject.deployed, x)
            err64 = rel_error(torch.as_tensor(out), ref64)
            assert judge_parity(err, err64, floor, subject.tol), (
                f"batch {batch}: {err:.2e}, vs float64 {err64:.2e}, fp32 noise floor {floor:.1e}"
            )


def test_coreml_conversion(subject: Subject) -> None:
    pytest.importorskip("coremltools")
    from export import check_coreml_spec, convert_coreml

    # float32: the model's own layers are what can fail to convert; the float16 pass is coremltools' generic graph
    # rewrite (a quarter of the conversion time), run with the shipped default in test_export_tiny.py
    mlmodel = convert_coreml(subject.deployed, subject.input_size, precision="float32")
    info = check_coreml_spec(mlmodel, (1, *subject.input_size), (1, subject.deployed.num_classes))
    assert info["ops"], "empty program"
