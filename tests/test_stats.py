"""Intervals, the promotion rule and the successive-halving schedule (agents.stats)."""

from __future__ import annotations

import math
import random

import pytest

from agents import stats as S


def test_t_quantiles_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for conf in (0.90, 0.95):
        for df in (1, 2, 3, 5, 10, 30):
            assert S.t_quantile(df, conf) == pytest.approx(scipy_stats.t.ppf(1 - (1 - conf) / 2, df), abs=2e-3)
    with pytest.raises(ValueError):
        S.t_quantile(0)
    with pytest.raises(ValueError):
        S.t_quantile(3, 0.5)


def test_summary_of_three_seeds():
    s = S.summarize([0.5, 0.6, 0.7])
    assert s.n == 3 and s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1)
    half = 2.920 * 0.1 / math.sqrt(3)
    assert (s.lo, s.hi) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    one = S.summarize([0.4, float("nan"), None])
    assert one.n == 1 and one.lo == one.hi == 0.4 and one.std == 0.0
    assert S.summarize([None]) is None
    b = S.summarize([0.5, 0.6, 0.7], method="bootstrap")
    assert 0.5 <= b.lo < 0.6 < b.hi <= 0.7
    assert S.bootstrap_interval([0.5, 0.6, 0.7], seed=3) == S.bootstrap_interval([0.5, 0.6, 0.7], seed=3)
    assert s.to_dict()["interval"] == [round(s.lo, 6), round(s.hi, 6)]


def test_single_seed_is_never_promoted():
    v = S.promote({0: 0.99}, {0: 0.1, 1: 0.1, 2: 0.1})
    assert not v.promoted and v.outcome == "single_seed"
    assert not S.promote([0.99], None).promoted


def test_first_multi_seed_design_is_promoted_without_incumbent():
    assert S.promote({0: 0.5, 1: 0.52}, None).promoted


def test_interval_above_incumbent_mean_promotes():
    v = S.promote({0: 0.70, 1: 0.71, 2: 0.72}, {5: 0.60, 6: 0.65, 7: 0.70})  # no shared seeds
    assert v.promoted and v.rule == "interval"


def test_paired_wins_promote_when_intervals_overlap():
    inc = {0: 0.50, 1: 0.60, 2: 0.70}
    cand = {0: 0.52, 1: 0.62, 2: 0.73}  # seed effect dominates; always ahead by 0.02-0.03
    assert S.summarize(cand.values()).lo < S.summarize(inc.values()).mean  # the interval rule fails
    v = S.promote(cand, inc)
    assert v.promoted and v.rule == "paired" and len(v.paired) == 3
    # the same numbers without seeds cannot be paired: tied
    assert S.promote(list(cand.values()), list(inc.values())).outcome == "tied"


def test_ties_and_losses():
    inc = {0: 0.60, 1: 0.62, 2: 0.58}
    tie = S.promote({0: 0.62, 1: 0.59, 2: 0.61}, inc)
    assert not tie.promoted and tie.outcome == "tied" and "within noise" in tie.text
    below = S.promote({0: 0.40, 1: 0.41, 2: 0.42}, inc)
    assert not below.promoted and below.outcome == "below"
    # equal values are a tie, never a promotion
    assert S.promote(dict(inc), inc).outcome == "tied"
    assert S.beats({0: 0.7, 1: 0.71}, {0: 0.5, 1: 0.5}).text.endswith("the seed's mean 0.5000")


def test_needs_more_seeds_and_seed_schedule():
    assert S.needs_more_seeds(0.1, [0.5, 0.6])  # fewer than k multi-seed designs
    top = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert S.needs_more_seeds(0.55, top) and not S.needs_more_seeds(0.5, top)
    assert not S.needs_more_seeds(None, [])
    assert S.design_seeds(7) == [7, 8, 9] and S.design_seeds(0, 1) == [0]
    with pytest.raises(ValueError):
        S.design_seeds(0, 0)
    assert S.format_spread(0.61234, 0.0212, 3) == "0.612 ± 0.021 (3 seeds)"
    assert S.format_spread(0.61234, None, 1) == "0.612 (1 seed)"
    assert S.format_spread(None, None, 0) == "-"


