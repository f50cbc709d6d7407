"""ONNX export: the dynamo exporter first, the TorchScript exporter as fallback; one self-contained file."""

from __future__ import annotations

import copy
import io
import logging
import os
import shutil
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "OnnxExportResult",
    "check_onnx_graph",
    "convert_to_ort",
    "export_onnx",
    "export_onnx_fp16",
    "ort_session",
    "run_onnx",
    "set_onnx_metadata",
    "slim_onnx",
]

MIN_OPSET = 17

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
    optimize: bool = True,
) -> OnnxExportResult:
    """Export ``model`` (eval mode, already deployed) to a single ``.onnx`` file.

    With ``dynamic_batch`` the example input has batch 2, because torch.export specialises a dimension whose example
    size is 1: the batch then stays really symbolic in the graph. ``optimize=False`` skips the dynamo exporter's own
    graph optimizer (slow), for callers that run onnxslim afterwards.

    Returns:
        What was produced and by which exporter (``"dynamo"`` or ``"torchscript"``, with the reason for the fallback).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}: the exporter needs opset {MIN_OPSET} or newer")
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
                optimize=optimize,
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


def ort_session(path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None) -> Any:
    """An onnxruntime ``InferenceSession`` for an ``.onnx`` or ``.ort`` file (CPU unless ``providers`` says)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # no busy-waiting threads left behind to slow whatever runs next (other candidates timed in alternation)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def run_onnx(
    path: str | os.PathLike | Any, x: torch.Tensor, threads: int | None = None, batch: int | None = None
) -> torch.Tensor:
    """Run an ONNX/ORT file (or an existing session) with onnxruntime on the CPU and return the first output.

    With ``batch``, ``x`` is fed in chunks of that size (for files exported with a fixed batch).
    """
    sess = path if hasattr(path, "run") else ort_session(path, threads)
    name = sess.get_inputs()[0].name
    xs = x.detach().cpu().float().numpy()
    step = batch or len(xs)
    outs = [sess.run(None, {name: xs[i : i + step]})[0] for i in range(0, len(xs), step)]
    return torch.from_numpy(np.concatenate(outs))


class _HalfIO(nn.Module):
    """Runs ``model`` in float16 between float32 input and output (Cast nodes at the graph's edges)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def export_onnx_fp16(
    model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int, int], **kwargs: Any
) -> OnnxExportResult:
    """Export an FP16 ONNX (weights and activations float16, float32 input/output) of a deployed model.

    This is what a strongly typed TensorRT network builds an FP16 engine from. Keyword arguments go to
    :func:`export_onnx`.
    """
    half = _HalfIO(copy.deepcopy(model).half()).eval()
    return export_onnx(half, path, input_size, **kwargs)


def slim_onnx(path: str | os.PathLike) -> str | None:
    """Simplify the file in place with onnxslim (constant folding, dead nodes, fusions). Returns an error or None."""
    import onnx
    import onnxslim

    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(str(path))
        onnx.save(slim, str(path))
    except Exception as e:  # noqa: BLE001 - an onnxslim failure keeps the unslimmed (valid) file; reason recorded
        log.warning("onnxslim failed (%s); keeping the file as exported", e)
        return f"{type(e).__name__}: {e}"
    return None


def check_onnx_graph(path: str | os.PathLike, dynamic_batch: bool, forbid_norms: bool) -> dict[str, Any]:
    """Structural checks: ``onnx.checker``, opset >= 17, symbolic batch when asked, no BatchNormalization left.

    Raises:
        AssertionError: with the offending detail.
    """
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        raise AssertionError(f"{path}: opset {opset} < {MIN_OPSET}")
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    if dynamic_batch and not dim0.dim_param:
        raise AssertionError(f"{path}: batch dimension is fixed ({dim0.dim_value}) although --dynamic-batch was asked")
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    norms = {k: v for k, v in ops.items() if k in ("BatchNormalization", "InstanceNormalization")}
    if forbid_norms and norms:
        raise AssertionError(f"{path}: normalization nodes left although every norm folds: {norms}")
    return {"opset": opset, "batch_dim": dim0.dim_param or dim0.dim_value, "nodes": sum(ops.values()), "ops": ops}


def set_onnx_metadata(path: str | os.PathLike, metadata: dict[str, str], doc: str = "") -> None:
    """Write ``metadata`` into the file's ``metadata_props`` (and the graph doc string), in place."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    if doc:
        model.doc_string = doc
    onnx.save(model, str(path))


def convert_to_ort(onnx_path: str | os.PathLike, ort_path: str | os.PathLike) -> Path:
    """Convert an ONNX file to onnxruntime's mobile ``.ort`` format with onnxruntime's own converter.

    The converter's "fixed" optimization style is used: graph optimizations are applied and saved, so the file runs
    on a minimal onnxruntime build without them.
    """
    import tempfile

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(dir=Path(ort_path).parent) as tmp:
        src = Path(tmp) / "model.onnx"
        shutil.copyfile(onnx_path, src)
        with redirect_stdout(io.StringIO()):
            convert_onnx_models_to_ort(src, output_dir=Path(tmp) / "out", optimization_styles=[OptimizationStyle.Fixed])
        (produced,) = list((Path(tmp) / "out").glob("*.ort"))
        shutil.move(str(produced), str(ort_path))
    return Path(ort_path)
