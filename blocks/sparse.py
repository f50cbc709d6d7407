"""Sparse 1x1 convolutions and linear layers, magnitude pruning, and a sparse-matrix kernel for deployment.

"Fast Sparse ConvNets" (Elsen, Dukhan, Gale, Simonyan; CVPR 2020, arXiv 1911.09723) makes the 1x1 convolutions of
MobileNets and EfficientNets sparse and runs them as a sparse weight matrix times the activations in CHW layout.

Layers. :class:`SparseConv2d` (a 1x1 ``nn.Conv2d``, usable as ``ConvBN(conv_layer=...)``) and :class:`SparseLinear`
carry a persistent boolean ``mask`` buffer next to their weight:

* the forward multiplies the weight by the mask, so the loss never sees a pruned weight and autograd returns a zero
  gradient for it (also in ``ConvBN``'s tune mode, which goes through ``_conv_forward``);
* with a zero weight and a zero gradient, SGD (momentum, weight decay), Adam and AdamW leave a pruned weight at exactly
  zero; when the mask changes (pruning), the pruned weights are zeroed at once and the pruner re-masks every layer on
  every ``set_step``, which the training loop calls before every optimizer step, so stale optimizer state (a momentum
  buffer from before the pruning) cannot bring a pruned weight back before the next forward;
* ``state_dict()`` re-masks before saving and ``load_state_dict()`` re-masks after loading; the mask is part of the
  state dict (safetensors and torch files alike). A checkpoint without masks (a dense one) loads with
  all-ones masks, i.e. dense, ready to be pruned;
* DDP: masks are buffers, so DistributedDataParallel broadcasts rank 0's masks at construction and (by default) before
  every forward; pruning is a deterministic function of the weights (stable sort, ties broken by index), which DDP keeps
  identical on every rank, so every rank computes the same masks anyway.

Patterns (of the ``(out, in)`` weight matrix):

* ``"unstructured"`` - any weight;
* ``"block2"`` / ``"block4"`` - blocks of 2 / 4 consecutive *output* channels at one input channel, pruned together
  (scored by the L1 norm of the block). This is XNNPACK's sparse encoding (its ``f32-spmm`` kernels process ``nr`` = 2
  or 4 output channels per non-zero input channel, reusing each loaded activation ``nr`` times) and the paper's
  "block size 2 / 4";
* ``"2:4"`` - NVIDIA's semi-structured sparsity: at most 2 non-zeros in every group of 4 consecutive *input*
  channels of an output row (50% at most; exactly 2:4 at 50%), as TensorRT's sparse tensor cores need.

Pruning. :func:`prune_magnitude` prunes an already trained model in one shot; :func:`make_pruner` builds a
:class:`GradualPruner` (Zhu & Gupta, arXiv 1710.01878) driven by the training loop's global step through
``set_step(step)`` (see ``blocks/schedule.py``). Every sparse layer is pruned to the same sparsity: exactly
``round(s * units)`` pruned units per layer (units: weights, or blocks), the lowest-magnitude ones.

Deployment. ``reparameterize()`` (and ``fused_with`` for ``ConvBN``'s BN folding, which scales output channels and so
keeps zeros zero) gives a deployed layer whose weight already holds the zeros. Its forward runs, per layer and per
input shape, the faster on this machine of the dense op and a CSR sparse-matrix product over the activations viewed
as ``C x HW`` (the native kernel of :mod:`blocks.native`, else torch's MKL product): both are timed on the real
input on first use and the choice is cached per machine (:mod:`blocks.sparse_plan`; :func:`kernel_decisions` reports
it per layer). Where sparse does not win clearly, the layer runs dense. Under ``torch.export``,
ONNX (dynamo or TorchScript) and CoreML tracing, ``torch.compile``, autograd, or off CPU/float32, it is always the
dense op with the dense (zero-holding) weight, so exported graphs are ordinary convolutions.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import native, sparse_plan

__all__ = [
    "PATTERNS",
    "SparseConv2d",
    "SparseLinear",
    "GradualPruner",
    "compute_mask",
    "make_pruner",
    "model_sparsity",
    "prune_magnitude",
    "prune_random",
    "kernel_decisions",
    "sparse_layers",
    "sparsity_report",
    "zhu_gupta_sparsity",
]

#: Sparsity patterns understood by :func:`compute_mask`.
PATTERNS: tuple[str, ...] = ("unstructured", "block2", "block4", "2:4")


def _check_pattern(pattern: str) -> None:
    if pattern not in PATTERNS:
        raise ValueError(f"unknown sparsity pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")


def _check_sparsity(sparsity: float, pattern: str) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if pattern == "2:4" and sparsity > 0.5:
        raise ValueError(f"the 2:4 pattern allows at most 50% sparsity, got {sparsity}")


def _prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean keep-mask of ``scores``' shape with the ``count`` lowest scores dropped (ties: lower index first)."""
    flat = scores.flatten()
    if count <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = flat.kthvalue(count).values  # selection, O(n): a full sort is 10x slower on large layers
    keep = flat > threshold
    ties = (flat == threshold).nonzero().flatten()
    keep[ties[count - int((flat < threshold).sum()) :]] = True  # prune the lowest-index ties, keep the rest
    return keep.view(scores.shape)


