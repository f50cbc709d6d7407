"""``manifest.json``: what was exported, from what, how it was checked; and the summary table on the terminal."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["path_sha256", "path_size", "sparsity", "summary_table", "toolchain_versions", "write_json_atomic"]

_TOOLS = (
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxscript",
    "onnxslim",
    "coremltools",
    "executorch",
    "tensorrt",
    "timm",
    "efficient-zoo",
)


def toolchain_versions() -> dict[str, str | None]:
    """Versions of Python and of every package the exporter may use (None when not installed)."""
    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
    }
    for dist in _TOOLS:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file; for a directory (``.mlpackage``), of its sorted ``relative path + file digest`` lines."""
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()} {_file_sha256(f)}\n".encode())
    return h.hexdigest()


def path_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of all files under a directory."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sparsity(model: nn.Module) -> dict[str, Any]:
    """Per-layer sparsity of the deployed weights: the fraction of exact zeros of every conv / linear weight and the
    overall fraction; plus, for models with sparse layers, the masks' own figures (``blocks.sparsity_report``) and
    which layers run the sparse kernel on this machine with their measured dense/sparse ratios
    (``blocks.sparse.kernel_decisions``)."""
    import blocks

    layers, zeros, total = {}, 0, 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            w = m.weight.detach()
            z = int((w == 0).sum())
            layers[name] = round(z / w.numel(), 6)
            zeros, total = zeros + z, total + w.numel()
    out: dict[str, Any] = {
        "source": "exact zeros of conv/linear weights",
        "overall": round(zeros / max(total, 1), 6),
        "layers": layers,
    }
    masked = blocks.sparsity_report(model)
    if masked:
        out["masked_layers"] = {k: round(float(v), 6) for k, v in masked.items()}
        from blocks import native

        out["kernel"] = {  # which deployed layers run sparse on the exporting machine, as measured there
            "status": native.kernel_status(),
            "cpu": native.cpu_info()["model"],
            "isa": native.isa_summary(),
            "threads": torch.get_num_threads(),
            "note": "eager deployed runs only; the exported graphs hold dense convolutions with the zeros",
            "layers": blocks.sparse.kernel_decisions(model),
        }
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else str(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def write_json_atomic(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON through a temp file and a rename."""
    from weights import atomic_write

    text = json.dumps(_jsonable(data), indent=2)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a manifest is meant to be read by others

    return atomic_write(path, write)


def _fmt_err(x: Any) -> str:
    return f"{x:.1e}" if isinstance(x, float) else "-"


def _int8_cell(r: Mapping[str, Any]) -> str:
    t = r.get("top1") or {}
    if not t:
        return "-"
    drop = f"{t['drop']:+.2f} pt" if "drop" in t else f"cos {t.get('cosine', float('nan')):.3f}"
    return f"{drop} / {t.get('agreement', float('nan')):.1f}%"


def summary_table(formats: Mapping[str, Mapping[str, Any]]) -> str:
    """A fixed-width table: format, status, file, size, parity (error, tolerance, the reference's noise floor),
    latency, and for INT8 formats the top-1 drop and agreement against FP32; then the INT8 speed in plain words."""
    head = ("format", "status", "file", "size", "parity (err / tol / floor)", "latency ms", "int8 drop / agree", "note")
    rows = [head]
    for fmt, r in formats.items():
        files = r.get("files") or [{}]
        size = sum(f.get("size", 0) for f in files)
        par = r.get("parity") or {}
        parity = "-"
        if par:
            parity = f"{_fmt_err(par.get('error'))} / {_fmt_err(par.get('tol'))} / {_fmt_err(par.get('noise_floor'))}"
        lat = r.get("latency_ms")
        note = r.get("error") or r.get("note") or ""
        rows.append(
            (
                fmt,
                r.get("status", "?"),
                ", ".join(f.get("file", "-") for f in files),
                f"{size / 1e6:.2f} MB" if size else "-",
                parity,
                f"{lat:.2f}" if isinstance(lat, float) else "-",
                _int8_cell(r),
                note if len(note) < 110 else note[:107] + "...",
            )
        )
    n = len(head) - 1
    widths = [max(len(str(row[i])) for row in rows) for i in range(n)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row[:n], widths)) + "  " + row[n] for row in rows]
    lines.insert(1, "-" * (sum(widths) + 2 * n))
    lines += [f"{fmt}: {r['speed']}" for fmt, r in formats.items() if r.get("speed")]
    return "\n".join(line.rstrip() for line in lines)
