"""CoreML ``mlprogram`` conversion through ``torch.export`` and structural validation (prediction needs macOS)."""

from __future__ import annotations

import io
import logging
import os
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["convert_coreml", "check_coreml_spec"]


def _quiet_coremltools() -> Any:
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with redirect_stderr(io.StringIO()):
        import coremltools as ct
    return ct


def convert_coreml(
    model: nn.Module,
    input_size: tuple[int, int, int],
    batch: int = 1,
    precision: str = "float16",
    input_name: str = "input",
    path: str | os.PathLike | None = None,
    image_input: dict[str, Any] | None = None,
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

    Returns:
        The ``coremltools.models.MLModel``.
    """
    ct = _quiet_coremltools()
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
    with redirect_stderr(io.StringIO()):  # coremltools' per-pass progress bars
        mlmodel = ct.convert(
            ep,
            convert_to="mlprogram",
            inputs=[inp],
            compute_precision=prec,
            minimum_deployment_target=ct.target.iOS16,
        )
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        mlmodel.save(str(path))
    return mlmodel


def check_coreml_spec(mlmodel: Any, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> dict[str, Any]:
    """Structural validation that works on Linux: program type, input/output names and shapes, op set.

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
    return {"input": inp.name, "outputs": [o.name for o in outs], "ops": ops}
