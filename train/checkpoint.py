"""Checkpoints: weights as safetensors, and one training-state file that ``--resume`` continues from exactly.

``last_state.pt`` holds everything a resume needs in one atomically written file (model, optimizer, scheduler, EMA,
grad scaler, pruner, step, epoch, best metric, every rank's RNG states), so a run killed at any moment resumes from
one consistent epoch boundary: two separate files could pair weights and optimizer moments of different epochs.
It holds tensors and plain containers only, so ``torch.load(weights_only=True)`` reads it.

``last.safetensors`` / ``best.safetensors`` are the deployable weights (train-time form, loadable by
``zoo.create_model(name, pretrained=path)``), with the model name, classes and input size in their metadata.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from weights import atomic_write, read_safetensors_metadata, save_safetensors

__all__ = [
    "STATE_FILE",
    "rng_state",
    "set_rng_state",
    "save_weights",
    "save_state",
    "load_state",
    "resolve_resume",
    "weights_metadata",
]

STATE_FILE = "last_state.pt"
FORMAT = 1


def rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / Python RNG states as tensors and plain lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)},
        "numpy_gauss": [int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    has_gauss, cached = state["numpy_gauss"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state((np_state["kind"], keys, np_state["pos"], has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_metadata(model_name: str, num_classes: int, img_size: int, model_kwargs: dict, **extra: Any) -> dict:
    """safetensors metadata (strings only) that lets ``zoo validate`` and ``zoo export`` rebuild the model."""
    meta = {
        "model": model_name,
        "num_classes": str(num_classes),
        "img_size": str(img_size),
        "model_kwargs": json.dumps(model_kwargs),
        "format": "efficient-zoo train",
    }
    meta.update({k: str(v) for k, v in extra.items()})
    return meta


def save_weights(model: nn.Module, path: Path, metadata: dict[str, Any]) -> Path:
    """Model weights (train-time form) as safetensors, atomically (metadata values stored as strings)."""
    return save_safetensors(model.state_dict(), path, metadata={k: str(v) for k, v in metadata.items()})


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """The training state, atomically (temp file + fsync + rename)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def resolve_resume(resume: str | Path) -> Path:
    """The state file of ``resume``: an output directory or the file itself."""
    path = Path(resume)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"nothing to resume at {resume}: no {STATE_FILE} (a run writes it at the end of its first epoch)"
        )
    return path


def load_state(resume: str | Path) -> dict[str, Any]:
    """Read a training-state file (``weights_only``: no code is unpickled)."""
    path = resolve_resume(resume)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a training state written by this version of train (format {FORMAT})")
    return state


def read_weights_metadata(path: str | Path) -> dict[str, Any]:
    """Model name, classes, input size and kwargs recorded in a ``*.safetensors`` written by training ({} if none)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    meta = read_safetensors_metadata(path)
    if meta.get("format") != "efficient-zoo train":
        return {}
    return {
        "model": meta["model"],
        "num_classes": int(meta["num_classes"]),
        "img_size": int(meta["img_size"]),
        "model_kwargs": json.loads(meta.get("model_kwargs", "{}")),
    }
