"""INT8 you can ship: the accuracy gate, this CPU's int8 capability, and accuracy-aware post-training quantization.

**The gate.** Every INT8 artifact is compared with its FP32 twin on held-out images (never the calibration images):
with labels, the top-1 drop (points) and the top-1 agreement; without, the agreement and the cosine similarity of the
logits. :class:`Int8Budget` holds the limits (default: drop <= 1.0 point, agreement >= 98%, cosine >= 0.99); a
format over budget is failed with the measured figures and leaves no file.

**The CPU.** x86 int8 kernels without VNNI multiply u8 x s8 pairs into saturating 16-bit sums (``vpmaddubsw``): two
products of 255 x 127 overflow, and accuracy collapses (measured on an AVX2-only AMD EPYC: 75% vs 98.5% FP32 on
digits). :func:`int8_capability` reads the CPU's flags; on such a CPU the search starts from 7-bit weights
(``reduce_range``), which cannot saturate. The verdict is always measured on the machine that runs the export, and
the manifest names that CPU: the same command is judged again, not trusted, on the next machine.

**The search** (:func:`search_onnx_int8`), as in the accuracy-control loops of NNCF and TensorRT's Polygraphy
``debug precision``: (1) quantize with each calibration method (one calibration per method, cached), keep the best;
(2) if over budget, measure each quantized op's *sensitivity*: dequantize that op alone and see how much closer the
logits come to FP32 on calibration images; (3) keep the most sensitive ops in float, doubling their number until the
budget is met on the held-out images, then bisect to the fewest. The manifest lists what stayed float and why.
"""

from __future__ import annotations

import math
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from blocks.qat import X86_INT8_DOT_FLAGS

from .quantize import QUANTIZED_OPS, preprocess_for_int8, quantizable_nodes, quantize_int8

__all__ = [
    "Int8Budget",
    "Int8BudgetError",
    "default_reduce_range",
    "evaluate_int8",
    "int8_capability",
    "int8_speed_note",
    "search_onnx_int8",
]


@dataclass(frozen=True)
class Int8Budget:
    """Limits an INT8 artifact must meet against its FP32 twin on held-out images.

    Attributes:
        max_drop: top-1 drop in points (with labels).
        min_agreement: top-1 agreement with FP32, percent.
        min_cosine: mean cosine similarity of the logits (always measured; judged when there are no labels).
    """

    max_drop: float = 1.0
    min_agreement: float = 98.0
    min_cosine: float = 0.99


class Int8BudgetError(RuntimeError):
    """An INT8 artifact did not meet its budget; ``record`` holds the measured figures for the manifest."""

    def __init__(self, fmt: str, verdict: dict[str, Any], record: dict[str, Any] | None = None) -> None:
        self.fmt, self.verdict, self.record = fmt, verdict, record or {}
        super().__init__(f"{fmt}: INT8 over budget: {'; '.join(verdict['violations'])} (on {verdict.get('data')})")


