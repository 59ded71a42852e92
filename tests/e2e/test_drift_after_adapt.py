"""A version's drift reference covers everything it serves, on the real TorchServe: v2 adapted
nyt -> movie (real MiniLM) is quiet on held-out nyt, held-out movie and a 50/50 mix of them, and
raises drift on tweets, a domain it never saw. Each traffic mix goes to its own registration of
the same archive, so every window holds exactly that mix."""

import random
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from trainer.data.reference_texts import read_reference_texts
from trainer.data.sources import load_source
from trainer.learning.adapt import AdaptSettings, run_adapt
from trainer.ops.drift_cli import from_server
from trainer.packaging.archive import ArchiveSettings, build_archive

pytestmark = pytest.mark.e2e
N = 400


@pytest.fixture(scope="module")
def v2_mar(minilm_run, model_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "v2"
    settings = AdaptSettings(epochs=1, min_steps=0, patience=0, max_train=256, max_eval=100,
                             max_length=64)
    run_adapt(settings, minilm_run, "movie", out)
    build_archive(out, "served", "2", model_store, ArchiveSettings(), allow_weak=True)
    return out


def held_out(domain: str) -> list[str]:
    texts = [ex.text for ex in load_source(domain, seed=0)[domain].test]
    random.Random(0).shuffle(texts)
    return texts[:N]


def drift_on(client, name: str, texts: list[str]) -> dict:
    client.register("served.v2.mar", name, workers=1)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda t: client.predict(name, t), texts))
        return from_server(client, name, None)  # describe persists and merges the window first
    finally:
        client.unregister(name)


def test_reference_holds_every_served_domain(v2_mar):
    texts = read_reference_texts(v2_mar)
    assert list(texts) == ["nyt", "movie"]
    assert all(len(t) >= 300 for t in texts.values())  # hundreds per domain, not 64
    for domain, items in texts.items():  # the validation split: rows disjoint from the test's
        assert items == [ex.text for ex in load_source(domain, seed=0)[domain].val][:len(items)]


@pytest.mark.parametrize("mix", ["nyt", "movie", "nyt+movie"])
def test_no_alarm_on_what_v2_serves(client, v2_mar, mix):
    parts = [held_out(d) for d in mix.split("+")]
    texts = [t for pair in zip(*parts) for t in pair][:N] if len(parts) > 1 else parts[0]
    result = drift_on(client, f"served_{mix.replace('+', '_')}", texts)
    assert result["window_size"] == N
    assert result["is_drift"] is False, (mix, result["fired"], result.get("served_mix"))


def test_alarm_on_a_domain_v2_never_saw(client, v2_mar):
    result = drift_on(client, "served_tweets", held_out("tweets"))
    assert result["is_drift"] is True and result["fired"], result
    amazon = drift_on(client, "served_amazon", held_out("amazon"))
    print(f"amazon on v2 (nyt+movie): is_drift={amazon['is_drift']} fired={amazon['fired']}",
          file=sys.stderr)