# --- simulated noise: the rule against a single-seed hill climb ------------------------------------

def _simulate(rng: random.Random, multi_seed: bool, n_candidates: int = 20, gap: float = 0.06,
              noise: float = 0.03) -> tuple[object, int, int]:
    """One simulated discovery run. The incumbent (the seed) and every candidate but one have true
    fitness 0.5; one candidate (its position random) has 0.5 + gap. An evaluation returns the true
    fitness plus independent Gaussian noise (sd ``noise``) per design and seed: no shared seed
    effect, the worst case for the paired test. Returns (the final best: "seed" or the candidate's
    index, the truly better candidate's index, evaluations spent)."""
    better = rng.randrange(n_candidates)
    seeds = S.design_seeds(0, S.SEEDS)

    def evaluate(true: float, n: int) -> dict[int, float]:
        return {s: true + rng.gauss(0.0, noise) for s in seeds[:n]}

    evals = 0
    if not multi_seed:  # the single-seed loop: one seed each, the highest number wins
        best_val, best_id = evaluate(0.5, 1)[0], "seed"
        evals += 1
        for i in range(n_candidates):
            v = evaluate(0.5 + (gap if i == better else 0.0), 1)[0]
            evals += 1
            if v > best_val:
                best_val, best_id = v, i
        return best_id, better, evals
    best = evaluate(0.5, S.SEEDS)  # the seed, measured on 3 seeds
    evals += S.SEEDS
    best_id: object = "seed"
    top: list[float] = [sum(best.values()) / len(best)]
    for i in range(n_candidates):
        true = 0.5 + (gap if i == better else 0.0)
        per_seed = evaluate(true, 1)  # rung 0
        evals += 1
        if S.needs_more_seeds(per_seed[0], top, S.TOP_K):
            per_seed.update({s: v for s, v in evaluate(true, S.SEEDS).items() if s not in per_seed})
            evals += S.SEEDS - 1
            top.append(sum(per_seed.values()) / len(per_seed))
            if S.promote(per_seed, best).promoted:
                best, best_id = per_seed, i
    return best_id, better, evals


def test_rule_promotes_the_truly_better_design_more_often_than_single_seed_hill_climbing():
    """1000 simulated runs of 20 candidates each, one truly better by 2 noise sd."""
    runs = 1000
    rng = random.Random(1234)
    single = [_simulate(rng, False) for _ in range(runs)]
    multi = [_simulate(rng, True) for _ in range(runs)]

    def right(res):  # the final best is the truly better design
        return sum(b == t for b, t, _ in res)

    def false(res):  # best moved to a design that is not better than the seed
        return sum(b not in ("seed", t) for b, t, _ in res)

    assert right(multi) > right(single), (right(multi), right(single))
    assert false(multi) < 0.7 * false(single), (false(multi), false(single))
    # successive halving: far fewer evaluations than 3 seeds for each of the 21 designs
    assert sum(e for _, _, e in multi) / runs < 0.8 * S.SEEDS * 21



def test_behind_on_every_shared_seed_is_below_not_tied():
    """A wide incumbent interval (a noisy yardstick) overlaps the candidate's, but the paired
    differences say the candidate is behind on each seed: 'below', the mirror of a paired win."""
    inc = {0: 0.80, 1: 0.60, 2: 0.40}
    v = S.promote({0: 0.70, 1: 0.51, 2: 0.29}, inc)
    assert not v.promoted and v.outcome == "below" and "shared seeds" in v.text
    # the same values without seeds to pair: the intervals overlap, so tied
    assert S.promote([0.70, 0.51, 0.29], [0.80, 0.60, 0.40]).outcome == "tied"
    # mixed signs stay tied
    assert S.promote({0: 0.70, 1: 0.62, 2: 0.30}, inc).outcome == "tied"
