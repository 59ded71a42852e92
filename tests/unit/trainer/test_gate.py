"""The rollout gate's paired decision, on answers whose difference is known exactly."""

import pytest

from trainer.gate import FAIL, INCONCLUSIVE, PASS, better, needed, not_worse, paired, verdict
from trainer.rollout import gate


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


def scored(correct, p95=10.0, errors=0):
    return {"n": len(correct), "accuracy": sum(correct) / len(correct), "correct": correct,
            "errors": errors, "p95_ms": p95}


def test_gate_rules_say_which_rule_decided():
    from trainer.rollout import GateSettings

    g = GateSettings()
    same_old, same_new = answers(300, 200, 0, 0)
    gain_old, gain_new = answers(300, 100, 5, 80)
    old = {"nyt": scored(same_old), "movie": scored(gain_old)}
    outcome, rules = gate(old, {"nyt": scored(same_new), "movie": scored(gain_new)}, "movie", g)
    assert outcome == PASS, rules
    # p95 relative to the default measured in the same gate: 1.5 x 10 + 20 = 35 ms
    outcome, rules = gate(old, {"nyt": scored(same_new, p95=36.0),
                                "movie": scored(gain_new)}, "movie", g)
    assert outcome == FAIL and rules[-1].startswith("FAIL p95 36.0 ms")
    small_old, small_new = answers(60, 40, 3, 2)
    movie_old, movie_new = answers(60, 20, 2, 12)
    outcome, rules = gate({"nyt": scored(small_old), "movie": scored(movie_old)},
                          {"nyt": scored(small_new), "movie": scored(movie_new)}, "movie", g)
    assert outcome == INCONCLUSIVE and "labelled sentences would settle it" in rules[0]
