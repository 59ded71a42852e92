"""Domain experts behind a text router: each row answered by its domain's expert, the router's
files checked before use, and the runtime serving a routed run dir as adapt scored it."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from handlers.errors import ConfigError
from handlers.routing import (
    NEWEST,
    ROUTER_FILE,
    ROUTER_WEIGHTS,
    RoutedClassifier,
    Router,
    hashed_features,
)
from handlers.runtime import ModelRuntime
from trainer.model.rundir import load_run

TEXTS = ["I loved it.", "A dull, tedious, awful film that never ends.", "It is Tuesday.",
         "The senate passed the bill after a long debate."]


def router(domains, experts, bias, dims=64):
    return Router(domains, dict(zip(domains, experts)), np.zeros((dims, len(domains)), np.float32),
                  np.asarray(bias, np.float32))


def test_router_files_round_trip_and_bad_files_are_named(tmp_path):
    r = Router(["nyt", "movie"], {"nyt": "expert-a.safetensors", "movie": NEWEST},
               np.arange(128, dtype=np.float32).reshape(64, 2), np.array([0.5, -0.5], np.float32))
    for name, data in r.to_files().items():
        (tmp_path / name).write_bytes(data)
    back = Router.load(tmp_path)
    assert back.domains == r.domains and back.experts == r.experts
    assert np.array_equal(back.weights, r.weights) and np.array_equal(back.bias, r.bias)
    meta = {"domains": ["nyt"], "experts": {"nyt": "../x.safetensors"}, "dims": 64}
    (tmp_path / ROUTER_FILE).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="must be a .safetensors file name"):
        Router.load(tmp_path)
    meta = {"domains": ["nyt"], "experts": {"nyt": "a.safetensors"}, "dims": 32}
    (tmp_path / ROUTER_FILE).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="does not match dims 32"):
        Router.load(tmp_path)
    with pytest.raises(ConfigError, match=r"no expert named for domain\(s\) \['movie'\]"):
        Router(["nyt", "movie"], {"nyt": NEWEST}, np.zeros((4, 2)), np.zeros(2))
    with pytest.raises(ConfigError, match="do not fit 2 domains"):
        Router(["nyt", "movie"], {"nyt": NEWEST, "movie": NEWEST}, np.zeros((4, 3)), np.zeros(2))
    assert (tmp_path / ROUTER_WEIGHTS).is_file()


def test_hashed_features_ignore_padding():
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    short, long = hashed_features(ids, mask, dims=1 << 10)
    assert set(short) < set(long) and len(short) == 3 + 2


def test_each_row_is_answered_by_its_domains_expert(tiny_base):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    a = AutoModelForSequenceClassification.from_pretrained(tiny_base).eval()
    b = AutoModelForSequenceClassification.from_pretrained(tiny_base).eval()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want_a, want_b = a(**batch).logits, b(**batch).logits
        assert not torch.allclose(want_a, want_b)
        for bias, want in (([1.0, 0.0], want_a), ([0.0, 1.0], want_b)):
            routed = RoutedClassifier({NEWEST: a, "b.safetensors": b},
                                      router(["x", "y"], [NEWEST, "b.safetensors"], bias))
            assert torch.allclose(routed(**batch).logits, want, atol=1e-5)
        weights = np.random.default_rng(0).normal(size=(1 << 12, 2)).astype(np.float32) * 3
        mixed = RoutedClassifier({NEWEST: a, "b.safetensors": b},
                                 Router(["x", "y"], {"x": NEWEST, "y": "b.safetensors"}, weights,
                                        np.zeros(2, np.float32)))
        out = mixed(**batch, output_hidden_states=True)
        assert set(mixed.last_routes) == {"x", "y"}  # this seed splits the batch
        for i, d in enumerate(mixed.last_routes):
            assert torch.allclose(out.logits[i], (want_a if d == "x" else want_b)[i], atol=1e-5)
        assert out.logits.shape == want_a.shape and len(out.hidden_states) == 3
        assert not mixed.training and not a.training


def test_the_runtime_serves_a_routed_run_as_adapt_scored_it(routed_run, tiny_run):
    served, tok, labels, report = load_run(routed_run)
    assert isinstance(served, RoutedClassifier) and report["routing"]["experts"]["movie"] == NEWEST
    rt = ModelRuntime.load(routed_run)
    assert isinstance(rt.model, RoutedClassifier)
    assert rt.describe()["experts"] == report["routing"]["experts"]
    batch = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        want = torch.softmax(served(**batch).logits, -1)
    assert torch.allclose(rt.probabilities(TEXTS), want, atol=1e-5)
    # rows the router takes for nyt get v1's answers, exactly
    v1 = load_run(tiny_run)[0]
    with torch.no_grad():
        old = v1(**batch).logits
        new = served(**batch).logits
    nyt = [i for i, d in enumerate(served.last_routes) if d == "nyt"]
    assert nyt, served.last_routes  # some rows go to v1: the check below is not vacuous
    assert torch.allclose(new[nyt], old[nyt], atol=1e-5)
