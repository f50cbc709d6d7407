"""The native sparse kernel: ``blocks/csrc/spmm.c``, compiled on first use and loaded with ctypes.

Deployed sparse 1x1 convolutions multiply a CSR weight by the activation viewed as ``C x HW`` (NCHW needs no
transposition). torch's CSR product (MKL) does that at about a fifth of oneDNN's dense arithmetic rate; the small C
kernel here broadcasts each non-zero weight against a strip of pixels held in vector registers, as XNNPACK's sparse
kernels do, with the vector width and strip of the ISA it is compiled for (see the source's header).

It is built with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) with ``-O3 -march=native -fopenmp
-ffp-contract=fast`` (``$ZOO_SPARSE_MARCH`` replaces ``native``, e.g. ``haswell`` for an AVX2 build on an AVX-512
CPU) into ``$ZOO_CACHE/kernels`` (default ``~/.cache/efficient-zoo/kernels``, else the temp folder when that is not
writable), once per source, compiler, flags and CPU; the file is written atomically, so concurrent first uses are
safe. No compiler, a failed build or ``ZOO_SPARSE_KERNEL=mkl``: torch's MKL product is used instead
(:func:`kernel_status` says which and why, and which layer shapes run sparse on this machine). OpenMP comes from the
``libgomp`` that torch has already loaded, so both share one thread pool. :func:`compile_kernel` builds any variant
(another ``-march``, a cross compiler, a strip shape) for the tests and ``benchmarks/sparse_kernel.py``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

__all__ = [
    "compile_kernel",
    "cpu_info",
    "cpu_supports",
    "isa_summary",
    "kernel_build",
    "kernel_config",
    "kernel_name",
    "kernel_status",
    "load_library",
    "native_spmm",
    "product",
    "spmm_available",
]

SOURCE = Path(__file__).with_name("csrc") / "spmm.c"
ABI_VERSION = 2
_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c99", "-ffp-contract=fast"]
#: ``-march`` targets of the x86-64 builds the tests check, with the CPU flags each one needs to run.
X86_TARGETS: dict[str, tuple[str, ...]] = {
    "x86-64": (),
    "x86-64-v2": ("sse4_2", "ssse3", "popcnt"),
    "haswell": ("avx2", "fma", "bmi2"),
    "x86-64-v4": ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}
_lock = threading.Lock()
_state: dict[str, object] = {}  # "fn": the ctypes function or None, "status": why, "config"/"build": what runs
generation = 0  # bumped by reset(): layers drop what they prepared for the previous kernel


def _cache_dir() -> Path:
    """``$ZOO_CACHE/kernels``, as the weights cache (``~/.cache/efficient-zoo`` by default)."""
    return cache_root() / "kernels"


def cache_root() -> Path:
    """``$ZOO_CACHE``, else ``$XDG_CACHE_HOME/efficient-zoo`` (``~/.cache/efficient-zoo``)."""
    if os.environ.get("ZOO_CACHE"):
        return Path(os.environ["ZOO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "efficient-zoo"


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, str]:
    """The CPU model and its feature flags (``/proc/cpuinfo``; what ``-march=native`` and timings depend on)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": ""}
    fields: dict[str, str] = {}
    for ln in lines:
        key, _, value = ln.partition(":")
        key = key.strip()
        if key in ("model name", "flags", "Features", "CPU part", "CPU implementer") and key not in fields:
            fields[key] = value.strip()
    model = fields.get("model name") or " ".join(v for k, v in fields.items() if k.startswith("CPU")) or "unknown"
    return {"model": model, "flags": fields.get("flags") or fields.get("Features", "")}


@functools.lru_cache(maxsize=1)
def isa_summary() -> str:
    """The vector ISA levels of this CPU, e.g. ``"avx2 fma avx512f avx512_vnni amx_tile"``."""
    names = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "asimd")
    flags = set(cpu_info()["flags"].split())
    return " ".join(n for n in names if n in flags) or platform.machine()


def cpu_supports(march: str) -> bool:
    """Whether this CPU runs code built for an x86-64 ``-march`` of :data:`X86_TARGETS` (``native``: always)."""
    if march == "native":
        return True
    if march not in X86_TARGETS or platform.machine() not in ("x86_64", "AMD64"):
        return False
    return set(X86_TARGETS[march]) <= set(cpu_info()["flags"].split())


def _cpu_key() -> str:
    info = cpu_info()
    return f"{info['model']}\n{info['flags']}"


def _march() -> str:
    """``$ZOO_SPARSE_MARCH`` (e.g. ``haswell`` for an AVX2 build on an AVX-512 CPU), default ``native``."""
    march = os.environ.get("ZOO_SPARSE_MARCH", "native").strip() or "native"
    if not all(ch.isalnum() or ch in "-_.+" for ch in march):
        raise ValueError(f"ZOO_SPARSE_MARCH={march!r} is not a -march value")
    return march


