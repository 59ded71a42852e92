"""p50 and p99 of request latencies (numpy linear interpolation), as the soak and chaos benches give them."""

from collections.abc import Sequence

import numpy as np

NO_LATENCIES: dict[str, float | None] = {"p50_ms": None, "p99_ms": None}


def p50_p99_ms(ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """{"p50_ms", "p99_ms"} of latencies in milliseconds, rounded to 0.1 ms; empty raises IndexError
    (callers that allow no requests report NO_LATENCIES instead)."""
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}
