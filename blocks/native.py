"""The native sparse kernel: ``blocks/csrc/spmm.c``, compiled on first use and loaded with ctypes.

Deployed sparse 1x1 convolutions multiply a CSR weight by the activation viewed as ``C x HW`` (NCHW needs no
transposition). torch's CSR product (MKL) does that at about a fifth of oneDNN's dense arithmetic rate, so at 90%
sparsity it is only ~2x faster than the dense convolution; the small C kernel here broadcasts each non-zero weight
against a strip of 64 pixels held in vector registers, as XNNPACK's sparse kernels do, and reaches 2-9x.

It is built with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) with ``-O3 -march=native -fopenmp``
into ``$ZOO_CACHE/kernels`` (default ``~/.cache/efficient-zoo/kernels``), once per source, compiler and CPU; the file
is written atomically, so concurrent first uses are safe. No compiler, a failed build or ``ZOO_SPARSE_KERNEL=mkl``:
torch's MKL product is used instead (:func:`kernel_status` says which and why). OpenMP comes from the ``libgomp``
that torch has already loaded, so both share one thread pool.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["kernel_name", "kernel_status", "native_spmm", "spmm_available"]

SOURCE = Path(__file__).with_name("csrc") / "spmm.c"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c99"]
_lock = threading.Lock()
_state: dict[str, object] = {}  # "fn": the ctypes function or None, "status": why


def _cache_dir() -> Path:
    """``$ZOO_CACHE/kernels``, as the weights cache (``~/.cache/efficient-zoo`` by default)."""
    if os.environ.get("ZOO_CACHE"):
        return Path(os.environ["ZOO_CACHE"]) / "kernels"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "efficient-zoo" / "kernels"


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU model and its flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep))


def _build(cc: str) -> Path:
    """Compile the kernel (or find it already compiled) and return the shared library's path."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(_FLAGS).encode(), _cpu_key().encode()]))
    name = f"spmm-{key.hexdigest()[:16]}.so"
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / "efficient-zoo-kernels"):  # read-only home: /tmp
        lib = folder / name
        if lib.exists():
            return lib
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            break
        except OSError:
            continue
    else:
        raise RuntimeError(f"no writable folder for the compiled kernel ({_cache_dir()} or the temp folder)")
    os.close(fd)
    try:
        res = subprocess.run([cc, *_FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed ({res.returncode}): {(res.stderr or res.stdout).strip()[:500]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _load() -> None:
    choice = os.environ.get("ZOO_SPARSE_KERNEL", "auto").strip().lower()
    if choice not in ("auto", "native", "mkl"):
        raise ValueError(f"ZOO_SPARSE_KERNEL={choice!r}: use auto, native or mkl")
    _state.update(fn=None, status="")
    if choice == "mkl":
        _state["status"] = "mkl (ZOO_SPARSE_KERNEL=mkl)"
        return
    cc = _compiler()
    try:
        if cc is None:
            raise RuntimeError("no C compiler found (set CC)")
        lib = ctypes.CDLL(str(_build(cc)))
        if lib.zoo_spmm_abi_version() != 1:
            raise RuntimeError("stale kernel library")
        fn = lib.zoo_spmm_f32
        ptr = ctypes.c_void_p
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_int]
        fn.restype = None
        _state.update(fn=fn, status=f"native ({SOURCE.name} built with {cc})")
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        if choice == "native":
            raise RuntimeError(f"ZOO_SPARSE_KERNEL=native, but the native sparse kernel is unavailable: {e}") from e
        _state["status"] = f"mkl (native kernel unavailable: {e})"


def _ensure() -> None:
    if "status" not in _state:
        with _lock:
            if "status" not in _state:
                try:
                    _load()
                except Exception:
                    _state.clear()  # asked for the native kernel and it is not there: say so on every use
                    raise


def spmm_available() -> bool:
    """Whether the native kernel is built and loaded (building it on the first call)."""
    _ensure()
    return _state["fn"] is not None


def kernel_name() -> str:
    """``"native"`` or ``"mkl"``: the product deployed sparse layers use."""
    return "native" if spmm_available() else "mkl"


def kernel_status() -> str:
    """Which sparse product is in use, and why (e.g. why the native one is not)."""
    _ensure()
    return str(_state["status"])


def reset() -> None:
    """Forget the loaded kernel so that the next use looks again (after changing ``ZOO_SPARSE_KERNEL``; tests)."""
    with _lock:
        _state.clear()


def native_spmm(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    in_features: int,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``W @ x + bias[:, None]`` for a CSR ``W`` of shape (rows, ``in_features``) and ``x`` (``in_features``, n).

    ``indptr``/``indices`` int32, ``values``, ``x``, ``bias`` (rows,) and ``out`` (rows, n; written when given)
    float32; all contiguous, on the CPU. The CSR arrays are trusted to be valid (the layers build them).
    """
    _ensure()
    fn = _state["fn"]
    if fn is None:
        raise RuntimeError(f"the native sparse kernel is not available: {_state['status']}")
    rows = indptr.numel() - 1
    if x.dim() != 2 or x.shape[0] != in_features:
        raise ValueError(f"x must be ({in_features}, n), got {tuple(x.shape)}")
    n = x.shape[1]
    checks = [("indptr", indptr, torch.int32), ("indices", indices, torch.int32), ("values", values, torch.float32)]
    checks += [("x", x, torch.float32)] + ([("bias", bias, torch.float32)] if bias is not None else [])
    for name, t, dtype in checks:
        if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError(f"{name} must be a contiguous CPU {dtype} tensor, got {t.dtype} on {t.device}")
    if bias is not None and bias.numel() != rows:
        raise ValueError(f"bias must have {rows} elements, got {bias.numel()}")
    if out is None:
        out = x.new_empty(rows, n)
    elif out.shape != (rows, n) or not out.is_contiguous() or out.dtype != torch.float32:
        raise ValueError(f"out must be a contiguous float32 ({rows}, {n}) tensor, got {tuple(out.shape)}")
    bias_ptr = None if bias is None else bias.data_ptr()
    fn(rows, n, indptr.data_ptr(), indices.data_ptr(), values.data_ptr(), x.data_ptr(), bias_ptr, out.data_ptr(),
       torch.get_num_threads())  # fmt: skip
    return out
