"""CoreML ``mlprogram`` conversion through ``torch.export`` and structural validation (prediction needs macOS)."""

from __future__ import annotations

import io
import logging
import os
import sys
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "check_coreml_spec",
    "convert_coreml",
    "coreml_class_labels",
    "coreml_unsupported_ops",
    "predict_coreml",
    "validate_coreml_package",
]


def _quiet_coremltools() -> Any:
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with redirect_stderr(io.StringIO()):
        import coremltools as ct
    return ct


class _Probabilities(nn.Module):
    """Softmax over the logits: a CoreML classifier's ``classify`` op labels probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(-1)


def convert_coreml(
    model: nn.Module,
    input_size: tuple[int, int, int],
    batch: int = 1,
    precision: str = "float16",
    input_name: str = "input",
    path: str | os.PathLike | None = None,
    image_input: dict[str, Any] | None = None,
    class_labels: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> Any:
    """Convert a deployed model to a CoreML ``mlprogram``.

    Args:
        model: eval-mode, deployed model.
        input_size: (C, H, W).
        batch: fixed batch size.
        precision: ``"float16"`` or ``"float32"`` compute precision.
        input_name: name of the input feature.
        path: where to save the ``.mlpackage`` (not saved when None).
        image_input: when given, an ``ImageType`` input with these keyword arguments (``scale``, ``bias``, ...).
        class_labels: make a classifier: softmax probabilities and the ``classLabel`` output.
        metadata: ``{key: value}`` written into the user-defined metadata; the keys ``author``, ``license``,
            ``short_description`` and ``version`` go into the standard fields.

    Returns:
        The ``coremltools.models.MLModel``.
    """
    ct = _quiet_coremltools()
    if precision not in ("float16", "float32"):
        raise ValueError(f"CoreML precision must be float16 or float32, got {precision!r}")
    if class_labels is not None:
        model = _Probabilities(model)
    example = torch.randn(batch, *input_size)
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (example,)).run_decompositions({})
    shape = (batch, *input_size)
    inp = (
        ct.ImageType(name=input_name, shape=shape, **image_input)
        if image_input is not None
        else ct.TensorType(name=input_name, shape=shape)
    )
    prec = ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32
    classifier = ct.ClassifierConfig(list(class_labels)) if class_labels is not None else None
    with redirect_stderr(io.StringIO()):  # coremltools' per-pass progress bars
        mlmodel = ct.convert(
            ep,
            convert_to="mlprogram",
            inputs=[inp],
            compute_precision=prec,
            minimum_deployment_target=ct.target.iOS16,
            classifier_config=classifier,
        )
    for key, value in (metadata or {}).items():
        if key in ("author", "license", "short_description", "version"):
            setattr(mlmodel, key, str(value))
        else:
            mlmodel.user_defined_metadata[key] = str(value)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        mlmodel.save(str(path))
    return mlmodel


def check_coreml_spec(
    mlmodel: Any, input_shape: tuple[int, ...], output_shape: tuple[int, ...] | None
) -> dict[str, Any]:
    """Structural validation that works on Linux: program type, input/output names and shapes, op set.

    ``output_shape`` None skips the output check (classifiers have a label and a dictionary output).

    Raises:
        AssertionError: with the offending detail.
    """
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise AssertionError(f"expected an mlProgram, got {spec.WhichOneof('Type')}")
    (inp,) = spec.description.input
    outs = list(spec.description.output)
    in_type = inp.type.WhichOneof("Type")
    if in_type == "multiArrayType":
        got_in = tuple(inp.type.multiArrayType.shape)
    else:
        img = inp.type.imageType
        got_in = (input_shape[0], 3 if img.colorSpace != 10 else 1, img.height, img.width)
    if got_in != tuple(input_shape):
        raise AssertionError(f"CoreML input shape {got_in} != expected {tuple(input_shape)}")
    if output_shape is not None:
        got_out = tuple(outs[0].type.multiArrayType.shape)
        if got_out != tuple(output_shape):
            raise AssertionError(f"CoreML output shape {got_out} != expected {tuple(output_shape)}")
    ops = sorted(
        {
            op.type
            for f in spec.mlProgram.functions.values()
            for b in f.block_specializations.values()
            for op in b.operations
        }
    )
    return {"input": inp.name, "input_type": in_type, "outputs": [o.name for o in outs], "ops": ops}


def coreml_unsupported_ops(ops: list[str], target: str = "iOS16") -> list[str]:
    """Ops of a program that coremltools' MIL op registry does not define for ``target`` or an earlier opset."""
    ct = _quiet_coremltools()
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    limit = getattr(ct.target, target)
    return [op for op in ops if not any(v <= limit for v in SSAOpRegistry.core_ops.get(op, {}))]


