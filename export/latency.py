"""Latency measurement shared by ``benchmarks/`` and ``zoo bench``: warm-up, then interleaved timed runs.

Side-by-side comparisons run the candidates in alternation (round-robin) so that machine noise, thermal state and
other load hit them alike; the ratio of medians is what is reported, never an absolute time in a test.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Timing", "time_side_by_side"]


@dataclass(frozen=True)
class Timing:
    """Latency statistics of one candidate, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples: list[float]) -> Timing:
        s = sorted(samples)
        return cls(
            median_ms=statistics.median(s) * 1e3,
            p90_ms=s[min(len(s) - 1, int(0.9 * len(s)))] * 1e3,
            mean_ms=statistics.fmean(s) * 1e3,
            runs=len(s),
        )


def time_side_by_side(
    candidates: Mapping[str, Callable[[], object]],
    warmup: int = 5,
    min_runs: int = 20,
    min_seconds: float = 2.0,
    max_runs: int = 500,
) -> dict[str, Timing]:
    """Time several zero-argument callables in alternation.

    Args:
        candidates: ``{label: fn}``; each call is one inference.
        warmup: untimed calls of each candidate first.
        min_runs: at least this many timed calls each.
        min_seconds: keep going until the slowest candidate has accumulated this much time.
        max_runs: stop after this many rounds regardless.

    Returns:
        ``{label: Timing}``.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in candidates}
    rounds = 0
    while rounds < max_runs and (rounds < min_runs or min(sum(v) for v in samples.values()) < min_seconds):
        for label, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            samples[label].append(time.perf_counter() - t0)
        rounds += 1
    return {k: Timing.from_samples(v) for k, v in samples.items()}
