"""Calibrated success estimates: intervals that cover the truth however wrong imagination is."""

import numpy as np
import pytest

from worldmodel.estimate import SuccessEstimate, clopper_pearson, compare_policies

# (true real success, P(imagined failure | real success), P(imagined success | real failure)): faithful, noisy,
# biased optimistic, biased pessimistic, coin-flip and inverted imagination.
SCENARIOS = [(0.5, 0.0, 0.0), (0.2, 0.1, 0.1), (0.8, 0.4, 0.05), (0.05, 0.05, 0.4), (0.5, 0.5, 0.5),
             (0.95, 0.9, 0.0), (0.2, 0.0, 0.9), (0.5, 1.0, 1.0)]


def draw(rng, p, miss, false_alarm, size):
    real = rng.random(size) < p
    imagined = np.where(real, rng.random(size) >= miss, rng.random(size) < false_alarm)
    return real.astype(float), imagined.astype(float)


def run(p, miss, false_alarm, n, N, trials, seed=0):
    rng = np.random.default_rng(seed)
    estimates = []
    for k in range(trials):
        real, twins = draw(rng, p, miss, false_alarm, n)
        _, more = draw(rng, p, miss, false_alarm, N)
        estimates.append(SuccessEstimate(real, twins, more, draws=1000, seed=k))
    return estimates


@pytest.mark.parametrize("p,miss,false_alarm", SCENARIOS)
def test_intervals_cover_the_truth_with_five_real_trials_whatever_imagination_does(p, miss, false_alarm):
    estimates = run(p, miss, false_alarm, n=5, N=40, trials=300)
    coverage = np.mean([e.low <= p <= e.high for e in estimates])
    assert coverage >= 0.94, coverage
    # never less precise than the real trials alone
    assert all(e.high - e.low <= e.real_only[2] - e.real_only[1] + 1e-12 for e in estimates)


def test_faithful_imagination_narrows_the_interval_and_stays_valid():
    estimates = run(0.5, 0.05, 0.05, n=20, N=200, trials=200)
    assert np.mean([e.low <= 0.5 <= e.high for e in estimates]) >= 0.94
    width = np.mean([e.high - e.low for e in estimates])
    real_width = np.mean([e.real_only[2] - e.real_only[1] for e in estimates])
    assert width < 0.85 * real_width, (width, real_width)
    assert np.mean([e.effective_real_trials for e in estimates]) > 25  # more than the 20 real trials


def test_biased_imagination_is_corrected_by_the_pairs():
    # imagination says success 90% of the time for a policy that really succeeds 20% of the time
    estimates = run(0.2, 0.0, 0.875, n=30, N=400, trials=100)
    assert abs(np.mean([e.value for e in estimates]) - 0.2) < 0.05
    assert np.mean([e.imagined_only[0] for e in estimates]) > 0.85


def test_imagination_that_says_one_thing_everywhere_leaves_the_real_trials_alone():
    e = SuccessEstimate([1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [1] * 40)
    assert e.weight == 0.0 and e.value == pytest.approx(0.6)
    assert (e.low, e.high) == pytest.approx(clopper_pearson(3, 5))
    assert e.method.startswith("real-only")


def test_the_point_estimate_is_ppi_with_the_least_squares_weight():
    real, twins, more = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 1, 1, 0, 0, 0]), np.array([1] * 30 + [0] * 10)
    e = SuccessEstimate(real, twins, more, draws=20000)
    slope = np.polyfit(twins, real, 1)[0]  # least squares of real on imagined outcomes
    all_imagined = np.concatenate([twins, more]).mean()
    assert e.weight == pytest.approx(slope)
    if e.prediction_powered:
        assert e.value == pytest.approx(real.mean() + slope * (all_imagined - twins.mean()))


def test_policies_really_apart_are_ordered_and_alike_ones_tie():
    rng = np.random.default_rng(0)
    estimates = []
    for p in (0.9, 0.1, 0.1):
        real, twins = draw(rng, p, 0.0, 0.0, 40)
        _, more = draw(rng, p, 0.0, 0.0, 200)
        estimates.append(SuccessEstimate(real, twins, more))
    result = compare_policies(["good", "bad", "bad too"], estimates)
    assert result["surely_better"][0][1] and result["surely_better"][0][2]
    assert not result["surely_better"][1][2] and not result["surely_better"][2][1]
    ranks = {r["name"]: r["rank"] for r in result["ranking"]}
    assert ranks == {"good": 1, "bad": 2, "bad too": 2}
    assert result["probability_better"][0][1] > 0.99


def test_the_same_outcomes_give_the_same_interval_and_a_tie():
    real, twins, more = [1, 0, 1, 1, 0, 1], [1, 0, 1, 0, 0, 1], [1, 0] * 20
    first, second = SuccessEstimate(real, twins, more), SuccessEstimate(real, twins, more)
    assert (first.low, first.high, first.value) == (second.low, second.high, second.value)
    result = compare_policies(["a", "b"], [first, second])
    assert [r["rank"] for r in result["ranking"]] == [1, 1]
    assert 0.4 < result["probability_better"][0][1] < 0.6  # independent draws: a coin flip


def test_outcomes_must_be_zero_or_one_and_paired():
    with pytest.raises(ValueError, match="twins: expected 0/1"):
        SuccessEstimate([1, 0], [0.7, 1])
    with pytest.raises(ValueError, match="real/twins"):
        SuccessEstimate([1, 0, 1], [1, 0])