def _cpu_flags() -> tuple[str, set[str]]:
    """The CPU's model name and flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    name, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name in ("", platform.machine(), platform.processor()):
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, flags


def int8_capability() -> dict[str, Any]:
    """What this CPU offers int8 inference: int8 dot products (VNNI, AMX, ARM dotprod) and the saturation risk.

    Returns:
        ``{"cpu", "arch", "isa", "int8_dot_product", "saturation_risk", "note"}``.
    """
    name, flags = _cpu_flags()
    arch = platform.machine().lower()
    x86 = arch in ("x86_64", "amd64", "i686", "i386")
    if x86:
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
        dot = bool(X86_INT8_DOT_FLAGS & flags)
        risk = not dot
        note = (
            "int8 dot products (VNNI/AMX): 8-bit products accumulate without saturation"
            if dot
            else "no VNNI: u8 x s8 pairs are summed in saturating 16 bits; 7-bit weights (reduce_range) avoid it"
        )
    else:
        isa = [f for f in ("asimd", "asimddp", "i8mm", "sve") if f in flags]
        dot = bool({"asimddp", "i8mm"} & flags)
        risk = False
        note = "ARM int8 dot product (sdot)" if dot else "no int8 dot-product instruction reported"
    return {"cpu": name, "arch": arch, "isa": isa, "int8_dot_product": dot, "saturation_risk": risk, "note": note}


def default_reduce_range(capability: dict[str, Any] | None = None) -> bool:
    """7-bit weights where 8-bit products could saturate (x86 without VNNI), full 8 bits elsewhere."""
    return bool((capability or int8_capability())["saturation_risk"])


def int8_speed_note(ratio: float, cap: dict[str, Any]) -> str:
    """Plain words for an INT8/FP32 latency ratio measured here, with the CPU's int8 capability."""
    where = f"{cap['cpu']} ({'has' if cap['int8_dot_product'] else 'no'} int8 dot products: {', '.join(cap['isa'])})"
    if ratio > 1.05:
        return (
            f"INT8 is {ratio:.2f}x SLOWER than FP32 here, on {where}: ship INT8 for size or for hardware with int8 "
            "dot products (VNNI/AMX, ARM dotprod, GPUs, NPUs), not for speed on this CPU"
        )
    if ratio < 0.95:
        return f"INT8 is {1 / ratio:.2f}x faster than FP32 here, on {where}"
    return f"INT8 runs at the speed of FP32 here ({ratio:.2f}x), on {where}"


def evaluate_int8(
    fp32_logits: torch.Tensor,
    int8_logits: torch.Tensor,
    labels: torch.Tensor | None,
    budget: Int8Budget,
    data: str = "",
) -> dict[str, Any]:
    """Compare INT8 logits with FP32 ones and judge them against ``budget``.

    Returns:
        ``agreement`` and ``cosine`` always; ``top1_fp32``, ``top1_int8``, ``drop`` with labels; ``passed`` and the
        list of ``violations`` (empty when passed); ``images``, ``data``, ``budget``.
    """
    ref, q = fp32_logits.float(), int8_logits.float()
    out: dict[str, Any] = {
        "images": len(ref),
        "data": data,
        "agreement": 100.0 * (ref.argmax(-1) == q.argmax(-1)).float().mean().item(),
        "cosine": torch.nn.functional.cosine_similarity(ref, q, dim=-1).mean().item(),
    }
    bad = []
    if labels is not None:
        out["top1_fp32"] = 100.0 * (ref.argmax(-1) == labels).float().mean().item()
        out["top1_int8"] = 100.0 * (q.argmax(-1) == labels).float().mean().item()
        out["drop"] = out["top1_fp32"] - out["top1_int8"]
        if out["drop"] > budget.max_drop:
            bad.append(f"top-1 drop {out['drop']:.2f} points > {budget.max_drop:g}")
    elif out["cosine"] < budget.min_cosine:
        bad.append(f"logit cosine {out['cosine']:.4f} < {budget.min_cosine:g}")
    if out["agreement"] < budget.min_agreement:
        bad.append(f"top-1 agreement {out['agreement']:.1f}% < {budget.min_agreement:g}%")
    out.update(passed=not bad, violations=bad, budget=asdict(budget))
    return out


def _score(verdict: dict[str, Any]) -> tuple:
    """Sort key: passing first, then the smallest drop, the highest agreement and cosine."""
    return (not verdict["passed"], verdict.get("drop", 0.0), -verdict["agreement"], -verdict["cosine"])


