"""Shared test set-up: deterministic seeds, one thread per xdist worker, quiet third-party warnings."""

from __future__ import annotations

import logging
import os
import warnings

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
logging.getLogger("coremltools").setLevel(logging.ERROR)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """The registry-wide tests first, largest models first (parameter counts from the cards' stats file), so that
    the two xdist workers end together instead of one finishing a 400-layer model alone at the end."""
    import json
    from pathlib import Path

    stats_file = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "model_stats.json"
    try:
        stats = json.loads(stats_file.read_text())
    except (OSError, ValueError):
        return

    def weight(item: pytest.Item) -> int:
        spec = getattr(item, "callspec", None)
        name = spec.params.get("subject") if spec is not None else None
        return -int(stats.get(name, {}).get("params", 0)) if isinstance(name, str) else 0

    registry = [i for i in items if i.nodeid.startswith("tests/test_registry.py::")]
    if not registry:
        return
    rest = [i for i in items if not i.nodeid.startswith("tests/test_registry.py::")]
    items[:] = sorted(registry, key=weight) + rest
