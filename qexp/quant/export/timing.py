"""Latency as the benchmarks and exported cells measure it: warm-up, then the median of repeated calls.

One protocol for every row of a speed table, whatever runs it (a PyTorch model, an ONNX Runtime
session): the first calls pay for allocation, caches and lazy initialisation, and a median is
not moved by the one call the scheduler interrupted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

WARMUP = 3


def median_seconds(call: Callable[[], object], repeats: int, warmup: int = WARMUP) -> float:
    """Median wall time of ``call()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def repeats_for(batch_size: int, repeats: int) -> int:
    """``repeats`` at batch 1, fewer (at least 3) at a large batch, whose every call already takes long."""
    return repeats if batch_size == 1 else max(3, repeats // 4)
