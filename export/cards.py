"""``zoo cards``: ``MODEL_CARDS.md`` generated from the registry, measured params/MACs and the latest benchmark.

    zoo cards            # measure what changed, rewrite MODEL_CARDS.md
    zoo cards --check    # exit 1 when MODEL_CARDS.md or the measurements are out of date

Everything a card says comes from data: the ``Family`` (paper, blocks, remaining norms, reported numbers, weights,
timm names, ``card_notes``), params and MACs measured here, and latency from a ``zoo bench`` results file.

Measuring MACs runs every model once, which is too slow for a test. So the measurements are cached in a committed JSON
file (``benchmarks/results/model_stats.json``), each under the model's name with a cheap fingerprint of its
architecture: the parameter count and the input size. The parameter count is taken from a model built with its large
weight tensors on the ``meta`` device (no memory, no initialisation: ~0.2 s even for a 190 M-parameter model), so a
test can check every cached entry against the code it describes. ``zoo cards`` re-measures only entries that are
missing or whose fingerprint changed; rendering itself builds no model, and a test compares its output with the file.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

import zoo
from zoo.registry import Family

__all__ = [
    "TESTED_EXPORTS",
    "architecture_fingerprint",
    "measure_stats",
    "update_stats",
    "load_json",
    "render_cards",
    "main",
]

STATS_PATH = "benchmarks/results/model_stats.json"
BENCH_PATH = "benchmarks/results/bench_cpu.json"
PLOT_PATH = "benchmarks/results/pareto_onnxruntime.png"
CARDS_PATH = "MODEL_CARDS.md"
#: ``benchmarks/cascade.py``'s summary: a family's early-exit cascade results, shown in that family's card
CASCADE_PATH = "benchmarks/results/cascade_digits.json"
#: ``benchmarks/int8.py``'s table (INT8 per family: plain PTQ, accuracy-aware PTQ, QAT) and its plot
INT8_TABLE_PATH = "benchmarks/results/int8.md"
INT8_PLOT_PATH = "benchmarks/results/int8.png"
_ROOT = Path(__file__).resolve().parents[1]

#: What ``tests/test_registry.py`` proves for every registered model (``tests/test_cards.py`` checks the tests exist).
TESTED_EXPORTS = (
    ("test_onnx_parity", "ONNX fp32 (one dynamic-batch file; onnxruntime parity at batch 1 and 3)"),
    ("test_coreml_conversion", "CoreML mlprogram (converted at float32; spec checked on Linux)"),
)
#: Runtimes of ``zoo bench`` that prove an extra export format runs, when they ran for a model.
_BENCH_EXPORTS = {"onnxruntime-int8": "INT8 ONNX", "tensorrt": "TensorRT", "coreml": "CoreML (predicted)"}

_MIN_META_NUMEL = 1 << 16


class _LargeTensorsOnMeta(TorchFunctionMode):
    """Route ``torch.empty`` of large tensors (the weights of convs and linears) to the ``meta`` device.

    Small tensors stay real, so constructors that read values (``torch.linspace(...).tolist()`` for drop-path rates)
    still work; initialising a meta tensor is a no-op, which is what makes the build cheap.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = kwargs or {}
        if func is torch.empty and kwargs.get("device") is None:
            shape = args[0] if len(args) == 1 and not isinstance(args[0], int) else args
            if math.prod(shape) >= _MIN_META_NUMEL:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


def architecture_fingerprint(name: str) -> dict[str, Any]:
    """``{"params", "input_size"}`` of a registered model, counted without initialising its large weights."""
    try:
        with _LargeTensorsOnMeta():
            model = zoo.create_model(name)
    except Exception:  # noqa: BLE001 - a constructor that cannot take meta tensors is built for real
        model = zoo.create_model(name)
    return {"params": zoo.count_params(model), "input_size": list(zoo.get_family(name).cfgs[name].input_size)}


def measure_stats(name: str) -> dict[str, Any]:
    """Params and MACs of a registered model at its pretrained input size (and of its deployed form's params)."""
    import blocks

    model = zoo.create_model(name).eval()
    size = tuple(model.pretrained_cfg["input_size"])
    return {
        "params": zoo.count_params(model),
        "params_deployed": zoo.count_params(blocks.reparameterize_model(model)),
        "macs": zoo.count_macs(model, size),
        "input_size": list(size),
    }


def _stale(name: str, stats: Mapping[str, Any]) -> bool:
    entry = stats.get(name)
    if entry is None:
        return True
    fp = architecture_fingerprint(name)
    return entry["params"] != fp["params"] or entry["input_size"] != fp["input_size"]


