"""Per-request drift features: a fitted low-dimensional view of the pooled sentence embedding,
the softmax outputs (they catch label shift), the confidence and the token length."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from handlers.errors import ConfigError
from handlers.mixture import novelty_model
from handlers.novelty import DEFAULT_DOMAIN

REFERENCE_FILE = "drift_reference.json"


@dataclass
class Projection:
    """Principal components of held-out source embeddings, fitted at train time."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d)

    @classmethod
    def fit(cls, embeddings: np.ndarray, k: int) -> "Projection":
        x = np.asarray(embeddings, dtype=np.float64)
        mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        return cls(mean.astype(np.float32), vt[:k].astype(np.float32))

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        return (np.asarray(embeddings, dtype=np.float32) - self.mean) @ self.components.T

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "components": self.components.tolist()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Projection":
        return cls(np.asarray(raw["mean"], np.float32), np.asarray(raw["components"], np.float32))


def feature_names(labels: list[str], k: int) -> list[str]:
    return [f"pc{i + 1}" for i in range(k)] + [f"p_{label}" for label in labels] + \
        ["confidence", "tokens"]


def feature_matrix(pooled: np.ndarray, probs: np.ndarray, tokens: np.ndarray,
                   projection: Projection) -> np.ndarray:
    """One row per request, columns in `feature_names` order."""
    probs = np.asarray(probs, dtype=np.float32)
    return np.concatenate([
        projection.apply(pooled), probs, probs.max(axis=1, keepdims=True),
        np.asarray(tokens, dtype=np.float32)[:, None],
    ], axis=1)


@dataclass
class Reference:
    """What the traffic is compared with: stored in the run dir and the archive. It holds
    held-out rows of every domain the version serves; `domain_index` names each row's domain."""

    labels: list[str]
    names: list[str]
    projection: Projection
    features: np.ndarray  # (n, len(names)) on held-out data of the served domains
    classes: np.ndarray  # (n,) predicted class index
    domains: list[str] = field(default_factory=lambda: [DEFAULT_DOMAIN])
    domain_index: np.ndarray | None = None  # (n,) row -> index into domains; None = all domain 0
    temperature: float = 1.0  # fitted on validation at train time (handlers.calibration)
    accuracy_fit: dict[str, Any] | None = None  # calibration.fit_estimators; None: `confidence`

    def __post_init__(self) -> None:
        if self.domain_index is None:
            self.domain_index = np.zeros(len(self.classes), np.int16)
        self.domain_index = np.asarray(self.domain_index, np.int16)
        problems = []
        if not self.domains or len(set(self.domains)) != len(self.domains):
            problems.append(f"domains must be distinct names, got {self.domains}")
        if self.domain_index.shape != (len(self.classes),):
            problems.append(f"domain_index has shape {self.domain_index.shape}, expected "
                            f"({len(self.classes)},)")
        elif np.any((self.domain_index < 0) | (self.domain_index >= len(self.domains))):
            problems.append(f"domain_index values must be in [0, {len(self.domains)})")
        if problems:
            raise ConfigError("drift reference: " + "; ".join(problems))

    def domain_sizes(self) -> dict[str, int]:
        counts = np.bincount(self.domain_index, minlength=len(self.domains))
        return {d: int(c) for d, c in zip(self.domains, counts)}

    def as_test_input(self) -> dict[str, Any]:
        """The dict drift_test takes; with several domains the novelty calibration is fitted
        here, once, not on every check."""
        data = {"labels": self.labels, "classes": self.classes, "domains": self.domains,
                "features": {n: self.features[:, i] for i, n in enumerate(self.names)},
                "domain_index": self.domain_index}
        data["novelty"] = novelty_model(data) if len(self.domains) > 1 else None
        return data

    def to_bytes(self) -> bytes:
        return json.dumps({
            "labels": self.labels, "names": self.names, "projection": self.projection.to_json(),
            "features": np.round(self.features, 6).tolist(), "classes": self.classes.tolist(),
            "domains": self.domains, "domain_index": self.domain_index.tolist(),
            "temperature": self.temperature, "accuracy_fit": self.accuracy_fit,
        }).encode()

    @classmethod
    def load(cls, path: Path) -> "Reference":
        return cls.from_bytes(Path(path).read_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "Reference":
        """A file written before domains were stored loads as one domain, DEFAULT_DOMAIN; one
        written before estimators were stored has no accuracy_fit (the monitor then reports the
        mean calibrated confidence)."""
        raw = json.loads(data)
        domains = raw["domains"] if "domains" in raw else [DEFAULT_DOMAIN]
        index = raw["domain_index"] if "domain_index" in raw else None
        return cls(raw["labels"], raw["names"], Projection.from_json(raw["projection"]),
                   np.asarray(raw["features"], np.float32), np.asarray(raw["classes"], np.int16),
                   list(domains), index, float(raw.get("temperature", 1.0)),
                   raw.get("accuracy_fit"))
