"""build_reference on a real (tiny) model: every served domain's texts, one projection."""

import numpy as np
import pytest

from handlers.calibration import MIN_EXAMPLES, SHIPPED
from handlers.drift import DriftSettings, drift_test
from handlers.features import Reference
from trainer.data.reference import build_reference, calibrate
from trainer.data.sources import load_vader
from trainer.model.lora import load_classifier

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_base):
    model, tokenizer = load_classifier(tiny_base, LABELS, new_head=True)
    return model.eval(), tokenizer


def test_two_domains_build_round_trip_and_test(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    texts = [e.text for e in load_vader("nyt")[:40]] + [e.text for e in load_vader("movie")[:30]]
    domains = ["nyt"] * 40 + ["movie"] * 30
    ref = build_reference(model, tokenizer, texts, components=4, max_length=32, domains=domains)
    assert ref.domains == ["nyt", "movie"] and ref.domain_sizes() == {"nyt": 40, "movie": 30}
    assert ref.names[:4] == ["pc1", "pc2", "pc3", "pc4"] and len(ref.features) == 70
    (tmp_path / "ref.json").write_bytes(ref.to_bytes())
    loaded = Reference.load(tmp_path / "ref.json")
    assert loaded.domains == ref.domains and loaded.domain_index.tolist() == [0] * 40 + [1] * 30
    np.testing.assert_allclose(loaded.features, ref.features, atol=1e-5)
    window = {"classes": loaded.classes,
              "features": {n: loaded.features[:, i] for i, n in enumerate(loaded.names)}}
    result = drift_test(loaded.as_test_input(), window, DriftSettings())
    assert result["mixture_matched"] and set(result["served_mix"]) == {"nyt", "movie"}
    assert "novelty" in [t["test"] for t in result["tests"]]


def test_no_domains_is_one_source_domain(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ref = build_reference(model, tokenizer, ["good", "bad", "fine", "awful"], components=2,
                          max_length=16)
    assert ref.domains == ["source"] and ref.domain_index.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("domains, problem", [(["a", "b", "b"], "3 domain names for 4"),
                                              (["a", "b", "b", "b"], "'a': 1")])
def test_bad_domain_lists_are_refused(model_and_tokenizer, domains, problem):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match=problem):
        build_reference(model, tokenizer, ["good", "bad", "fine", "awful"], components=2,
                        max_length=16, domains=domains)


def test_calibrate_fits_the_estimators_only_with_enough_labels(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    examples = load_vader("nyt")[:MIN_EXAMPLES]
    few = calibrate(model, tokenizer, examples[:-1], LABELS, max_length=32)
    assert not few["fitted"] and few["accuracy_fit"] is None
    enough = calibrate(model, tokenizer, examples, LABELS, max_length=32)
    assert enough["fitted"] and enough["accuracy_fit"]["method"] == SHIPPED
    assert enough["accuracy_fit"]["n"] == MIN_EXAMPLES
