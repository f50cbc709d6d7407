"""``zoo bench``: latency, throughput, params, MACs and peak memory of registered models on several runtimes.

    zoo bench --models 'efficientvit_*' --runtimes eager,deployed,onnxruntime --batch 1,16 --threads 2 \\
        --out benchmarks/results/bench_cpu.json --plot onnxruntime

For every model and batch size, the runtimes that can run here are prepared (deployed copy, ONNX export, compiled
graph, ...) and then timed side by side, in alternation (``export.latency.time_side_by_side``): machine noise hits
them alike, so the numbers of one model are comparable with each other. Runtimes that cannot run on this machine
(TensorRT without a CUDA GPU, CoreML off macOS, ...) are listed as skipped with the reason; a runtime that fails for
one model is recorded as an error with the message, and the others go on. Results go to JSON (with the machine
description) and CSV; ``--plot RUNTIME`` also draws the latency / top-1 Pareto plot (``export.pareto``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import sys
import tempfile
import time
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import blocks
import zoo

from .int8 import int8_capability, int8_speed_note
from .latency import time_side_by_side
from .memory import peak_tensor_memory

__all__ = ["RUNTIMES", "BenchSettings", "machine_info", "skip_reason", "run_bench", "write_results", "main"]

#: Runtimes ``zoo bench`` knows, in the order it reports them.
RUNTIMES = ("eager", "deployed", "compile", "onnxruntime", "onnxruntime-int8", "tensorrt", "coreml")
_TORCH_RUNTIMES = ("eager", "deployed", "compile")
_ENV_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS")
_PACKAGES = ("torch", "torchvision", "timm", "numpy", "onnx", "onnxruntime", "onnxscript", "coremltools", "tensorrt")
CSV_FIELDS = (
    "model",
    "family",
    "runtime",
    "batch",
    "input_size",
    "status",
    "reason",
    "median_ms",
    "p90_ms",
    "mean_ms",
    "runs",
    "throughput_ips",
    "peak_mem_mb",
    "prepare_s",
    "params",
    "params_deployed",
    "macs",
    "top1_paper",
)


@dataclass(frozen=True)
class BenchSettings:
    """How to measure.

    Attributes:
        threads: intra-op threads of torch and onnxruntime.
        imgsz: square input side; None for each model's pretrained input size. Models whose geometry is fixed by
            ``img_size`` are built at it.
        device: ``"cpu"`` or ``"cuda"`` for the torch runtimes and onnxruntime.
        warmup: untimed runs of each runtime first.
        min_runs: at least this many timed runs each.
        min_seconds: keep timing until every runtime has accumulated this much time.
        max_runs: at most this many timed runs each.
    """

    threads: int = 1
    imgsz: int | None = None
    device: str = "cpu"
    warmup: int = 5
    min_runs: int = 20
    min_seconds: float = 1.0
    max_runs: int = 200


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, device: str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, threads, GPU, OS and library versions."""
    gpu = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        # whether INT8 can be faster here at all: int8 dot products (VNNI/AMX, ARM dotprod) or not
        "int8": int8_capability(),
        "threads": threads,
        "device": device,
        "gpu": gpu,
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        # other processes compete for the cores: the 1-minute load average says how much
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "versions": {p: _version(p) for p in _PACKAGES},
        # OpenMP's spin-waiting decides torch's multi-threaded latency on a shared machine (onnxruntime's
        # allow_spinning=0 is set per session; OpenMP reads these only when torch is first imported)
        "env": {k: os.environ[k] for k in _ENV_VARS if k in os.environ},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }


def skip_reason(runtime: str, device: str = "cpu") -> str | None:
    """Why ``runtime`` cannot run on this machine, or None when it can.

    Raises:
        ValueError: unknown runtime name.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)"
    if runtime in ("onnxruntime", "onnxruntime-int8"):
        if _version("onnxruntime") is None:
            return "onnxruntime is not installed (pip install 'efficient-zoo[export]')"
        if device == "cuda" and "CUDAExecutionProvider" not in _ort_providers():
            return "--device cuda: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    if runtime == "onnxruntime-int8":
        return _int8_skip_reason()
    if runtime == "tensorrt":
        return _tensorrt_skip_reason()
    if runtime == "coreml" and platform.system() != "Darwin":
        return f"CoreML runs only on macOS (this is {platform.system()}); conversion is tested, prediction is not"
    if runtime == "coreml" and _version("coremltools") is None:
        return "coremltools is not installed (pip install 'efficient-zoo[export]')"
    return None


def _ort_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def _exporter_has(module: str) -> bool:
    """Whether this build's ``export`` package has ``module`` (the exporter adds formats over time)."""
    return importlib.util.find_spec(f"{__package__}.{module}") is not None


