"""Per-request drift features: a fitted low-dimensional view of the pooled sentence embedding,
the softmax outputs (they catch label shift), the confidence and the token length."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    """What the traffic is compared with: stored in the run dir and the archive."""

    labels: list[str]
    names: list[str]
    projection: Projection
    features: np.ndarray  # (n, len(names)) on held-out source data
    classes: np.ndarray  # (n,) predicted class index

    def as_test_input(self) -> dict[str, Any]:
        return {"labels": self.labels, "classes": self.classes.tolist(),
                "features": {n: self.features[:, i].tolist() for i, n in enumerate(self.names)}}

    def to_bytes(self) -> bytes:
        return json.dumps({
            "labels": self.labels, "names": self.names, "projection": self.projection.to_json(),
            "features": np.round(self.features, 6).tolist(), "classes": self.classes.tolist(),
        }).encode()

    @classmethod
    def load(cls, path: Path) -> "Reference":
        raw = json.loads(Path(path).read_text())
        return cls(raw["labels"], raw["names"], Projection.from_json(raw["projection"]),
                   np.asarray(raw["features"], np.float32), np.asarray(raw["classes"], np.int16))
