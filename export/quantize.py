"""INT8 ONNX: onnxruntime static quantization (explicit Q/DQ, per-channel weights) and its calibration data.

The Q/DQ file is symmetric INT8 for weights and activations (zero point 0): the form TensorRT's strongly typed
networks build INT8 engines from, and one onnxruntime runs on the CPU. Calibration inputs come from real images
(``--calib-data DIR`` or ``digits``) or, with none, are synthesised data-free by :func:`synthesize_zeroq`: images
optimised so that the batch statistics at every BatchNorm match its running statistics (the idea of ZeroQ, Cai et al.,
CVPR 2020, arXiv 2001.00281), which needs no training data at all.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import normalize

__all__ = [
    "CALIBRATION_METHODS",
    "QUANTIZED_OPS",
    "compare_top1",
    "preprocess_for_int8",
    "quantizable_nodes",
    "quantize_int8",
    "synthesize_zeroq",
]

log = logging.getLogger(__name__)

#: Ops whose inputs get Q/DQ pairs: the weighted ops and the residual Add, where TensorRT's explicit quantization
#: expects them (softmax, normalization and reshapes stay in float).
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add")


def synthesize_zeroq(
    model: nn.Module,
    input_size: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num: int = 32,
    steps: int = 100,
    lr: float = 0.1,
    seed: int = 0,
) -> torch.Tensor | None:
    """Synthesise calibration images from the BatchNorm statistics of ``model`` (train-time form, BNs present).

    Pixels are parameterised as ``sigmoid(z)`` so they stay valid images in [0, 1]; ``z`` is optimised with Adam so
    that, at every BatchNorm's input, the per-channel batch mean and standard deviation match the layer's running
    mean and ``sqrt(running_var)``.

    Returns:
        Pixels in [0, 1], (num, C, H, W); None when the model has no BatchNorm to match.
    """
    model = copy.deepcopy(model).eval()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return None
    for p in model.parameters():
        p.requires_grad_(False)
    seen: list[torch.Tensor] = []

    def hook(bn: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]
        mu, sd = x.mean(dims), (x.var(dims, unbiased=False) + bn.eps).sqrt()
        seen.append(((mu - bn.running_mean) ** 2).mean() + ((sd - (bn.running_var + bn.eps).sqrt()) ** 2).mean())

    handles = [bn.register_forward_hook(hook) for bn in bns]
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(num, *input_size, generator=gen) * 0.5).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    try:
        for _ in range(steps):
            seen.clear()
            model(normalize(torch.sigmoid(z), mean, std))
            loss = torch.stack(seen).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for h in handles:
            h.remove()
    return torch.sigmoid(z).detach()


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over a tensor, in batches of ``batch``."""

    def __init__(self, name: str, inputs: torch.Tensor, batch: int) -> None:
        arr = inputs.float().numpy()
        self._batches = iter([{name: arr[i : i + batch]} for i in range(0, len(arr) - batch + 1, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def __iter__(self):  # noqa: ANN204 - onnxruntime also iterates readers
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


#: ``--int8-calibration`` names -> onnxruntime's CalibrationMethod members.
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def preprocess_for_int8(fp32_path: str | os.PathLike, pre_path: str | os.PathLike) -> tuple[Path, str | None]:
    """onnxruntime's ``quant_pre_process`` (shape inference, fusions) once per export; returns the file to quantize
    and the pre-processing error (None when it worked; the FP32 file is quantized as it is otherwise)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            quant_pre_process(str(fp32_path), str(pre_path), skip_symbolic_shape=False)
            return Path(pre_path), None
        except Exception as e:  # noqa: BLE001 - pre-processing is an optimisation; quantize the file as it is
            log.warning("onnxruntime quant_pre_process failed (%s); quantizing without it", e)
            return Path(fp32_path), f"{type(e).__name__}: {e}"


def quantizable_nodes(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``(node name, op type)`` of every node whose inputs get Q/DQ pairs, in graph order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [(n.name, n.op_type) for n in graph.node if n.op_type in QUANTIZED_OPS and n.name]


def quantize_int8(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calib_inputs: torch.Tensor | None,
    batch: int,
    input_name: str = "input",
    calibration: str = "minmax",
    reduce_range: bool = False,
    exclude: tuple[str, ...] | list[str] = (),
    cache: str | os.PathLike | None = None,
    preprocessed: str | os.PathLike | None = None,
    op_types: tuple[str, ...] = QUANTIZED_OPS,
) -> dict[str, Any]:
    """Quantize an FP32 ONNX file statically to INT8 Q/DQ (per-channel symmetric weights, symmetric activations).

    Args:
        fp32_path: the FP32 ONNX.
        int8_path: where to write the Q/DQ ONNX.
        calib_inputs: calibration inputs in the artifact's input space (None: ranges come from ``cache``).
        batch: calibration batch size (the file's fixed batch, or any for a dynamic one).
        input_name: the graph input.
        calibration: ``minmax``, ``percentile`` (99.999th) or ``entropy``.
        reduce_range: 7-bit weights, so that 8-bit x 8-bit products cannot saturate the 16-bit intermediate sums of
            x86 kernels without VNNI (onnxruntime's advice for such CPUs).
        exclude: node names left in float (their inputs get no Q/DQ).
        cache: a calibration-range file (onnxruntime's JSON cache): read when it exists, else written, so that many
            variants of one model share one calibration; also how QAT-learned ranges are supplied.
        preprocessed: the output of :func:`preprocess_for_int8`, when already made.
        op_types: the ops whose inputs get Q/DQ pairs (default :data:`QUANTIZED_OPS`).

    Returns:
        The settings used, for the manifest.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calibration not in CALIBRATION_METHODS:
        raise ValueError(f"unknown INT8 calibration {calibration!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    int8_path = Path(int8_path)
    settings: dict[str, Any] = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": f"int{7 if reduce_range else 8} range in int8, per-channel, symmetric",
        "activations": "int8, per-tensor, symmetric",
        "quantized_ops": list(op_types),
        "calibration": calibration,
        "reduce_range": reduce_range,
        "float_nodes": list(exclude),
        "calibration_images": None if calib_inputs is None else len(calib_inputs),
    }
    pre_error = None
    if preprocessed is None:
        pre = int8_path.with_suffix(".pre.onnx")
        src, pre_error = preprocess_for_int8(fp32_path, pre)
    else:
        pre, src = None, Path(preprocessed)
    if pre_error:
        settings["pre_process_error"] = pre_error
    reader = _Reader(input_name, calib_inputs, batch) if calib_inputs is not None else None
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if calibration == "percentile":
        extra["CalibPercentile"] = 99.999
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            quantize_static(
                str(src),
                str(int8_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calibration]),
                op_types_to_quantize=list(op_types),
                nodes_to_exclude=list(exclude),
                extra_options=extra,
                calibration_cache_path=None if cache is None else str(cache),
            )
        finally:
            if pre is not None and pre.exists():
                pre.unlink()
    return settings


def compare_top1(
    ref_logits: torch.Tensor, int8_logits: torch.Tensor, labels: torch.Tensor | None
) -> dict[str, float | None]:
    """Top-1 accuracy of both (when labels are given) and the top-1 agreement between them, in percent."""
    ref, q = ref_logits.argmax(-1), int8_logits.argmax(-1)
    out: dict[str, float | None] = {"agreement": 100.0 * (ref == q).float().mean().item(), "images": len(ref)}
    if labels is not None:
        out["top1_fp32"] = 100.0 * (ref == labels).float().mean().item()
        out["top1_int8"] = 100.0 * (q == labels).float().mean().item()
        out["drop"] = out["top1_fp32"] - out["top1_int8"]
    return out
