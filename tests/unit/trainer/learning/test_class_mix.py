"""Replay scaled to the class mix each old domain was learnt with: the arithmetic, the loss it
feeds, and the mix a run dir records and the next step uses."""

import json

import pytest
import torch
import torch.nn.functional as F

from trainer.common.errors import SettingsError
from trainer.data.sources import Example
from trainer.learning.adapt import AdaptSettings, new_domain, run_adapt
from trainer.learning.balance import effective_number_weights
from trainer.learning.class_mix import learnt_mix, replay_scale
from trainer.learning.fit import shard_loss
from trainer.learning.replay_buffer import read_buffer

LABELS = ["negative", "neutral", "positive"]


def rows(domain: str, counts: dict[str, int]) -> list[Example]:
    return [Example(f"{domain} {label} {i}", label, domain)
            for label, n in counts.items() for i in range(n)]


def test_learnt_mix_is_counts_times_class_weights_per_domain():
    examples = rows("a", {"negative": 30, "neutral": 60, "positive": 10}) + \
        rows("b", {"negative": 5, "neutral": 0, "positive": 15})
    assert learnt_mix(examples, LABELS, None) == {
        "a": {"negative": 0.3, "neutral": 0.6, "positive": 0.1},
        "b": {"negative": 0.25, "neutral": 0.0, "positive": 0.75}}
    weighted = learnt_mix(examples, LABELS, torch.tensor([1.0, 0.5, 2.0]))["a"]
    assert weighted == pytest.approx({"negative": 30 / 80, "neutral": 30 / 80,
                                      "positive": 20 / 80}, abs=1e-6)


def test_replay_scale_gives_each_domain_its_learnt_mix_and_keeps_its_weight():
    replay = rows("a", {"negative": 10, "neutral": 10, "positive": 10}) + \
        rows("b", {"negative": 4, "positive": 4})
    new = rows("new", {"negative": 3, "neutral": 1, "positive": 5})
    mix = {"a": {"negative": 0.3, "neutral": 0.5, "positive": 0.2}}  # b has no recorded mix
    weights = torch.tensor([0.8, 1.5, 0.7])
    scale = replay_scale(replay + new, len(replay), mix, LABELS, weights)
    assert len(scale) == len(replay) + len(new)
    assert scale[len(replay):] == [1.0] * len(new) and scale[30:38] == [1.0] * 8
    w = {label: float(weights[i]) for i, label in enumerate(LABELS)}
    mass = {label: sum(s * w[ex.label] for s, ex in zip(scale, replay) if ex.domain == "a"
                       and ex.label == label) for label in LABELS}
    total = sum(mass.values())
    assert total == pytest.approx(sum(10 * w[label] for label in LABELS))  # unchanged
    assert {k: v / total for k, v in mass.items()} == pytest.approx(mix["a"])


def test_replay_scale_renormalises_over_the_classes_the_buffer_holds():
    replay = rows("a", {"negative": 5, "positive": 5})
    scale = replay_scale(replay, len(replay), {"a": {"negative": 0.2, "neutral": 0.6,
                                                     "positive": 0.2}}, LABELS, None)
    assert scale == [1.0] * 10


def test_shard_loss_weighs_each_row_by_class_weight_times_scale():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 1, -1, 0])
    weights, scale = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.0, 0.5, 2.0, 1.0, 3.0, 0.25])
    keep = targets >= 0
    w = weights[targets[keep]] * scale[keep]
    expected = (F.cross_entropy(logits[keep], targets[keep], reduction="none") * w).sum() / w.sum()
    got = shard_loss(logits, targets, targets, weights, 1, scale=scale, batch_scale=scale)
    assert got == pytest.approx(float(expected))
    plain = shard_loss(logits, targets, targets, weights, 1)
    assert plain == pytest.approx(float(F.cross_entropy(logits[keep], targets[keep],
                                                        weight=weights)))


def test_a_step_scales_its_replay_to_the_mix_v1_recorded(tiny_run, tmp_path):
    v1 = json.loads((tiny_run / "report.json").read_text())
    buffer = read_buffer(tiny_run).items()
    counts = [sum(ex.label == label for ex in buffer) for label in LABELS]
    assert set(v1["class_mix"]) == {"nyt"}
    assert sum(v1["class_mix"]["nyt"].values()) == pytest.approx(1.0, abs=1e-5)
    s = AdaptSettings(epochs=1, min_steps=0, patience=0, batch_size=16, max_length=32,
                      max_train=48, max_eval=24, memory=30, replay_mix="learnt")
    v2 = run_adapt(s, tiny_run, "movie", tmp_path / "v2")
    assert v2["replay_scaled_to"] == v1["class_mix"] and min(counts) > 0
    movie = new_domain("movie", s, LABELS, ["nyt"]).train  # what the step learnt movie from
    assert v2["class_mix"] == {"nyt": v1["class_mix"]["nyt"],  # what nyt was learnt with, kept
                               **learnt_mix(movie, LABELS, v2["class_weights"])}
    plain = run_adapt(AdaptSettings(**{**s.__dict__, "replay_mix": "buffer"}), tiny_run, "movie",
                      tmp_path / "v2-buffer")  # the default (bench/results/distill-sweep.md)
    assert plain["replay_scaled_to"] is None and plain["class_mix"] == v2["class_mix"]
    assert AdaptSettings().replay_mix == "buffer"
    with pytest.raises(SettingsError, match="replay_mix must be one of learnt, buffer"):
        AdaptSettings(replay_mix="natural").validate()


def test_effective_number_weights_make_a_majority_class_carry_less_than_its_count():
    """Why the mix is counts x weights: nyt's 46 % neutral train split is learnt as ~40 %."""
    counts = [1182, 1682, 770]
    w = effective_number_weights(counts, 0.999)
    mix = learnt_mix([Example(str(i), LABELS[c], "nyt") for c, n in enumerate(counts)
                      for i in range(n)], LABELS, w)["nyt"]
    assert mix["neutral"] < 1682 / sum(counts) and mix["positive"] > 770 / sum(counts)
