"""The drift reference: features of held-out data of every served domain under the trained model,
plus the projection fitted on them; stored in the run dir (and so in the archive)."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from handlers.calibration import MIN_EXAMPLES, fit_estimators, fit_temperature
from handlers.features import Projection, Reference, feature_matrix, feature_names
from handlers.novelty import DEFAULT_DOMAIN
from handlers.runtime import ModelRuntime, RuntimeSettings
from trainer.common.errors import DataError
from trainer.data.sources import Example


def embed(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int = 128,
          batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, L2-normalised mean-pooled embeddings, token counts), exactly as served."""
    runtime = ModelRuntime(model, tokenizer, RuntimeSettings(max_length=max_length, monitor=False),
                           next(model.parameters()).device)
    parts = [runtime.forward(list(texts[i:i + batch_size]), pooled=True)
             for i in range(0, len(texts), batch_size)]
    return tuple(torch.cat([p[j] for p in parts]).numpy() for j in range(3))


def calibrate(model: Any, tokenizer: Any, examples: Sequence[Example], labels: Sequence[str],
              max_length: int = 128) -> dict[str, Any]:
    """Temperature, then the accuracy estimators' parameters at it (`accuracy_fit`, None when
    too few), on labelled held-out examples (validation), for the served accuracy estimate."""
    if len(examples) < MIN_EXAMPLES:
        return {**fit_temperature(np.zeros((0, len(labels))), np.zeros(0, int)),
                "accuracy_fit": None}
    probs = embed(model, tokenizer, [ex.text for ex in examples], max_length)[0]
    index = {label: i for i, label in enumerate(labels)}
    truth = np.asarray([index[ex.label] for ex in examples])
    fit = fit_temperature(probs, truth)
    return {**fit, "accuracy_fit": fit_estimators(probs, truth, fit["temperature"])}


def build_reference(model: Any, tokenizer: Any, texts: Sequence[str], components: int = 8,
                    max_length: int = 128, domains: Sequence[str] | None = None) -> Reference:
    """`domains[i]` names the served domain of `texts[i]` (None: one domain); the projection is
    fitted on all texts pooled, and each domain is later a reference of its own."""
    if len(texts) < max(2, components):
        raise DataError(f"drift reference needs at least {max(2, components)} held-out texts, "
                         f"got {len(texts)}")
    names, index = domain_index(texts, domains)
    probs, pooled, tokens = embed(model, tokenizer, texts, max_length)
    projection = Projection.fit(pooled, components)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return Reference(labels, feature_names(labels, components), projection,
                     feature_matrix(pooled, probs, tokens, projection),
                     probs.argmax(axis=1).astype(np.int16), names, index)


def domain_index(texts: Sequence[str], domains: Sequence[str] | None
                 ) -> tuple[list[str], np.ndarray]:
    """Domain names in first-seen order and each text's index into them."""
    if domains is None:
        return [DEFAULT_DOMAIN], np.zeros(len(texts), np.int16)
    if len(domains) != len(texts):
        raise DataError(f"drift reference: {len(domains)} domain names for {len(texts)} texts")
    names = list(dict.fromkeys(domains))
    small = {d: n for d in names if (n := list(domains).count(d)) < 2}
    if small:
        raise DataError(f"drift reference: each domain needs >= 2 held-out texts, got {small}")
    lookup = {d: i for i, d in enumerate(names)}
    return names, np.asarray([lookup[d] for d in domains], np.int16)
