"""Steps 1 and 2 of the export: fold every normalization into the weights, and prove nothing changed.

Step 1, :func:`fold_and_check`: ``blocks.reparameterize_model`` (BN into convs and linears, every block's deploy
form, DropPath/dropout gone), then two checks: no normalization is left but those the family declares unfoldable,
and the folded model computes what the unfolded one does (relative error <= 1e-5) on random and, when given, real
inputs. The check needs realistic BatchNorm statistics: a freshly created model's BNs are identities (mean 0, var 1,
gamma 1, beta 0), which would hide a wrong fold, so without a checkpoint the check runs on a copy given realistic
statistics by ``blocks.make_bn_realistic``.

Both models are evaluated in float64 for the check: the folded weights are the exact fp32 values that go into the
artifacts, and float64 arithmetic keeps the fp32 accumulation noise of a deep net out of the figure. Rounding the
folded weights to fp32 is itself a perturbation of the order of fp32's epsilon, which a deep or badly conditioned
network amplifies (a model with realistic BatchNorm statistics can amplify it to 1e-3 and more on real images), so the
verdict is judged against the reference's own **noise floor**, measured in the same run on the same inputs: how far
the unfolded model evaluated in fp32 is from its float64 copy (:func:`noise_floor`). The fold passes when its error
is within ``tol`` or within ``FLOOR_FACTOR`` times that floor; a real mistake (a missing bias, a wrong scale: about
1e-1) stays far above both for any model whose fp32 output means anything. Both figures are reported.

Step 2, :func:`fold_input_normalization`: the artifact takes RGB pixels in [0, 1] or [0, 255]. Only ``1 / std`` (and
the pixel range) goes into the first convolution's weights; the mean stays a per-channel subtraction in front
(an ONNX ``Sub`` node, the bias of a CoreML ``ImageType``). Folding the mean too, into the conv bias, would be wrong at
the borders: the conv zero-pads, and a zero there no longer means "the mean pixel" once the input is not centred.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

import blocks

from .data import normalize
from .errors import FoldCheckError

__all__ = [
    "FLOOR_FACTOR",
    "FoldReport",
    "PixelInput",
    "fold_and_check",
    "fold_input_normalization",
    "judge_parity",
    "noise_floor",
    "rel_error",
]

FOLD_TOL = 1e-5
#: An fp32 result passes a parity check when its error against the float64 reference is at most this many times the
#: reference's own fp32 error (another fp32 implementation rounds differently, not more: measured 0.5-2x).
FLOOR_FACTOR = 10.0


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max absolute difference relative to the output scale (max ``|ref|``)."""
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@torch.no_grad()
def noise_floor(model: nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """How far ``model`` in fp32 is from its own float64 copy on ``x``: the fp32 noise any artifact inherits.

    Returns:
        ``(relative error, fp32 output, float64 output)``.
    """
    out32 = model(x.float())
    out64 = copy.deepcopy(model).double()(x.double())
    return rel_error(out32, out64), out32, out64


def judge_parity(error: float, error64: float | None, floor: float | None, tol: float) -> bool:
    """The parity verdict: within ``tol`` of the fp32 reference, or within ``FLOOR_FACTOR`` x the noise floor of the
    float64 reference (``error64``: the artifact against float64; ``floor``: fp32 PyTorch against float64)."""
    if error <= tol:
        return True
    return error64 is not None and floor is not None and error64 <= max(tol, FLOOR_FACTOR * floor)


@dataclass
class FoldReport:
    """What step 1 checked and measured."""

    remaining_norms: dict[str, int]
    allowed_norms: tuple[str, ...]
    bn_statistics: str
    parity_random: float
    parity_random_fp32: float
    parity_real: float | None = None
    tol: float = FOLD_TOL
    noise_floor_random: float | None = None
    noise_floor_real: float | None = None
    floor_factor: float = FLOOR_FACTOR
    input_fold: dict = field(default_factory=dict)


@torch.no_grad()
def _parity64(ref: nn.Module, folded: nn.Module, x: torch.Tensor) -> float:
    ref64, folded64 = copy.deepcopy(ref).double(), copy.deepcopy(folded).double()
    return rel_error(folded64(x.double()), ref64(x.double()))


def fold_and_check(
    model: nn.Module,
    input_size: tuple[int, int, int],
    allowed_norms: tuple[str, ...],
    fresh: bool,
    real_inputs: torch.Tensor | None = None,
    tol: float = FOLD_TOL,
) -> tuple[nn.Module, FoldReport]:
    """Fold ``model`` (left untouched) and check the result.

    Args:
        model: the model in train-time form.
        input_size: (C, H, W).
        allowed_norms: class names of normalizations the family says cannot fold.
        fresh: the model has no trained weights; the parity check then runs on a copy with realistic BN statistics.
        real_inputs: a few model inputs (normalized images) to check on as well.
        tol: relative tolerance.

    Returns:
        ``(deployed model in eval mode, report)``.

    Raises:
        FoldCheckError: a foldable normalization is left, a module is still in train-time form, or parity fails.
    """
    model.eval()
    deployed = blocks.reparameterize_model(model)
    left = blocks.remaining_norms(deployed)
    bad = {k: v for k, v in left.items() if k not in allowed_norms}
    if bad:
        raise FoldCheckError(
            f"normalizations left after folding that the family says fold: {bad} (allowed to remain: "
            f"{list(allowed_norms) or 'none'})"
        )
    pending = [n for n, m in deployed.named_modules() if callable(getattr(m, "reparameterize", None))]
    pending = [n for n in pending if not getattr(deployed.get_submodule(n), "deployed", True)]
    if pending:
        raise FoldCheckError(f"modules still in train-time form after reparameterize_model: {pending[:10]}")
    ref, folded, stats = model, deployed, "checkpoint"
    if fresh:
        ref = blocks.make_bn_realistic(copy.deepcopy(model), input_size)
        folded, stats = blocks.reparameterize_model(ref), "blocks.make_bn_realistic on a copy (fresh model)"
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    floor, ref32, _ = noise_floor(ref, x)
    with torch.no_grad():
        fp32 = rel_error(folded(x), ref32)
    report = FoldReport(left, tuple(allowed_norms), stats, _parity64(ref, folded, x), fp32, tol=tol)
    report.noise_floor_random = floor
    checks = [("random", report.parity_random, floor)]
    if real_inputs is not None and len(real_inputs):
        report.parity_real = _parity64(ref, folded, real_inputs[:8])
        report.noise_floor_real = noise_floor(ref, real_inputs[:8])[0]
        checks.append(("real", report.parity_real, report.noise_floor_real))
    bad = [(k, e, f) for k, e, f in checks if not judge_parity(e, e, f, tol)]
    if bad:
        detail = "; ".join(f"{e:.3e} on {k} inputs (fp32 noise floor of the model itself {f:.1e})" for k, e, f in bad)
        raise FoldCheckError(
            f"folded model differs from the unfolded one: relative error {detail}; tolerance {tol} or "
            f"{FLOOR_FACTOR:g}x the noise floor"
        )
    return deployed, report


class PixelInput(nn.Module):
    """A deployed model taking RGB pixels in [0, ``pixel_range``]: subtracts the mean, then runs ``core``.

    ``core``'s first convolution has ``1 / (std * pixel_range)`` folded into its weights, so
    ``core(pixels - mean * pixel_range)`` equals ``model(normalize(pixels / pixel_range))`` everywhere, borders
    included.
    """

    def __init__(self, core: nn.Module, pixel_mean: torch.Tensor) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("pixel_mean", pixel_mean.reshape(1, -1, 1, 1).clone())
        self.num_classes = getattr(core, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(x - self.pixel_mean)


def _first_conv(model: nn.Module, name: str, in_chans: int) -> tuple[str, nn.Conv2d]:
    """The named conv when it exists in the deployed model, else the first Conv2d that takes ``in_chans``."""
    if name:
        try:
            mod = model.get_submodule(name)
            if isinstance(mod, nn.Conv2d):
                return name, mod
        except AttributeError:
            pass
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == in_chans:
            return n, m
    raise FoldCheckError(f"no Conv2d taking {in_chans} channels found to fold the input normalization into")


@torch.no_grad()
def fold_input_normalization(
    deployed: nn.Module,
    first_conv: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    pixel_range: float,
    input_size: tuple[int, int, int],
    tol: float = FOLD_TOL,
) -> tuple[PixelInput, dict]:
    """Fold ``1 / (std * pixel_range)`` into the first conv; keep the mean as a subtraction (step 2).

    Checked against ``deployed(normalize(pixels / pixel_range))`` on random pixels (non-mean content right up to
    the borders, where zero padding would expose a wrong fold), in float64.

    Returns:
        ``(PixelInput model, info)`` where info names the conv and the measured error.

    Raises:
        FoldCheckError: no suitable first conv, a grouped one, or the check fails (e.g. the named conv is not the
            first operation on the input).
    """
    core = copy.deepcopy(deployed)
    name, conv = _first_conv(core, first_conv, input_size[0])
    if conv.groups != 1:
        raise FoldCheckError(f"first conv {name} is grouped (groups={conv.groups}); cannot fold the input scale")
    scale = 1.0 / (torch.tensor(std, dtype=torch.float64) * pixel_range)
    conv.weight.copy_((conv.weight.double() * scale.view(1, -1, 1, 1)).to(conv.weight.dtype))
    wrapped = PixelInput(core, torch.tensor(mean, dtype=torch.float32) * pixel_range).eval()
    pixels = torch.rand(2, *input_size, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * pixel_range
    floor, _, ref = noise_floor(deployed, normalize(pixels / pixel_range, mean, std))
    err = rel_error(copy.deepcopy(wrapped).double()(pixels), ref)
    if not judge_parity(err, err, floor, tol):
        raise FoldCheckError(
            f"folding the input normalization into {name} changes the output: relative error {err:.3e} > {tol} and "
            f"> {FLOOR_FACTOR:g}x the model's own fp32 noise floor {floor:.1e} "
            "(is it the first operation on the input?)"
        )
    return wrapped, {"first_conv": name, "parity": err, "noise_floor": floor, "tol": tol, "pixel_range": pixel_range}
