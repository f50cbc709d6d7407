"""Unified Normalization (Yang et al., "Unified Normalization for Accelerating and Stabilizing Transformers", ACM MM
2022, arXiv 2208.01313; hikvision-research/Unified-Normalization, Apache-2.0, its ``UN1d``).

UN normalizes ``(B, N, C)`` tokens per channel by a root mean square over the batch and the tokens (no mean is
subtracted), ``y = weight * x / sqrt(var + eps) + bias``, with offline statistics: in eval mode ``var`` is the
running estimate, so the layer is a per-channel affine map that folds into the adjacent Linear like RepBN
(:func:`blocks.norm_affine` reads it; no normalization is left at deploy).

Training, as the original's ``UN2dFunction`` computes it, at iteration ``t`` (a per-module counter of training
calls, the ``iters`` buffer, from 1):

* forward: ``x2 = mean(x^2)`` per channel is written into a ring buffer of ``fp`` slots (``buffer_x2[t % fp]``).
  Once ``t >= warmup_iters`` (and with ``outlier_filtration``), the batch is an *outlier* when, for any channel,
  the arithmetic minus the geometric mean of the buffer exceeds ``fp`` times the variance of ``sqrt(buffer_x2)``
  measured before this batch entered; its slot is then overwritten with the running variance and the batch is
  *skipped* (normalized by its own ``x2``; ``skip_counter`` counts these). Otherwise, after the warm-up and once
  the buffer has filled (``t > fp``), ``var`` is the buffer's geometric mean. ``running_var`` follows ``var`` with
  momentum (``running = m * running + (1 - m) * var``). A window of 1 always normalizes by the batch.
* backward (the approximate gradient of a normalization by statistics): with ``r = sqrt(var + eps) /
  sqrt(running_var + eps)`` (taken before the update; 1 until ``t > max(1000, warmup_iters)`` and for skipped
  batches, else clamped to [1/5, 5]), ``z = x / sqrt(var + eps)``, ``g = dy * weight * r`` and
  ``gz = mean(g * z)`` per channel, ``gz`` enters a ring buffer of ``bp`` slots (a skipped batch writes ``ema_gz``
  there instead), ``ema_gz = m * ema_gz + (1 - m) * mean_gz`` where ``mean_gz`` is ``gz`` (warm-up, ``t <= bp``,
  skipped) or the buffer's mean, and ``dx = (g - c * z) / sqrt(var + eps)`` with ``c = mean_gz`` for a skipped
  batch, else the updated ``ema_gz``. ``dweight = sum(dy * r * z)``, ``dbias = sum(dy)``.

Deviations: the original's ``pad_mask`` (tokens of padded sequences, for NLP) is not supported, and as in the
original the training path reads the counter and the outlier verdict on the host (one synchronisation per call).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UnifiedNorm"]


class _UNFunction(torch.autograd.Function):
    """The training-mode forward/backward of :class:`UnifiedNorm` on ``(M, C)`` rows (all tokens of the batch)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, un: UnifiedNorm) -> torch.Tensor:
        t, fp, eps = int(un.iters), un.fp_buffer_size, un.eps
        skip = fp <= 1
        x2 = (x * x).mean(dim=0)
        recorded_var = torch.var(torch.sqrt(un.buffer_x2))  # spread of the window before this batch enters
        slot = t % fp
        un.buffer_x2[slot].copy_(x2)
        if t >= un.warmup_iters and un.outlier_filtration:
            am = un.buffer_x2.mean(dim=0)
            gm = torch.exp(torch.log(un.buffer_x2).mean(dim=0))
            if bool(((am - gm) > recorded_var * fp).any()):
                un.buffer_x2[slot].copy_(un.running_var)
                un.skip_counter.add_(1)
                skip = True
        if t <= fp or t < un.warmup_iters or skip:
            var = x2
        else:
            var = torch.exp(torch.log(un.buffer_x2).mean(dim=0))  # geometric mean of the window
        r = (var + eps).sqrt() / (un.running_var + eps).sqrt()
        r = torch.ones_like(r) if t <= max(1000, un.warmup_iters) or skip else r.clamp(1 / 5, 5)
        z = x / (var + eps).sqrt()
        un.running_var.copy_(un.momentum * un.running_var + (1 - un.momentum) * var)
        ctx.un, ctx.t, ctx.skip = un, t, skip
        ctx.save_for_backward(z, var, weight, r)
        return weight * z + bias

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        un, t, skip = ctx.un, ctx.t, ctx.skip
        z, var, weight, r = ctx.saved_tensors
        bp, m = un.bp_buffer_size, un.momentum
        g = grad * weight * r
        gz = (g * z).mean(dim=0)
        un.buffer_gz[t % bp].copy_(un.ema_gz if skip else gz)
        mean_gz = gz if t <= bp or t < un.warmup_iters or skip else un.buffer_gz.mean(dim=0)
        un.ema_gz.copy_(un.ema_gz * m + (1 - m) * mean_gz)
        gx = (g - (mean_gz if skip else un.ema_gz) * z) / (var + un.eps).sqrt()
        return gx, (grad * r * z).sum(dim=0), grad.sum(dim=0), None


