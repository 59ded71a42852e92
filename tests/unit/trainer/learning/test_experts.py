"""adapt --route: what the router learns from, which expert answers each domain down a chain,
and a router that tells domains apart on texts it never saw."""

import hashlib

from handlers.routing import NEWEST, Router
from trainer.data.reference_texts import distil_half
from trainer.data.sources import Example, load_source
from trainer.learning.adapt import AdaptSettings, run_adapt
from trainer.learning.experts import (
    fit_router,
    read_router_texts,
    routed_share,
    router_texts,
    routing_plan,
)
from trainer.model.lora import load_classifier


def test_router_texts_hold_no_test_text_and_only_the_gates_other_half():
    held = {"nyt": [f"nyt held {i}" for i in range(40)], "movie": ["movie test text"]}
    replay = [Example("nyt exemplar", "neutral", "nyt")]
    got = router_texts(held, replay, ["nyt"], "movie", [Example("movie train", "positive", "movie")],
                       ["movie unlabelled", "movie test text"], tests={"movie test text"})
    assert got["movie"] == ["movie train", "movie unlabelled"]  # not the held-out (test) texts
    assert got["nyt"][0] == "nyt exemplar"
    assert got["nyt"][1:] == [t for t in held["nyt"] if distil_half(t)] and 5 < len(got["nyt"]) < 40
    # texts a parent's router learnt come first, still never a test text
    carried = {"nyt": ["nyt carried", "movie test text"], "tweets": ["not seen"]}
    again = router_texts(held, replay, ["nyt"], "movie", [], ["movie unlabelled"],
                         tests={"movie test text"}, carried=carried)
    assert again["nyt"][:2] == ["nyt carried", "nyt exemplar"] and "tweets" not in again


def test_router_tells_domains_apart_on_unseen_texts(tiny_base):
    _, tok = load_classifier(tiny_base, ["a", "b"])
    nyt, tweets = (load_source(d, 0)[d] for d in ("nyt", "tweets"))
    r = fit_router(tok, {"nyt": [e.text for e in nyt.train[:300]],
                         "tweets": [e.text for e in tweets.train[:300]]},
                   {"nyt": "old.safetensors", "tweets": NEWEST}, max_length=64, seed=0)
    share = routed_share(r, tok, {"nyt": [e.text for e in nyt.test[:200]],
                                  "tweets": [e.text for e in tweets.test[:200]]}, 64)
    assert share["nyt"] > 0.85 and share["tweets"] > 0.85, share


def test_a_chain_keeps_each_domains_own_version(routed_run, tmp_path):
    v3 = tmp_path / "v3"
    run_adapt(AdaptSettings(epochs=1, min_steps=0, patience=0, batch_size=16, max_length=32,
                            max_train=64, max_eval=40, memory=30), routed_run, "amazon", v3)
    v2_router, v3_router = Router.load(routed_run), Router.load(v3)
    v2_own = f"expert-{hashlib.sha256((routed_run / NEWEST).read_bytes()).hexdigest()[:12]}"
    assert v3_router.experts == {"nyt": v2_router.experts["nyt"], "movie": v2_own + ".safetensors",
                                 "amazon": NEWEST}
    v1_file = v2_router.experts["nyt"]
    assert (v3 / v1_file).read_bytes() == (routed_run / v1_file).read_bytes()
    assert set(v3_router.domains) == {"nyt", "movie", "amazon"}
    v2_learnt, v3_learnt = read_router_texts(routed_run), read_router_texts(v3)
    assert v2_learnt["movie"] and set(v2_learnt["movie"]) <= set(v3_learnt["movie"])


def test_routing_is_skipped_loudly_when_no_old_domain_has_texts(capsys):
    texts = {"movie": ["a movie text"]}
    assert routing_plan(True, texts, ["nyt", "movie"], "movie") == {}
    assert "no texts of old domain(s) ['nyt']" in capsys.readouterr().err
    two = {"nyt": ["a"], "amazon": ["c"]}
    assert routing_plan(True, two, ["nyt", "tweets", "amazon"], "amazon") == two
    err = capsys.readouterr().err
    assert "['tweets']" in err and "whichever domain's version" in err
    assert routing_plan(False, two, ["nyt"], "amazon") == {}
