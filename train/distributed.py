"""Process-group set-up for ``torchrun``: the same command runs single-process or DistributedDataParallel.

``torchrun --nproc_per_node=N`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; with ``WORLD_SIZE > 1`` we join the group
(gloo on CPU, NCCL on CUDA), give each process its own GPU, and let only rank 0 log and write files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "setup", "teardown", "all_sum", "gather_objects"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: rank, world size, its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world > 1


def _device(requested: str, local_rank: int) -> torch.device:
    if not requested:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def setup(requested_device: str) -> DistEnv:
    """Join the process group when launched by ``torchrun`` with several processes; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(requested_device, local_rank)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistEnv(rank, world, local_rank, device, owns_group=owns)


def teardown(env: DistEnv) -> None:
    """Leave the process group if :func:`setup` joined it (a caller's own group is left alone)."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(env: DistEnv, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (identity in a single process)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(env: DistEnv, obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out
