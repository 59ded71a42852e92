"""The rollout gate: the paired decision and the disagreement evidence, on answers whose
difference is known exactly."""

import numpy as np
import pytest
from scipy.stats import binomtest

from trainer.ops.gate import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    better,
    clopper_pearson,
    disagreement,
    needed,
    not_worse,
    not_worse_by_disagreement,
    paired,
    texts_for_counts,
    texts_to_settle,
    verdict,
)
from trainer.ops.gate_evidence import Answers, judge
from trainer.ops.rollout import GateSettings


def answers(n: int, both: int, old_only: int, new_only: int) -> tuple[list[bool], list[bool]]:
    """n sentences: `both` right for both, `old_only` / `new_only` right for one, rest wrong."""
    old = [True] * both + [True] * old_only + [False] * new_only
    new = [True] * both + [False] * old_only + [True] * new_only
    rest = n - len(old)
    return old + [False] * rest, new + [False] * rest


def test_identical_answers_give_a_zero_width_interval():
    old, new = answers(200, 120, 0, 0)
    p = paired(old, new, 0.95)
    assert (p.diff, p.low, p.high, p.sd) == (0.0, 0.0, 0.0, 0.0)
    assert not_worse(p, 0.02) == PASS and better(p, -0.01) == PASS and better(p, 0.0) == FAIL


def test_interval_matches_the_paired_normal_approximation():
    old, new = answers(400, 200, 30, 50)  # +20 of 400 = +5 points, 80 discordant
    p = paired(old, new, 0.95)
    assert p.diff == pytest.approx(0.05)
    sd = (80 / 400 - 0.05 ** 2) ** 0.5
    assert p.high - p.diff == pytest.approx(1.6449 * sd / 400 ** 0.5, rel=1e-3)
    assert p.low > 0 and better(p, 0.0) == PASS


