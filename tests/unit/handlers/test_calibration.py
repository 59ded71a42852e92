"""Temperature scaling and the label-free accuracy estimate on data whose truth is known."""

import numpy as np

from handlers.calibration import estimated_accuracy, fit_temperature, tempered
from handlers.features import REFERENCE_FILE, Reference
from handlers.runtime import ModelRuntime, RuntimeSettings
from trainer.data import load_vader


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


def test_training_fits_a_temperature_and_serving_reports_the_estimate(tiny_run, tmp_path):
    import json

    report = json.loads((tiny_run / "report.json").read_text())
    reference = Reference.load(tiny_run / REFERENCE_FILE)
    assert report["calibration"]["n"] > 0
    assert reference.temperature == report["calibration"]["temperature"]
    rt = ModelRuntime.load(tiny_run, settings=RuntimeSettings(stats_dir=str(tmp_path)))
    texts = [e.text for e in load_vader("nyt")[:30]]
    probs = rt.probabilities(texts).numpy()
    rt.predict(texts)
    stats = rt.describe()["stats"]
    expected = estimated_accuracy(probs, reference.temperature)
    assert abs(stats["estimated_accuracy"] - expected) < 1e-3
    assert stats["temperature"] == reference.temperature
    rt.monitor.close()
