"""One builder per format. Each writes into the staging directory, checks what it wrote, and returns its record.

A builder raises (``ParityError``, ``FormatUnavailableError``, ...) instead of returning when its artifact cannot be
trusted; the orchestrator then drops that format's files. Records are plain dicts that go into ``manifest.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .coreml_export import convert_coreml, predict_coreml, validate_coreml_package
from .data import normalize
from .errors import ExportError, ParityError
from .executorch_export import export_pte, export_pte_int8, load_pte
from .fold import FLOOR_FACTOR, PixelInput, judge_parity, noise_floor, rel_error
from .int8 import Int8BudgetError, default_reduce_range, evaluate_int8, int8_capability, search_onnx_int8
from .latency import time_side_by_side
from .onnx_export import (
    check_onnx_graph,
    convert_to_ort,
    export_onnx,
    export_onnx_fp16,
    ort_session,
    run_onnx,
    set_onnx_metadata,
    slim_onnx,
)
from .quantize import synthesize_zeroq

__all__ = ["BUILDERS", "INT8_FORMATS", "Job", "TOLERANCES", "probe_inputs"]

#: Formats judged by the INT8 accuracy gate.
INT8_FORMATS = {"onnx-int8", "executorch-int8", "tensorrt"}

#: Relative tolerances (max abs difference / max abs output) of each artifact against the PyTorch model.
TOLERANCES = {"fp32": 1e-4, "fp16": 5e-2, "coreml-fp16": 5e-2, "coreml-fp32": 1e-3, "trt-fp32": 1e-3, "trt-int8": 1e-1}


@dataclass
class Job:
    """Everything the builders share: options, the folded model, inputs for checks, and what was built so far.

    Attributes:
        graph: the deployed model as the artifacts take it (with the mean subtraction when the input norm is folded).
        probes: ``(label, input)`` pairs in the artifact's input space for the parity checks.
        calib: calibration inputs (artifact input space) or None (then data-free).
        val: ``(inputs, labels or None, source)`` for the INT8 top-1 comparison, or None.
        files: intermediate files by key (``onnx``, ``onnx-fp16``, ``onnx-int8``).
        runners: ``{label: fn(x) -> output}`` of everything that runs here, for the latency table.
    """

    opts: Any
    loaded: Any
    deployed: nn.Module
    graph: nn.Module
    staging: Path
    out_dir: Path
    metadata: dict[str, str]
    probes: list[tuple[str, torch.Tensor]]
    calib: torch.Tensor | None
    val: tuple[torch.Tensor, torch.Tensor | None, str] | None
    forbid_norms: bool
    files: dict[str, Path] = field(default_factory=dict)
    calibration: tuple[torch.Tensor, dict[str, Any]] | None = None
    gate: tuple[torch.Tensor, torch.Tensor | None, str] | None = None
    runners: dict[str, Callable[[torch.Tensor], Any]] = field(default_factory=dict)
    references: dict[tuple, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return self.loaded.name

    def artifact_input(self, pixels01: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> what the artifact takes: raw pixels (input norm folded) or normalized tensors."""
        if isinstance(self.graph, PixelInput):
            return pixels01 * self.opts.pixel_range
        return normalize(pixels01, self.loaded.cfg["mean"], self.loaded.cfg["std"])

    def reference(self, label: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The graph's fp32 and float64 outputs on probe ``x`` and its noise floor, computed once per probe."""
        key = (label, tuple(x.shape))
        if key not in self.references:
            floor, ref32, ref64 = noise_floor(self.graph, x)
            self.references[key] = (ref32, ref64, floor)
        return self.references[key]

    def require(self, key: str) -> Path:
        if key not in self.files:
            raise ExportError(f"needs the {key} file, which was not produced (see that format's error)")
        return self.files[key]


def _check(fmt: str, job: Job, run: Callable[[torch.Tensor], torch.Tensor], tol: float) -> dict[str, Any]:
    """Parity of ``run`` against the PyTorch graph on every probe; raises ParityError when it fails.

    Each probe is judged against ``tol`` (relative to the fp32 graph) and against the graph's own fp32 noise floor
    on that probe (fp32 graph vs its float64 copy): an artifact within ``FLOOR_FACTOR`` x that floor of the float64
    output is as right as fp32 can be, even where rounding is amplified past ``tol``.
    """
    errors: dict[str, float] = {}
    detail: dict[str, dict[str, float]] = {}
    failed = []
    for label, x in job.probes:
        ref, ref64, floor = job.reference(label, x)
        out = torch.as_tensor(run(x)).float()
        if tuple(out.shape) != tuple(ref.shape):
            raise ParityError(
                fmt, float("inf"), tol, f"output shape {tuple(out.shape)} != {tuple(ref.shape)} ({label})"
            )
        errors[label] = rel_error(out, ref)
        detail[label] = {"error_vs_float64": rel_error(out, ref64), "noise_floor": floor}
        if not judge_parity(errors[label], detail[label]["error_vs_float64"], floor, tol):
            failed.append(label)
    worst = max(errors.values())
    if failed:
        why = ", ".join(
            f"{k}: {errors[k]:.2e} (vs float64 {detail[k]['error_vs_float64']:.2e}, fp32 noise floor "
            f"{detail[k]['noise_floor']:.1e})"
            for k in failed
        )
        raise ParityError(fmt, worst, tol, f"{why}; passes within tol or {FLOOR_FACTOR:g}x the noise floor")
    return {
        "error": worst,
        "tol": tol,
        "error_vs_float64": max(d["error_vs_float64"] for d in detail.values()),
        "noise_floor": max(d["noise_floor"] for d in detail.values()),
        "floor_factor": FLOOR_FACTOR,
        "verdict": "within tol" if worst <= tol else f"within {FLOOR_FACTOR:g}x the fp32 noise floor",
        "per_input": errors,
        "per_input_float64": detail,
        "reference": "PyTorch (folded model, fp32; float64 copy for the noise floor)",
    }


def _onnx_file(job: Job, model: nn.Module, path: Path, fp16: bool) -> dict[str, Any]:
    o = job.opts
    export = export_onnx_fp16 if fp16 else export_onnx
    res = export(model, path, job.loaded.input_size, batch=o.batch, dynamic_batch=o.dynamic_batch, opset=o.opset)
    slim_error = slim_onnx(path)
    try:
        graph = check_onnx_graph(path, o.dynamic_batch, job.forbid_norms)
    except AssertionError as e:
        raise ExportError(f"onnx: {e}") from e
    set_onnx_metadata(path, job.metadata, doc=f"{job.stem} exported by efficient-zoo")
    sess = ort_session(path, o.threads)
    fmt = "onnx-fp16" if fp16 else "onnx"
    parity = _check(fmt, job, lambda x: run_onnx(sess, x), TOLERANCES["fp16" if fp16 else "fp32"])
    job.runners[f"onnxruntime {'fp16' if fp16 else 'fp32'}"] = lambda x: run_onnx(sess, x)
    job.files[fmt] = path
    return {
        "exporter": res["exporter"],
        "fallback_reason": res["fallback_reason"],
        "opset": graph["opset"],
        "batch_dim": graph["batch_dim"],
        "nodes": graph["nodes"],
        "onnxslim": "applied" if slim_error is None else f"failed, file kept unslimmed: {slim_error}",
        "parity": parity,
    }


def build_onnx(job: Job) -> dict[str, Any]:
    """FP32 ONNX (and the FP16 one with ``--half``), slimmed, checked structurally and with onnxruntime."""
    path = job.staging / f"{job.stem}.onnx"
    rec = _onnx_file(job, job.graph, path, fp16=False)
    rec["files"] = [path]
    if job.opts.half:
        path16 = job.staging / f"{job.stem}.fp16.onnx"
        rec["fp16"] = _onnx_file(job, job.graph, path16, fp16=True)
        rec["files"].append(path16)
    return rec


def _calibration(job: Job) -> tuple[torch.Tensor, dict[str, Any]]:
    """Calibration inputs (artifact input space), made once per job and shared by the INT8 formats."""
    if job.calibration is None:
        job.calibration = _make_calibration(job)
    return job.calibration


def _make_calibration(job: Job, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    o = job.opts
    if job.calib is not None and seed == 0:
        return job.calib, {"source": o.calib_data, "images": len(job.calib)}
    cfg = job.loaded.cfg
    pixels = synthesize_zeroq(
        job.loaded.model, job.loaded.input_size, cfg["mean"], cfg["std"], o.calib_size, o.zeroq_steps, seed=seed
    )
    if pixels is None:
        gen = torch.Generator().manual_seed(seed)
        pixels = torch.rand(o.calib_size, *job.loaded.input_size, generator=gen)
        return job.artifact_input(pixels), {
            "source": f"uniform random pixels (no BatchNorm to match; seed {seed})",
            "images": o.calib_size,
        }
    info = {
        "source": f"data-free: ZeroQ, BatchNorm statistics matched ({o.zeroq_steps} Adam steps, seed {seed})",
        "images": len(pixels),
    }
    return job.artifact_input(pixels), info


def gate_data(job: Job) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """The held-out images every INT8 format is judged on: the validation data, or (data-free) a second synthetic
    set made with another seed than the calibration images."""
    if job.gate is None:
        if job.val is not None:
            job.gate = job.val
        elif job.calib is not None:  # calibration images only: the exporter holds some out (export.api._data)
            raise ExportError("INT8 needs held-out images for its accuracy gate: give --val-data")
        else:
            x, info = _make_calibration(job, seed=1)
            job.gate = (x, None, info["source"] + ", not the calibration images")
    return job.gate


def _int8_record(verdict: dict[str, Any]) -> dict[str, Any]:
    """The gate's figures as the manifest and the summary table show them."""
    return {**verdict, "cpu": int8_capability()}


class _Normalized(nn.Module):
    """Artifact pixels -> normalized input -> ``core``: a QAT graph whose first range was learned on normalized
    inputs keeps the normalization as an explicit Sub and Mul ahead of its first Q/DQ pair."""

    def __init__(self, core: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], pixel_range: float) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("shift", torch.tensor(mean).view(1, -1, 1, 1) * pixel_range)
        self.register_buffer("gain", 1.0 / (torch.tensor(std).view(1, -1, 1, 1) * pixel_range))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core((x - self.shift) * self.gain)


def _qat_graph(job: Job) -> tuple[nn.Module, int]:
    """The QAT graph frozen for export (learned ranges as Q/DQ constants) and its weight bit width: the trained one,
    or 7 bits where this CPU saturates 8-bit products (``--int8-reduce-range auto``), or as forced."""
    from blocks.qat import export_form

    qat = job.loaded.qat
    forced = job.opts.reduce_range
    seven = forced if forced is not None else (qat.qat["weight_bits"] == 7 or default_reduce_range())
    graph: nn.Module = export_form(qat, 63 if seven else 127)
    if isinstance(job.graph, PixelInput):
        cfg = job.loaded.cfg
        graph = _Normalized(graph, cfg["mean"], cfg["std"], float(job.opts.pixel_range)).eval()
    return graph, 7 if seven else 8


def _build_onnx_qat(job: Job, run: Callable[[Path, torch.Tensor], torch.Tensor], gate: tuple) -> dict[str, Any]:
    """INT8 Q/DQ ONNX written from a QAT checkpoint's graph with its learned ranges (no calibration), judged by the
    same gate as post-training quantization."""
    import onnx

    o = job.opts
    graph, bits = _qat_graph(job)
    path = job.staging / f"{job.stem}.int8.onnx"
    res = export_onnx(graph, path, job.loaded.input_size, batch=o.batch, dynamic_batch=o.dynamic_batch, opset=o.opset)
    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    qat = job.loaded.qat.qat
    settings = {
        "tool": "QAT (blocks.qat, zoo train --qat) -> torch.onnx Q/DQ",
        "format": "QDQ",
        "ranges": f"learned in training: {qat['activations']} activation ranges (no calibration)",
        "weights": f"int{bits} range in int8, per-channel, symmetric (trained at {qat['weight_bits']} bits)",
        "activations": "int8, per-tensor, symmetric",
        "exporter": res["exporter"],
        "quantize_nodes": ops.count("QuantizeLinear"),
        "dequantize_nodes": ops.count("DequantizeLinear"),
        "input_normalization": "Sub + Mul ahead of the first Q/DQ" if isinstance(graph, _Normalized) else None,
        "qat": qat,
    }
    x, labels, source = gate
    verdict = evaluate_int8(run(job.require("onnx"), x), run(path, x), labels, o.int8_budget, source)
    if not verdict["passed"]:
        path.unlink()
        raise Int8BudgetError("onnx-int8", verdict, {"top1": _int8_record(verdict), "quantization": settings})
    return {"settings": settings, "verdict": verdict, "path": path, "calibration": {"source": "none: QAT ranges"}}


def _placement_timer(job: Job) -> Callable[[dict[str, Path]], dict[str, float]] | None:
    """Times candidate INT8 files side by side with onnxruntime here, so that the Q/DQ placement is picked on the
    machine that runs it. None (keep Q/DQ on the residual Adds) when TensorRT is a target, since its explicit
    quantization fuses Q/DQ'd Adds into the convolutions, or when latency measurement is off."""
    o = job.opts
    if "tensorrt" in o.formats or o.latency_seconds <= 0 or o.int8_placement == "qdq":
        return None
    x = job.probes[0][1][: o.batch].numpy()

    def timer(files: dict[str, Path]) -> dict[str, float]:
        sessions = {k: ort_session(v, o.threads) for k, v in files.items()}
        name = next(iter(sessions.values())).get_inputs()[0].name
        cands = {k: (lambda s=s: s.run(None, {name: x})) for k, s in sessions.items()}
        timing = time_side_by_side(cands, warmup=3, min_runs=10, min_seconds=o.latency_seconds, max_runs=300)
        return {k: round(t.median_ms, 4) for k, t in timing.items()}

    return timer


def build_onnx_int8(job: Job) -> dict[str, Any]:
    """Accuracy-aware INT8 Q/DQ ONNX from the FP32 one (or from a QAT checkpoint's learned ranges), judged by the
    INT8 gate on held-out images."""
    o = job.opts
    fp32 = job.require("onnx")
    calib, calib_info = _calibration(job) if job.loaded.qat is None else (None, {})
    gate = gate_data(job)
    path = job.staging / f"{job.stem}.int8.onnx"
    batch = o.batch if not o.dynamic_batch or calib is None else min(16, len(calib))
    step = None if o.dynamic_batch else o.batch

    def run(p: Path, x: torch.Tensor) -> torch.Tensor:
        n = len(x) - len(x) % step if step else len(x)
        return torch.as_tensor(run_onnx(ort_session(p, o.threads), x[:n], batch=step)).float()

    n_gate = len(gate[0]) - len(gate[0]) % step if step else len(gate[0])
    gate = (gate[0][:n_gate], None if gate[1] is None else gate[1][:n_gate], gate[2])
    if job.loaded.qat is not None:
        built = _build_onnx_qat(job, run, gate)
        settings, verdict, calib_info = built["settings"], built["verdict"], built["calibration"]
    else:
        try:
            settings, verdict = search_onnx_int8(
                fp32, path, calib, batch, gate, run, o.int8_budget, o.int8_calibration, o.reduce_range,
                o.int8_fallback, timer=_placement_timer(job),
            )  # fmt: skip
        except Int8BudgetError as e:
            e.record = {"top1": _int8_record(e.verdict), "calibration": calib_info, "search": e.record}
            raise
    try:
        check_onnx_graph(path, o.dynamic_batch, job.forbid_norms)
    except AssertionError as e:
        raise ExportError(f"onnx-int8: {e}") from e
    set_onnx_metadata(path, {**job.metadata, "quantization": "int8 QDQ per-channel symmetric"})
    sess_q, sess_f = ort_session(path, o.threads), ort_session(fp32, o.threads)
    x = job.probes[0][1]
    job.runners["onnxruntime int8"] = lambda t: run_onnx(sess_q, t)
    job.files["onnx-int8"] = path
    return {
        "files": [path],
        "quantization": settings,
        "calibration": calib_info,
        "top1": _int8_record(verdict),
        "parity": {"error": rel_error(run_onnx(sess_q, x), run_onnx(sess_f, x)), "tol": None, "reference": "FP32 ONNX"},
    }


def build_ort(job: Job) -> dict[str, Any]:
    """onnxruntime's mobile ``.ort`` format of the FP32 ONNX, checked by loading it back."""
    path = convert_to_ort(job.require("onnx"), job.staging / f"{job.stem}.ort")
    sess = ort_session(path, job.opts.threads)
    parity = _check("ort", job, lambda x: run_onnx(sess, x), TOLERANCES["fp32"])
    job.runners["onnxruntime .ort"] = lambda x: run_onnx(sess, x)
    return {"files": [path], "optimization_style": "Fixed", "parity": parity}


class _Normalize(nn.Module):
    """Takes pixels in [0, 1] and normalizes them in the graph (CoreML image input without a folded norm)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) * self.inv_std)


def _coreml_model(job: Job) -> tuple[nn.Module, dict[str, Any] | None, str]:
    """The module to convert, the ``ImageType`` arguments (None: tensor input) and what the input means."""
    o, cfg = job.opts, job.loaded.cfg
    if o.coreml_input == "tensor":
        return job.graph, None, "tensor, as the ONNX input"
    if isinstance(job.graph, PixelInput):
        bias = [-m * o.pixel_range for m in cfg["mean"]]
        image = {"scale": o.pixel_range / 255.0, "bias": bias, "color_layout": "RGB"}
        return job.graph.core, image, "RGB image; ImageType scale/bias subtract the mean, 1/std is in the first conv"
    image = {"scale": 1.0 / 255.0, "bias": [0.0, 0.0, 0.0], "color_layout": "RGB"}
    return _Normalize(job.deployed, cfg["mean"], cfg["std"]), image, "RGB image; normalization in the graph"


def build_coreml(job: Job) -> dict[str, Any]:
    """CoreML mlprogram; structural validation here, prediction parity on macOS only."""
    o = job.opts
    model, image, meaning = _coreml_model(job)
    path = job.staging / f"{job.stem}.mlpackage"
    classes = job.loaded.classes
    meta = {**job.metadata, "author": "efficient-zoo export", "license": job.metadata.get("weights_license", "")}
    convert_coreml(model, job.loaded.input_size, o.batch, o.coreml_precision, "input", path, image, classes, meta)
    shape = (o.batch, *job.loaded.input_size)
    try:
        info = validate_coreml_package(path, shape, job.loaded.num_classes, classes, image is not None)
    except AssertionError as e:
        raise ExportError(f"coreml: {e}") from e
    rec = {"files": [path], "precision": o.coreml_precision, "input": meaning, "structure": info}
    if sys.platform == "darwin":
        rec["parity"] = _coreml_parity(job, path, image is not None, classes is not None)
    else:
        rec["parity"] = {"checked": "structurally (spec, input/output, labels, ops); CoreML predicts only on macOS"}
    return rec


def _coreml_parity(job: Job, path: Path, image: bool, probs: bool) -> dict[str, Any]:
    tol = TOLERANCES[f"coreml-{'fp16' if job.opts.coreml_precision == 'float16' else 'fp32'}"]
    gen = torch.Generator().manual_seed(2)
    pixels = torch.randint(0, 256, (1, *job.loaded.input_size), generator=gen).float()
    x = pixels if image else job.artifact_input(pixels / 255.0)
    with torch.no_grad():
        ref = job.graph(job.artifact_input(pixels / 255.0))
    ref = ref.softmax(-1) if probs else ref
    err = rel_error(predict_coreml(path, x, image), ref)
    if err > tol:
        raise ParityError("coreml", err, tol, "CoreML prediction on macOS")
    return {"error": err, "tol": tol, "reference": "PyTorch (folded model)"}


def build_executorch(job: Job) -> dict[str, Any]:
    """ExecuTorch ``.pte`` with the XNNPACK delegate, run back with ExecuTorch's runtime for parity."""
    path = export_pte(job.graph, job.staging / f"{job.stem}.pte", job.loaded.input_size, job.opts.batch)
    runner = load_pte(path)
    fixed = [(k, v) for k, v in job.probes if v.shape[0] == job.opts.batch] or [
        ("random", job.probes[0][1][:1].expand(job.opts.batch, -1, -1, -1).contiguous())
    ]
    saved, job.probes = job.probes, fixed
    try:
        parity = _check("executorch", job, runner, TOLERANCES["fp32"])
    finally:
        job.probes = saved
    job.runners["executorch xnnpack"] = runner
    return {"files": [path], "delegate": "XNNPACK", "precision": "fp32", "batch": job.opts.batch, "parity": parity}


def build_tensorrt(job: Job) -> dict[str, Any]:
    """TensorRT engines (GPU only): FP16 (``--half``) or FP32, plus INT8 when the Q/DQ ONNX was made."""
    from .tensorrt_export import build_engines, require_cuda

    require_cuda()  # fails at once without a GPU, before any work
    return build_engines(job)


def _run_batched(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int) -> torch.Tensor:
    """Run a fixed-batch artifact over ``x`` (whose length is cut to a multiple of ``batch``)."""
    n = len(x) - len(x) % batch
    return torch.cat([torch.as_tensor(run(x[i : i + batch])).float() for i in range(0, n, batch)])


def build_executorch_int8(job: Job) -> dict[str, Any]:
    """INT8 ``.pte`` (PT2E + XNNPACK quantizer), run back with ExecuTorch's runtime, judged by the INT8 gate."""
    o = job.opts
    calib, calib_info = _calibration(job)
    ranges, used = None, {}
    if job.loaded.qat is not None:
        from blocks.qat import qat_ranges

        ranges = qat_ranges(job.loaded.qat)
    path = export_pte_int8(
        job.graph, job.staging / f"{job.stem}.int8.pte", job.loaded.input_size, calib, o.batch, ranges, used
    )
    runner = load_pte(path)
    inputs, labels, source = gate_data(job)
    n = len(inputs) - len(inputs) % o.batch
    with torch.no_grad():
        ref = _run_batched(job.graph, inputs[:n], o.batch)
    labels = None if labels is None else labels[:n]
    verdict = evaluate_int8(ref, _run_batched(runner, inputs[:n], o.batch), labels, o.int8_budget, source)
    x = job.probes[0][1][: o.batch]
    with torch.no_grad():
        err = rel_error(torch.as_tensor(runner(x)), job.graph(x)) if len(x) == o.batch else None
    rec = {
        "files": [path],
        "quantization": {
            "tool": "torchao PT2E + XNNPACKQuantizer",
            "config": "symmetric, per-channel weights",
            "qat": None
            if job.loaded.qat is None
            else f"weights and {used.get('qat_ranges_used', 0)} of {used.get('observed_tensors', 0)} activation ranges "
            "from QAT; the other tensors XNNPACK quantizes (op outputs the QAT graph left float) calibrated by PT2E",
        },
        "calibration": calib_info,
        "top1": _int8_record(verdict),
        "parity": {"error": err, "tol": None, "reference": "PyTorch (folded model, fp32)"},
    }
    if not verdict["passed"]:
        raise Int8BudgetError("executorch-int8", verdict, {k: v for k, v in rec.items() if k != "files"})
    job.runners["executorch xnnpack int8"] = runner
    return rec


#: Builders in dependency order (ONNX first: INT8, .ort and TensorRT read the FP32 file).
BUILDERS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "onnx": build_onnx,
    "onnx-int8": build_onnx_int8,
    "ort": build_ort,
    "coreml": build_coreml,
    "executorch": build_executorch,
    "executorch-int8": build_executorch_int8,
    "tensorrt": build_tensorrt,
}


def probe_inputs(
    size: tuple[int, int, int],
    batches: list[int],
    real: torch.Tensor | None,
    to_input: Callable[[torch.Tensor], torch.Tensor],
) -> list[tuple[str, torch.Tensor]]:
    """Random images (uniform pixels, so the borders are never the mean pixel) at each batch size, plus real ones."""
    gen = torch.Generator().manual_seed(0)
    probes = [(f"random batch {b}", to_input(torch.rand(b, *size, generator=gen))) for b in batches]
    if real is not None and len(real):
        probes.append((f"real batch {len(real)}", to_input(real)))
    return probes
