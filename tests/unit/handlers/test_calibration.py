"""Temperature scaling and the label-free accuracy estimates on data whose truth is known."""

import numpy as np
import pytest

from handlers.calibration import (
    MIN_EXAMPLES,
    SHIPPED,
    atc_threshold,
    estimated_accuracy,
    fit_estimators,
    fit_temperature,
    score,
    tempered,
)
from handlers.features import REFERENCE_FILE, Reference
from handlers.runtime import ModelRuntime, RuntimeSettings
from trainer.data.sources import load_vader


def overconfident(n: int, sharpen: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the "model" reports softmax(sharpen * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 3))
    true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in true])
    reported = np.exp(sharpen * z) / np.exp(sharpen * z).sum(1, keepdims=True)
    return reported, labels


def test_temperature_undoes_overconfidence_and_the_estimate_tracks_accuracy():
    probs, labels = overconfident(4000, sharpen=3.0)
    fit = fit_temperature(probs, labels)
    assert fit["fitted"] and 2.5 < fit["temperature"] < 3.5
    assert fit["nll_after"] < fit["nll_before"]
    test_probs, test_labels = overconfident(4000, sharpen=3.0, seed=1)
    accuracy = float((test_probs.argmax(1) == test_labels).mean())
    raw = estimated_accuracy(test_probs, 1.0)
    calibrated = estimated_accuracy(test_probs, fit["temperature"])
    assert abs(raw - accuracy) > 0.1  # the overconfident model's own confidence misleads
    assert abs(calibrated - accuracy) < 0.02
    assert np.allclose(tempered(test_probs, 1.0), test_probs, atol=1e-6)


def test_too_few_labels_keep_temperature_one_and_an_empty_window_has_no_estimate():
    probs, labels = overconfident(10, sharpen=3.0)
    assert fit_temperature(probs, labels) == {"temperature": 1.0, "n": 10, "fitted": False}
    assert estimated_accuracy(np.zeros((0, 3)), 2.0) is None


def test_atc_threshold_leaves_validation_accuracy_above_it():
    scores = np.array([0.9, 0.2, 0.6, 0.4, 0.8, 0.1, 0.7, 0.3, 1.0, 0.5])
    assert atc_threshold(scores, 0.7) == pytest.approx(0.35)  # 7 of 10 above: 0.4 .. 1.0
    assert atc_threshold(scores, 0.0) == 1.0 and not (scores > atc_threshold(scores, 0.0)).any()
    assert (scores > atc_threshold(scores, 1.0)).all()


def test_fit_estimators_reproduce_validation_accuracy_on_validation():
    # 20 rows, confidences 0.50 .. 0.975 (two classes); the 4 least confident are wrong: 80 %.
    confidence = np.linspace(0.5, 0.975, 20)
    probs = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.array([1] * 4 + [0] * 16)
    fit = fit_estimators(probs, labels, temperature=1.0)
    assert fit["method"] == SHIPPED and fit["n"] == 20 and fit["val_accuracy"] == 0.8
    assert fit["val_confidence"] == pytest.approx(confidence.mean())
    assert confidence[3] < fit["atc_max_confidence"] < confidence[4]
    for method in ("doc", "atc_max_confidence", "atc_neg_entropy"):
        assert estimated_accuracy(probs, 1.0, fit, method) == pytest.approx(0.8)
    # A shift that makes half of the window less confident than the threshold: ATC sees it.
    shifted = probs.copy()
    shifted[10:] = [0.55, 0.45]
    assert estimated_accuracy(shifted, 1.0, fit, "atc_neg_entropy") == pytest.approx(0.3)
    assert np.all(np.diff(score(probs, "neg_entropy")) > 0)  # same order as max-confidence


def test_without_a_fit_the_estimate_is_the_mean_calibrated_confidence():
    probs, labels = overconfident(200, sharpen=3.0)
    assert estimated_accuracy(probs, 2.0, None) == pytest.approx(
        tempered(probs, 2.0).max(axis=1).mean())
    with pytest.raises(ValueError, match="needs a fit"):
        estimated_accuracy(probs, 2.0, None, "atc_neg_entropy")
    assert fit_estimators(probs[:MIN_EXAMPLES - 1], labels[:MIN_EXAMPLES - 1], 2.0) is None
    assert fit_estimators(probs[:MIN_EXAMPLES], labels[:MIN_EXAMPLES], 2.0) is not None


def test_training_fits_a_temperature_and_serving_reports_the_estimate(tiny_run, tmp_path):
    import json

    report = json.loads((tiny_run / "report.json").read_text())
    reference = Reference.load(tiny_run / REFERENCE_FILE)
    assert report["calibration"]["n"] > 0
    assert reference.temperature == report["calibration"]["temperature"]
    assert reference.accuracy_fit == report["calibration"]["accuracy_fit"]
    assert reference.accuracy_fit["method"] == SHIPPED
    rt = ModelRuntime.load(tiny_run, settings=RuntimeSettings(stats_dir=str(tmp_path)))
    texts = [e.text for e in load_vader("nyt")[:30]]
    probs = rt.probabilities(texts).numpy()
    rt.predict(texts)
    stats = rt.describe()["stats"]
    expected = estimated_accuracy(probs, reference.temperature, reference.accuracy_fit)
    assert abs(stats["estimated_accuracy"] - expected) < 1e-3
    assert stats["estimator"] == SHIPPED
    assert stats["temperature"] == reference.temperature
    rt.monitor.close()