def _int8_skip_reason() -> str | None:
    if not _exporter_has("quantize"):
        return "INT8 ONNX quantization is not part of this build's exporter (no export.quantize)"
    return None


def _tensorrt_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU; none is visible (torch.cuda.is_available() is False)"
    if _version("tensorrt") is None:
        return "tensorrt is not installed (pip install 'efficient-zoo[tensorrt]')"
    if not _exporter_has("tensorrt_export"):
        return "the TensorRT engine builder is not part of this build's exporter (no export.tensorrt_export)"
    return None


@dataclass
class _Subject:
    """One model, built once for all its runtimes and batches."""

    name: str
    model: nn.Module
    deployed: nn.Module
    input_size: tuple[int, int, int]
    params: int
    params_deployed: int
    macs: int
    top1: float | None


def _accepts(name: str, arg: str) -> bool:
    """Whether model ``name``'s class takes constructor argument ``arg`` (as ``create_model`` checks overrides)."""
    family = zoo.get_family(name)
    cls = typing.get_type_hints(family.variants[name]).get("return", family.model_cls)
    return arg in inspect.signature(cls.__init__).parameters


def _subject(name: str, settings: BenchSettings) -> _Subject:
    create = {"img_size": settings.imgsz} if settings.imgsz and _accepts(name, "img_size") else {}
    model = zoo.create_model(name, **create).eval()
    size = tuple(model.pretrained_cfg["input_size"])
    if settings.imgsz:
        size = (size[0], settings.imgsz, settings.imgsz)
    macs = zoo.count_macs(model, size)
    deployed = blocks.reparameterize_model(model)
    reported = zoo.get_family(name).reported.get(name)
    model.to(settings.device)
    deployed.to(settings.device)
    return _Subject(
        name,
        model,
        deployed,
        size,
        zoo.count_params(model),
        zoo.count_params(deployed),
        macs,
        reported.top1 if reported else None,
    )


@dataclass
class _Runner:
    """A prepared runtime: ``fn()`` runs one inference on the batch; ``memory()`` its peak bytes (or None)."""

    fn: Callable[[], object]
    memory: Callable[[], int | None]
    prepare_s: float