class UnifiedNorm(nn.Module):
    """Unified Normalization over the last (channel) dimension of ``(B, N, C)`` or ``(N, C)`` tokens.

    The buffers keep the original ``UN1d``'s names and shapes, so its checkpoints load as they are.

    Args:
        dim: channels.
        window_size: ring-buffer length of the forward statistics and the backward ones: one int for both or a pair.
        warmup_iters: training calls before the moving-average statistics (and the outlier filter) start.
        outlier_filtration: skip the moving average for batches whose statistics are outliers (the original's
            advice: on for vision, off for NLP).
        eps: added to the variance.
        momentum: of the running variance and the gradient EMA, in (0, 1).
    """

    def __init__(
        self,
        dim: int,
        window_size: int | tuple[int, int] = 4,
        warmup_iters: int = 4000,
        outlier_filtration: bool = False,
        eps: float = 1e-5,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        fp, bp = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
        if fp < 1 or bp < 1 or warmup_iters < 0 or not 0 <= momentum < 1:
            raise ValueError(
                f"UnifiedNorm needs windows >= 1, warmup_iters >= 0 and momentum in [0, 1), got window_size="
                f"{window_size}, warmup_iters={warmup_iters}, momentum={momentum}"
            )
        self.num_features, self.fp_buffer_size, self.bp_buffer_size = dim, int(fp), int(bp)
        self.warmup_iters, self.outlier_filtration = warmup_iters, outlier_filtration
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("ema_gz", torch.zeros(dim))
        self.register_buffer("iters", torch.zeros(1, dtype=torch.long))
        self.register_buffer("buffer_x2", torch.zeros(self.fp_buffer_size, dim))
        self.register_buffer("buffer_gz", torch.zeros(self.bp_buffer_size, dim))
        self.register_buffer("skip_counter", torch.zeros(1, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            scale, shift = self.affine()
            return x * scale + shift
        self.iters.add_(1)
        rows = x.reshape(-1, self.num_features)  # B, N, C -> B*N, C
        return _UNFunction.apply(rows, self.weight, self.bias, self).reshape(x.shape)

    def reset_running_stats(self) -> None:
        """Back to a fresh layer's statistics and counters (the original's advice before fine-tuning: ``iters = 0``)."""
        for buf in (self.ema_gz, self.iters, self.buffer_x2, self.buffer_gz, self.skip_counter):
            buf.zero_()
        self.running_var.fill_(1.0)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` with ``UN(x) == x * scale + shift`` in eval mode (running variance)."""
        return self.weight * torch.rsqrt(self.running_var + self.eps), self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, window=({self.fp_buffer_size}, {self.bp_buffer_size}), eps={self.eps}, "
            f"momentum={self.momentum}, warmup={self.warmup_iters}, outlier_filtration={self.outlier_filtration}"
        )