def update_stats(stats: Mapping[str, Any], names: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Stats for exactly ``names``: cached entries kept where the fingerprint matches, the others measured.

    Returns:
        The new stats (sorted by name) and the names that were (re)measured.
    """
    from tqdm import tqdm

    stale = [n for n in names if _stale(n, stats)]
    new = {n: stats[n] for n in names if n not in stale}
    for n in tqdm(stale, desc="measuring params/MACs", disable=not stale):
        new[n] = measure_stats(n)
    return dict(sorted(new.items())), stale


def _dump_stats(stats: Mapping[str, Any]) -> str:
    """One model per line: diffs of the committed file show which models changed."""
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in stats.items()) + "\n}\n"


def load_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON file's content, or None when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip() or "—"


def _params(here: int | None, paper: float | None) -> str:
    a = f"{here / 1e6:.3f} M" if here is not None else "?"
    return f"{a} / {paper:g} M" if paper is not None else f"{a} / —"


def _macs_text(macs: float) -> str:
    return f"{macs / 1e6:.1f} M" if macs < 1e9 else f"{macs / 1e9:.3f} G"


def _macs(here: int | None, paper_g: float | None, paper_res: int, res: int) -> str:
    a = _macs_text(here) if here is not None else "?"
    if paper_g is None:
        return f"{a} / —"
    b = f"{paper_g * 1e3:g} M" if paper_g < 1 else f"{paper_g:g} G"
    return f"{a} / {b}" + (f" @{paper_res}" if paper_res != res else "")


def _bench_index(bench: Mapping[str, Any] | None) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(model, runtime): row}`` of the batch-1 rows of a results file."""
    if not bench:
        return {}
    return {(r["model"], r["runtime"]): r for r in bench["results"] if r["batch"] == 1}


def _latency(index: Mapping[tuple[str, str], Any], name: str, runtime: str, res: int) -> str:
    """Median ms of the batch-1 row; ``@H`` when the benchmark ran another input size than the card's."""
    row = index.get((name, runtime))
    if row is None or row["status"] == "skipped":
        return "—"
    if row["status"] == "error":
        return "failed"
    other = row["input_size"][1]
    return f"{row['median_ms']:.2f}" + (f" @{other}" if other != res else "")


def _exports(index: Mapping[tuple[str, str], Any], name: str) -> str:
    formats = ["ONNX", "CoreML"] + [
        label for rt, label in _BENCH_EXPORTS.items() if index.get((name, rt), {}).get("status") == "ok"
    ]
    return ", ".join(formats)


def _weights(family: Family, name: str) -> str:
    parts = []
    spec = family.weights.get(name)
    rep = family.reported.get(name)
    if spec is not None:
        # released weights can differ from the paper's table (e.g. distilled checkpoints): say what they score
        differs = spec.top1 is not None and (rep is None or rep.top1 != spec.top1)
        parts.append(f"[{spec.layout}]({spec.url})" + (f" (top-1 {spec.top1:g})" if differs else ""))
    if name in family.timm_names:
        parts.append(f"timm `{family.timm_names[name]}`")
    return "; ".join(parts) or "none released"


def _variant_row(family: Family, name: str, stats: Mapping[str, Any], index: Mapping[tuple[str, str], Any]) -> str:
    st = stats.get(name, {})
    rep = family.reported.get(name)
    res = st.get("input_size", list(family.cfgs[name].input_size))[1]
    cells = [
        f"`{name}`",
        str(res),
        _params(st.get("params"), rep.params_m if rep else None),
        _macs(st.get("macs"), rep.macs_g if rep else None, rep.resolution if rep else res, res),
        _top1_text(rep),
        _cell(rep.latency if rep else ""),
        _latency(index, name, "onnxruntime", res),
        _latency(index, name, "deployed", res),
        _exports(index, name),
        _weights(family, name),
    ]
    return "| " + " | ".join(cells) + " |"


_TABLE_HEAD = (
    "| variant | input | params here / paper | MACs here / paper | top-1 (paper) | paper latency (hardware) "
    "| ORT ms here | deployed ms here | exports tested | weights |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def _family_facts(family: Family) -> list[str]:
    p = family.paper
    norms = (
        ", ".join(f"`{n}`" for n in family.remaining_norms) + " (cannot fold; they stay in the deployed graph)"
        if family.remaining_norms
        else "none: every normalization folds into an adjacent convolution or linear layer"
    )
    lines = [
        f"*{p.title}*, {p.venue}, [arXiv {p.arxiv}](https://arxiv.org/abs/{p.arxiv}). "
        f"Original code: {p.repo} ({p.code_license}). Weights licence: {p.weights_license}.",
        "",
        "- Blocks: " + (", ".join(f"`{b}`" for b in family.blocks) or "—") + ".",
        f"- Norms left after folding: {norms}.",
    ]
    sources = sorted({s.source for s in family.weights.values() if s.source})
    licences = sorted({s.license for s in family.weights.values()})
    if family.weights:
        lines.append(f"- Checkpoints: {'; '.join(sources) or 'see links'} (licence {', '.join(licences)}).")
    if family.timm_names:
        lines.append(f"- timm implements {len(family.timm_names)} of the {len(family.variants)} variants (same keys).")
    numbers = sorted({r.source for r in family.reported.values() if r.source})
    if numbers:
        lines.append(f"- Paper numbers from: {'; '.join(numbers)}.")
    return lines


_DATASET_NAMES = {"cifar-10": "CIFAR-10", "cifar-100": "CIFAR-100"}


def _top1_text(rep: Any) -> str:
    """The paper's top-1, with its dataset named when it is not ImageNet-1k."""
    if rep is None or rep.top1 is None:
        return "—"
    if rep.dataset == "imagenet-1k":
        return f"{rep.top1:g}"
    return f"{rep.top1:g} ({_DATASET_NAMES.get(rep.dataset, rep.dataset)})"


def _family_section(family: Family, stats: Mapping[str, Any], index: Mapping[tuple[str, str], Any]) -> str:
    lines = [f"## {family.name}", "", *_family_facts(family)]
    if family.card_notes:
        lines += ["", family.card_notes.strip()]
    lines += ["", _TABLE_HEAD]
    lines += [_variant_row(family, n, stats, index) for n in family.variants]
    lines += _cascade_lines(family)
    failed = [
        f"`{n}` {rt}: {_cell(index[(n, rt)]['reason'])}"
        for n in family.variants
        for rt in ("onnxruntime", "deployed")
        if index.get((n, rt), {}).get("status") == "error"
    ]
    if failed:
        lines += ["", "Benchmark failures here: " + "; ".join(failed) + "."]
    return "\n".join(lines)


def _cascade_lines(family: Family) -> list[str]:
    """The family's early-exit cascade table from :data:`CASCADE_PATH`, when that file measured this family."""
    result = load_json(_ROOT / CASCADE_PATH)
    if not result or result.get("family") != family.name:
        return []
    m = result["machine"]
    lines = [
        "",
        f"**Early-exit cascades** (`zoo.Cascade`, `benchmarks/cascade.py`; {result['recipe']}; windows fitted on one "
        "half of the digits validation split and judged on the other, both ways round, figures pooled over both "
        f"report halves; MACs counted, not timed; run on {m['cpu']}, load {m['load_avg_1m']}, {m['date']}):",
        "",
        "| model | top-1 % | MMACs/image | x one member | risk@cov. % | AURC % | exits per stage |",
        "|---|---|---|---|---|---|---|",
    ]
    rows: dict[str, tuple[dict[str, Any], float]] = {}  # label -> (row, coverage): members and ensembles once
    for name, c in result["cascades"].items():
        for r in c["rows"]:
            label = f"cascade `{name}`, target `{c['target']}`" if r["kind"] == "cascade" else r["name"]
            rows.setdefault(label, (r, c["coverage"]))
    order = {"single": 0, "ensemble": 1, "cascade": 2}
    unit = next(r["expected_macs"] for r, _ in rows.values() if r["kind"] == "single")
    for label, (r, cov) in sorted(rows.items(), key=lambda kv: order.get(kv[1][0]["kind"], 3)):
        exits = " / ".join(f"{f:.2f}" for f in r.get("exit_fractions", [])) or "—"
        lines.append(
            f"| {_cell(label)} | {r['accuracy']:.2f} | {r['expected_macs'] / 1e6:.2f} | "
            f"{r['expected_macs'] / unit:.2f} | {r['risk_at_coverage']:.2f} @ {cov:.0%} | {r['aurc']:.3f} | {exits} |"
        )
    return lines


def _int8_lines(plots: bool = True) -> list[str]:
    """The INT8-per-family table written by ``benchmarks/int8.py``, when it has run."""
    table = _ROOT / INT8_TABLE_PATH
    if not table.is_file():
        return []
    lines = ["", "## INT8 per family (`benchmarks/int8.py`)", "", *table.read_text().strip().splitlines()]
    if plots and (_ROOT / INT8_PLOT_PATH).is_file():
        lines += ["", f"![INT8 top-1 drop against INT8/FP32 latency]({INT8_PLOT_PATH})"]
    return lines


def _bench_line(bench: Mapping[str, Any] | None, bench_name: str) -> str:
    if not bench:
        return f"**Latency here**: no benchmark results file (`{bench_name}`) yet; run `zoo bench` (see below)."
    m, s = bench["machine"], bench["settings"]
    v = m["versions"]
    size = f"{s['imgsz']} px inputs" if s.get("imgsz") else "each model's own input size"
    load = f"; 1-minute load average {m['load_avg_1m']} when it started" if m.get("load_avg_1m") is not None else ""
    load += "".join(f", `{k}={v}`" for k, v in m.get("env", {}).items())
    return (
        f"**Latency here** (`{bench_name}`, {m['date']}): {m['cpu']}, {m['threads']} threads, batch 1, {size}, "
        f"median of at least {s['min_runs']} timed runs after {s['warmup']} warm-up runs, runtimes of one model "
        f"timed in alternation; torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}{load}. "
        "*ORT*: the deployed model exported to ONNX and run by onnxruntime; *deployed*: the deployed PyTorch model, "
        "eager. — : not measured."
    )


def render_cards(
    stats: Mapping[str, Any],
    bench: Mapping[str, Any] | None,
    bench_name: str = BENCH_PATH,
    plot: str | None = PLOT_PATH,
) -> str:
    """The text of ``MODEL_CARDS.md`` for the registered families (builds no model).

    Args:
        stats: ``{model: {"params", "macs", "input_size", ...}}`` measured here (see :func:`update_stats`).
        bench: a ``zoo bench`` results dict, or None.
        bench_name: how the text names the results file.
        plot: relative path of the Pareto plot to embed, or None.
    """
    families = [f for f in zoo.list_families() if f.variants]
    index = _bench_index(bench)
    exports = "; ".join(text for _, text in TESTED_EXPORTS)
    out = [
        "# Model cards",
        "",
        f"<!-- Generated by `zoo cards` from the registry, {STATS_PATH} and {bench_name}. Do not edit by hand: "
        "tests/test_cards.py checks that this file is in sync. -->",
        "",
        f"{sum(len(f.variants) for f in families)} models in {len(families)} "
        f"famil{'y' if len(families) == 1 else 'ies'}. Params and MACs are measured here (`zoo info NAME`) at "
        "each model's input size, next to what the paper reports; MACs are counted with "
        '`torch.utils.flop_counter` and halved, as papers that say "FLOPs" count multiply-accumulates. Top-1 is the '
        "ImageNet-1k top-1 the paper reports, latency claims are quoted with their hardware.",
        "",
        _bench_line(bench, bench_name),
        "",
        f"**Exports tested for every model** (registry-wide tests): {exports}. Extra formats appear in a row when "
        "`zoo bench` ran them for that model.",
    ]
    if plot:
        out += ["", f"![Paper top-1 against latency measured here]({plot})"]
    out += _int8_lines(plots=plot is not None)
    out += ["", "| family | paper | variants |", "|---|---|---|"]
    out += [
        f"| [{f.name}](#{f.name}) | {_cell(f.paper.title)} ({f.paper.venue}) | {len(f.variants)} |" for f in families
    ]
    for f in families:
        out += ["", _family_section(f, stats, index)]
    return "\n".join(out) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zoo cards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=CARDS_PATH, help=f"cards file (default {CARDS_PATH})")
    p.add_argument("--stats", default=STATS_PATH, help=f"measured params/MACs cache (default {STATS_PATH})")
    p.add_argument("--bench", default=BENCH_PATH, help=f"zoo bench results JSON (default {BENCH_PATH})")
    p.add_argument("--plot", default=PLOT_PATH, help=f"Pareto plot to embed, if it exists (default {PLOT_PATH})")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when anything is out of date")
    p.add_argument(
        "--remeasure",
        nargs="*",
        metavar="PATTERN",
        help="measure these models again although their fingerprint matches (no pattern: all), e.g. after a change "
        "in how MACs are counted",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``zoo cards``: update the measurements that changed and rewrite (or ``--check``) the cards file."""
    args = _parser().parse_args(argv)
    out = Path(args.out)
    stats = load_json(args.stats) or {}
    bench = load_json(args.bench)
    plot = os.path.relpath(args.plot, out.resolve().parent) if Path(args.plot).exists() else None
    names = zoo.list_models()
    if args.check:
        stale = [n for n in names if _stale(n, stats)] + sorted(set(stats) - set(names))
        text = render_cards(stats, bench, args.bench, plot)
        current = out.read_text() if out.exists() else ""
        problems = [f"{args.stats}: out of date for {', '.join(stale)}"] if stale else []
        problems += [f"{out} differs from what zoo cards renders"] if current != text else []
        for msg in problems:
            print(f"zoo cards: {msg}; run `zoo cards` to update", file=sys.stderr)
        return 1 if problems else 0
    if args.remeasure is not None:
        drop = {n for n in names if not args.remeasure or any(fnmatch.fnmatch(n, pat) for pat in args.remeasure)}
        stats = {k: v for k, v in stats.items() if k not in drop}
    stats, measured = update_stats(stats, names)
    Path(args.stats).parent.mkdir(parents=True, exist_ok=True)
    Path(args.stats).write_text(_dump_stats(stats))
    out.write_text(render_cards(stats, bench, args.bench, plot))
    print(f"wrote {out} ({len(names)} models; measured {len(measured)}: {', '.join(measured) or 'none'})")
    return 0