def _torch_runner(module: nn.Module, x: torch.Tensor, device: str) -> Callable[[], object]:
    def fn() -> object:
        with torch.inference_mode():
            out = module(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return fn


def _ort_session(path: Path, threads: int, device: str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # no busy-waiting threads left behind to slow the runtimes timed in alternation with this one
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=providers)


def _onnx_fp32(subject: _Subject, batch: int, settings: BenchSettings, tmp: Path) -> Path:
    """The deployed model's FP32 ONNX at a static ``batch``, exported once per model and batch."""
    from .onnx_export import export_onnx

    path = tmp / f"{subject.name}_b{batch}.onnx"
    if not path.exists():
        export_onnx(subject.deployed.cpu(), path, subject.input_size, batch=batch)
        subject.deployed.to(settings.device)
    return path


def _ort_runner(subject: _Subject, batch: int, settings: BenchSettings, tmp: Path, int8: bool) -> Callable[[], object]:
    path = _onnx_fp32(subject, batch, settings, tmp)
    if int8:
        from .quantize import quantize_int8

        # The speed of a Q/DQ graph does not depend on its scales, so random inputs calibrate well enough for
        # timing; `zoo export --formats onnx-int8` calibrates on data for an artifact meant to be accurate.
        gen = torch.Generator().manual_seed(0)
        calib = torch.randn(batch * max(1, 8 // batch), *subject.input_size, generator=gen)
        quantize_int8(path, path.with_suffix(".int8.onnx"), calib, batch)
        path = path.with_suffix(".int8.onnx")
    sess = _ort_session(path, settings.threads, settings.device)
    feed = {sess.get_inputs()[0].name: torch.randn(batch, *subject.input_size).numpy()}
    return lambda: sess.run(None, feed)


def _tensorrt_runner(subject: _Subject, batch: int, settings: BenchSettings, tmp: Path) -> Callable[[], object]:
    """An FP16 engine (TensorRT's strongly typed networks take their precision from an FP16 ONNX), run on CUDA."""
    from .onnx_export import export_onnx_fp16
    from .tensorrt_export import EngineSpec, TrtRunner, build_engine

    onnx16 = tmp / f"{subject.name}_b{batch}.fp16.onnx"
    export_onnx_fp16(subject.deployed.cpu(), onnx16, subject.input_size, batch=batch)
    subject.deployed.to(settings.device)
    spec = EngineSpec(onnx16, onnx16.with_suffix(".engine"), "input", subject.input_size, batch=batch)
    runner = TrtRunner(build_engine(spec))
    x = torch.randn(batch, *subject.input_size, device="cuda")
    return lambda: runner.run_cuda(x)


def _coreml_runner(subject: _Subject, batch: int) -> Callable[[], object]:
    from .coreml_export import convert_coreml

    mlmodel = convert_coreml(subject.deployed.cpu(), subject.input_size, batch=batch, input_name="input")
    feed = {"input": torch.randn(batch, *subject.input_size).numpy()}
    return lambda: mlmodel.predict(feed)


def _prepare(runtime: str, subject: _Subject, batch: int, settings: BenchSettings, tmp: Path) -> _Runner:
    """Build ``runtime``'s callable for ``subject`` at ``batch`` and run it once (compiles, checks it works)."""
    t0 = time.perf_counter()
    x = torch.randn(batch, *subject.input_size, device=settings.device)
    memory: Callable[[], int | None] = lambda: None  # noqa: E731 - runtimes outside torch: not measurable
    if runtime in _TORCH_RUNTIMES:
        module = subject.model if runtime == "eager" else subject.deployed
        if runtime == "compile":
            module = torch.compile(module)
        fn = _torch_runner(module, x, settings.device)
        if runtime != "compile":  # a dispatch mode would trace through the compiled graph, not measure it
            memory = lambda: peak_tensor_memory(fn, settings.device)  # noqa: E731
    elif runtime in ("onnxruntime", "onnxruntime-int8"):
        fn = _ort_runner(subject, batch, settings, tmp, int8=runtime == "onnxruntime-int8")
    elif runtime == "tensorrt":
        fn = _tensorrt_runner(subject, batch, settings, tmp)
    elif runtime == "coreml":
        fn = _coreml_runner(subject, batch)
    else:
        raise RuntimeError(skip_reason(runtime, settings.device) or f"{runtime}: no runner")
    fn()
    return _Runner(fn, memory, time.perf_counter() - t0)


def _row(subject: _Subject, runtime: str, batch: int, status: str, reason: str = "") -> dict[str, Any]:
    return {
        "model": subject.name,
        "family": zoo.get_family(subject.name).name,
        "runtime": runtime,
        "batch": batch,
        "input_size": list(subject.input_size),
        "status": status,
        "reason": reason,
        "params": subject.params,
        "params_deployed": subject.params_deployed,
        "macs": subject.macs,
        "top1_paper": subject.top1,
    }


def _failed_model_rows(
    name: str, runtimes: Sequence[str], batches: Sequence[int], error: BaseException
) -> list[dict[str, Any]]:
    """Error rows for a model that failed before any runtime ran (building, counting, folding)."""
    family = zoo.get_family(name)
    size = list(family.cfgs[name].input_size)
    reason = f"model preparation failed: {_error_text(error)}"
    unknown = dict.fromkeys(("params", "params_deployed", "macs", "top1_paper"))
    return [
        {"model": name, "family": family.name, "runtime": rt, "batch": b, "input_size": size, "status": "error"}
        | {"reason": reason, **unknown}
        for b in batches
        for rt in runtimes
    ]


def _error_text(e: BaseException) -> str:
    first = str(e).strip().splitlines()
    return f"{type(e).__name__}: {first[0] if first else ''}"[:300]


def bench_model(
    name: str, runtimes: Sequence[str], batches: Sequence[int], settings: BenchSettings, progress: Any = None
) -> list[dict[str, Any]]:
    """Rows of one model: every runtime at every batch (``status`` ok, skipped or error)."""
    subject = _subject(name, settings)
    skips = {rt: skip_reason(rt, settings.device) for rt in runtimes}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zoo_bench_") as tmp:
        for batch in batches:
            runners: dict[str, _Runner] = {}
            batch_rows = []
            for rt in runtimes:
                if progress is not None:
                    progress.set_postfix_str(f"{name} {rt} b{batch}")
                if skips[rt]:
                    batch_rows.append(_row(subject, rt, batch, "skipped", skips[rt]))
                    continue
                try:
                    runners[rt] = _prepare(rt, subject, batch, settings, Path(tmp))
                except Exception as e:  # noqa: BLE001 - one failing runtime is reported, the others go on
                    batch_rows.append(_row(subject, rt, batch, "error", _error_text(e)))
            batch_rows += _time_runners(subject, batch, runners, settings)
            _int8_ratio(batch_rows)
            rows += sorted(batch_rows, key=lambda r: list(runtimes).index(r["runtime"]))
            if progress is not None:
                progress.update(len(runtimes))
    return rows


def _int8_ratio(rows: list[dict[str, Any]]) -> None:
    """INT8/FP32 onnxruntime latency, measured side by side in the same batch, in numbers and in plain words."""
    by = {r["runtime"]: r for r in rows if r.get("status") == "ok"}
    if {"onnxruntime", "onnxruntime-int8"} <= set(by):
        ratio = by["onnxruntime-int8"]["median_ms"] / by["onnxruntime"]["median_ms"]
        by["onnxruntime-int8"]["int8_over_fp32"] = round(ratio, 3)
        by["onnxruntime-int8"]["reason"] = int8_speed_note(ratio, int8_capability())


def _time_runners(
    subject: _Subject, batch: int, runners: dict[str, _Runner], settings: BenchSettings
) -> list[dict[str, Any]]:
    if not runners:
        return []
    try:
        timings = time_side_by_side(
            {rt: r.fn for rt, r in runners.items()},
            warmup=settings.warmup,
            min_runs=settings.min_runs,
            min_seconds=settings.min_seconds,
            max_runs=settings.max_runs,
        )
    except Exception as e:  # noqa: BLE001 - reported on this model's rows; the grid goes on
        return [_row(subject, rt, batch, "error", f"while timing: {_error_text(e)}") for rt in runners]
    rows = []
    for rt, runner in runners.items():
        t = timings[rt]
        try:
            peak, note = runner.memory(), ""
        except Exception as e:  # noqa: BLE001 - the latency stands; the memory figure is left out, with the reason
            peak, note = None, f"peak memory not measured: {_error_text(e)}"
        rows.append(
            {
                **_row(subject, rt, batch, "ok", note),
                "median_ms": round(t.median_ms, 4),
                "p90_ms": round(t.p90_ms, 4),
                "mean_ms": round(t.mean_ms, 4),
                "runs": t.runs,
                "throughput_ips": round(batch * 1e3 / t.median_ms, 2),
                "peak_mem_mb": None if peak is None else round(peak / 2**20, 3),
                "prepare_s": round(runner.prepare_s, 2),
            }
        )
    return rows


def _warn_if_busy(threads: int) -> None:
    """Say so when other processes already occupy the cores: the latencies will be noisy."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    if load + threads > cores:
        print(
            f"zoo bench: warning: 1-minute load average {load:.1f} on {cores} cores; latencies will be noisy"
            + ("" if os.environ.get("OMP_WAIT_POLICY") else " (set OMP_WAIT_POLICY=PASSIVE for multi-threaded torch)"),
            file=sys.stderr,
        )


def run_bench(
    names: Sequence[str], runtimes: Sequence[str], batches: Sequence[int], settings: BenchSettings
) -> dict[str, Any]:
    """Benchmark a model x runtime x batch grid, with a progress bar on stderr.

    Returns:
        ``{"machine", "settings", "skipped": {runtime: reason}, "results": [row, ...]}``.
    """
    from tqdm import tqdm

    for rt in runtimes:
        skip_reason(rt, settings.device)  # unknown names fail before any model is built
    torch.set_num_threads(settings.threads)
    _warn_if_busy(settings.threads)
    rows: list[dict[str, Any]] = []
    with warnings.catch_warnings(), tqdm(total=len(names) * len(runtimes) * len(batches), desc="bench") as bar:
        warnings.simplefilter("ignore")
        for name in names:
            try:
                rows.extend(bench_model(name, runtimes, batches, settings, bar))
            except Exception as e:  # noqa: BLE001 - e.g. the model cannot be built: its rows say why, the rest runs
                rows.extend(_failed_model_rows(name, runtimes, batches, e))
                bar.update(len(runtimes) * len(batches))
    skipped = {rt: r for rt in runtimes if (r := skip_reason(rt, settings.device))}
    return {
        "machine": machine_info(settings.threads, settings.device),
        "settings": {**settings.__dict__, "runtimes": list(runtimes), "batches": list(batches)},
        "skipped": skipped,
        "results": rows,
    }


def write_results(result: dict[str, Any], path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``result`` to ``path`` (JSON) and the same stem with ``.csv`` (one row per measurement).

    The CSV repeats the machine's CPU, device and threads on every row so that it stands on its own.
    """
    path = Path(path).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    csv_path = path.with_suffix(".csv")
    machine = result["machine"]
    extra = {"cpu": machine["cpu"], "device": machine["device"], "threads": machine["threads"]}
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*CSV_FIELDS, *extra], extrasaction="ignore")
        w.writeheader()
        for row in result["results"]:
            w.writerow({**row, "input_size": "x".join(map(str, row["input_size"])), **extra})
    return path, csv_path


def _summary(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# {m['cpu']}, {m['threads']} threads, device {m['device']}, torch {m['versions']['torch']}"]
    if m.get("int8"):
        lines.append(f"# int8: {m['int8']['note']} ({', '.join(m['int8']['isa'])})")
    lines.append(
        f"{'model':28s} {'runtime':16s} {'batch':>5s} {'median ms':>10s} {'p90 ms':>9s} {'img/s':>9s} "
        f"{'params M':>9s} {'GMACs':>7s} {'peak MB':>8s}"
    )
    for r in result["results"]:
        if r["status"] == "ok":
            mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}"
            lines.append(
                f"{r['model']:28s} {r['runtime']:16s} {r['batch']:5d} {r['median_ms']:10.3f} {r['p90_ms']:9.3f} "
                f"{r['throughput_ips']:9.1f} {r['params'] / 1e6:9.3f} {r['macs'] / 1e9:7.3f} {mem:>8s}"
            )
            if "int8_over_fp32" in r:
                lines.append(f"{'':28s} {r['reason']}")
        elif r["status"] == "error":
            lines.append(f"{r['model']:28s} {r['runtime']:16s} {r['batch']:5d} error: {r['reason']}")
    lines += [f"skipped {rt}: {why}" for rt, why in result["skipped"].items()]
    return "\n".join(lines)


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be positive integers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zoo bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="*", help="wildcard or substring over registered names (default: all)")
    p.add_argument("--runtimes", default="eager,deployed,onnxruntime", help=f"comma-separated: {','.join(RUNTIMES)}")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and onnxruntime (default 1)")
    p.add_argument("--imgsz", type=int, default=None, help="square input side (default: each model's own)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of torch runtimes / onnxruntime")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per runtime")
    p.add_argument("--min-runs", type=int, default=20, help="timed runs per runtime, at least")
    p.add_argument("--max-runs", type=int, default=200, help="timed runs per runtime, at most")
    p.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per runtime, at least")
    p.add_argument("--out", default="out/bench/bench.json", help="results JSON (a CSV is written beside it)")
    p.add_argument("--plot", metavar="RUNTIME", default=None, help="also draw the Pareto plot for this runtime")
    p.add_argument("--plot-batch", type=int, default=1, help="batch size the Pareto plot shows (default 1)")
    p.add_argument("--plot-out", default=None, help="PNG path (default: pareto_<runtime>.png beside --out)")
    p.add_argument("--plot-from", metavar="JSON", default=None, help="measure nothing: plot an existing results file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``zoo bench``: parse arguments, benchmark, write results (and the plot); returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.plot_from:
            return _plot(json.loads(Path(args.plot_from).read_text()), args, Path(args.plot_from))
        runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
        for rt in runtimes:
            skip_reason(rt, args.device)
        batches = _parse_ints(args.batch, "--batch")
        if args.threads < 1 or (args.imgsz is not None and args.imgsz < 32):
            raise ValueError("--threads must be >= 1 and --imgsz >= 32")
        names = zoo.list_models(args.models)
        if not names:
            raise ValueError(f"no registered model matches {args.models!r} (see zoo list)")
        settings = BenchSettings(
            args.threads, args.imgsz, args.device, args.warmup, args.min_runs, args.min_seconds, args.max_runs
        )
        result = run_bench(names, runtimes, batches, settings)
    except (ValueError, TypeError, OSError) as e:
        print(f"zoo bench: error: {e}", file=sys.stderr)
        return 2
    json_path, csv_path = write_results(result, args.out)
    print(_summary(result))
    print(f"wrote {json_path} and {csv_path}")
    failed = any(r["status"] == "error" for r in result["results"])
    if args.plot and _plot(result, args, json_path) != 0:
        return 2
    return 1 if failed else 0


def _plot(result: dict[str, Any], args: argparse.Namespace, beside: Path) -> int:
    from .pareto import plot_pareto

    runtime = args.plot or "onnxruntime"
    out = Path(args.plot_out) if args.plot_out else beside.parent / f"pareto_{runtime}.png"
    try:
        n = plot_pareto(result, runtime, out, batch=args.plot_batch)
    except ValueError as e:
        print(f"zoo bench: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({n} models)")
    return 0
