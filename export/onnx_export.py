"""ONNX export: the dynamo exporter first, the TorchScript exporter as fallback; one self-contained file."""

from __future__ import annotations

import io
import logging
import os
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_onnx", "OnnxExportResult", "run_onnx"]

log = logging.getLogger(__name__)


class OnnxExportResult(dict):
    """``{"path", "exporter", "opset", "dynamic_batch", "fallback_reason"}`` of one export."""


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int],
    batch: int = 1,
    dynamic_batch: bool = False,
    opset: int = 18,
    input_name: str = "input",
    output_name: str = "logits",
) -> OnnxExportResult:
    """Export ``model`` (eval mode, already deployed) to a single ``.onnx`` file.

    With ``dynamic_batch`` the example input has batch 2, because torch.export specialises a dimension whose example
    size is 1: the batch then stays really symbolic in the graph.

    Returns:
        What was produced and by which exporter (``"dynamo"`` or ``"torchscript"``, with the reason for the fallback).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.randn(2 if dynamic_batch else batch, *input_size)
    result = OnnxExportResult(path=str(path), opset=opset, dynamic_batch=dynamic_batch, fallback_reason=None)
    try:
        dyn = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                dynamic_shapes=_rename_dynamic(model, dyn),
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                verbose=False,
            )
            prog.save(str(path), external_data=False)
        result["exporter"] = "dynamo"
    except Exception as e:  # noqa: BLE001 - any dynamo failure falls back, and the reason is recorded
        log.warning("dynamo ONNX export failed (%s); falling back to the TorchScript exporter", e)
        result["fallback_reason"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None,
            )
        result["exporter"] = "torchscript"
    return result


def _rename_dynamic(model: nn.Module, dyn: dict | None) -> dict | None:
    """Key the dynamic-shape spec by the name of ``model.forward``'s first argument."""
    if dyn is None:
        return None
    import inspect

    first = next(iter(inspect.signature(model.forward).parameters))
    return {first: dyn["x"]}


def run_onnx(path: str | os.PathLike, x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """Run an ONNX file with onnxruntime on the CPU and return the first output."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().numpy()})[0]
    return torch.from_numpy(out)
