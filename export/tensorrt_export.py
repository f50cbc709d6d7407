"""TensorRT engines (TensorRT 11.x; 10.x works too) from the ONNX files the exporter produces.

TensorRT 11 has only strongly typed networks: the FP16/INT8 builder flags and the INT8 calibrators are gone, and
the precision of every tensor comes from the ONNX file. So an FP16 engine is built from an FP16 ONNX
(:func:`export.onnx_export.export_onnx_fp16`), an INT8 engine from the explicit Q/DQ ONNX of the INT8 step, and an
FP32 engine from the FP32 ONNX. Options: 2:4 structured-sparse kernels (``SPARSE_WEIGHTS``), an optimization
profile (min 1, opt ``batch``, max ``max_batch``) for dynamic batch, and a timing cache kept next to the engines
and reused across builds.

Each engine is checked against onnxruntime running the same ONNX (on the GPU when onnxruntime-gpu is installed,
else on the CPU), with a tolerance that fits its precision. Without a CUDA GPU, :func:`require_cuda` fails at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import FormatUnavailableError

__all__ = ["EngineSpec", "TrtRunner", "build_engine", "require_cuda", "tensorrt_version"]

_NO_GPU = (
    "TensorRT needs an NVIDIA GPU with a CUDA driver, and this machine has none (torch.cuda.is_available() is False). "
    "No engine was built; the other formats are unaffected. Build engines on a GPU machine, e.g. with "
    "benchmarks/gpu_check.sh"
)


def require_cuda() -> Any:
    """Import and return ``tensorrt`` after checking for a CUDA GPU.

    Raises:
        FormatUnavailableError: no CUDA GPU, or TensorRT not installed, or older than 10.
    """
    if not torch.cuda.is_available():
        raise FormatUnavailableError(_NO_GPU)
    try:
        import tensorrt as trt
    except ImportError as e:
        raise FormatUnavailableError(
            f"TensorRT is not installed ({e}); `pip install 'efficient-zoo[tensorrt]'` (tensorrt 11.x)"
        ) from e
    if int(trt.__version__.split(".")[0]) < 10:
        raise FormatUnavailableError(f"TensorRT {trt.__version__} is too old; strongly typed networks need 10 or 11")
    return trt


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None."""
    try:
        import importlib.metadata as md

        return md.version("tensorrt")
    except Exception:  # noqa: BLE001 - absent or broken install
        return None


@dataclass(frozen=True)
class EngineSpec:
    """What to build.

    Attributes:
        onnx_path: the ONNX file (its dtypes decide the engine's precision).
        engine_path: where to write the serialized engine.
        input_name: the network input.
        input_size: (C, H, W).
        batch: the batch of a static engine, and the ``opt`` batch of a dynamic one.
        dynamic_batch: add an optimization profile for batch 1..``max_batch``.
        max_batch: upper end of the profile.
        sparse: allow 2:4 structured-sparse kernels (``BuilderFlag.SPARSE_WEIGHTS``).
        workspace_mb: builder workspace limit.
        timing_cache: file of the timing cache (read when present, updated after the build).
    """

    onnx_path: Path
    engine_path: Path
    input_name: str
    input_size: tuple[int, int, int]
    batch: int = 1
    dynamic_batch: bool = False
    max_batch: int = 64
    sparse: bool = False
    workspace_mb: int = 2048
    timing_cache: Path | None = None


