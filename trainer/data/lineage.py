"""Test-split lineage (record, rebuild, check) shared by train, adapt, rollout, evaluate and benches."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.common.errors import DataError
from trainer.data.sources import DOMAINS, Example, fingerprint
from trainer.data.splits import rebuild_test


def source_record(source: str, seed: int, label_threshold: float, max_eval: int,
                  test: Sequence[Example], how: dict[str, Any] | None = None) -> dict[str, Any]:
    """How to rebuild one domain's test split later; file sources are stored as absolute paths.
    `how` (trainer.data.splits) says whether the test split is a share of the source or a whole file."""
    path = source if source in DOMAINS else str(Path(source).resolve())
    return {"source": path, "seed": seed, "label_threshold": label_threshold,
            "max_eval": max_eval, **(how or {}), "test_sha256": fingerprint(test)}


def cap(examples: list[Example], limit: int) -> list[Example]:
    return examples[:limit] if limit else examples


def test_splits(sources: Mapping[str, Mapping[str, Any]],
                labels: Sequence[str]) -> dict[str, list[Example]]:
    """Rebuild each recorded domain's test split; stop if one is empty or no longer the same."""
    out: dict[str, list[Example]] = {}
    loaded: dict = {}
    for domain, rec in sources.items():
        test = rebuild_test(rec, domain, rec["seed"], rec["label_threshold"], tuple(labels),
                            loaded)
        if test is None:
            raise DataError(f"domain {domain!r} is no longer in {rec['source']}")
        test = cap(test, rec.get("max_eval", 0))
        if not test:
            raise DataError(f"domain {domain!r} has an empty test split")
        if "test_sha256" in rec and fingerprint(test) != rec["test_sha256"]:
            raise DataError(f"domain {domain!r}: the test split built from {rec['source']} "
                            f"differs from the one earlier steps were scored on (data changed?)")
        out[domain] = test
    return out
