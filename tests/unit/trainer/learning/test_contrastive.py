"""SetFit-style contrastive stage (`adapt --contrastive-pairs N`): the pairs it draws, the vector
it trains, and a tiny step that runs it before the classification pass."""

import pytest
import torch
import torch.nn.functional as F

from tests.models import tiny_base
from trainer.common.errors import SettingsError
from trainer.data.sources import Example
from trainer.learning.adapt import AdaptSettings, run_adapt
from trainer.learning.contrastive import contrastive_stage, make_pairs, sentence_vectors
from trainer.model.lora import load_classifier

LABELS = ["negative", "neutral", "positive"]


def ex(text: str, label: str, domain: str = "new") -> Example:
    return Example(text, label, domain)


def test_pairs_alternate_same_and_other_class_partners_never_the_anchor_itself():
    anchors = [ex("a1", "negative"), ex("b1", "positive")]
    pool = [*anchors, ex("a2", "negative", "old"), ex("b2", "positive", "old"),
            ex("c1", "neutral", "old")]
    pairs = make_pairs(anchors, pool, per_anchor=6, seed=0)
    assert len(pairs) == 12
    label = {e.text: e.label for e in pool}
    for a, b, y in pairs:
        assert a in {"a1", "b1"} and a != b
        assert (label[a] == label[b]) == (y == 1.0)
    assert sum(y for _, _, y in pairs) == 6  # half of each anchor's pairs are positive
    assert make_pairs(anchors, pool, 6, seed=0) == pairs  # seeded


def test_an_anchor_alone_in_its_class_gets_negatives_only():
    pairs = make_pairs([ex("lonely", "neutral")], [ex("lonely", "neutral"), ex("x", "negative")],
                       per_anchor=4, seed=1)
    assert pairs == [("lonely", "x", 0.0)] * 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_classifier(tiny_base(tmp_path_factory.mktemp("tiny"), dropout=0.0), LABELS,
                           new_head=True)


def test_the_vector_is_what_the_head_reads(tiny):
    model, tokenizer = tiny
    model.eval()
    batch = dict(tokenizer(["good film", "bad film"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        vectors = sentence_vectors(model, model.classifier, batch)
        assert torch.allclose(model.classifier(vectors), model(**batch).logits)


def test_the_stage_pulls_same_class_vectors_together(tiny, tmp_path):
    # A random tiny BERT gives every text almost the same pooled vector, and its word vectors
    # carry no sentiment: a shared word per class is the signal it can learn to separate on.
    model, tokenizer = tiny
    texts = {"positive": ["good", "good film", "so good", "a good day"],
             "negative": ["bad", "bad film", "so bad", "a bad day"]}
    rows = [ex(t, label) for label, ts in texts.items() for t in ts]
    batch = dict(tokenizer([r.text for r in rows], padding=True, return_tensors="pt"))

    def gap(m) -> float:
        """Mean cosine within classes minus across them."""
        m.eval()
        with torch.no_grad():
            v = F.normalize(sentence_vectors(m, m.classifier, batch), dim=-1)
        sim, same = v @ v.T, torch.tensor([[a.label == b.label for b in rows] for a in rows])
        off = ~torch.eye(len(rows), dtype=torch.bool)
        return float(sim[same & off].mean() - sim[~same].mean())

    before = gap(model)
    trained = contrastive_stage(model, tokenizer, make_pairs(rows, rows, 40, 0), lr=5e-3,
                                batch_size=16, max_length=16, seed=0, lora_r=8, lora_alpha=16,
                                lora_dropout=0.0, target_modules=["query", "value", "dense"])
    assert not hasattr(trained, "peft_config")  # merged: a plain classifier again
    assert before < 0.01 and gap(trained) > 0.5


def test_a_step_with_contrastive_pairs_reports_and_pays_for_them(tiny_run, tmp_path):
    tiny = AdaptSettings(epochs=1, min_steps=0, patience=0, batch_size=16, max_length=32,
                         max_train=48, max_eval=24, memory=30)
    plain = run_adapt(tiny, tiny_run, "movie", tmp_path / "plain")
    s = AdaptSettings(**{**tiny.__dict__, "contrastive_pairs": 4})
    report = run_adapt(s, tiny_run, "movie", tmp_path / "v2")
    n_new = report["training_set"]["new"]
    assert report["contrastive"]["pairs"] == 4 * n_new
    assert 0 < report["contrastive"]["same_class"] < report["contrastive"]["pairs"]
    assert report["examples_processed"] == plain["examples_processed"] + 2 * 4 * n_new
    assert plain["contrastive"] is None
    with pytest.raises(SettingsError, match="contrastive_pairs must be >= 0"):
        AdaptSettings(contrastive_pairs=-1).validate()