def _network(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """A strongly typed network parsed from the ONNX file."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # always on (and maybe gone) in 11
    network = builder.create_network(1 << int(flag) if flag is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors))
    return network, parser


def _config(trt: Any, builder: Any, spec: EngineSpec) -> tuple[Any, Any]:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb << 20)
    if spec.sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if spec.dynamic_batch:
        c, h, w = spec.input_size
        profile = builder.create_optimization_profile()
        profile.set_shape(spec.input_name, (1, c, h, w), (spec.batch, c, h, w), (spec.max_batch, c, h, w))
        config.add_optimization_profile(profile)
    cache = None
    if spec.timing_cache is not None:
        blob = spec.timing_cache.read_bytes() if spec.timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config, cache


def build_engine(spec: EngineSpec) -> Path:
    """Build and serialize one engine.

    Raises:
        FormatUnavailableError: no GPU / TensorRT.
        RuntimeError: parse or build failure, with TensorRT's messages.
    """
    trt = require_cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _network(trt, builder, logger, spec.onnx_path)
    config, cache = _config(trt, builder, spec)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {spec.onnx_path} (see the log above)")
    spec.engine_path.write_bytes(bytes(blob))
    if cache is not None and spec.timing_cache is not None:
        tmp = spec.timing_cache.with_suffix(".tmp")
        tmp.write_bytes(bytes(cache.serialize()))
        os.replace(tmp, spec.timing_cache)
    return spec.engine_path


class TrtRunner:
    """Runs a serialized engine on CUDA tensors from torch (``execute_async_v3`` on torch's current stream).

    Calling it with a CPU float tensor returns the first output on the CPU as float32.
    """

    def __init__(self, engine_path: str | os.PathLike) -> None:
        trt = require_cuda()
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _torch_dtype(self, name: str) -> torch.dtype:
        table = {
            self.trt.DataType.FLOAT: torch.float32,
            self.trt.DataType.HALF: torch.float16,
            self.trt.DataType.INT8: torch.int8,
            self.trt.DataType.INT32: torch.int32,
            self.trt.DataType.INT64: torch.int64,
            self.trt.DataType.BOOL: torch.bool,
        }
        return table[self.engine.get_tensor_dtype(name)]

    def run_cuda(self, x: torch.Tensor) -> torch.Tensor:
        """Run on a CUDA tensor; returns the first output as a CUDA tensor (no host copy, for timing)."""
        name = self.inputs[0]
        x = x.to(device="cuda", dtype=self._torch_dtype(name)).contiguous()
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = []
        for out in self.outputs:
            t = torch.empty(tuple(self.context.get_tensor_shape(out)), dtype=self._torch_dtype(out), device="cuda")
            self.context.set_tensor_address(out, t.data_ptr())
            outs.append(t)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return outs[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_cuda(x).float().cpu()


def _ort_reference(onnx_path: Path, threads: int | None) -> tuple[Any, str]:
    """onnxruntime on the GPU when onnxruntime-gpu is installed, else on the CPU."""
    import onnxruntime as ort

    from .onnx_export import ort_session

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ort_session(onnx_path, threads, ["CUDAExecutionProvider", "CPUExecutionProvider"]), "onnxruntime CUDA"
    return ort_session(onnx_path, threads), "onnxruntime CPU (onnxruntime-gpu not installed)"


def _engine_parity(job: Any, runner: TrtRunner, onnx_path: Path, precision: str) -> tuple[dict[str, Any], Any]:
    from .errors import ParityError
    from .fold import rel_error
    from .formats import TOLERANCES
    from .onnx_export import run_onnx

    sess, where = _ort_reference(onnx_path, job.opts.threads)
    tol = TOLERANCES[f"trt-{precision}"] if precision != "fp16" else TOLERANCES["fp16"]
    errors = {}
    for label, x in job.probes:
        errors[label] = rel_error(runner(x), run_onnx(sess, x))
    worst = max(errors.values())
    if worst > tol:
        raise ParityError(f"tensorrt-{precision}", worst, tol, f"vs {where} on {onnx_path.name}")
    return {"error": worst, "tol": tol, "per_input": errors, "reference": f"{where}, same ONNX"}, sess


def _engine_int8_gate(job: Any, runner: TrtRunner) -> dict[str, Any]:
    """The INT8 accuracy gate for the INT8 engine: its logits against the FP32 PyTorch graph on the held-out images,
    run on this machine's GPU (the manifest names it; the CPU verdict of the Q/DQ file does not carry over)."""
    from .formats import gate_data
    from .int8 import Int8BudgetError, evaluate_int8

    o = job.opts
    x, labels, source = gate_data(job)
    step = min(16, o.max_batch) if o.dynamic_batch else o.batch
    n = len(x) - len(x) % step
    with torch.no_grad():
        ref = torch.cat([job.graph(x[i : i + step]) for i in range(0, n, step)])
    q = torch.cat([runner(x[i : i + step]) for i in range(0, n, step)])
    verdict = evaluate_int8(ref, q, None if labels is None else labels[:n], o.int8_budget, source)
    verdict["measured_on"] = f"TensorRT {runner.trt.__version__} on {torch.cuda.get_device_name()}"
    if not verdict["passed"]:
        raise Int8BudgetError("tensorrt int8", verdict, {"engines": {"int8": {"top1": verdict}}})
    return verdict


def build_engines(job: Any) -> dict[str, Any]:
    """Build, check and time the engines for an export job (see :mod:`export.formats`)."""
    from .latency import time_side_by_side

    o, stem = job.opts, job.stem
    # strongly typed: the ONNX file's dtypes are the engine's precision
    plans = [("fp16", job.require("onnx-fp16"))] if o.half else [("fp32", job.require("onnx"))]
    if "onnx-int8" in job.files:
        plans.append(("int8", job.files["onnx-int8"]))
    cache = job.staging / f"{stem}.timing.cache"
    previous = job.out_dir / cache.name
    if previous.is_file():
        cache.write_bytes(previous.read_bytes())
    engines, files, timers = {}, [], {}
    gen = torch.Generator().manual_seed(3)
    x = job.artifact_input(torch.rand(o.batch, *job.loaded.input_size, generator=gen)).cuda()
    for precision, onnx_path in plans:
        spec = EngineSpec(
            onnx_path=onnx_path,
            engine_path=job.staging / f"{stem}.{precision}.engine",
            input_name="input",
            input_size=job.loaded.input_size,
            batch=o.batch,
            dynamic_batch=o.dynamic_batch,
            max_batch=o.max_batch,
            sparse=o.trt_sparse,
            workspace_mb=o.trt_workspace_mb,
            timing_cache=cache,
        )
        build_engine(spec)
        runner = TrtRunner(spec.engine_path)
        parity, sess = _engine_parity(job, runner, onnx_path, precision)
        engines[precision] = {"file": spec.engine_path.name, "onnx": onnx_path.name, "parity": parity}
        if precision == "int8":
            engines[precision]["top1"] = _engine_int8_gate(job, runner)
        files.append(spec.engine_path)
        timers[f"tensorrt {precision}"] = lambda r=runner: r.run_cuda(x)
        feed = {sess.get_inputs()[0].name: x.cpu().numpy()}
        timers[f"{parity['reference'].split(',')[0]} {precision}"] = lambda s=sess, f=feed: s.run(None, f)
    files.append(cache)
    worst = max(e["parity"]["error"] for e in engines.values())
    rec = {"files": files, "engines": engines, "sparse_weights": o.trt_sparse, "parity": {"error": worst, "tol": None}}
    if o.latency_seconds > 0:
        timing = time_side_by_side(timers, min_seconds=o.latency_seconds)
        rec["latency_gpu_ms"] = {k: round(t.median_ms, 4) for k, t in timing.items()}
    return rec
