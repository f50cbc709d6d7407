"""``export_model``: any registered model (or your own module) to deployment artifacts, with parity proven.

The steps, in order: load (strict checkpoint loading, class names from its metadata); fold every normalization and
check the fold (:mod:`export.fold`); optionally fold the input normalization; build each requested format in a
staging directory inside the output directory and check it (:mod:`export.formats`); time everything that runs here
side by side; then move the verified artifacts into place and write ``manifest.json``. A format whose check fails
leaves no file behind and is reported with the measured error; the others are unaffected.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import ImageSet, load_images
from .errors import ExportError, ExportInputError
from .fold import fold_and_check, fold_input_normalization
from .formats import BUILDERS, INT8_FORMATS, Job, probe_inputs
from .int8 import Int8Budget, Int8BudgetError, int8_capability, int8_speed_note
from .latency import time_side_by_side
from .loading import Loaded, load_for_export
from .manifest import path_sha256, path_size, sparsity, summary_table, toolchain_versions, write_json_atomic
from .quantize import CALIBRATION_METHODS

__all__ = ["FORMATS", "ExportOptions", "ExportResult", "export_model"]

FORMATS = tuple(BUILDERS)
_NEEDS_ONNX = {"onnx-int8", "ort", "tensorrt"}


@dataclass(frozen=True)
class ExportOptions:
    """Every export setting (the CLI's flags).

    Attributes:
        formats: any of ``onnx, onnx-int8, ort, coreml, executorch, executorch-int8, tensorrt``.
        img_size: input side (default: the model's pretrained config).
        batch: the artifacts' batch (and the ``opt`` batch of a dynamic TensorRT profile).
        dynamic_batch: symbolic batch in ONNX / INT8 / .ort / TensorRT (CoreML and .pte keep ``batch``).
        max_batch: upper end of the dynamic batch range for TensorRT.
        half: also write an FP16 ONNX; TensorRT builds an FP16 engine from it (else FP32).
        fold_input_norm: the artifacts take RGB pixels in [0, ``pixel_range``]; 1/std folds into the first conv.
        pixel_range: 1 or 255.
        calib_data: ``"digits"`` or an image directory for INT8 calibration (and real-input checks); None:
            data-free calibration.
        val_data: ``"digits"`` or an image-folder directory for the INT8-vs-FP32 top-1 (default: ``digits`` when
            calibrating on digits).
        calib_size: calibration images used (and synthesised when data-free).
        zeroq_steps: optimisation steps of the data-free calibration.
        max_int8_drop: the INT8 budget: fail an INT8 format whose top-1 drops by more points than this on held-out
            labelled images (``val_data``; digits: its validation split).
        min_int8_agreement: the INT8 budget: top-1 agreement with the FP32 twin, percent.
        min_int8_cosine: the INT8 budget without labels: mean cosine similarity of the logits.
        int8_calibration: calibration methods the INT8 search tries (``minmax``, ``percentile``, ``entropy``).
        int8_reduce_range: ``auto`` (7-bit weights on x86 CPUs without VNNI, where 8-bit products saturate),
            ``on`` or ``off``.
        int8_fallback: keep the most sensitive ops in float until the budget is met (ONNX INT8).
        int8_placement: ``auto`` (Q/DQ on the residual Adds or not, whichever onnxruntime runs faster here; always
            on them for TensorRT) or ``qdq`` (always on them).
        coreml_precision: ``float16`` (default) or ``float32``.
        coreml_input: ``image`` (an ``ImageType``) or ``tensor``.
        trt_sparse: allow 2:4 sparse kernels in TensorRT.
        trt_workspace_mb: TensorRT builder workspace.
        opset: ONNX opset (17 or newer).
        latency_seconds: time per candidate in the side-by-side latency measurement (0: skip).
        threads: onnxruntime intra-op threads (None: its default).
        num_classes: classifier size, when neither checkpoint metadata nor its weights say.
    """

    formats: tuple[str, ...] = ("onnx",)
    img_size: int | None = None
    batch: int = 1
    dynamic_batch: bool = False
    max_batch: int = 64
    half: bool = False
    fold_input_norm: bool = False
    pixel_range: int = 1
    calib_data: str | None = None
    val_data: str | None = None
    calib_size: int = 64
    zeroq_steps: int = 100
    max_int8_drop: float = 1.0
    min_int8_agreement: float = 98.0
    min_int8_cosine: float = 0.99
    int8_calibration: tuple[str, ...] = ("minmax", "percentile")
    int8_reduce_range: str = "auto"
    int8_fallback: bool = True
    int8_placement: str = "auto"
    coreml_precision: str = "float16"
    coreml_input: str = "image"
    trt_sparse: bool = False
    trt_workspace_mb: int = 2048
    opset: int = 18
    latency_seconds: float = 1.0
    threads: int | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        formats = tuple(self.formats)
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise ExportInputError(f"unknown format(s) {unknown or formats}; choose from: {', '.join(FORMATS)}")
        object.__setattr__(self, "formats", formats)
        checks = {
            "pixel_range must be 1 or 255": self.pixel_range in (1, 255),
            "batch must be >= 1": self.batch >= 1,
            "max_batch must be >= batch": self.max_batch >= self.batch,
            "coreml_precision must be float16 or float32": self.coreml_precision in ("float16", "float32"),
            "coreml_input must be image or tensor": self.coreml_input in ("image", "tensor"),
            "opset must be >= 17": self.opset >= 17,
            "calib_size must be >= 1": self.calib_size >= 1,
            "max_int8_drop must be >= 0": self.max_int8_drop >= 0,
            "min_int8_agreement must be in [0, 100]": 0 <= self.min_int8_agreement <= 100,
            "min_int8_cosine must be in [-1, 1]": -1 <= self.min_int8_cosine <= 1,
            "int8_reduce_range must be auto, on or off": self.int8_reduce_range in ("auto", "on", "off"),
            "int8_placement must be auto or qdq": self.int8_placement in ("auto", "qdq"),
            f"int8_calibration must be among {', '.join(CALIBRATION_METHODS)}": bool(self.int8_calibration)
            and set(self.int8_calibration) <= set(CALIBRATION_METHODS),
        }
        bad = [msg for msg, ok in checks.items() if not ok]
        if bad:
            raise ExportInputError("; ".join(bad))
        object.__setattr__(self, "int8_calibration", tuple(self.int8_calibration))

    @property
    def int8_budget(self) -> Int8Budget:
        """The limits every INT8 format is judged against."""
        return Int8Budget(self.max_int8_drop, self.min_int8_agreement, self.min_int8_cosine)

    @property
    def reduce_range(self) -> bool | None:
        """``int8_reduce_range`` as the search takes it (None: decided from this CPU)."""
        return {"auto": None, "on": True, "off": False}[self.int8_reduce_range]


@dataclass
class ExportResult:
    """What :func:`export_model` did: the output directory, the manifest, and the per-format records."""

    out_dir: Path
    manifest: dict[str, Any]
    summary: str
    formats: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        """``{format: error}`` of the formats that were not written."""
        return {k: v["error"] for k, v in self.formats.items() if v["status"] != "ok"}

    @property
    def ok(self) -> bool:
        return not self.failed


def _prepare_out(out: Path) -> tuple[Path, bool]:
    """Create ``out`` if needed and a staging directory inside it; clear errors when that is impossible."""
    created = not out.exists()
    if out.exists() and not out.is_dir():
        raise ExportInputError(f"output path {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-staging-", dir=out))
    except OSError as e:
        raise ExportInputError(f"output directory {out} is not writable: {e.strerror or e}") from e
    return staging, created


def _cleanup(out: Path, staging: Path, created: bool) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _data(loaded: Loaded, opts: ExportOptions) -> tuple[ImageSet | None, ImageSet | None]:
    """Calibration images and the held-out images the INT8 gate is judged on (never the calibration ones).

    ``digits`` calibrates on its training split and is judged on its validation split; an image directory without
    ``val_data`` is split (the first ``calib_size`` images calibrate, up to 256 more are held out); ``val_data``
    names the held-out set explicitly. Without any data the INT8 formats make their own (data-free) sets.
    """
    side, cfg = loaded.input_size[1], loaded.cfg
    calib = val = None
    int8 = bool(INT8_FORMATS & set(opts.formats))
    if opts.calib_data:
        extra = 256 if int8 and not opts.val_data and opts.calib_data != "digits" else 0
        calib = load_images(
            opts.calib_data, side, cfg["crop_pct"], cfg["interpolation"], "train", opts.calib_size + extra
        )
        if extra:
            n_cal = min(opts.calib_size, max(1, len(calib) - max(1, len(calib) // 4)))
            if len(calib) < 2:
                raise ExportInputError(
                    f"{opts.calib_data}: INT8 needs at least 2 images (calibration, and held-out ones for the "
                    "accuracy gate); or give --val-data"
                )
            val = ImageSet(
                calib.pixels[n_cal:], None if calib.labels is None else calib.labels[n_cal:], calib.classes,
                f"{calib.source} (held out from calibration)",
            )  # fmt: skip
            calib = ImageSet(calib.pixels[:n_cal], calib.labels, calib.classes, calib.source)
    val_spec = opts.val_data or ("digits" if opts.calib_data == "digits" else None)
    if val_spec and int8:
        val = load_images(val_spec, side, cfg["crop_pct"], cfg["interpolation"], "val")
    if val is not None and val.labels is not None and val.classes is not None:
        if len(val.classes) != loaded.num_classes:
            val.labels = None  # labels of another task: compare INT8 with FP32 (agreement, cosine) only
    return calib, val


def _preprocessing(loaded: Loaded, opts: ExportOptions, input_fold: dict | None) -> dict[str, Any]:
    cfg = loaded.cfg
    side = loaded.input_size[1]
    pre = {
        "resize_shorter_side": int(round(side / cfg["crop_pct"])),
        "interpolation": cfg["interpolation"],
        "center_crop": side,
        "crop_pct": cfg["crop_pct"],
        "channel_order": "RGB",
        "layout": "NCHW",
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
    }
    if input_fold:
        r = opts.pixel_range
        pre["input"] = f"RGB pixels in [0, {r}] (float32); the artifact normalizes"
        pre["folded"] = {
            "std": f"1/(std*{r}) folded into the weights of {input_fold['first_conv']}",
            "mean": f"kept as a per-channel subtraction of mean*{r} (ONNX Sub node; CoreML ImageType bias)",
        }
    else:
        pre["input"] = "normalized tensor: (pixels in [0, 1] - mean) / std"
        pre["folded"] = None
    return pre


def _metadata(loaded: Loaded, pre: dict[str, Any]) -> dict[str, str]:
    fam = loaded.family
    meta = {
        "model": loaded.name,
        "family": fam.name if fam else "",
        "paper": f"{fam.paper.title} (arXiv {fam.paper.arxiv})" if fam else "",
        "weights_license": fam.paper.weights_license if fam else "",
        "preprocessing": json.dumps(pre),
        "classes": json.dumps(loaded.classes) if loaded.classes else "",
        "checkpoint_sha256": (loaded.checkpoint or {}).get("sha256") or "",
        "exporter": "efficient-zoo",
    }
    return {k: v for k, v in meta.items() if v}


def _fold(loaded: Loaded, opts: ExportOptions, calib: ImageSet | None) -> tuple[nn.Module, nn.Module, Any]:
    """Step 1 (fold + checks) and step 2 (input normalization), printing which norms remain."""
    from .data import normalize

    cfg = loaded.cfg
    real = normalize(calib.pixels[:8], cfg["mean"], cfg["std"]) if calib is not None else None
    allowed = tuple(loaded.family.remaining_norms) if loaded.family else ("LayerNorm", "GroupNorm", "InstanceNorm2d")
    deployed, report = fold_and_check(loaded.model, loaded.input_size, allowed, loaded.bn_identity, real)
    left = ", ".join(f"{k} x{v}" for k, v in report.remaining_norms.items()) or "none"
    print(f"[export] {loaded.name}: folded; norms left: {left}; fold parity {report.parity_random:.1e} (random)")
    graph: nn.Module = deployed
    if opts.fold_input_norm:
        graph, report.input_fold = fold_input_normalization(
            deployed, cfg.get("first_conv", ""), cfg["mean"], cfg["std"], float(opts.pixel_range), loaded.input_size
        )
    return deployed, graph, report


def _job(loaded: Loaded, opts: ExportOptions, out: Path, staging: Path) -> tuple[Job, Any, dict[str, Any]]:
    calib, val = _data(loaded, opts)
    deployed, graph, report = _fold(loaded, opts, calib)
    pre = _preprocessing(loaded, opts, report.input_fold)
    job = Job(
        opts=opts,
        loaded=loaded,
        deployed=deployed,
        graph=graph.eval(),
        staging=staging,
        out_dir=out,
        metadata=_metadata(loaded, pre),
        probes=[],
        calib=None,
        val=None,
        forbid_norms=not report.remaining_norms,
    )
    real = calib.pixels[: max(opts.batch, 4) if opts.dynamic_batch else opts.batch] if calib is not None else None
    batches = [1, 3] if opts.dynamic_batch else [opts.batch]
    job.probes = probe_inputs(loaded.input_size, batches, real, job.artifact_input)
    job.calib = job.artifact_input(calib.pixels) if calib is not None else None
    if val is not None:
        job.val = (job.artifact_input(val.pixels), val.labels, val.source)
    return job, report, pre


def _run_builders(job: Job, requested: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    todo = [f for f in BUILDERS if f in requested or (f == "onnx" and _NEEDS_ONNX & set(requested))]
    for fmt in todo:
        t0 = time.perf_counter()
        try:
            rec = BUILDERS[fmt](job)
            rec["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - one format's failure must not stop the others; it is reported
            msg = str(e) if isinstance(e, (ExportError, Int8BudgetError)) else f"{type(e).__name__}: {e}"
            rec = {
                **getattr(e, "record", {}),
                "status": "failed",
                "error": msg.splitlines()[0] if msg else type(e).__name__,
            }
            print(f"[export] {fmt}: FAILED: {msg}")
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        rec["requested"] = fmt in requested
        records[fmt] = rec
    return records


def _latency(job: Job, records: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Side-by-side latency (median ms) of PyTorch eager and every artifact that runs here, at ``batch``."""
    if job.opts.latency_seconds <= 0 or not job.runners:
        return {}
    x = torch.rand(job.opts.batch, *job.loaded.input_size, generator=torch.Generator().manual_seed(3))
    x = job.artifact_input(x)

    def eager() -> Any:
        with torch.no_grad():
            return job.graph(x)

    cands = {"pytorch eager (folded)": eager, **{k: (lambda f=f: f(x)) for k, f in job.runners.items()}}
    threads = torch.get_num_threads()
    if job.opts.threads:  # the same thread budget for PyTorch as for onnxruntime
        torch.set_num_threads(job.opts.threads)
    try:
        timing = time_side_by_side(cands, warmup=3, min_runs=10, min_seconds=job.opts.latency_seconds, max_runs=300)
    finally:
        torch.set_num_threads(threads)
    lat = {k: round(t.median_ms, 4) for k, t in timing.items()}
    owners = {
        "onnx": "onnxruntime fp32",
        "onnx-int8": "onnxruntime int8",
        "ort": "onnxruntime .ort",
        "executorch": "executorch xnnpack",
        "executorch-int8": "executorch xnnpack int8",
    }
    for fmt, label in owners.items():
        if fmt in records and label in lat:
            records[fmt]["latency_ms"] = lat[label]
    pairs = {
        "onnx-int8": ("onnxruntime int8", "onnxruntime fp32"),
        "executorch-int8": ("executorch xnnpack int8", "executorch xnnpack"),
    }
    for fmt, (q, f) in pairs.items():
        if fmt in records and {q, f} <= set(lat):
            records[fmt]["latency_ratio_int8_over_fp32"] = round(lat[q] / lat[f], 3)
            records[fmt]["speed"] = int8_speed_note(lat[q] / lat[f], int8_capability())
    return lat


def _publish(records: dict[str, dict[str, Any]], out: Path) -> None:
    """Move the verified files of every successful, requested format from staging into ``out``."""
    for rec in records.values():
        staged = rec.pop("files", []) if rec["status"] == "ok" and rec["requested"] else []
        rec["files"] = []
        for src in staged:
            entry = {"file": src.name, "size": path_size(src), "sha256": path_sha256(src)}
            dst = out / src.name
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            os.replace(src, dst)
            rec["files"].append(entry)
    for rec in records.values():
        if rec["status"] != "ok":
            rec.pop("files", None)


def _manifest(loaded: Loaded, opts: ExportOptions, report: Any, pre: dict, job: Job, records: dict, lat: dict) -> dict:
    fam = loaded.family
    c, h, w = loaded.input_size
    return {
        "manifest_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {
            "name": loaded.name,
            "family": fam.name if fam else None,
            "paper": asdict(fam.paper) if fam else None,
            "create_args": loaded.create_args,
            "config": repr(getattr(loaded.model, "cfg", None)) if hasattr(loaded.model, "cfg") else None,
            "pretrained_cfg": loaded.cfg,
            "num_classes": loaded.num_classes,
            "params": sum(p.numel() for p in loaded.model.parameters()),
        },
        "checkpoint": loaded.checkpoint or {"source": "none: freshly initialised weights"},
        "classes": loaded.classes,
        "toolchain": toolchain_versions(),
        "options": asdict(opts),
        "input": {
            "name": "input",
            "shape": ["batch" if opts.dynamic_batch else opts.batch, c, h, w],
            "dtype": "float32",
        },
        "output": {
            "name": "logits",
            "shape": ["batch" if opts.dynamic_batch else opts.batch, loaded.num_classes],
        },
        "preprocessing": pre,
        "fold": asdict(report),
        "remaining_norms": report.remaining_norms,
        "sparsity": sparsity(job.deployed),
        "latency_ms": lat,
        "latency_note": f"median, batch {opts.batch}, measured side by side on this machine (CPU)",
        "formats": records,
    }


def export_model(
    model: str | nn.Module,
    out: str | os.PathLike,
    options: ExportOptions | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    classes: list[str] | None = None,
) -> ExportResult:
    """Export ``model`` to the formats of ``options`` under ``out``, checking every artifact.

    Args:
        model: a registered model name, or an ``nn.Module`` (preprocessing from its ``pretrained_cfg`` if any).
        out: output directory (created if needed).
        options: the settings; default ONNX only.
        checkpoint: a checkpoint file for a registered model (our, the authors' or timm's key layout).
        pretrained: load the variant's released weights instead.
        classes: class names (overrides those of the checkpoint's metadata).

    Returns:
        The result; ``result.ok`` is False when a format failed (its error is in ``result.failed``).

    Raises:
        ExportInputError, zoo.UnknownModelError, weights.WeightsError: bad input, before anything is written.
        FoldCheckError: the folded model does not compute what the model does; nothing is written.
    """
    opts = options or ExportOptions()
    out = Path(out)
    staging, created = _prepare_out(out)
    try:
        loaded = load_for_export(model, checkpoint, pretrained, opts.img_size, opts.num_classes, classes)
        job, report, pre = _job(loaded, opts, out, staging)
        records = _run_builders(job, opts.formats)
        lat = _latency(job, records)
        _publish(records, out)
        shown = {k: v for k, v in records.items() if v["requested"] or v["status"] != "ok"}
        manifest = _manifest(loaded, opts, report, pre, job, shown, lat)
        write_json_atomic(out / "manifest.json", manifest)
    except BaseException:
        _cleanup(out, staging, created)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    summary = summary_table(shown)
    return ExportResult(out, manifest, summary, shown)
