"""Re-parameterizable BatchNorm for token tensors (SLAB, arXiv 2405.11582) and affine folding into linear layers.

* :class:`RepBN` is ``BN(x) + alpha * x`` over the channel dimension of ``(B, N, C)`` tokens, ``alpha`` a learnable
  scalar initialised to 1. In eval mode it is a per-channel affine map ``x * scale + shift``.
* :class:`PRepBN` is the progressive replacement of LayerNorm by RepBN: ``lam * LN(x) + (1 - lam) * RepBN(x)`` in
  training, ``lam`` decaying linearly from 1 to 0 over ``total_steps`` optimizer steps after an optional LN-only
  warm-up, and ``RepBN(x)`` alone in eval mode (as the original's ``LinearNorm``). The schedule is a pure function of
  the training loop's global step (``set_step``, see :mod:`blocks.schedule`) kept in a ``step`` buffer, so it is
  saved in checkpoints and identical on every DDP rank; nothing is counted in ``forward``.

Neither has a ``reparameterize()`` of its own: the module that *owns* the norm and the layer reading its output folds
the eval-mode affine into that layer (:func:`fold_affine_into_linear` on the input side of a Linear,
:func:`fold_affine_into_conv_input` / :func:`fold_affine_into_conv_output` for convolutions), so that no
normalization is left at deploy time. :class:`ChannelAffine` holds the affine where no layer can take it (a final
norm with no classifier).
"""

from __future__ import annotations

import operator

import torch
from torch import nn

from .unified_norm import UnifiedNorm

__all__ = [
    "RepBN",
    "PRepBN",
    "ChannelAffine",
    "prepbn_lambda",
    "make_repbn_norm",
    "norm_affine",
    "fold_affine_into_linear",
    "fold_norm_into_head",
    "fold_affine_into_conv_input",
    "fold_affine_into_conv_output",
    "convert_linearnorm",
]


class RepBN(nn.Module):
    """``BN(x) + alpha * x`` over the last (channel) dimension of ``(B, N, C)`` token tensors.

    Args:
        dim: channels.
        eps: BatchNorm epsilon.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm1d(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x.transpose(1, 2)).transpose(1, 2)  # B, N, C -> B, C, N -> B, N, C
        return y + self.alpha * x

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` with ``RepBN(x) == x * scale + shift`` in eval mode (running statistics)."""
        bn = self.bn
        inv = torch.rsqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(inv)
        beta = bn.bias if bn.affine else torch.zeros_like(inv)
        return gamma * inv + self.alpha, beta - bn.running_mean * gamma * inv


def prepbn_lambda(step: int | torch.Tensor, total_steps: int, warmup_steps: int = 0) -> torch.Tensor:
    """Weight of the LayerNorm branch at global step ``step``: 1 through the warm-up, then linear down to 0.

    ``lam = clamp((total_steps - (step - warmup_steps)) / total_steps, 0, 1)``: 1 at ``step == warmup_steps``,
    0 from ``step == warmup_steps + total_steps`` on (the original's ``iter / total_step`` with ``iter`` counting
    down once per training call after ``warm`` has reached 0).
    """
    step = torch.as_tensor(step)
    remaining = (warmup_steps + total_steps - step).clamp(0, total_steps)
    return remaining.to(torch.float32) / total_steps


