"""Pretrained-weight handling: specs, cache and download, safe file I/O, strict loading with readable reports.

This package never imports ``zoo``: families hand it their converters and classifier names.
"""

from .errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    OfflineError,
    UnsafeCheckpointError,
    WeightsError,
)
from .hub import cache_dir, cached_path, fetch_weights, sha256sum
from .io import atomic_write, load_checkpoint, read_safetensors_metadata, save_safetensors, unwrap_state_dict
from .loading import Converter, compare_state_dicts, detect_layout, load_into
from .spec import WeightSpec

__all__ = [
    "CheckpointMismatchError",
    "Converter",
    "CorruptCheckpointError",
    "OfflineError",
    "UnsafeCheckpointError",
    "WeightSpec",
    "WeightsError",
    "atomic_write",
    "cache_dir",
    "cached_path",
    "compare_state_dicts",
    "detect_layout",
    "fetch_weights",
    "load_checkpoint",
    "load_into",
    "read_safetensors_metadata",
    "save_safetensors",
    "sha256sum",
    "unwrap_state_dict",
]
