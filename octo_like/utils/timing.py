"""Throughput measurement for scripts/bench.py (never used to assert anything in tests)."""

import time
from collections.abc import Callable


def calls_per_second(call: Callable[[], object], seconds: float, warmup: int = 1) -> float:
    """How often `call()` completes per second over about `seconds`, after `warmup` calls."""
    for _ in range(warmup):
        call()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        call()
        count += 1
    return count / elapsed