class PRepBN(nn.Module):
    """Progressive re-parameterized BatchNorm: LayerNorm handed over linearly to :class:`RepBN` during training.

    Training: ``LN(x)`` while ``step < warmup_steps`` (the RepBN branch, and its running statistics, untouched, as
    in the original), then ``lam * LN(x) + (1 - lam) * RepBN(x)`` with ``lam = prepbn_lambda(step, ...)``. Eval:
    ``RepBN(x)`` only, whatever ``lam`` is (the original evaluates the same way, also before ``lam`` reaches 0).

    The step comes from :meth:`set_step` (the training loop's global optimizer step, see :mod:`blocks.schedule`)
    and lives in the persistent ``step`` buffer.

    Args:
        dim: channels.
        total_steps: steps over which ``lam`` decays from 1 to 0 (> 0).
        warmup_steps: LN-only steps before the decay starts.
        ln_eps: LayerNorm epsilon.
        bn_eps: BatchNorm epsilon.
    """

    def __init__(
        self, dim: int, total_steps: int, warmup_steps: int = 0, ln_eps: float = 1e-5, bn_eps: float = 1e-5
    ) -> None:
        super().__init__()
        if total_steps <= 0 or warmup_steps < 0:
            raise ValueError(f"PRepBN needs total_steps > 0 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.ln = nn.LayerNorm(dim, eps=ln_eps)
        self.repbn = RepBN(dim, eps=bn_eps)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def set_step(self, step: int) -> None:
        """Move the schedule to global optimizer step ``step`` (idempotent; may jump forwards or backwards)."""
        step = operator.index(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.step.fill_(step)

    @property
    def lam(self) -> torch.Tensor:
        """Current weight of the LayerNorm branch (a 0-d float tensor)."""
        return prepbn_lambda(self.step, self.total_steps, self.warmup_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.repbn(x)
        # Only a configured warm-up needs the step on the host; the released models have none.
        if self.warmup_steps and bool(self.step < self.warmup_steps):
            return self.ln(x)
        lam = self.lam.to(device=x.device, dtype=x.dtype)
        return lam * self.ln(x) + (1 - lam) * self.repbn(x)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` of the eval-mode map (RepBN's)."""
        return self.repbn.affine()

    def extra_repr(self) -> str:
        return f"total_steps={self.total_steps}, warmup_steps={self.warmup_steps}"


class ChannelAffine(nn.Module):
    """``x * scale + shift`` over the last dimension: a folded norm with no layer after it to absorb it."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def make_repbn_norm(dim: int, prepbn_steps: int, prepbn_warmup: int = 0, ln_eps: float = 1e-5) -> RepBN | PRepBN:
    """The norm of a SLAB model: plain :class:`RepBN` when ``prepbn_steps == 0``, else :class:`PRepBN`."""
    if prepbn_steps < 0:
        raise ValueError(f"prepbn_steps must be >= 0, got {prepbn_steps}")
    if prepbn_steps == 0:
        if prepbn_warmup:
            raise ValueError("prepbn_warmup needs prepbn_steps > 0 (plain RepBN has no LayerNorm branch)")
        return RepBN(dim)
    return PRepBN(dim, prepbn_steps, prepbn_warmup, ln_eps=ln_eps)


def norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of an eval-mode RepBN, PRepBN, UnifiedNorm or BatchNorm1d; LayerNorm cannot fold: raises."""
    if isinstance(norm, (RepBN, PRepBN, UnifiedNorm)):
        return norm.affine()
    if isinstance(norm, nn.BatchNorm1d):
        inv = torch.rsqrt(norm.running_var + norm.eps)
        gamma = norm.weight if norm.affine else torch.ones_like(inv)
        beta = norm.bias if norm.affine else torch.zeros_like(inv)
        return gamma * inv, beta - norm.running_mean * gamma * inv
    raise TypeError(f"{type(norm).__name__} is not a per-channel affine map in eval mode and cannot be folded")


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=True).to(device=weight.device, dtype=weight.dtype)
    out.weight.copy_(weight)
    out.bias.copy_(bias)
    return out


@torch.no_grad()
def fold_affine_into_linear(linear: nn.Linear, scale: torch.Tensor, shift: torch.Tensor) -> nn.Linear:
    """A Linear computing ``linear(x * scale + shift)`` (the affine on the input side), always with a bias."""
    w = linear.weight * scale[None, :]
    b = linear.weight @ shift
    if linear.bias is not None:
        b = b + linear.bias
    return _linear(w, b)


@torch.no_grad()
def fold_norm_into_head(norm: nn.Module, head: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(norm, head)`` for deploy: the final norm folded into a Linear classifier (``norm`` becomes Identity), or,
    without one (``num_classes=0``), kept as a :class:`ChannelAffine`."""
    scale, shift = norm_affine(norm)
    if isinstance(head, nn.Linear):
        return nn.Identity(), fold_affine_into_linear(head, scale, shift)
    return ChannelAffine(scale, shift), head


@torch.no_grad()
def fold_affine_into_conv_input(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """A Conv2d computing ``conv(x * scale + shift)`` with the affine over input channels.

    Exact only without padding (a zero-padded border would not see ``shift``), so padded and grouped convs raise.
    """
    if any(p != 0 for p in conv.padding) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError("the input-side fold needs an unpadded, ungrouped convolution")
    w = conv.weight * scale[None, :, None, None]
    b = (conv.weight * shift[None, :, None, None]).sum((1, 2, 3))
    if conv.bias is not None:
        b = b + conv.bias
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, bias=True)
    out = out.to(device=w.device, dtype=w.dtype)
    out.weight.copy_(w)
    out.bias.copy_(b)
    return out


@torch.no_grad()
def fold_affine_into_conv_output(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """A Conv2d computing ``conv(x) * scale + shift`` with the affine over output channels."""
    w = conv.weight * scale[:, None, None, None]
    b = shift if conv.bias is None else conv.bias * scale + shift
    out = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=w.device, dtype=w.dtype)
    out.weight.copy_(w)
    out.bias.copy_(b)
    return out


def convert_linearnorm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original ``LinearNorm`` key layout (xinghaochen/SLAB) to :class:`PRepBN`'s, for every such module.

    A ``LinearNorm`` at prefix ``p`` stores ``p.norm1.*`` (LayerNorm), ``p.norm2.*`` (RepBN) and the counters
    ``p.warm``, ``p.iter`` (counting down from ``p.total_step``). They become ``p.ln.*``, ``p.repbn.*`` and
    ``p.step = total_step - iter``, which reproduces the original's ``lam = iter / total_step``. This assumes the
    LN-only warm-up was 0, as in every released model and config; a checkpoint saved during a warm-up raises.
    Other keys pass through unchanged.
    """
    prefixes = {k[: -len(".total_step")] for k in state_dict if k.endswith(".total_step")}
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        p, _, leaf = k.rpartition(".")
        if p in prefixes and leaf in ("warm", "iter", "total_step"):
            continue
        head = next((q for q in prefixes if k.startswith(q + ".norm1.") or k.startswith(q + ".norm2.")), None)
        if head is not None:
            inner = k[len(head) + 1 :]
            k = f"{head}.{'ln' if inner.startswith('norm1.') else 'repbn'}.{inner[len('normX.') :]}"
        out[k] = v
    for p in prefixes:
        if int(state_dict[f"{p}.warm"]) > 0:
            raise ValueError(f"{p}: checkpoint saved during the LayerNorm-only warm-up; its step cannot be recovered")
        out[f"{p}.step"] = (state_dict[f"{p}.total_step"] - state_dict[f"{p}.iter"]).to(torch.long).reshape(())
    return out
