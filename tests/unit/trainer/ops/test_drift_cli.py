"""`trainer drift --stats-dir`: the persisted windows against a two-domain reference file."""

import numpy as np

from handlers.drift import DriftSettings
from handlers.features import REFERENCE_FILE, Projection, Reference, feature_matrix, feature_names
from handlers.stats import SUFFIX, FeatureWindow, acknowledged_at
from trainer.__main__ import main
from trainer.ops.drift_cli import from_stats_dir, summary_line

LABELS = ["negative", "positive"]


def domain_rows(rng, domain: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pooled embeddings, probabilities, token counts) of one synthetic domain."""
    x = rng.normal(0, 0.15, size=(n, 16))
    x[:, domain] += 1.0
    p = rng.beta(2 + 4 * domain, 6 - 4 * domain, n)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.column_stack([1 - p, p]), \
        rng.integers(5, 40, n)


def test_stats_dir_is_matched_to_the_served_mix(tmp_path):
    rng = np.random.default_rng(0)
    parts = [domain_rows(rng, d, 300) for d in (0, 1)]
    pooled, probs, tokens = (np.concatenate(c) for c in zip(*parts))
    projection = Projection.fit(pooled, 4)
    reference = Reference(LABELS, feature_names(LABELS, 4), projection,
                          feature_matrix(pooled, probs, tokens, projection), probs.argmax(axis=1),
                          ["nyt", "movie"], np.repeat([0, 1], 300))
    (tmp_path / REFERENCE_FILE).write_bytes(reference.to_bytes())
    window = FeatureWindow(reference.names, 1000)
    served, served_probs, served_tokens = domain_rows(rng, 0, 200)
    window.add(feature_matrix(served, served_probs, served_tokens, projection),
               served_probs.argmax(axis=1).tolist())
    # Written by a worker of a server that has since stopped: offline, it is still read (and
    # kept), though a live server's monitor would expire it.
    window.save(tmp_path / "stats" / f"w1{SUFFIX}", {"capacity": 1000, "worker": "1:0"})
    result = from_stats_dir(tmp_path / "stats", tmp_path, DriftSettings(), 1000)
    assert result["workers"] == 1 and result["requests_seen"] == 200
    assert (tmp_path / "stats" / f"w1{SUFFIX}").exists()
    assert result["reference_domains"] == {"nyt": 300, "movie": 300}
    assert result["served_mix"]["nyt"] > 0.95 and not result["is_drift"], result["fired"]
    line = summary_line(result)
    assert line.startswith("no drift: window 200 requests") and "served mix nyt" in line
    assert not line.endswith(("; —", "; "))  # nothing fired: no reason to append
    # acknowledged: the same stats dir then holds no request from before
    assert main(["drift", "--stats-dir", str(tmp_path / "stats"), "--ack"]) == 0
    assert acknowledged_at(tmp_path / "stats") > 0
    assert from_stats_dir(tmp_path / "stats", tmp_path, DriftSettings(), 1000)["window_size"] == 0


def test_ack_says_what_it_needs(tmp_path, capsys):
    for args, words in ((["--ack"], "--ack needs --model"),
                        (["--ack", "--prometheus", "http://127.0.0.1:9", "--model", "m"],
                         "--ack needs --model"),
                        (["--ack", "--stats-dir", str(tmp_path / "nope")], "no such directory")):
        assert main(["drift", *args]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()
