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


def _apply_xdist_groups(config: pytest.Config, items: list) -> None:
    """``--dist loadgroup`` groups by an ``@group`` suffix that pytest-xdist 3.8 appends by assigning ``_nodeid``,
    which pytest 9.2 no longer reads (its node ids are structured): without this, ``xdist_group`` marks are
    silently ignored, both workers build the same model and wait on the same shared fixture."""
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # older pytest: xdist's own suffix works
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name")) for m in item.iter_markers("xdist_group")})
        if names and "@" not in item.nodeid.rsplit("]", 1)[-1]:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """xdist groups that work (:func:`_apply_xdist_groups`); then the registry-wide tests first, largest models
    first (parameter counts from the cards' stats file), so that the two workers end together instead of one
    finishing a 400-layer model alone at the end."""
    import json
    from pathlib import Path

    _apply_xdist_groups(config, items)

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