def test_a_small_holdout_is_inconclusive_and_names_the_size_that_settles_it():
    old, new = answers(100, 60, 8, 7)  # -1 point on 100 sentences: can't tell vs a 2-point margin
    p = paired(old, new, 0.95)
    assert not_worse(p, 0.02) == INCONCLUSIVE
    n = needed(p, -0.02, 0.95)
    # at that size an interval of this spread clears the margin
    big_old, big_new = (x * (n // 100 + 1) for x in (old, new))
    assert not_worse(paired(big_old, big_new, 0.95), 0.02) == PASS
    assert needed(paired(*answers(100, 60, 5, 3), 0.95), -0.02, 0.95) is None  # on the bound


def test_clear_losses_fail_and_gains_pass():
    assert not_worse(paired(*answers(500, 200, 60, 5), 0.95), 0.02) == FAIL  # -11 points
    assert better(paired(*answers(500, 200, 5, 60), 0.95), 0.0) == PASS
    assert better(paired(*answers(500, 200, 60, 5), 0.95), 0.0) == FAIL
    assert verdict([PASS, INCONCLUSIVE]) == INCONCLUSIVE and verdict([INCONCLUSIVE, FAIL]) == FAIL
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        paired([True], [True, False], 0.95)


def test_clopper_pearson_bounds_are_the_exact_binomial_ones():
    # one-sided 95 % bounds are the ends of the two-sided 90 % exact interval
    for k, n in ((0, 100), (3, 1278), (40, 1278), (50, 50)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact")
        low, high = clopper_pearson(k, n, 0.95)
        assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert clopper_pearson(0, 100, 0.95)[1] == pytest.approx(1 - 0.05 ** (1 / 100))


def test_disagreement_bound_arithmetic():
    # 10 of 1278 texts disagree, no labels: the change lies within +-share, the share bounded
    # at 97.5 % (the error rate is split between the share and the labelled estimate)
    d = disagreement(1278, 10, [], [], 0.95)
    assert d.share_high == pytest.approx(clopper_pearson(10, 1278, 0.975)[1])
    assert d.change is None and (d.low, d.high) == pytest.approx((-d.share_high, d.share_high))
    assert not_worse_by_disagreement(d, 0.02) == PASS  # 1.4 % at most: proves a 2-point rule
    # 60 disagreements, all labelled: new right on 20, old right on 30, both wrong on 10
    diffs = [1] * 20 + [-1] * 30 + [0] * 10
    d = disagreement(1278, 60, diffs, [1.0] * 60, 0.95)
    mean = -10 / 1278
    sd = (50 / 1278 - mean ** 2) ** 0.5
    half = 1.959964 * sd / 1278 ** 0.5
    assert d.change == pytest.approx(mean)
    assert (d.low, d.high) == pytest.approx((mean - half, mean + half), rel=1e-5)
    # 30 of 60 labelled at random: each stands for two, the same estimate, a wider interval
    half_sample = disagreement(1278, 60, [1] * 10 + [-1] * 15 + [0] * 5, [2.0] * 30, 0.95)
    assert half_sample.change == pytest.approx(mean)
    assert half_sample.high - half_sample.low > d.high - d.low
    # the share's bound still holds: a wide labelled interval is cut to +-share_high
    wide = disagreement(100, 25, [-1] * 20 + [1] * 5, [1.0] * 25, 0.95)
    assert wide.low >= -wide.share_high - 1e-12
    with pytest.raises(ValueError, match="inconsistent evidence"):
        disagreement(100, 5, [1] * 6, [1.0] * 6, 0.95)  # more labels than disagreements


def test_disagreement_rule_truth_table():
    def rule(texts, disagree, new_right, old_right, labelled):
        diffs = [1] * new_right + [-1] * old_right + [0] * (labelled - new_right - old_right)
        return not_worse_by_disagreement(
            disagreement(texts, disagree, diffs, [1.0] * labelled, 0.95), 0.02)
    assert rule(1278, 10, 0, 0, 0) == PASS  # rare disagreement: no labels needed
    assert rule(1278, 115, 0, 0, 0) == INCONCLUSIVE  # frequent, unlabelled: never FAIL
    assert rule(1278, 115, 0, 0, 10) == INCONCLUSIVE  # too few labels to bound the estimate
    assert rule(1278, 60, 30, 20, 60) == PASS  # the new version is right more often
    assert rule(1278, 300, 20, 200, 300) == FAIL  # right -> wrong on most disagreements
    d = disagreement(1278, 115, [1] * 40 + [-1] * 60 + [0] * 15, [1.0] * 115, 0.95)  # -1.6
    assert not_worse_by_disagreement(d, 0.02) == INCONCLUSIVE
    n = texts_to_settle(d, 0.02, 0.95)
    assert n > 1278  # at that size an estimate of this spread clears the margin
    assert texts_to_settle(disagreement(1278, 300, [-1] * 300, [1.0] * 300, 0.95), 0.02,
                           0.95) is None


def domain(texts, labels, old, new, labelled):
    n = len(texts)
    return Answers(list(texts), list(labels[:labelled]) + [None] * (n - labelled), list(old),
                   list(new), [10.0] * n, [10.0] * n, labelled)


def test_judge_uses_disagreement_evidence_and_asks_labels_only_where_needed():
    g = GateSettings(max_labels=50)
    texts = [f"t{i}" for i in range(1000)]
    truth = ["pos" if i % 2 else "neg" for i in range(1000)]
    # nyt: 200 labelled, 800 unlabelled; the versions disagree on 8 texts of 1000 -> PASS alone
    same = list(truth)
    changed = list(truth)
    for i in range(0, 800, 100):
        changed[i] = "neu"
    movie_old, movie_new = answers(300, 100, 5, 80)
    movie = domain([f"m{i}" for i in range(300)], ["pos"] * 300,
                   ["pos" if x else "neg" for x in movie_old],
                   ["pos" if x else "neg" for x in movie_new], 300)
    asked = []

    def labeller(d, ts):
        asked.append((d, len(ts)))
        return {t: truth[int(t[1:])] for t in ts}

    out = judge({"nyt": domain(texts, truth, same, changed, 200), "movie": movie}, "movie", g,
                labeller)
    assert out["outcome"] == PASS, out["rules"]
    assert out["rules"][0].startswith("PASS nyt (old)") and "no labels needed" in out["rules"][0]
    assert asked == [] and out["labels_asked"] == {}
    assert out["rules"][1].startswith("PASS movie (new)") and "paired labelled test" in out["rules"][1]
    # 12 % disagree: the share alone cannot settle it; the labeller is asked at most 50 texts
    for i in range(0, 1000, 8):
        changed[i] = truth[i]  # new right where old is made wrong
    old_wrong = ["neu" if i % 8 == 0 else t for i, t in enumerate(truth)]
    out = judge({"nyt": domain(texts, truth, old_wrong, changed, 200), "movie": movie}, "movie",
                g, labeller)
    assert asked and asked[0][1] <= 50 and out["labels_answered"]["nyt"] == asked[0][1]
    assert out["outcome"] == PASS and "answered by the labeller" in out["rules"][0], out["rules"]
    # the same, the other way round (old right, new wrong), is not promoted
    out = judge({"nyt": domain(texts, truth, changed, old_wrong, 200), "movie": movie}, "movie",
                g, labeller)
    assert out["outcome"] == FAIL and out["rules"][0].startswith("FAIL nyt (old)"), out["rules"]
    assert out["churn"]["nyt"]["test"]["negative_flip_rate"] > 0.1
    # without a labeller, and too few labelled disagreements in the test split (13 < 20), the
    # gate cannot decide, and says which texts to label
    out = judge({"nyt": domain(texts, truth, old_wrong, changed, 100), "movie": movie}, "movie",
                g, None)
    assert out["outcome"] == INCONCLUSIVE and len(out["to_label"]["nyt"]) == 50


def test_a_domain_without_held_out_texts_falls_back_to_the_paired_test():
    g = GateSettings()
    same_old, same_new = answers(300, 200, 0, 0)
    lab = lambda xs: ["pos" if x else "neg" for x in xs]  # noqa: E731
    nyt = domain([f"n{i}" for i in range(300)], ["pos"] * 300, lab(same_old), lab(same_new), 300)
    gain_old, gain_new = answers(300, 100, 5, 80)
    movie = domain([f"m{i}" for i in range(300)], ["pos"] * 300, lab(gain_old), lab(gain_new), 300)
    out = judge({"nyt": nyt, "movie": movie}, "movie", g, None)
    assert out["outcome"] == PASS and "paired labelled test" in out["rules"][0], out["rules"]
    # p95 relative to the default measured in the same gate: 1.5 x 10 + 20 = 35 ms
    movie.new_ms = [36.0] * 300
    out = judge({"nyt": nyt, "movie": movie}, "movie", g, None)
    assert out["outcome"] == FAIL and out["rules"][-1].startswith("FAIL p95 36.0 ms")
    small_old, small_new = answers(60, 40, 3, 2)
    nyt = domain([f"n{i}" for i in range(60)], ["pos"] * 60, lab(small_old), lab(small_new), 60)
    movie.new_ms = [10.0] * 300
    out = judge({"nyt": nyt, "movie": movie}, "movie", g, None)
    assert out["outcome"] == INCONCLUSIVE and "labelled sentences would settle it" in out["rules"][0]


def test_an_equal_candidate_needs_texts_not_labels_and_traffic_supplies_them():
    """A candidate that changes 9 % of an old domain's answers and is right on exactly half of
    those (it keeps the domain's accuracy): with every disagreement labelled, 260 texts (a test
    split and held-out texts) cannot bound a 2-point loss, and the gate names the number of
    texts that would; with the traffic served before the drift added (1,000 texts) it can."""
    def old_domain(n):
        texts, truth = [f"r{i}" for i in range(n)], ["pos"] * n
        old, new = list(truth), list(truth)
        for j, i in enumerate(range(0, n, 11)):
            (old if j % 2 == 0 else new)[i] = "neg"
        return domain(texts, truth, old, new, 200)

    gain_old, gain_new = answers(200, 100, 5, 80)
    lab = lambda xs: ["pos" if x else "neg" for x in xs]  # noqa: E731
    posts = domain([f"p{i}" for i in range(200)], ["pos"] * 200, lab(gain_old), lab(gain_new),
                   200)
    g = GateSettings()
    labeller = lambda d, ts: dict.fromkeys(ts, "pos")  # noqa: E731
    out = judge({"reviews": old_domain(260), "posts": posts}, "posts", g, labeller)
    assert out["outcome"] == INCONCLUSIVE and "estimated change +0.0" in out["rules"][0]
    assert "about 887 texts of this domain" in out["rules"][0], out["rules"][0]
    out = judge({"reviews": old_domain(1000), "posts": posts}, "posts", g, labeller)
    assert out["outcome"] == PASS and out["labels_answered"]["reviews"] == 72, out["rules"]


def test_labels_for_only_part_of_what_was_asked_are_not_weighted_up():
    """A labels file that happens to hold only the disagreements where the candidate is right
    (say, an earlier round's): weighting those up would call a worse candidate better. Until
    every asked disagreement is labelled, the share alone decides, and the rest are asked for."""
    n, labelled = 1000, 200
    texts, truth = [f"t{i}" for i in range(n)], ["pos"] * n
    old, new = list(truth), list(truth)
    for j, i in enumerate(range(0, n, 8)):  # 12.5 % disagree; new right on 1 in 4 of them
        (old if j % 4 == 0 else new)[i] = "neg"
    gain_old, gain_new = answers(200, 100, 5, 80)
    lab = lambda xs: ["pos" if x else "neg" for x in xs]  # noqa: E731
    posts = domain([f"p{i}" for i in range(200)], ["pos"] * 200, lab(gain_old), lab(gain_new),
                   200)
    only_where_new_is_right = lambda d, ts: {t: "pos" for t in ts  # noqa: E731
                                             if new[int(t[1:])] == "pos"}
    out = judge({"nyt": domain(texts, truth, old, new, labelled), "posts": posts}, "posts",
                GateSettings(), only_where_new_is_right)
    assert out["outcome"] != PASS, out["rules"]  # the old gate passed it
    assert "not a random sample of them" in out["rules"][0], out["rules"][0]
    assert len(out["to_label"]["nyt"]) == out["labels_asked"]["nyt"] - out["labels_answered"]["nyt"]
    everything = lambda d, ts: dict.fromkeys(ts, "pos")  # noqa: E731
    out = judge({"nyt": domain(texts, truth, old, new, labelled), "posts": posts}, "posts",
                GateSettings(), everything)
    assert out["outcome"] == FAIL, out["rules"]  # labelled whole: new is worse, and it shows


def test_labelled_disagreements_bound_the_loss_by_the_negative_flips():
    # the demo's step 2 on nyt: 13 of 1019 texts disagree, all labelled, 8 right -> wrong:
    # too few labels for the estimate, and the share alone (2.2 %) leaves a 2-point loss open
    shares = disagreement(1019, 13, [], [], 0.95)
    assert not_worse_by_disagreement(shares, 0.02) == INCONCLUSIVE
    d = disagreement(1019, 13, [-1] * 8 + [1] * 3 + [0] * 2, [1.0] * 13, 0.95)
    assert d.change is None and d.cleared == 5 and d.high == shares.high
    assert d.low == pytest.approx(-clopper_pearson(8, 1019, 0.975)[1])
    assert not_worse_by_disagreement(d, 0.02) == PASS
    # a label that shows a negative flip clears nothing: the bound is the share's again
    assert disagreement(1019, 13, [-1] * 8, [1.0] * 8, 0.95).low == pytest.approx(shares.low)
    with pytest.raises(ValueError, match="cleared=6"):
        disagreement(100, 5, [], [], 0.95, cleared=6)
    # counts alone: how many texts at this rate would settle it, and when none would
    n = texts_for_counts(shares, 0.02, 0.95)
    assert n > 1019 and clopper_pearson(round(13 * n / 1019), n, 0.975)[1] <= 0.02
    assert texts_for_counts(disagreement(100, 5, [], [], 0.95), 0.02, 0.95) is None


def test_the_lower_bound_covers_the_true_change():
    """Simulated texts, every disagreement labelled: right -> wrong 1.5 %, wrong -> right
    0.5 %, both wrong 0.5 %; the change is -1 point. The 95 % lower bound may sit above it in at
    most 5 % of draws (the two looks share the error rate)."""
    rng = np.random.default_rng(0)
    above = 0
    for _ in range(1000):
        kinds = rng.choice(4, size=1000, p=[0.975, 0.015, 0.005, 0.005])
        diffs = [-1] * int((kinds == 1).sum()) + [1] * int((kinds == 2).sum()) + \
            [0] * int((kinds == 3).sum())
        d = disagreement(1000, len(diffs), diffs, [1.0] * len(diffs), 0.95)
        above += d.low > -0.01
    assert above / 1000 <= 0.05
