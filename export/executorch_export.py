"""ExecuTorch ``.pte`` export (XNNPACK delegate, fp32) and its check with ExecuTorch's own Python runtime.

ExecuTorch is an optional extra (``pip install 'efficient-zoo[executorch]'``). It must be a release built against
the installed torch: :func:`executorch_status` says whether it is importable and compatible, and the exporter fails
the format with that precise reason otherwise. On Linux x86-64 the runtime runs here, so the ``.pte`` is the mobile
artifact whose parity is proven on this machine.
"""

from __future__ import annotations

import importlib.metadata as md
import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch
from torch import nn

from .errors import FormatUnavailableError

__all__ = ["executorch_status", "export_pte", "export_pte_int8", "load_pte"]


def _requires_torch(dist: str) -> str:
    reqs = md.requires(dist) or []
    return next((r for r in reqs if r.split(";")[0].strip().startswith("torch") and "torchao" not in r), "")


def executorch_status() -> tuple[str | None, str | None]:
    """``(version, None)`` when ExecuTorch is usable with this torch, else ``(version or None, reason)``."""
    try:
        version = md.version("executorch")
    except md.PackageNotFoundError:
        return None, (
            "ExecuTorch is not installed; `pip install 'efficient-zoo[executorch]'` (it must match torch "
            f"{torch.__version__})"
        )
    try:
        with redirect_stderr(io.StringIO()), redirect_stdout(io.StringIO()):
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
            from executorch.exir import to_edge_transform_and_lower  # noqa: F401
            from executorch.runtime import Runtime  # noqa: F401
    except Exception as e:  # noqa: BLE001 - an ABI or version mismatch shows up as any import error
        need = _requires_torch("executorch")
        return version, (
            f"executorch {version} cannot be used with torch {torch.__version__}"
            f"{f' (it requires {need})' if need else ''}: {type(e).__name__}: {e}"
        )
    return version, None


def export_pte(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int, int], batch: int = 1) -> Path:
    """Lower a deployed model to ExecuTorch with the XNNPACK delegate (fp32) and write ``path``.

    The batch is fixed: the XNNPACK delegate's memory plan is static between delegated partitions.

    Raises:
        FormatUnavailableError: ExecuTorch missing or incompatible with this torch.
    """
    version, reason = executorch_status()
    if reason:
        raise FormatUnavailableError(reason)
    example = torch.randn(batch, *input_size)
    with torch.no_grad():
        ep = torch.export.export(model.eval(), (example,))
    return _lower_and_write(ep, Path(path))


def _lower_and_write(ep: torch.export.ExportedProgram, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    with redirect_stderr(io.StringIO()):
        edge = to_edge_transform_and_lower(
            ep, partitioner=[XnnpackPartitioner()], compile_config=EdgeCompileConfig(_check_ir_validity=False)
        )
        program = edge.to_executorch()
    with open(path, "wb") as f:
        program.write_to_file(f)
    return path


def export_pte_int8(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int],
    calib: torch.Tensor,
    batch: int = 1,
    ranges: dict[str, float] | None = None,
    info: dict | None = None,
) -> Path:
    """INT8 ``.pte``: PT2E quantization with ExecuTorch's XNNPACK quantizer (symmetric, per-channel weights), calibrated
    on ``calib`` (model inputs), then lowered to the XNNPACK delegate.

    ``ranges`` (``{graph node name: amax}``, a QAT checkpoint's learned ranges, keyed by the ``torch.export`` node
    that produces each tensor) replace the calibrated range of every observed tensor they name; the tensors XNNPACK
    quantizes that QAT did not (op outputs) keep their calibrated ranges. ``info`` receives the counts.

    Raises:
        FormatUnavailableError: ExecuTorch missing or incompatible with this torch.
    """
    version, reason = executorch_status()
    if reason:
        raise FormatUnavailableError(reason)
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = torch.randn(batch, *input_size)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad():
        graph = torch.export.export(model.eval(), (example,)).module()
        prepared = prepare_pt2e(graph, quantizer)
        for i in range(0, len(calib) - batch + 1, batch):
            prepared(calib[i : i + batch])
        if ranges:
            used, observed = _apply_ranges(prepared, ranges)
            if info is not None:
                info.update(qat_ranges_used=used, observed_tensors=observed)
        converted = convert_pt2e(prepared)
        ep = torch.export.export(converted, (example,))
    return _lower_and_write(ep, Path(path))


def _apply_ranges(prepared: torch.fx.GraphModule, ranges: dict[str, float]) -> tuple[int, int]:
    """Swap the observer of every tensor named in ``ranges`` for a symmetric min/max observer holding that range."""
    from torchao.quantization.pt2e import MinMaxObserver, ObserverBase

    used = observed = 0
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        obs = prepared.get_submodule(str(node.target))
        src = node.args[0] if node.args else None
        per_tensor = getattr(obs, "qscheme", None) in (torch.per_tensor_affine, torch.per_tensor_symmetric)
        if not (isinstance(obs, ObserverBase) and getattr(obs, "dtype", None) == torch.int8 and per_tensor):
            continue  # weights (per channel) and anything not int8 keep their observers
        if not isinstance(src, torch.fx.Node):
            continue
        observed += 1
        if src.name not in ranges:
            continue
        fixed = MinMaxObserver(
            dtype=torch.int8, qscheme=torch.per_tensor_symmetric, quant_min=obs.quant_min, quant_max=obs.quant_max
        )
        fixed(torch.tensor([-ranges[src.name], ranges[src.name]]))
        prepared.add_submodule(str(node.target), fixed)
        used += 1
    return used, observed


class _PteRunner:
    """Callable running the ``forward`` method of a loaded ``.pte`` on a tensor."""

    def __init__(self, method: object) -> None:
        self.method = method

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.execute([x.contiguous()])[0]


def load_pte(path: str | os.PathLike) -> _PteRunner:
    """Load a ``.pte`` with ExecuTorch's Python runtime; the result maps an input tensor to the first output."""
    version, reason = executorch_status()
    if reason:
        raise FormatUnavailableError(reason)
    from executorch.runtime import Runtime

    with redirect_stderr(io.StringIO()):
        program = Runtime.get().load_program(Path(path))
        return _PteRunner(program.load_method("forward"))
