"""Peak memory of one inference: tensors created while a callable runs, tracked op by op.

On CUDA the caching allocator keeps statistics (``torch.cuda.max_memory_allocated``). On the CPU torch keeps none, and
the profiler's memory events do not pair allocations with frees under ``inference_mode``; so a dispatch mode records
the storage of every tensor an op returns and drops it once the storage is freed. The peak is the largest total of
live storages created during the call: activations and temporaries, not the weights or the input that existed before.
Runtimes that allocate outside torch (onnxruntime, TensorRT) are not measured this way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["peak_tensor_memory"]


_COMPRESSED = (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


def _strided_parts(t: torch.Tensor) -> list[torch.Tensor]:
    """The strided tensors holding ``t``'s data: itself, or the index and value arrays of a sparse tensor."""
    if t.device.type == "meta":
        return []
    if t.layout in _COMPRESSED:
        if t.layout in (torch.sparse_csr, torch.sparse_bsr):
            return [t.crow_indices(), t.col_indices(), t.values()]
        return [t.ccol_indices(), t.row_indices(), t.values()]
    if t.layout == torch.sparse_coo:
        return [t._indices(), t._values()]
    return [t]


def _key(t: torch.Tensor) -> int:
    """Identity of a strided tensor's storage (the same for every view of it)."""
    return StorageWeakRef(t.untyped_storage()).cdata


class _LiveStorages(TorchDispatchMode):
    """Running total of the bytes held by storages that ops created; their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _collect(self) -> None:
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        self._collect()
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # outputs that share an input's storage (in-place ops, views of weights or inputs) allocate nothing
        leaves = [p for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) for p in _strided_parts(t)]
        inputs = {_key(t) for t in leaves}
        for t in (p for o in tree_leaves(out) if isinstance(o, torch.Tensor) for p in _strided_parts(o)):
            ref = StorageWeakRef(t.untyped_storage())
            if ref.cdata not in self.live and ref.cdata not in inputs:
                nbytes = t.untyped_storage().nbytes()
                self.live[ref.cdata] = (ref, nbytes)
                self.current += nbytes
        self.peak = max(self.peak, self.current)
        return out


def peak_tensor_memory(fn: Callable[[], object], device: str = "cpu") -> int:
    """Peak bytes of tensors allocated during one call of ``fn`` (its result included), above what existed before.

    Args:
        fn: a zero-argument callable running one inference of a torch model.
        device: ``"cpu"`` (dispatch-mode tracking) or ``"cuda"`` (allocator statistics).

    Returns:
        The peak in bytes.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with _LiveStorages() as mode:
        fn()
    return mode.peak
