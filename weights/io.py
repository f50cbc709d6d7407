"""Reading and writing checkpoint files safely.

``.safetensors`` files are read with safetensors; ``.pth``/``.pt``/``.bin`` with ``torch.load(weights_only=True)``,
so a file that would need arbitrary code to unpickle is refused. Writes are atomic: temp file, fsync, rename.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .errors import CorruptCheckpointError, UnsafeCheckpointError

__all__ = ["load_checkpoint", "unwrap_state_dict", "save_safetensors", "atomic_write", "read_safetensors_metadata"]

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "net", "params")


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"  # 8-byte little-endian header length, then JSON


def load_checkpoint(path: str | os.PathLike, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` state dict.

    Args:
        path: ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file.
        prefer_ema: take the EMA weights when the file holds both.

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: truncated, corrupt, or not a checkpoint.
        UnsafeCheckpointError: the file needs code execution to unpickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"{path} is empty (0 bytes): the download or save was interrupted")
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, ValueError, OSError) as e:
            raise CorruptCheckpointError(
                f"{path} is not a readable safetensors file (truncated or corrupt): {e}"
            ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "unsupported global" in msg.lower():
            detail = next((ln for ln in msg.splitlines() if "GLOBAL" in ln or "global" in ln), "")
            raise UnsafeCheckpointError(
                f"{path} needs arbitrary Python code to unpickle, which is refused for safety "
                f"(torch.load(weights_only=True)). Re-save it as a plain state dict or safetensors. {detail.strip()}"
            ) from e
        raise CorruptCheckpointError(f"{path} is corrupt or truncated: {msg.splitlines()[0]}") from e
    except Exception as e:  # noqa: BLE001 - the unpickler raises anything (IndexError, EOFError, ...) on garbage
        raise CorruptCheckpointError(f"{path} is corrupt or truncated (not readable as a torch checkpoint): {e}") from e
    return unwrap_state_dict(obj, prefer_ema=prefer_ema, origin=str(path))


def unwrap_state_dict(obj: object, prefer_ema: bool = False, origin: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Strip the wrappers authors save around a state dict: ``{'model': ...}``, ``{'state_dict': ...}``, ``module.``."""
    wrappers = _WRAPPER_KEYS if prefer_ema else _WRAPPER_KEYS[2:] + _WRAPPER_KEYS[:2]
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in wrappers if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CorruptCheckpointError(f"{origin}: expected a state dict, got {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CorruptCheckpointError(f"{origin}: no tensors found; top-level keys are {sorted(map(str, obj))[:20]}")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write a file atomically: ``write(tmp_path)`` then fsync and rename, so no half-written file is ever visible.

    Args:
        path: final path.
        write: callable that writes the content to the temp path it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the result the usual permissions
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save a state dict as safetensors, atomically (tensors made contiguous, shared storage copied)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=dict(metadata or {})))


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata block of a safetensors file (empty dict when none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