def compile_kernel(
    out: str | os.PathLike, march: str = "native", cc: str | None = None, defines: dict[str, int] | None = None
) -> None:
    """Compile ``spmm.c`` into the shared library ``out`` (written atomically: a failed build leaves nothing).

    Args:
        out: the library's path.
        march: ``-march`` value (``native``, ``haswell``, ``x86-64-v4``, ``armv8-a`` ...).
        cc: the compiler (default: the system one; a cross compiler such as ``aarch64-linux-gnu-gcc`` works too).
        defines: strip shape overrides (``ZOO_VW``, ``ZOO_NV``, ``ZOO_CH``), for kernel benchmarks.

    Raises:
        RuntimeError: no compiler, or the compiler failed (its message).
    """
    cc = cc or _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    out = Path(out)
    flags = [*_FLAGS, f"-march={march}", *(f"-D{k}={int(v)}" for k, v in (defines or {}).items())]
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed ({res.returncode}): {(res.stderr or res.stdout).strip()[:500]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build(cc: str, march: str = "native", defines: dict[str, int] | None = None) -> Path:
    """Compile the kernel (or find it already compiled) and return the shared library's path."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    source = SOURCE.read_bytes()
    extra = [f"-march={march}", *(f"-D{k}={v}" for k, v in sorted((defines or {}).items()))]
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(_FLAGS + extra).encode(), _cpu_key().encode()]))
    name = f"spmm-{key.hexdigest()[:16]}.so"
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / "efficient-zoo-kernels"):  # read-only home: /tmp
        lib = folder / name
        if lib.exists():
            return lib
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=folder)  # writable?
            probe.close()
            break
        except OSError:
            continue
    else:
        raise RuntimeError(f"no writable folder for the compiled kernel ({_cache_dir()} or the temp folder)")
    compile_kernel(lib, march, cc, defines)
    return lib


def load_library(path: str | os.PathLike) -> tuple[ctypes._CFuncPtr, str]:
    """``(zoo_spmm_f32, its "isa vw nv ch" configuration)`` of a compiled kernel library."""
    lib = ctypes.CDLL(str(path))
    if lib.zoo_spmm_abi_version() != ABI_VERSION:
        raise RuntimeError("stale kernel library")
    lib.zoo_spmm_config.restype = ctypes.c_char_p
    fn = lib.zoo_spmm_f32
    ptr = ctypes.c_void_p
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_int]
    fn.restype = None
    return fn, lib.zoo_spmm_config().decode()


def _load() -> None:
    choice = os.environ.get("ZOO_SPARSE_KERNEL", "auto").strip().lower()
    if choice not in ("auto", "native", "mkl"):
        raise ValueError(f"ZOO_SPARSE_KERNEL={choice!r}: use auto, native or mkl")
    _state.update(fn=None, status="", config="mkl", build="mkl")
    if choice == "mkl":
        _state["status"] = "mkl (ZOO_SPARSE_KERNEL=mkl)"
        return
    cc = _compiler()
    try:
        if cc is None:
            raise RuntimeError("no C compiler found (set CC)")
        march = _march()
        path = _build(cc, march)
        fn, config = load_library(path)
        _state.update(fn=fn, config=config, build=path.stem)
        _state["status"] = f"native ({config}; {SOURCE.name} built with {cc} -march={march})"
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


def product() -> ctypes._CFuncPtr | None:
    """The loaded kernel's ``zoo_spmm_f32`` (unchecked arguments: callers pass valid CSR arrays), or None (MKL)."""
    _ensure()
    return _state["fn"]  # type: ignore[return-value]


def kernel_build() -> str:
    """Identity of the sparse product in use: the library's content key (``spmm-<hash>``) or ``"mkl"``."""
    _ensure()
    return str(_state["build"])


def kernel_config() -> str:
    """``"<isa> vw=<floats per vector> nv=<vectors per strip> ch=<chains>"`` of the native kernel, or ``"mkl"``."""
    _ensure()
    return str(_state["config"])


def spmm_available() -> bool:
    """Whether the native kernel is built and loaded (building it on the first call)."""
    _ensure()
    return _state["fn"] is not None


def kernel_name() -> str:
    """``"native"`` or ``"mkl"``: the product deployed sparse layers use."""
    return "native" if spmm_available() else "mkl"


def kernel_status() -> str:
    """Which sparse product is in use and why, and which layer shapes run sparse on this machine (measured plans,
    :mod:`blocks.sparse_plan`)."""
    _ensure()
    from . import sparse_plan  # it imports this module

    plans = sparse_plan.decisions()
    sparse = sorted(sig for sig, d in plans.items() if d.sparse)
    dense = sorted(sig for sig, d in plans.items() if not d.sparse)
    text = f"{_state['status']}; plans: {len(plans)} layer shapes measured on this machine"
    text += f" ({sparse_plan.cache_status()})"
    if plans:
        ratios = {sig: d.ratio for sig, d in plans.items()}
        text += f"; sparse: {', '.join(f'{s} ({ratios[s]:.2f}x)' for s in sparse) or 'none'}"
        text += f"; dense: {', '.join(f'{s} ({ratios[s]:.2f}x)' for s in dense) or 'none'}"
    return text


def reset() -> None:
    """Forget the loaded kernel so that the next use looks again (after changing ``ZOO_SPARSE_KERNEL``; tests)."""
    global generation
    with _lock:
        _state.clear()
        generation += 1
    cpu_info.cache_clear()
    isa_summary.cache_clear()


def native_spmm(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    in_features: int,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor | None = None,
    product: ctypes._CFuncPtr | None = None,
) -> torch.Tensor:
    """``W @ x + bias[:, None]`` for a CSR ``W`` of shape (rows, ``in_features``) and ``x`` (``in_features``, n).

    ``indptr``/``indices`` int32, ``values``, ``x``, ``bias`` (rows,) and ``out`` (rows, n; written when given)
    float32; all contiguous, on the CPU. The CSR arrays are trusted to be valid (the layers build them).
    ``product``: another build's ``zoo_spmm_f32`` (:func:`load_library`; tests of every ISA), default the loaded one.
    """
    fn = product
    if fn is None:
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
