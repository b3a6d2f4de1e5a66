"""Latency the way trtexec measures it, for every backend: warm up by time, then time each call.

``measure`` runs a step (with a device sync for GPU backends, so queued work is counted where it
happens) until both a minimum number of iterations and a minimum duration are reached;
``latency_stats`` summarizes the per-iteration times with trtexec's percentile definition and
computes throughput as images over the host wall time of the timed loop (docs/tensorrt.md, "Timing").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# trtexec warns above 2.5 % on a GPU with locked clocks; a shared CPU is noisier, so 10 %.
CV_WARN = 0.10


@dataclass(frozen=True)
class LatencyStats:
    """Per-iteration latency summary for one batch size."""

    iters: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float
    throughput_ips: float


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """trtexec's percentile: ``sorted[max(n - 1 - floor((1 - p/100) * n), 0)]`` (a value that occurred)."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    # round() first: in binary floating point (1 - 0.9) * 100 is 9.999..., which would floor to 9
    # and make the p90 of 1..100 read 91; the definition means 10 (trtexec computes in float32).
    return float(sorted_values[max(n - 1 - int(math.floor(round((1.0 - p / 100.0) * n, 9))), 0)])


def latency_stats(times_s: Sequence[float], batch: int, wall_s: float) -> LatencyStats:
    """Summary of per-iteration times (seconds); throughput = images / ``wall_s``."""
    ms = np.sort(np.asarray(times_s, dtype=np.float64) * 1000.0)
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    return LatencyStats(iters=len(ms), p50_ms=percentile(ms, 50), p90_ms=percentile(ms, 90),
                        p99_ms=percentile(ms, 99), mean_ms=mean, std_ms=std, min_ms=float(ms[0]),
                        max_ms=float(ms[-1]), cv=std / mean if mean > 0 else 0.0,
                        throughput_ips=len(ms) * batch / wall_s if wall_s > 0 else 0.0)


def measure(step: Callable[[], object], sync: Callable[[], None], *, warmup_s: float, min_iters: int,
            min_time_s: float) -> tuple[list[float], float]:
    """Warm up for ``warmup_s`` (at least one call), then time calls until both minimums are met.

    Returns (per-iteration seconds, wall seconds of the timed loop). ``sync`` runs inside each
    timed iteration so queued GPU work is counted where it happens.
    """
    end = time.perf_counter() + warmup_s
    while True:
        step()
        sync()
        if time.perf_counter() >= end:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(1, min_iters) or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times, time.perf_counter() - start
