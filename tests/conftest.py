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
