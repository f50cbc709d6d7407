"""Quantization-aware training (QAT): fake INT8 quantization exactly where the INT8 exporter puts its Q/DQ pairs.

QAT fine-tunes the model the INT8 artifact computes: the *deployed* model (every BatchNorm folded, branches merged),
captured with ``torch.export`` so that every Conv, Linear, MatMul and residual Add is one node of one graph. Fake
quantizers then go on the inputs of those nodes, as the exporter's Q/DQ pairs do (``export.quantize.QUANTIZED_OPS``):

* weights of Conv / Linear: per output channel, symmetric, zero point 0, 8 bits (7 with ``reduce_range``, for x86
  CPUs without VNNI whose 8-bit products saturate), scale = max|w| / qmax, recomputed from the weights at each step;
* activations (inputs of Conv / Linear / MatMul / BMM and both inputs of a residual Add): per tensor, symmetric int8,
  scale = amax / 127 where amax is a moving average of the batch's max |x| while training (torch.ao's
  ``MovingAverageMinMaxObserver``, averaging constant 0.01) and fixed at evaluation. One quantizer per tensor,
  shared by its quantized consumers, keyed by the name of the graph node that produces it.

Gradients pass straight through inside the range and are zero outside (the STE of ``torch.fake_quantize_*``).
The learned ranges are buffers (``qat_act.<node>.amax``) saved with the weights; :func:`export_form` freezes every
quantizer so that ``torch.onnx.export`` writes each as a QuantizeLinear/DequantizeLinear pair with those scales.

Adds with a constant operand (a bias, a positional embedding), softmax, normalization and reshapes stay in float,
as in the post-training quantizer.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed (Q/DQ ops)
from torch import fx, nn

__all__ = [
    "ActQuant",
    "QAT_VERSION",
    "X86_INT8_DOT_FLAGS",
    "WeightQuant",
    "default_reduce_range",
    "export_form",
    "float_state",
    "load_qat_state",
    "prepare_qat",
    "qat_ranges",
    "qat_signature",
    "calibrate",
    "set_observing",
]

#: Bumped when the placement or the state layout changes (checkpoints record it).
QAT_VERSION = 1

#: x86 CPU flags of int8 dot-product instructions: with one, 8-bit products accumulate without saturation.
X86_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

_aten = torch.ops.aten
#: Graph ops whose inputs are fake-quantized: op -> (activation argument positions, weight argument position or None).
_QUANTIZED: dict[Any, tuple[tuple[int, ...], int | None]] = {
    _aten.conv1d.default: ((0,), 1),
    _aten.conv2d.default: ((0,), 1),
    _aten.linear.default: ((0,), 1),
    _aten.matmul.default: ((0, 1), None),
    _aten.bmm.default: ((0, 1), None),
    _aten.baddbmm.default: ((1, 2), None),
    _aten.add.Tensor: ((0, 1), None),
}


def default_reduce_range() -> bool:
    """7-bit weights on x86 CPUs without int8 dot products (VNNI/AMX), whose kernels sum u8 x s8 pairs in saturating
    16 bits; 8 bits elsewhere. Read from this CPU's flags: train where the artifact will run, or pass it explicitly."""
    import platform

    from .native import cpu_info

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return False
    return not (X86_INT8_DOT_FLAGS & set(cpu_info()["flags"].split()))


class ActQuant(nn.Module):
    """Per-tensor symmetric int8 fake quantization with a moving-average range (``amax``)."""

    def __init__(self, averaging: float = 0.01) -> None:
        super().__init__()
        self.averaging = averaging
        self.observe = True
        self.register_buffer("amax", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32), persistent=False)

    def scale(self) -> torch.Tensor:
        return (self.amax.clamp_min(1e-8) / 127.0).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.observe:
            with torch.no_grad():
                cur = x.detach().abs().amax().float()
                first = self.steps == 0
                self.amax.copy_(torch.where(first, cur, self.amax + self.averaging * (cur - self.amax)))
                self.steps += 1
        if not bool(self.steps > 0):  # never observed: nothing to quantize to yet
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale(), self.zero_point, -128, 127)


class WeightQuant(nn.Module):
    """Per-output-channel symmetric fake quantization of a weight; qmax 127 (8 bits) or 63 (``reduce_range``)."""

    def __init__(self, out_channels: int, qmax: int = 127) -> None:
        super().__init__()
        self.qmax = qmax
        self.register_buffer("zero_point", torch.zeros(out_channels, dtype=torch.int32), persistent=False)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return (w.detach().abs().flatten(1).amax(1).clamp_min(1e-8) / self.qmax).float()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_channel_affine(w, self.scale(w), self.zero_point, 0, -128, 127)