@torch.no_grad()
def compute_mask(
    weight: torch.Tensor, sparsity: float, pattern: str = "unstructured", previous: torch.Tensor | None = None
) -> torch.Tensor:
    """Magnitude-pruning mask of a 2-D ``(out, in)`` weight.

    Args:
        weight: the weight matrix (1x1 conv weights viewed as ``(out, in)``).
        sparsity: fraction of pruned units, in [0, 1); exactly ``round(sparsity * units)`` units are pruned.
        pattern: one of :data:`PATTERNS` (see the module docstring).
        previous: the current mask; its pruned units score below every kept one, so that they stay pruned when the
            sparsity grows (magnitude ties between exact zeros cannot revive them).

    Returns:
        Boolean mask of ``weight``'s shape, True where the weight is kept.

    Raises:
        ValueError: unknown pattern, sparsity out of range, or a shape the pattern cannot tile.
    """
    _check_pattern(pattern)
    _check_sparsity(sparsity, pattern)
    if weight.dim() != 2:
        raise ValueError(f"compute_mask expects a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
    out_f, in_f = weight.shape
    score = weight.detach().abs().float()
    if previous is not None:
        score = score.masked_fill(~previous.bool(), -1.0)
    if pattern == "unstructured":
        return _prune_lowest(score, round(sparsity * score.numel()))
    if pattern.startswith("block"):
        k = int(pattern[len("block") :])
        if out_f % k:
            raise ValueError(f"pattern {pattern} needs output channels divisible by {k}, got {out_f}")
        blocks = score.clamp_min(0).view(out_f // k, k, in_f).sum(1)  # out, in -> out/k, in (L1 norm of each block)
        if previous is not None:  # a block counts as pruned when all its weights are
            pruned = (~previous.bool()).view(out_f // k, k, in_f).all(1)
            blocks = blocks.masked_fill(pruned, -1.0)
        keep = _prune_lowest(blocks, round(sparsity * blocks.numel()))
        return keep[:, None, :].expand(out_f // k, k, in_f).reshape(out_f, in_f)  # out/k, 1, in -> out, in
    if in_f % 4:
        raise ValueError(f"pattern 2:4 needs input channels divisible by 4, got {in_f}")
    groups = score.view(out_f, in_f // 4, 4)  # out, in -> out, in/4, 4
    cand = torch.sort(groups, dim=-1, stable=True).indices[..., :2]  # the two lowest of each group of 4
    cand_scores = groups.gather(-1, cand)
    drop = ~_prune_lowest(cand_scores, round(sparsity * score.numel()))
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(-1, cand, ~drop)
    return keep.view(out_f, in_f)  # out, in/4, 4 -> out, in


def _dense_only() -> bool:
    """True while tracing / exporting / compiling: the graph must hold the ordinary dense op."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


# ----------------------------------------------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------------------------------------------


class _MaskedWeight:
    """Mask bookkeeping shared by :class:`SparseConv2d` and :class:`SparseLinear` (a mixin of nn.Module subclasses).

    ``pattern`` is the structure the architecture fixes for this layer (e.g. ``"block4"``), or None when it fixes
    none; the pruners use it when they are asked for ``"unstructured"``.
    """

    weight: nn.Parameter
    mask: torch.Tensor
    bias: nn.Parameter | None
    deployed: bool
    pattern: str | None

    def _init_mask(self, pattern: str | None) -> None:
        if pattern is not None:
            _check_pattern(pattern)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))
        self.pattern = pattern
        self.deployed = False
        self._csr: tuple[Any, ...] | None = None
        self._last_plan: tuple[str, sparse_plan.Decision] | None = None

    def extra_repr(self) -> str:
        extra = f"sparsity={self.sparsity:.3f}" + (f", pattern={self.pattern}" if self.pattern else "")
        return f"{super().extra_repr()}, {extra}"  # type: ignore[misc]

    @property
    def sparsity(self) -> float:
        """Fraction of pruned weights."""
        return 1.0 - self.mask.sum().item() / self.mask.numel()

    def weight_matrix(self) -> torch.Tensor:
        """The weight viewed as ``(out, in)``."""
        return self.weight.view(self.weight.shape[0], -1)

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the pruned weights in place (the forward masks anyway; this keeps the stored zeros exact)."""
        self.weight.mul_(self.mask)

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (any shape with ``weight``'s number of elements) and zero the newly pruned weights."""
        if mask.numel() != self.mask.numel():
            raise ValueError(f"mask of {mask.numel()} elements for a weight of shape {tuple(self.weight.shape)}")
        self.mask.copy_(mask.reshape(self.mask.shape).bool())
        self.apply_mask_()

    @torch.no_grad()
    def prune_(self, sparsity: float, pattern: str | None = None) -> None:
        """Magnitude-prune to ``sparsity`` (pruned weights stay pruned), with ``pattern`` or the layer's own."""
        pattern = pattern or self.pattern or "unstructured"
        self.set_mask(compute_mask(self.weight_matrix(), sparsity, pattern, self.mask.view(self.weight.shape[0], -1)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Deploy form: the weight holds its zeros and the forward may use the sparse kernel. Idempotent."""
        if self.deployed:
            return
        self.apply_mask_()
        self.deployed = True

    def _csr_weight(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(csr_weight, bias_column, nnz)`` of the current weight, rebuilt when the weight changes."""
        w, b = self.weight, self.bias
        key = (
            w.data_ptr(),
            None if w.is_inference() else w._version,
            None if b is None or b.is_inference() else b._version,
            native.generation,
        )
        if self._csr is None or self._csr[0] != key:
            mat = self.weight_matrix().detach()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta state"
                csr = mat.to_sparse_csr()
                # int32 indices: torch's int64 CSR product is up to 3x slower on CPU (MKL's LP64 interface)
                csr = torch.sparse_csr_tensor(
                    csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape
                )
            out_f = mat.shape[0]
            bias = b.detach().view(out_f, 1).clone() if b is not None else mat.new_zeros(out_f, 1)  # out -> out, 1
            self._csr = (key, csr, bias, csr.values().numel(), {}, self._raw_product(csr, bias))
        return self._csr[1], self._csr[2], self._csr[3]

    @staticmethod
    def _raw_product(csr: torch.Tensor, bias: torch.Tensor) -> tuple[Any, ...] | None:
        """``(kernel, rows, indptr, indices, values, bias pointers, the tensors)`` for calling the native kernel
        without per-call checks (the arrays are this layer's own, valid by construction), or None without it."""
        fn = native.product()
        if fn is None:
            return None
        parts = (csr.crow_indices().contiguous(), csr.col_indices().contiguous(), csr.values().contiguous())
        flat = bias.reshape(-1).contiguous()
        return (fn, parts[0].numel() - 1, *(t.data_ptr() for t in (*parts, flat)), (parts, flat))

    def _sparse_product(self, csr: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out (out, n) = W x (in, n) + bias``: the native kernel where it is built, else torch's CSR product.

        ``x`` and ``out`` are contiguous float32 CPU matrices of ``(in, n)`` and ``(out, n)`` (the callers make them).
        """
        raw = self._csr[5] if self._csr is not None and self._csr[1] is csr else None
        if raw is not None:
            if x.shape[0] != csr.shape[1] or not (x.is_contiguous() and out.is_contiguous()):
                raise ValueError(f"sparse product of a ({csr.shape[1]}, n) input, got {tuple(x.shape)}")
            fn, rows, p_indptr, p_indices, p_values, p_bias, _ = raw
            fn(rows, x.shape[1], p_indptr, p_indices, p_values, x.data_ptr(), p_bias, out.data_ptr(),
               torch.get_num_threads())  # fmt: skip
        elif native.spmm_available():
            parts = (csr.crow_indices(), csr.col_indices(), csr.values())
            native.native_spmm(*parts, csr.shape[1], x.contiguous(), bias.view(-1), out)
        else:
            torch.addmm(bias, csr, x, out=out)

    def _sparse_plan(self, key: tuple, describe: Any, dense: Any, sparse: Any) -> sparse_plan.Decision:
        """Whether ``sparse`` (the sparse product) or ``dense`` runs for an input ``key`` (shape, layout): measured on
        this machine on first use (:func:`blocks.sparse_plan.decide` with the signature ``describe()``), then
        remembered by the layer (per thread count)."""
        memo = self._csr[4]  # type: ignore[index]
        key = (*key, torch.get_num_threads())
        decision = memo.get(key)
        if decision is None:
            signature = describe()
            decision = memo[key] = sparse_plan.decide(signature, dense, sparse)
            self._last_plan = (signature, decision)
        return decision

    def _kernel_applies(self, x: torch.Tensor) -> bool:
        """Sparse kernel preconditions that do not depend on timing."""
        return (
            self.deployed
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad))
            and not _dense_only()
        )

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        self.apply_mask_()
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        if prefix + "mask" not in state_dict and prefix + "weight" in state_dict:
            state_dict[prefix + "mask"] = torch.ones_like(state_dict[prefix + "weight"], dtype=torch.bool)  # dense
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
        self.apply_mask_()
        self._csr = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        return {**state, "_csr": None}  # a CSR cache is rebuilt, not copied


class SparseConv2d(_MaskedWeight, nn.Conv2d):
    """1x1 convolution with a persistent pruning mask, and a CSR sparse kernel in deploy mode.

    Drop-in ``conv_layer`` for :class:`blocks.ConvBN` (the same positional signature as ``nn.Conv2d``); a family
    passes it as its ``pw_conv_layer``. Masks start all-ones (dense); prune with :func:`prune_magnitude` or
    :func:`make_pruner`.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: must be 1.
        stride: stride (the sparse kernel serves stride 1; strided layers stay dense at deploy).
        padding: must be 0.
        dilation: ignored by a 1x1 kernel, accepted for signature compatibility.
        groups: must be 1.
        bias: learnable bias.
        pattern: sparsity structure fixed by the architecture (``"block4"`` ...), or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        pattern: str | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)
        if self.kernel_size != (1, 1) or self.groups != 1 or self.padding != (0, 0):
            raise ValueError(
                "SparseConv2d is a dense-grouped 1x1 convolution without padding; got "
                f"kernel_size={self.kernel_size}, groups={self.groups}, padding={self.padding}"
            )
        self._init_mask(pattern)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self.deployed:
            weight = weight * self.mask  # pruned weights neither act nor receive gradient
        return super()._conv_forward(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1) and self._kernel_applies(x):
            csr, bias, nnz = self._csr_weight()
            contiguous = x.is_contiguous()
            plan = self._sparse_plan(
                (x.shape, contiguous),
                lambda: f"conv1x1 {self.out_channels}x{x.shape[1]} nnz={nnz} input={x.shape[0]}x{x.shape[2]}x"
                f"{x.shape[3]} {'nchw' if contiguous else 'other'}",
                lambda: self._conv_forward(x, self.weight, self.bias),
                lambda: self._sparse_forward(x, csr, bias),
            )
            if plan.sparse:
                return self._sparse_forward(x, csr, bias)
        return self._conv_forward(x, self.weight, self.bias)

    def _sparse_forward(self, x: torch.Tensor, csr: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.contiguous()  # NCHW (a channels-last input is copied)
        out = x.new_empty(b, self.out_channels, h, w)
        for i in range(b):  # one (out, in) x (in, H*W) product per sample: NCHW needs no transposition
            self._sparse_product(csr, bias, x[i].view(c, h * w), out[i].view(self.out_channels, h * w))
        return out

    @torch.no_grad()
    def fused_with(self, weight: torch.Tensor, bias: torch.Tensor) -> SparseConv2d:
        """A deployed copy holding ``weight`` (masked) and ``bias``: ``ConvBN.reparameterize()`` folds BN through it."""
        fused = SparseConv2d(
            self.in_channels, self.out_channels, 1, self.stride, 0, 1, 1, bias=True, pattern=self.pattern
        ).to(device=weight.device, dtype=weight.dtype)
        fused.mask.copy_(self.mask)
        fused.weight.copy_(weight.reshape(fused.weight.shape) * self.mask)
        fused.bias.copy_(bias)
        fused.deployed = True
        return fused


class SparseLinear(_MaskedWeight, nn.Linear):
    """Linear layer with a persistent pruning mask (e.g. the sparse classifier of the sparse EfficientNets).

    Args:
        in_features: input features.
        out_features: output features.
        bias: learnable bias.
        pattern: sparsity structure fixed by the architecture, or None.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, pattern: str | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_mask(pattern)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            if self._kernel_applies(x):
                csr, bias, nnz = self._csr_weight()
                rows = x.reshape(-1, self.in_features)  # ..., in -> N, in
                plan = self._sparse_plan(
                    (rows.shape,),
                    lambda: f"linear {self.out_features}x{self.in_features} nnz={nnz} rows={rows.shape[0]}",
                    lambda: F.linear(x, self.weight, self.bias),
                    lambda: self._sparse_rows(rows, csr, bias),
                )
                if plan.sparse:
                    return self._sparse_rows(rows, csr, bias).reshape(*x.shape[:-1], self.out_features)
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight * self.mask, self.bias)

    def _sparse_rows(self, rows: torch.Tensor, csr: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out = rows.new_empty(self.out_features, rows.shape[0])
        self._sparse_product(csr, bias, rows.t().contiguous(), out)  # (out, in) x (in, N) -> out, N
        return out.t()  # out, N -> N, out


# ----------------------------------------------------------------------------------------------------------------
# Model-level pruning.
# ----------------------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(inner, "_orig_mod", inner)  # torch.compile


def sparse_layers(model: nn.Module) -> Iterator[tuple[str, SparseConv2d | SparseLinear]]:
    """``(name, layer)`` of every :class:`SparseConv2d` / :class:`SparseLinear` of ``model``."""
    for name, m in _unwrap(model).named_modules():
        if isinstance(m, (SparseConv2d, SparseLinear)):
            yield name, m


def _layer_pattern(layer: SparseConv2d | SparseLinear, pattern: str) -> str:
    """A requested structure overrides the layer's; "unstructured" imposes none, so a layer keeps its own."""
    return layer.pattern if pattern == "unstructured" and layer.pattern is not None else pattern


def _require_layers(model: nn.Module, sparsity: float, pattern: str) -> list[tuple[str, SparseConv2d | SparseLinear]]:
    _check_pattern(pattern)
    _check_sparsity(sparsity, pattern)
    layers = list(sparse_layers(model))
    if not layers:
        raise ValueError(
            f"{type(_unwrap(model)).__name__} has no SparseConv2d / SparseLinear layer to prune; build a sparse "
            "variant (e.g. zoo.create_model('sparse_mobilenetv1_100_s90')) or pass pw_conv_layer=SparseConv2d"
        )
    return layers


def prune_magnitude(model: nn.Module, sparsity: float, pattern: str = "unstructured") -> dict[str, float]:
    """One-shot magnitude pruning of every sparse layer of an (already trained) model to ``sparsity``.

    Args:
        model: a model with :class:`SparseConv2d` / :class:`SparseLinear` layers.
        sparsity: per-layer sparsity in [0, 1) (at most 0.5 for ``"2:4"``).
        pattern: structure to impose; ``"unstructured"`` keeps each layer's architectural pattern (if any).

    Returns:
        :func:`sparsity_report` after pruning.
    """
    for _, layer in _require_layers(model, sparsity, pattern):
        layer.prune_(sparsity, _layer_pattern(layer, pattern))
    return sparsity_report(model)


def prune_random(
    model: nn.Module, sparsity: float, pattern: str = "unstructured", generator: torch.Generator | None = None
) -> dict[str, float]:
    """Random masks at ``sparsity`` for every sparse layer (uniform over its units): how sparse variants start.

    The layers must be dense (all-ones masks, e.g. fresh or loaded from a dense checkpoint): a weight pruned before
    is zero, so a new random mask would keep zeros and leave the layer sparser than asked.

    Args:
        model: a model with sparse layers.
        sparsity: per-layer sparsity in [0, 1).
        pattern: structure to impose; ``"unstructured"`` keeps each layer's architectural pattern.
        generator: random generator (default: torch's global one, so ``torch.manual_seed`` reproduces the masks).

    Returns:
        :func:`sparsity_report` after pruning.
    """
    layers = _require_layers(model, sparsity, pattern)
    pruned = [name for name, layer in layers if not layer.mask.all()]
    if pruned:
        raise ValueError(
            f"prune_random needs dense layers, but {len(pruned)} are already pruned (e.g. {pruned[0]}); load dense "
            "weights first (model.load_state_dict(dense_state_dict) loads dense masks) or use prune_magnitude"
        )
    for _, layer in layers:
        scores = torch.rand(layer.weight_matrix().shape, generator=generator)
        layer.set_mask(compute_mask(scores, sparsity, _layer_pattern(layer, pattern)))
    return sparsity_report(model)


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """``{layer name: fraction of pruned weights}`` of every sparse layer (for the export manifest)."""
    return {name: layer.sparsity for name, layer in sparse_layers(model)}


def kernel_decisions(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{layer name: {"kernel": "sparse"/"dense", "signature", "dense_us", "sparse_us", "ratio", "source"}}`` of
    every deployed sparse layer that has run on this machine (its latest input shape), for export manifests; layers
    that have not run yet (or run only dense because of their stride / dtype / device) are ``{"kernel": "dense",
    "source": "not measured"}``."""
    out: dict[str, dict[str, Any]] = {}
    for name, layer in sparse_layers(model):
        if not layer.deployed:
            continue
        plan = getattr(layer, "_last_plan", None)
        if plan is None:
            out[name] = {"kernel": "dense", "source": "not measured"}
            continue
        sig, d = plan
        out[name] = {"kernel": d.kernel, "signature": sig, "source": d.source}
        if d.source != "forced":
            out[name] |= {"dense_us": round(d.dense_us, 2), "sparse_us": round(d.sparse_us, 2)}
            out[name]["ratio"] = round(d.ratio, 3)
    return out


def model_sparsity(model: nn.Module) -> float:
    """Fraction of pruned weights over all sparse layers together (0 when there are none)."""
    total = pruned = 0
    for _, layer in sparse_layers(model):
        total += layer.mask.numel()
        pruned += layer.mask.numel() - int(layer.mask.sum())
    return pruned / total if total else 0.0


def zhu_gupta_sparsity(step: int, final: float, start: int, end: int, frequency: int, initial: float = 0.0) -> float:
    """Target sparsity at ``step`` of the cubic schedule ``s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``.

    Masks change only at ``t0 + k dt`` and at ``end``; between updates the last update's value holds. Before
    ``start`` the result is 0 (no pruning yet); from ``end`` on it is exactly ``final``.
    """
    if step < start:
        return 0.0
    if step >= end:
        return final
    t = start + (step - start) // frequency * frequency
    if t == start:
        return initial  # exactly, not up to rounding
    return final + (initial - final) * (1.0 - (t - start) / (end - start)) ** 3


class GradualPruner:
    """Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", arXiv 1710.01878).

    Every ``frequency`` steps from ``start_step``, and at ``end_step``, each sparse layer is magnitude-pruned to
    :func:`zhu_gupta_sparsity` of the step (already pruned weights stay pruned). The training loop calls
    ``set_step(step)`` before every optimizer step with its global step; the pruner derives everything from that
    step, so resuming (with ``load_state_dict``) or DDP replicas compute the same masks. Built by :func:`make_pruner`.
    """

    def __init__(
        self,
        model: nn.Module,
        final_sparsity: float,
        start_step: int,
        end_step: int,
        frequency: int = 100,
        initial_sparsity: float = 0.0,
        pattern: str = "unstructured",
    ) -> None:
        if not 0.0 <= initial_sparsity <= final_sparsity:
            raise ValueError(f"need 0 <= initial_sparsity <= final_sparsity, got {initial_sparsity}, {final_sparsity}")
        if start_step < 0 or end_step < start_step:
            raise ValueError(f"need 0 <= start_step <= end_step, got {start_step}, {end_step}")
        if frequency < 1:
            raise ValueError(f"frequency must be >= 1 step, got {frequency}")
        self.layers = _require_layers(model, final_sparsity, pattern)
        self.config = {
            "final_sparsity": float(final_sparsity),
            "initial_sparsity": float(initial_sparsity),
            "start_step": int(start_step),
            "end_step": int(end_step),
            "frequency": int(frequency),
            "pattern": pattern,
        }
        self.applied_step: int | None = None  # the schedule point whose sparsity the masks hold

    def sparsity_at(self, step: int) -> float:
        """The schedule's target sparsity at global step ``step``."""
        c = self.config
        return zhu_gupta_sparsity(
            step, c["final_sparsity"], c["start_step"], c["end_step"], c["frequency"], c["initial_sparsity"]
        )

    def _update_point(self, step: int) -> int | None:
        c = self.config
        if step < c["start_step"]:
            return None
        if step >= c["end_step"]:
            return c["end_step"]
        return c["start_step"] + (step - c["start_step"]) // c["frequency"] * c["frequency"]

    def set_step(self, step: int) -> None:
        """Move to global optimizer step ``step``: prune when a new schedule point is reached, re-mask every layer."""
        point = self._update_point(step)
        if point is not None and (self.applied_step is None or point > self.applied_step):
            sparsity = self.sparsity_at(point)
            for _, layer in self.layers:
                layer.prune_(sparsity, _layer_pattern(layer, self.config["pattern"]))
            self.applied_step = point
        for _, layer in self.layers:
            layer.apply_mask_()

    def state_dict(self) -> dict[str, Any]:
        """Schedule and progress (the masks themselves are buffers in the model's state dict)."""
        return {**self.config, "applied_step": self.applied_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress; the schedule must be the one this pruner was built with."""
        saved = {k: state[k] for k in self.config if k in state}
        if saved != self.config:
            diff = {k: (saved.get(k), v) for k, v in self.config.items() if saved.get(k) != v}
            raise ValueError(f"pruner state is for another schedule (saved, current): {diff}")
        self.applied_step = state.get("applied_step")

    def __repr__(self) -> str:
        c = self.config
        return (
            f"GradualPruner({len(self.layers)} layers, {c['initial_sparsity']} -> {c['final_sparsity']} "
            f"over steps {c['start_step']}..{c['end_step']} every {c['frequency']}, {c['pattern']})"
        )


def make_pruner(
    model: nn.Module,
    final_sparsity: float,
    start_step: int,
    end_step: int,
    frequency: int = 100,
    initial_sparsity: float = 0.0,
    pattern: str = "unstructured",
) -> GradualPruner:
    """Gradual magnitude pruner of every :class:`SparseConv2d` / :class:`SparseLinear` of ``model``.

    Use: build it after the model (and after loading a checkpoint's weights), pass it to
    ``blocks.set_step(model, step, extra=[pruner])`` before every optimizer step, and save ``pruner.state_dict()``
    with the checkpoint (``load_state_dict`` on resume). At ``end_step`` and after, every sparse layer has exactly
    ``round(final_sparsity * units)`` pruned units.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are unwrapped).
        final_sparsity: ``s_f`` in [0, 1) (at most 0.5 for ``"2:4"``).
        start_step: ``t0``, the global step of the first mask update (at ``initial_sparsity``).
        end_step: ``t0 + n dt``, the step at which ``final_sparsity`` is reached.
        frequency: ``dt``, steps between mask updates.
        initial_sparsity: ``s_i``.
        pattern: one of :data:`PATTERNS`; ``"unstructured"`` keeps a layer's architectural pattern (e.g. block4).

    Raises:
        ValueError: bad schedule or pattern, or a model without sparse layers.
    """
    return GradualPruner(model, final_sparsity, start_step, end_step, frequency, initial_sparsity, pattern)


def _n_units(layer: SparseConv2d | SparseLinear, pattern: str) -> int:
    """Number of prunable units of ``layer`` under ``pattern`` (for tests and reports)."""
    numel = layer.mask.numel()
    return numel // int(pattern[len("block") :]) if pattern.startswith("block") else numel


def expected_pruned(layer: SparseConv2d | SparseLinear, sparsity: float, pattern: str) -> int:
    """Pruned weights the pruners leave in ``layer`` at ``sparsity`` (exactly; used by tests and documentation)."""
    units = _n_units(layer, pattern)
    per_unit = layer.mask.numel() // units
    return round(sparsity * units) * per_unit