@dataclass
class _Problem:
    """One model's search: files, data, and how to run a candidate."""

    fp32: Path
    pre: Path
    work: Path
    calib: torch.Tensor
    batch: int
    gate: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, str]  # inputs, labels, FP32 logits, source
    sens: tuple[torch.Tensor, torch.Tensor]  # calibration inputs and their FP32 logits, for sensitivities
    run: Callable[[Path, torch.Tensor], torch.Tensor]
    budget: Int8Budget
    reduce_range: bool
    count: int = 0
    op_types: tuple[str, ...] = QUANTIZED_OPS

    def build(self, method: str, exclude: Sequence[str] = (), out: Path | None = None) -> tuple[Path, dict]:
        self.count += 1
        path = out or self.work / f"candidate{self.count}.onnx"
        cache = self.work / f"ranges-{method}.json"
        calib = None if cache.is_file() else self.calib
        settings = quantize_int8(
            self.fp32, path, calib, self.batch, calibration=method, reduce_range=self.reduce_range,
            exclude=tuple(exclude), cache=cache, preprocessed=self.pre, op_types=self.op_types,
        )  # fmt: skip
        settings["calibration_images"] = len(self.calib)
        return path, settings

    def judge(self, path: Path) -> dict[str, Any]:
        x, labels, ref, source = self.gate
        return evaluate_int8(ref, self.run(path, x), labels, self.budget, source)

    def distance(self, path: Path) -> float:
        """Mean squared logit error against FP32 on the sensitivity images, relative to the logits' power."""
        x, ref = self.sens
        out = self.run(path, x)
        return ((out - ref) ** 2).mean().item() / max((ref**2).mean().item(), 1e-12)


def _figures(v: dict[str, Any]) -> str:
    drop = f", drop {v['drop']:.2f} pt" if "drop" in v else ""
    return f"agreement {v['agreement']:.1f}%, cosine {v['cosine']:.4f}{drop}"


