"""Dense or sparse, decided on the machine that runs the layer: measured on first use, cached like an FFTW plan.

A deployed sparse layer (:class:`blocks.SparseConv2d`, :class:`blocks.SparseLinear`) meets an input shape for the
first time: its dense op and its sparse product are timed against each other on that very input, in alternating
rounds (a few milliseconds), and :func:`choose_sparse` decides. The decision is kept in memory for the process and
in ``$ZOO_CACHE/sparse-plans/<machine>.json`` for the next one, keyed by what the timings depend on: CPU model and
feature flags, thread count, the sparse kernel's build (:func:`blocks.native.kernel_build`), torch's version, and
the layer's signature (kind, shape, non-zeros, input size, batch, memory format).

The cache file is written atomically (a temporary file renamed over it) under an advisory lock, merging what
another process wrote meanwhile, so two processes deciding at once both keep their plans and never see a torn file.
A file that does not parse, has the wrong format, or was written on another machine (copied cache, shared home) is
ignored and rewritten; an unwritable cache folder leaves the plans in memory (:func:`cache_status` says so).

``ZOO_SPARSE_PLAN=measure`` (default) decides as above; ``dense`` / ``sparse`` force every layer (benchmarks
timing one kernel alone, tests). Tracing, ``torch.export`` and ONNX/CoreML export never reach this module: exported
graphs are dense convolutions whatever was decided.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import native

__all__ = ["Decision", "cache_path", "cache_status", "choose_sparse", "decide", "decisions", "machine_key", "reset"]

FORMAT = "efficient-zoo sparse plans"
VERSION = 1
#: Sparse must beat dense by this fraction in the median paired round to be chosen.
NOISE_MARGIN = 0.03
_ROUNDS = (5, 11)  # paired dense/sparse rounds per decision: at least, at most
_BUDGET_S = 0.02  # rounds after the first 5 stop once a decision has taken this long
_ROUND_US = 150.0  # each timed sample repeats the call until it lasts about this long

_lock = threading.RLock()
_memory: dict[tuple[str, str], Decision] = {}  # (machine hash, signature) -> decision, this process
_loaded: set[str] = set()  # machine hashes whose cache file has been read
_status: dict[str, str] = {}  # machine hash -> "cache <path>" / why not


@dataclass(frozen=True)
class Decision:
    """Which op a layer signature runs on this machine, and the timings that decided it (the fastest sample of
    each op, microseconds per call)."""

    sparse: bool
    dense_us: float
    sparse_us: float
    ratio: float  # dense_us / sparse_us (> 1: sparse faster)
    source: str  # "measured", "cache" or "forced"

    @property
    def kernel(self) -> str:
        """``"sparse"`` or ``"dense"``."""
        return "sparse" if self.sparse else "dense"


def choose_sparse(dense_us: Sequence[float], sparse_us: Sequence[float], margin: float = NOISE_MARGIN) -> bool:
    """The decision rule, on measured numbers: run sparse only where it wins clearly.

    The samples are paired rounds (``dense_us[i]`` and ``sparse_us[i]`` timed back to back). Machine noise (other
    processes, preemption) only ever adds time, so each op's fastest sample estimates its own cost best: sparse is
    chosen when ``min(dense) / min(sparse)`` exceeds ``1 + margin`` *and* sparse also won the majority of the paired
    rounds (the median paired ratio is above 1), so that one lucky sample cannot decide. Anything closer is noise and
    runs dense: a sparse layer is never slower than its dense op by more than the noise of its own measurement.

    Raises:
        ValueError: empty, unpaired or non-positive samples.
    """
    if not dense_us or len(dense_us) != len(sparse_us):
        raise ValueError(f"need paired samples, got {len(dense_us)} dense and {len(sparse_us)} sparse")
    if min(dense_us) <= 0 or min(sparse_us) <= 0:
        raise ValueError("timings must be positive")
    paired = statistics.median(d / s for d, s in zip(dense_us, sparse_us))
    return min(dense_us) / min(sparse_us) > 1.0 + margin and paired > 1.0


def _time_us(fn: Callable[[], Any], reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e6


def measure(dense: Callable[[], Any], sparse: Callable[[], Any]) -> tuple[list[float], list[float]]:
    """Paired per-call timings (us) of ``dense`` and ``sparse``: one warm-up each, then alternating rounds (5 to 11,
    about 20 ms in all for a typical layer; a few ms on a quiet machine)."""
    start = time.perf_counter()
    first = max(_time_us(dense, 1), _time_us(sparse, 1), 1.0)  # warm-up (and the size of a call)
    reps = max(1, min(50, round(_ROUND_US / first)))
    d: list[float] = []
    s: list[float] = []
    for i in range(_ROUNDS[1]):
        if i >= _ROUNDS[0] and time.perf_counter() - start > _BUDGET_S:
            break
        pair = [(dense, d), (sparse, s)] if i % 2 == 0 else [(sparse, s), (dense, d)]  # alternate who goes first
        for fn, out in pair:
            out.append(_time_us(fn, reps))
    return d, s


def machine_key() -> dict[str, Any]:
    """What a timing depends on besides the layer: CPU, ISA flags, threads, sparse kernel build, torch."""
    info = native.cpu_info()
    return {
        "cpu": info["model"],
        "flags_sha256": hashlib.sha256(info["flags"].encode()).hexdigest()[:16],
        "isa": native.isa_summary(),
        "threads": torch.get_num_threads(),
        "kernel": native.kernel_build(),
        "kernel_config": native.kernel_config(),
        "torch": torch.__version__,
    }


def _machine_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(key: dict[str, Any] | None = None) -> Path:
    """The plan file of this machine (and thread count, kernel build ...)."""
    return native.cache_root() / "sparse-plans" / f"{_machine_hash(key or machine_key())}.json"


def _read(path: Path, key: dict[str, Any]) -> dict[str, Decision]:
    """The plans of ``path`` if it is a valid file of this machine; {} (and a warning) otherwise."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as e:
        warnings.warn(f"sparse plan cache {path} is unreadable or corrupt ({e}); ignored and rebuilt", stacklevel=3)
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        warnings.warn(f"sparse plan cache {path} is not a version-{VERSION} plan file; ignored, rebuilt", stacklevel=3)
        return {}
    if data.get("machine") != key:
        warnings.warn(f"sparse plan cache {path} is another machine's or kernel's; ignored and rebuilt", stacklevel=3)
        return {}
    plans = {}
    for sig, entry in (data.get("plans") or {}).items():
        try:
            plans[sig] = Decision(
                bool(entry["sparse"]), float(entry["dense_us"]), float(entry["sparse_us"]), float(entry["ratio"]),
                "cache",
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            continue  # a damaged entry is measured again
    return plans


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An advisory lock on ``path`` + ``.lock`` (POSIX); elsewhere the atomic rename alone keeps files whole."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path.with_suffix(".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write(path: Path, key: dict[str, Any], mine: dict[str, Decision]) -> None:
    """Merge ``mine`` into the file at ``path`` (re-read under the lock) and replace it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bad file is being replaced; it was reported when read
            plans = _read(path, key) | mine
        data = {
            "format": FORMAT,
            "version": VERSION,
            "machine": key,
            "plans": {
                s: {k: v for k, v in asdict(d).items() if k != "source"} for s, d in sorted(plans.items())
            },
        }
        fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _ensure_loaded(mhash: str, key: dict[str, Any]) -> None:
    if mhash in _loaded:
        return
    _loaded.add(mhash)
    path = cache_path(key)
    for sig, d in _read(path, key).items():
        _memory.setdefault((mhash, sig), d)
    _status.setdefault(mhash, f"cache {path}")


def decide(signature: str, dense: Callable[[], Any], sparse: Callable[[], Any]) -> Decision:
    """The decision for a layer ``signature`` on this machine: from memory, the cache file, or measured now.

    Args:
        signature: the layer's shape, non-zeros, input size, batch and memory format (see the layers).
        dense: runs the layer's dense op on its real input.
        sparse: runs the layer's sparse product on the same input.
    """
    policy = os.environ.get("ZOO_SPARSE_PLAN", "measure").strip().lower()
    if policy not in ("measure", "dense", "sparse"):
        raise ValueError(f"ZOO_SPARSE_PLAN={policy!r}: use measure, dense or sparse")
    if policy != "measure":
        return Decision(policy == "sparse", float("nan"), float("nan"), float("nan"), "forced")
    key = machine_key()
    mhash = _machine_hash(key)
    with _lock:
        _ensure_loaded(mhash, key)
        found = _memory.get((mhash, signature))
        if found is not None:
            return found
        d_us, s_us = measure(dense, sparse)
        decision = Decision(choose_sparse(d_us, s_us), min(d_us), min(s_us), min(d_us) / min(s_us), "measured")
        _memory[(mhash, signature)] = decision
        try:
            _write(cache_path(key), key, {signature: decision})
            _status[mhash] = f"cache {cache_path(key)}"
        except OSError as e:
            _status[mhash] = f"cache not writable ({e}); plans kept in memory"
        return decision


def decisions() -> dict[str, Decision]:
    """``{signature: decision}`` known in this process for the current machine key (measured or read)."""
    key = machine_key()
    mhash = _machine_hash(key)
    with _lock:
        _ensure_loaded(mhash, key)
        return {sig: d for (h, sig), d in _memory.items() if h == mhash}


def cache_status() -> str:
    """Where this machine's plans are cached, or why they are only in memory."""
    key = machine_key()
    mhash = _machine_hash(key)
    return _status.get(mhash, f"cache {cache_path(key)} (not read yet)")


def reset() -> None:
    """Forget the plans of this process (the cache file stays); tests."""
    with _lock:
        _memory.clear()
        _loaded.clear()
        _status.clear()