def coreml_class_labels(spec: Any) -> list[str]:
    """The class labels stored in an mlprogram classifier's ``classify`` op ([] when it is not a classifier)."""
    for f in spec.mlProgram.functions.values():
        for b in f.block_specializations.values():
            for op in b.operations:
                if op.type == "classify":
                    values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                    return [v.immediateValue.tensor.strings.values[0] for v in values]
    return []


def validate_coreml_package(
    path: str | os.PathLike,
    input_shape: tuple[int, ...],
    num_classes: int,
    class_labels: list[str] | None = None,
    expect_image: bool = False,
) -> dict[str, Any]:
    """Structural validation of a saved ``.mlpackage`` that runs on Linux (no CoreML runtime needed).

    Loads the spec back from disk, checks program type, input kind, name and shape, the outputs (the logits array,
    or ``classLabel`` + probabilities with exactly the given labels), and that every op is one coremltools defines
    for the deployment target (iOS16).

    Raises:
        AssertionError: with the offending detail.
    """
    ct = _quiet_coremltools()
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    out_shape = (input_shape[0], num_classes) if class_labels is None else None
    info = check_coreml_spec(mlmodel, input_shape, out_shape)
    if expect_image != (info["input_type"] == "imageType"):
        raise AssertionError(
            f"CoreML input is a {info['input_type']}, expected {'an image' if expect_image else 'a tensor'}"
        )
    if class_labels is not None:
        if spec.description.predictedFeatureName != "classLabel" or not spec.description.predictedProbabilitiesName:
            raise AssertionError(f"CoreML classifier outputs are {info['outputs']}")
        labels = coreml_class_labels(spec)
        if labels != list(class_labels):
            raise AssertionError(f"CoreML class labels {labels[:5]}... differ from the expected {class_labels[:5]}...")
        info["probabilities_output"] = spec.description.predictedProbabilitiesName
    bad = coreml_unsupported_ops(info["ops"])
    if bad:
        raise AssertionError(f"CoreML program uses ops not defined for iOS16: {bad}")
    info["metadata"] = dict(spec.description.metadata.userDefined)
    return info


def predict_coreml(path: str | os.PathLike, x: torch.Tensor, image: bool) -> torch.Tensor:
    """Run a saved package with CoreML (macOS only) on a batch of 1; returns the logits or probabilities.

    ``x`` is (1, 3, H, W): pixels in 0..255 for an image input, else the tensor the model takes.

    Raises:
        RuntimeError: not on macOS.
    """
    if sys.platform != "darwin":
        raise RuntimeError("CoreML prediction needs macOS; on this platform the package is validated structurally")
    import numpy as np

    ct = _quiet_coremltools()
    mlmodel = ct.models.MLModel(str(path))
    spec = mlmodel.get_spec()
    name = spec.description.input[0].name
    if image:
        from PIL import Image

        arr = x[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()  # C, H, W -> H, W, C
        feed = {name: Image.fromarray(arr, "RGB")}
    else:
        feed = {name: x.numpy().astype(np.float32)}
    out = mlmodel.predict(feed)
    probs_name = spec.description.predictedProbabilitiesName
    if probs_name:
        labels = coreml_class_labels(spec)
        return torch.tensor([[out[probs_name][k] for k in labels]], dtype=torch.float32)
    return torch.from_numpy(np.asarray(out[spec.description.output[0].name], dtype=np.float32))