def _progress(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[int8] {msg}", file=sys.stderr, flush=True)


def _sensitivities(
    p: _Problem, method: str, nodes: list[tuple[str, str]], quiet: bool, groups: int = 32, refine: int = 4
) -> list[dict[str, Any]]:
    """Dequantize ops and see how much of the INT8 logit error that removes: their sensitivity.

    Up to ``2 * groups`` ops, one at a time. Beyond, hierarchically (each candidate is a full quantization, seconds
    apiece): consecutive ops in ``groups`` groups first, then one at a time inside the ``refine`` most sensitive
    groups; the other ops rank after those, by their group's sensitivity shared equally (marked ``estimated``).
    """
    full, _ = p.build(method)
    base = p.distance(full)
    full.unlink()

    def measure(names: list[str]) -> float:
        path, _ = p.build(method, names)
        d = p.distance(path)
        path.unlink()
        return d

    def row(name: str, op: str, d: float, estimated: bool = False) -> dict[str, Any]:
        return {"node": name, "op": op, "sensitivity": base - d, "error_without": d, "error_all": base,
                "estimated": estimated}  # fmt: skip

    if len(nodes) <= 2 * groups:
        chunks = [[n] for n in nodes]
    else:
        size = math.ceil(len(nodes) / groups)
        chunks = [nodes[i : i + size] for i in range(0, len(nodes), size)]
    scored = []
    for i, chunk in enumerate(chunks):
        scored.append((measure([n for n, _ in chunk]), chunk))
        if not quiet and (i + 1) % max(1, len(chunks) // 5) == 0:
            _progress(f"sensitivity {i + 1}/{len(chunks)} {'ops' if len(chunk) == 1 else 'groups of ops'}", quiet)
    scored.sort(key=lambda t: t[0])  # the lowest remaining error first: the most sensitive
    rows = []
    for rank, (d, chunk) in enumerate(scored):
        if len(chunk) == 1:
            rows.append(row(*chunk[0], d))
        elif rank < refine:
            rows += sorted((row(n, op, measure([n])) for n, op in chunk), key=lambda r: -r["sensitivity"])
        else:
            share = base - (base - d) / len(chunk)
            rows += [row(n, op, share, estimated=True) for n, op in chunk]
    if not quiet and len(chunks) < len(nodes):
        _progress(f"refined the {refine} most sensitive groups op by op", quiet)
    refined, rest = [r for r in rows if not r["estimated"]], [r for r in rows if r["estimated"]]
    return sorted(refined, key=lambda r: -r["sensitivity"]) + rest


def _placement(
    p: _Problem, method: str, exclude: list[str], nodes: list[tuple[str, str]], timer: Callable, quiet: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Q/DQ pairs on the residual Adds or not, whichever runs faster here and meets the budget.

    Returns the record for the manifest and, when the Adds stay float, that candidate's verdict (else None).
    """
    if not any(op == "Add" for _, op in nodes):
        return {"chosen": "qdq", "why": "no Add to place Q/DQ pairs on"}, None
    with_add, _ = p.build(method, exclude)
    saved, p.op_types = p.op_types, tuple(o for o in p.op_types if o != "Add")
    try:
        no_add, _ = p.build(method, [n for n in exclude if dict(nodes).get(n) != "Add"])
    finally:
        p.op_types = saved
    verdict = p.judge(no_add)
    ms = timer({"qdq": with_add, "qdq-float-add": no_add})
    with_add.unlink()
    no_add.unlink()
    faster = ms["qdq-float-add"] < 0.97 * ms["qdq"]  # a clear win only: 3% is within run-to-run noise
    pick = "qdq-float-add" if faster and verdict["passed"] else "qdq"
    why = (
        "residual Adds kept in float: faster here and within budget"
        if pick != "qdq"
        else ("Adds float would miss the budget" if faster else "Q/DQ on the Adds is as fast or faster here")
    )
    _progress(f"placement: {pick} ({ms['qdq']:.3f} ms with Q/DQ on Adds, {ms['qdq-float-add']:.3f} ms without)", quiet)
    rec = {"chosen": pick, "latency_ms": ms, "why": why, "float_add_verdict": _figures(verdict)}
    return rec, verdict if pick != "qdq" else None


def _what(row: dict[str, Any]) -> str:
    return "its group of consecutive ops cut (shared equally: estimated)" if row["estimated"] else "it alone cut"


def _fallback(
    p: _Problem, method: str, ranked: list[dict[str, Any]], max_float: int, quiet: bool
) -> tuple[int, dict[str, Any] | None, list[dict]]:
    """The fewest most-sensitive ops kept in float that meet the budget: doubling, then bisection."""
    tried: dict[int, dict[str, Any]] = {}

    def attempt(k: int) -> dict[str, Any]:
        if k not in tried:
            path, _ = p.build(method, [r["node"] for r in ranked[:k]])
            tried[k] = p.judge(path)
            path.unlink()
            v = tried[k]
            _progress(f"{k} op(s) in float: {_figures(v)}", quiet)
        return tried[k]

    lo, hi, k = 0, None, 1
    while k <= max_float:
        if attempt(k)["passed"]:
            hi = k
            break
        lo, k = k, k * 2
    if hi is None and max_float > lo and attempt(max_float)["passed"]:
        hi = max_float
    if hi is None:
        return -1, None, [{"float_ops": k, **v} for k, v in sorted(tried.items())]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if attempt(mid)["passed"] else (mid, hi)
    return hi, tried[hi], [{"float_ops": k, **v} for k, v in sorted(tried.items())]


def search_onnx_int8(
    fp32_path: Path,
    int8_path: Path,
    calib: torch.Tensor,
    batch: int,
    gate: tuple[torch.Tensor, torch.Tensor | None, str],
    run: Callable[[Path, torch.Tensor], torch.Tensor],
    budget: Int8Budget,
    methods: Sequence[str] = ("minmax", "percentile"),
    reduce_range: bool | None = None,
    fallback: bool = True,
    max_float_fraction: float = 0.5,
    sensitivity_images: int = 32,
    quiet: bool = False,
    timer: Callable[[dict[str, Path]], dict[str, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Accuracy-aware INT8 Q/DQ ONNX: the calibration method, and the fewest ops kept in float, meeting ``budget``.

    Args:
        fp32_path: the verified FP32 ONNX.
        int8_path: where the chosen INT8 file goes (written only when it meets the budget).
        calib: calibration inputs (artifact input space).
        batch: the batch the files take (calibration and evaluation run in these steps).
        gate: held-out ``(inputs, labels or None, source)`` the budget is judged on.
        run: ``run(onnx_path, inputs) -> logits`` with this machine's runtime.
        budget: the limits.
        methods: calibration methods to try (``minmax``, ``percentile``, ``entropy``).
        reduce_range: 7-bit weights; None: decided by :func:`int8_capability` (on where saturation is possible).
        fallback: keep sensitive ops in float when over budget.
        max_float_fraction: at most this share of the quantizable ops may stay in float.
        sensitivity_images: calibration images the per-op sensitivities are measured on.
        quiet: no progress lines.
        timer: ``timer({label: onnx_path}) -> {label: median ms}`` timing files side by side on the target runtime:
            when given, the Q/DQ placement is chosen by measurement (with or without Q/DQ pairs on the residual
            Adds, the fastest that meets the budget); None keeps the Adds quantized (TensorRT fuses them).

    Returns:
        ``(settings, verdict)`` for the manifest.

    Raises:
        Int8BudgetError: no candidate met the budget (its ``record`` has every attempt's figures); nothing written.
    """
    cap = int8_capability()
    rr = default_reduce_range(cap) if reduce_range is None else reduce_range
    with tempfile.TemporaryDirectory(prefix="int8-search-", dir=Path(int8_path).parent) as tmp:
        work = Path(tmp)
        pre, pre_error = preprocess_for_int8(fp32_path, work / "pre.onnx")
        x, labels, source = gate
        sens_x = calib[:sensitivity_images]
        p = _Problem(
            Path(fp32_path), pre, work, calib, batch, (x, labels, run(Path(fp32_path), x), source),
            (sens_x, run(Path(fp32_path), sens_x)), run, budget, rr,
        )  # fmt: skip
        attempts: list[dict[str, Any]] = []
        for method in methods:
            path, settings = p.build(method)
            verdict = p.judge(path)
            path.unlink()
            attempts.append({"calibration": method, "float_ops": 0, **verdict})
            _progress(f"{method}: {_figures(verdict)}", quiet)
        best = min(attempts, key=_score)
        method, exclude, chosen, ranked = best["calibration"], [], best, []
        nodes = quantizable_nodes(pre)
        if not best["passed"] and fallback:
            _progress(f"over budget ({'; '.join(best['violations'])}): ranking {len(nodes)} ops by sensitivity", quiet)
            ranked = _sensitivities(p, method, nodes, quiet)
            k, verdict, tried = _fallback(p, method, ranked, max(1, math.floor(max_float_fraction * len(nodes))), quiet)
            attempts += [{"calibration": method, **t} for t in tried]
            if verdict is not None:
                exclude, chosen = [r["node"] for r in ranked[:k]], {"calibration": method, "float_ops": k, **verdict}
        record = {"attempts": attempts, "cpu": cap, "reduce_range": rr, "quantizable_ops": len(nodes)}
        if not chosen["passed"]:
            raise Int8BudgetError("onnx-int8", min(attempts, key=_score), record)
        if timer is not None:
            placement, verdict_alt = _placement(p, method, exclude, nodes, timer, quiet)
            record["placement"] = placement
            if verdict_alt is not None:
                p.op_types = tuple(o for o in p.op_types if o != "Add")
                exclude = [n for n in exclude if dict(nodes).get(n) != "Add"]
                nodes = [(n, op) for n, op in nodes if op != "Add"]
                chosen = {"calibration": method, "float_ops": len(exclude), **verdict_alt}
        _, settings = p.build(method, exclude, out=Path(int8_path))
        if pre_error:
            settings["pre_process_error"] = pre_error
        why = {r["node"]: r for r in ranked}
        settings["float_nodes"] = [
            {
                "node": n,
                "op": why[n]["op"],
                "why": f"sensitivity rank {i + 1}/{len(nodes)}: dequantizing {_what(why[n])} the INT8 logit "
                f"error on calibration images from {why[n]['error_all']:.2e} to {why[n]['error_without']:.2e}",
            }
            for i, n in enumerate(exclude)
        ]
        settings.update(
            quantized_ops_count=len(nodes) - len(exclude),
            search={"methods_tried": list(methods), "fallback": fallback, "candidates_built": p.count, **record},
        )
    verdict = {k: v for k, v in chosen.items() if k not in ("calibration", "float_ops")}
    return settings, verdict