class _FrozenAct(nn.Module):
    """An :class:`ActQuant` with its scale as a constant: one QuantizeLinear/DequantizeLinear pair in ONNX (and the
    quantize/dequantize pattern ExecuTorch's XNNPACK delegate lowers to int8 kernels)."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.s = float(scale)  # a Python float: the exporter writes it as the Q/DQ pair's constant scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.ops.quantized_decomposed.quantize_per_tensor(x, self.s, 0, -128, 127, torch.int8)
        return torch.ops.quantized_decomposed.dequantize_per_tensor(q, self.s, 0, -128, 127, torch.int8)


class _FrozenWeight(nn.Module):
    """A quantized weight as a constant, with its per-channel scales: one Q/DQ pair in ONNX."""

    def __init__(self, w: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        shape = (-1,) + (1,) * (w.dim() - 1)
        q = torch.round(w.detach().float() / scale.view(shape)).clamp(-128, 127).to(torch.int8)
        self.register_buffer("q", q)  # stored as int8: the ONNX file holds int8 weights behind a DequantizeLinear
        self.register_buffer("s", scale.detach().clone().float())
        self.register_buffer("z", torch.zeros(len(scale), dtype=torch.int32))

    def forward(self) -> torch.Tensor:
        return torch.ops.quantized_decomposed.dequantize_per_channel(self.q, self.s, self.z, 0, -128, 127, torch.int8)


def _is_activation(arg: Any) -> bool:
    return isinstance(arg, fx.Node) and arg.op in ("placeholder", "call_function", "call_module")


def _fetch(module: nn.Module, target: str) -> torch.Tensor:
    """A parameter or buffer by its dotted name."""
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _key(target: str) -> str:
    return target.replace(".", "__")


def prepare_qat(deployed: nn.Module, input_size: tuple[int, int, int], reduce_range: bool = False) -> fx.GraphModule:
    """The QAT model of a deployed model: its ``torch.export`` graph with fake quantizers on the quantized inputs.

    Args:
        deployed: the deployed model (``blocks.reparameterize_model``), eval mode.
        input_size: (C, H, W) of its input; the batch stays symbolic.
        reduce_range: 7-bit weights (x86 CPUs without VNNI).

    Returns:
        A trainable ``fx.GraphModule`` whose parameters have the deployed model's names; the quantizers live under
        ``qat_act`` (activation ranges, keyed by producing node) and ``qat_weight`` (keyed by weight name).
        ``pretrained_cfg``, ``num_classes`` and ``qat`` (the settings) are copied/set as attributes.
    """
    deployed = deployed.eval()
    example = torch.randn(2, *input_size)
    with torch.no_grad():
        ep = torch.export.export(
            deployed, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},)
        )
    src = ep.module()
    gm = fx.GraphModule(src, src.graph)  # a plain GraphModule: exported modules refuse .train()
    acts, weights = nn.ModuleDict(), nn.ModuleDict()
    gm.add_module("qat_act", acts)
    gm.add_module("qat_weight", weights)
    graph, made = gm.graph, {}
    for node in list(graph.nodes):
        spec = _QUANTIZED.get(node.target) if node.op == "call_function" else None
        if spec is None:
            continue
        act_pos, w_pos = spec
        if node.target is _aten.add.Tensor and not all(_is_activation(a) for a in node.args[:2]):
            continue  # an Add with a constant operand (bias, embedding) stays float
        args = list(node.args)
        for i in act_pos:
            if i < len(args) and _is_activation(args[i]):
                args[i] = _act_node(graph, acts, made, args[i])
        if w_pos is not None and w_pos < len(args) and isinstance(args[w_pos], fx.Node):
            args[w_pos] = _weight_node(graph, gm, weights, made, args[w_pos], reduce_range)
        node.args = tuple(args)
    graph.lint()
    gm.recompile()
    gm.pretrained_cfg = {**(getattr(deployed, "pretrained_cfg", None) or {}), "input_size": tuple(input_size)}
    gm.num_classes = getattr(deployed, "num_classes", None)
    gm.qat = {
        "version": QAT_VERSION,
        "weight_bits": 7 if reduce_range else 8,
        "input_size": list(input_size),
        "activations": len(acts),
        "weights": len(weights),
        "signature": qat_signature(gm),
        "torch": torch.__version__.split("+")[0],
    }
    return gm


def _act_node(graph: fx.Graph, acts: nn.ModuleDict, made: dict[str, fx.Node], src: fx.Node) -> fx.Node:
    """The (shared) fake-quantized version of tensor ``src``."""
    key = src.name
    if f"act:{key}" not in made:
        acts[key] = ActQuant()
        with graph.inserting_after(src):
            made[f"act:{key}"] = graph.call_module(f"qat_act.{key}", (src,))
    return made[f"act:{key}"]


def _weight_node(
    graph: fx.Graph, gm: fx.GraphModule, weights: nn.ModuleDict, made: dict[str, fx.Node], src: fx.Node,
    reduce_range: bool,
) -> fx.Node:  # fmt: skip
    key = _key(str(src.target)) if src.op == "get_attr" else src.name
    if f"w:{key}" not in made:
        w = _fetch(gm, str(src.target)) if src.op == "get_attr" else None
        out_ch = w.shape[0] if w is not None else int(src.meta["val"].shape[0])
        weights[key] = WeightQuant(out_ch, 63 if reduce_range else 127)
        with graph.inserting_after(src):
            made[f"w:{key}"] = graph.call_module(f"qat_weight.{key}", (src,))
    return made[f"w:{key}"]


def _quantizers(gm: nn.Module) -> tuple[dict[str, ActQuant], dict[str, WeightQuant]]:
    acts = dict(gm.get_submodule("qat_act").items()) if hasattr(gm, "qat_act") else {}
    weights = dict(gm.get_submodule("qat_weight").items()) if hasattr(gm, "qat_weight") else {}
    return acts, weights


def qat_signature(gm: fx.GraphModule) -> str:
    """A hash of where the quantizers sit (their keys and weight bit width): a checkpoint's ranges only apply to a
    graph with the same signature (same model, same torch.export capture)."""
    acts, weights = _quantizers(gm)
    text = "|".join(sorted(acts)) + "#" + "|".join(f"{k}:{m.qmax}" for k, m in sorted(weights.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def qat_ranges(gm: fx.GraphModule) -> dict[str, float]:
    """The learned activation ranges (``amax`` per quantized tensor)."""
    return {k: float(m.amax) for k, m in _quantizers(gm)[0].items()}


def set_observing(gm: nn.Module, on: bool) -> None:
    """Freeze (``False``) or resume (``True``) the activation range updates."""
    for m in _quantizers(gm)[0].values():
        m.observe = on


def load_qat_state(gm: fx.GraphModule, state: dict[str, torch.Tensor], context: str = "") -> None:
    """Load a QAT checkpoint's weights and ranges into ``gm`` (strict), listing what does not match."""
    own = gm.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = [
            f"{what} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes))
            if keys
        ]
        raise ValueError(f"QAT checkpoint does not match the QAT graph{f' of {context}' if context else ''}: "
                         + "; ".join(parts))  # fmt: skip
    gm.load_state_dict(state, strict=True)


