"""Median and p95 of request latencies, as `demo`, `loop` and `rollout` report them."""

import statistics
from collections.abc import Iterable


def median_p95_ms(latencies: Iterable[float]) -> dict[str, float]:
    """{"p50_ms": median, "p95_ms": the value at rank int(0.95 n) of the sorted latencies}, both
    rounded to 0.01 ms; an empty list raises statistics.StatisticsError."""
    ordered = sorted(latencies)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2)}
