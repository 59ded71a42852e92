"""Labelled sentences through the inference API, as evaluation traffic: one pool for `demo`'s
table and `rollout`'s paired gate, so both measure answers and latency the same way."""

import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from trainer.common.errors import ClientError
from trainer.ops.client import TorchServeClient

Answer = tuple[str | None, float]  # (predicted label, or None when the request failed; ms)


def ask_all(client: TorchServeClient, model: str, jobs: Sequence[tuple[str | None, str]],
            concurrency: int) -> list[Answer]:
    """One answer per (version or None for the default, text) job, in input order. Requests
    carry the evaluation header, so they stay out of the drift statistics; a failed request
    is reported and answered None instead of stopping the rest."""
    def one(job: tuple[str | None, str]) -> Answer:
        version, text = job
        start = time.perf_counter()
        try:
            label = client.predict(model, text, version=version, evaluation=True)["label"]
        except ClientError as e:
            print(f"request failed: {e}", file=sys.stderr)
            label = None
        return label, 1000 * (time.perf_counter() - start)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, jobs))