def float_state(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """The QAT-trained weights without the quantizers: a state dict of the deployed model it was made from."""
    return {k: v for k, v in gm.state_dict().items() if not k.startswith(("qat_act.", "qat_weight."))}


def calibrate(gm: nn.Module, batches: Any, limit: int = 8) -> int:
    """Initial activation ranges from up to ``limit`` batches (training-mode observers, no gradients), so that
    fine-tuning starts from calibrated ranges instead of the first batch's; returns the batches seen (0 when the
    ranges were already learned)."""
    acts = _quantizers(gm)[0]
    if acts and all(int(m.steps) > 0 for m in acts.values()):
        return 0  # ranges already learned (a QAT checkpoint being fine-tuned further)
    was = gm.training
    gm.train()
    n = 0
    with torch.no_grad():
        for x in batches:
            if n >= limit:
                break
            gm(x)
            n += 1
    gm.train(was)
    return n


def export_form(gm: fx.GraphModule, weight_qmax: int | None = None) -> fx.GraphModule:
    """A copy of ``gm`` with every quantizer frozen to constants: ``torch.onnx.export`` writes each activation
    quantizer as a QuantizeLinear/DequantizeLinear pair with its learned scale, and each weight as its INT8-rounded
    values, stored as int8, behind a per-channel DequantizeLinear. ``weight_qmax`` (127 or 63) overrides the bit
    width the weights were trained at (e.g. 7 bits for an x86 CPU without VNNI)."""
    acts, weights = _quantizers(gm)
    never = [k for k, m in acts.items() if int(m.steps) == 0]
    if never:
        raise ValueError(f"{len(never)} activation quantizer(s) never saw data (e.g. {never[0]}): calibrate first")
    out = fx.GraphModule(gm, gm.graph.__deepcopy__())
    out.add_module("qat_act", nn.ModuleDict({k: _FrozenAct(m.scale()) for k, m in acts.items()}))
    frozen = nn.ModuleDict()
    for node in list(out.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("qat_weight."):
            key = str(node.target).split(".", 1)[1]
            src = node.args[0]
            w = _fetch(out, str(src.target)) if src.op == "get_attr" else None
            if w is None:
                continue  # a computed weight: keep the live quantizer
            quantizer = weights[key] if weight_qmax is None else WeightQuant(len(w), weight_qmax)
            frozen[key] = _FrozenWeight(w, quantizer.scale(w))
            with out.graph.inserting_before(node):
                node.replace_all_uses_with(out.graph.call_module(f"qat_weight.{key}", ()))
            out.graph.erase_node(node)
    kept = {k: m for k, m in weights.items() if k not in frozen}
    out.add_module("qat_weight", nn.ModuleDict({**kept, **dict(frozen.items())}))
    out.graph.eliminate_dead_code()
    out.graph.lint()
    out.recompile()
    out.eval()
    for p in out.parameters():  # constants for the exporter (with grad, fake-quant ops trace to their mask variants)
        p.requires_grad_(False)
    return out
