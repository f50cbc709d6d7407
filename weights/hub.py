"""The weights cache: download once, verify SHA-256, and say exactly where to put the file when offline."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from .errors import CorruptCheckpointError, OfflineError
from .io import atomic_write
from .spec import WeightSpec

__all__ = ["cache_dir", "cached_path", "fetch_weights", "sha256sum"]


def cache_dir() -> Path:
    """``$ZOO_CACHE`` if set, else ``$XDG_CACHE_HOME/efficient-zoo`` (``~/.cache/efficient-zoo``)."""
    if os.environ.get("ZOO_CACHE"):
        return Path(os.environ["ZOO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "efficient-zoo"


def cached_path(spec: WeightSpec) -> Path:
    """Where ``spec``'s file lives (or must be placed) in the cache."""
    return cache_dir() / spec.cache_name


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, spec: WeightSpec) -> None:
    if spec.sha256 is None:
        return
    digest = sha256sum(path)
    if not digest.startswith(spec.sha256.lower()):
        raise CorruptCheckpointError(
            f"{path} has SHA-256 {digest} but {spec.url} is published with {spec.sha256}: the file is corrupt or "
            f"a different release. Delete it and download again."
        )


def fetch_weights(spec: WeightSpec, progress: bool = True, timeout: float = 30.0) -> Path:
    """Return the local path of ``spec``'s file, downloading it into the cache when needed.

    Raises:
        OfflineError: not cached and the download failed; the message names the URL and the cache path.
        CorruptCheckpointError: the file's SHA-256 differs from the published one.
    """
    path = cached_path(spec)
    if path.is_file():
        _verify(path, spec)
        return path
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout) as resp:  # noqa: S310 (https URLs from the table)
            if (resp.headers.get("Content-Type") or "").startswith("text/html"):
                # e.g. a Google Drive folder: a page to download the file from by hand, not the file itself
                raise OSError("the address serves a web page, not a checkpoint file; download the file from it")
            total = int(resp.headers.get("Content-Length") or 0)

            def write(tmp: str) -> None:
                from tqdm import tqdm

                with (
                    open(tmp, "wb") as f,
                    tqdm(
                        total=total or None, unit="B", unit_scale=True, desc=spec.cache_name, disable=not progress
                    ) as bar,
                ):
                    while block := resp.read(1 << 20):
                        f.write(block)
                        bar.update(len(block))

            atomic_write(path, write)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise OfflineError(
            f"could not download {spec.url} ({e}).\nIf this machine is offline, download that file elsewhere and "
            f"place it at:\n  {path}\n(or set ZOO_CACHE to the folder holding it, or pass pretrained=<path>)."
        ) from e
    try:
        _verify(path, spec)
    except CorruptCheckpointError:
        shutil.move(str(path), str(path) + ".bad")
        raise
    return path
