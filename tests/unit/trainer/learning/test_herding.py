"""Herding picks, baselines, budget split and the replay buffer."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.learning.herding import (
    ReplayBuffer,
    ReplayBufferError,
    herding_order,
    herding_order_reference,
    rank_all_order,
    select,
    split_budget,
    update_buffer,
)


def _data(seed: int, n: int, d: int = 16, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=dtype) + 0.5  # off-centre, like embeddings


@pytest.mark.parametrize(("seed", "n", "m"), [(0, 50, 50), (1, 120, 30), (2, 300, 60), (3, 7, 3)])
def test_vectorised_matches_reference_and_rank_all(seed, n, m):
    x = _data(seed, n)
    ref = herding_order_reference(x, m)
    assert herding_order(x, m).tolist() == ref.tolist()
    assert rank_all_order(x, m).tolist() == ref.tolist()
    assert len(set(ref.tolist())) == m


@pytest.mark.parametrize("seed", [4, 5])
def test_float32_input_matches_reference(seed):
    x = _data(seed, 200, dtype=torch.float32)
    assert herding_order(x, 40).tolist() == herding_order_reference(x, 40).tolist()


def test_picks_minimise_the_icarl_objective_by_hand():
    # Normalised rows: a=(1,0), b=(0,1), c=(1,1)/sqrt2; mu points along (1,1): c is first.
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    assert herding_order(x, 1).tolist() == [2]
    # Then a and b tie exactly by symmetry: the lowest index wins.
    assert herding_order(x, 3).tolist() == [2, 0, 1]


def test_prefix_property_and_clipping():
    x = _data(7, 80)
    full = herding_order(x, 80)
    for m1 in (1, 10, 33):
        assert herding_order(x, m1).tolist() == full[:m1].tolist()
    assert herding_order(x, 500).tolist() == full.tolist()
    assert herding_order(x, 0).numel() == 0


def test_bad_inputs_raise_naming_the_parameter():
    with pytest.raises(ValueError, match="features"):
        herding_order(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="m must"):
        herding_order(torch.zeros(5, 2), -1)
    with pytest.raises(ValueError, match="finite"):
        herding_order(torch.tensor([[float("nan"), 1.0]]), 1)


def _objective(phi: np.ndarray, chosen: list[int], cand: int) -> float:
    mu = phi.mean(axis=0)
    return float(np.linalg.norm(mu - (phi[chosen].sum(axis=0) + phi[cand]) / (len(chosen) + 1)))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 5), m=st.integers(0, 14),
       data=st.data())
def test_every_pick_is_greedy_optimal(rows, cols, m, data):
    values = data.draw(st.lists(st.integers(-3, 3), min_size=rows * cols, max_size=rows * cols))
    x = torch.tensor(values, dtype=torch.float64).reshape(rows, cols)
    order = herding_order(x, m).tolist()
    assert len(order) == min(m, rows) and len(set(order)) == len(order)
    norms = np.maximum(np.linalg.norm(x.numpy(), axis=1, keepdims=True), 1e-12)
    phi = x.numpy() / norms
    for k, pick in enumerate(order):
        rest = [i for i in range(rows) if i not in order[:k]]
        best = min(_objective(phi, order[:k], i) for i in rest)
        assert _objective(phi, order[:k], pick) <= best + 1e-9
    assert order == herding_order(x, rows).tolist()[: len(order)]


@pytest.mark.parametrize("strategy", ["random", "reservoir"])
def test_baselines_are_seeded_and_distinct(strategy):
    x = _data(8, 100)
    a, b = select(strategy, x, 20, seed=3), select(strategy, x, 20, seed=3)
    assert a.tolist() == b.tolist()
    assert len(set(a.tolist())) == 20 and all(0 <= i < 100 for i in a.tolist())
    assert select(strategy, x, 20, seed=4).tolist() != a.tolist()
    assert sorted(select(strategy, x, 500, seed=3).tolist()) == list(range(100))


def test_reservoir_is_roughly_uniform_over_the_stream():
    x = torch.zeros(40, 2)
    hits, prefix_hits = np.zeros(40), np.zeros(40)
    for seed in range(400):
        order = select("reservoir", x, 10, seed).numpy()
        hits[order] += 1
        prefix_hits[order[:3]] += 1
    assert hits.min() > 50 and hits.max() < 150  # expected 100 each; early items not favoured
    assert prefix_hits.min() > 5  # expected 30 each: a shrunk reservoir is still uniform


def test_random_prefix_property_and_unknown_strategy():
    x = _data(9, 60)
    assert select("random", x, 10, 1).tolist() == select("random", x, 30, 1)[:10].tolist()
    assert select("herding", x, 10).tolist() == herding_order(x, 10).tolist()
    with pytest.raises(ValueError, match="herding, random, reservoir"):
        select("kmeans", x, 5)


def test_split_budget_sums_exactly_and_is_even():
    groups = [("nyt", "neg"), ("nyt", "pos"), ("movie", "neg"), ("nyt", "neg"), ("movie", "neu")]
    for total in (0, 1, 7, 100, 101):
        budget = split_budget(total, groups)
        assert sum(budget.values()) == total and len(budget) == 4
        assert max(budget.values()) - min(budget.values()) <= 1
    assert split_budget(7, groups)[("movie", "neg")] == 2  # remainder to the first sorted groups
    assert split_budget(7, groups)[("nyt", "pos")] == 1
    with pytest.raises(ValueError, match="total"):
        split_budget(-1, groups)


def _buffer() -> ReplayBuffer:
    buf = ReplayBuffer()
    buf.add_group(("nyt", "negative"), [{"text": f"n{i}", "label": "negative"} for i in range(6)])
    buf.add_group(("nyt", "positive"), [{"text": f"p{i}", "label": "positive"} for i in range(6)])
    return buf


def test_shrink_keeps_prefixes():
    buf = _buffer()
    before = {g: list(items) for g, items in buf.groups.items()}
    buf.shrink({("nyt", "negative"): 2, ("nyt", "positive"): 4})
    assert buf.groups[("nyt", "negative")] == before[("nyt", "negative")][:2]
    assert buf.groups[("nyt", "positive")] == before[("nyt", "positive")][:4]
    with pytest.raises(ValueError, match="budget"):
        buf.shrink({("nyt", "negative"): 1})


def test_update_buffer_adds_new_groups_and_shrinks_old():
    old = _buffer()
    x = _data(10, 30)
    items = [{"text": f"m{i}", "label": "neutral"} for i in range(30)]
    new = update_buffer(old, {("movie", "neutral"): (items, x)}, total=9, strategy="herding")
    assert new.sizes() == {("nyt", "negative"): 3, ("nyt", "positive"): 3, ("movie", "neutral"): 3}
    assert new.groups[("nyt", "negative")] == old.groups[("nyt", "negative")][:3]
    assert new.groups[("movie", "neutral")] == [items[i] for i in herding_order(x, 3).tolist()]
    assert old.sizes()[("nyt", "negative")] == 6  # input untouched
    # Re-herding an old group with new-model features re-ranks its exemplars.
    feats = _data(11, 6)
    again = update_buffer(old, {}, total=4, regroup_features={("nyt", "positive"): feats})
    want = [old.groups[("nyt", "positive")][i] for i in herding_order(feats, 2).tolist()]
    assert again.groups[("nyt", "positive")] == want
    with pytest.raises(ValueError, match="feature rows"):
        update_buffer(old, {("movie", "neutral"): (items[:5], x)}, total=9)


def test_buffer_save_load_round_trip(tmp_path):
    buf = _buffer()
    path = tmp_path / "replay.json"
    buf.save(path)
    assert ReplayBuffer.load(path) == buf
    assert [p.name for p in tmp_path.iterdir()] == ["replay.json"]  # no temp file left behind
    assert json.loads(path.read_text())["groups"]["nyt|negative"][0]["text"] == "n0"


def test_corrupt_buffer_file_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": 1, "groups": {')
    with pytest.raises(ReplayBufferError, match="broken.json"):
        ReplayBuffer.load(path)
    path.write_text('{"format": 1, "groups": {"nolabel": []}}')
    with pytest.raises(ReplayBufferError, match="broken.json"):
        ReplayBuffer.load(path)
