"""The paired check's decision rule (harness.regression.sequential) on SIMULATED paired rounds.

No timing here: seeded log-ratios with the noise of the measured paired rounds, so the
false-alarm rate and the power are properties of the rule, checked over 2000 simulated checks
each, and compared with the exact operating characteristic the module computes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.regression.sequential import (SignSPRT, noise_limit, operating_characteristic,
                                           paired_decision, paired_noise, predict,
                                           round_probability, size_rule)
from harness.regression.settings import CheckSettings

SIMS = 2000
# the rule of `bench check --against` with its defaults: x1.10, alpha 0.01, sized for power
# 0.95 at x1.25 under a paired log-ratio noise of 0.30
SETTINGS = CheckSettings()
RULE = SETTINGS.sequential()
# sd of the per-round paired log-ratio (probe-normalized CPU ms/call of single calls) read by
# the benchmark CNN's A/A checks on the shared 2-core EPYC (docs/ci-check.md): PyTorch 0.10,
# ExecuTorch 0.137, ONNX Runtime 0.155 (its sub-millisecond MobileNets on 2 threads, with the
# workers' OpenMP threads passive: 0.22-0.30); the rule is sized for 0.30
MEASURED = {"pytorch": 0.10, "executorch": 0.137, "onnxruntime": 0.155}
MEASURED_SIGMA = 0.10
DESIGN_SIGMA = SETTINGS.noise


def _noise(rng, shape, sigma, kind):
    """Normal noise, or bursty noise: normal plus, in 10% of rounds, one side caught 1.5-3x
    slower by a burst of load (either side with equal chance)."""
    d = rng.normal(0.0, sigma, shape)
    if kind == "bursty":
        hit = rng.random(shape) < 0.10
        sign = np.where(rng.random(shape) < 0.5, 1.0, -1.0)
        d = d + hit * sign * np.log(rng.uniform(1.5, 3.0, shape))
    return d


def _stop(row, rule):
    """The round at which the check's driver stops (it asks paired_decision after every
    round; a sequential test's decision, once reached, holds for every longer prefix)."""
    slow, fast = rule.run(row), rule.run([-d for d in row])
    stops = [rule.max_rounds]
    for res in (slow, fast):
        if res.decision == "reject":
            stops.append(res.rounds)
    if slow.decision == "accept" and fast.decision == "accept":
        stops.append(max(slow.rounds, fast.rounds))
    return min(stops)


def _simulate(slowdown, sigma, kind="normal", rule=RULE, seed=0):
    """Share of SIMS simulated checks ending in each status, and the mean rounds used."""
    rng = np.random.default_rng(seed)
    logs = math.log(slowdown) + _noise(rng, (SIMS, rule.max_rounds), sigma, kind)
    counts = {"regression": 0, "improved": 0, "pass": 0, "undecided": 0}
    rounds = 0
    for row in logs.tolist():
        n = _stop(row, rule)
        status, _, _ = paired_decision(row[:n], rule)
        assert status != "running"
        counts[status] += 1
        rounds += n
    return {k: v / SIMS for k, v in counts.items()}, rounds / SIMS


@pytest.mark.parametrize("kind", ["normal", "bursty"])
@pytest.mark.parametrize("sigma", [MEASURED_SIGMA, DESIGN_SIGMA])
def test_a_a_false_alarms_at_most_1_in_20(sigma, kind):
    share, rounds = _simulate(1.0, sigma, kind)
    assert share["regression"] <= 1 / 20, share
    # an A/A check decides long before the cap (18 rounds on average at noise 0.10, 41 at
    # 0.30): the mirror test needs as many rounds to accept as the slower one
    assert share["undecided"] <= 1 / 20 and rounds < RULE.max_rounds / 4, (share, rounds)


@pytest.mark.parametrize("kind", ["normal", "bursty"])
def test_power_at_1_25x_with_the_measured_noise_is_19_in_20_or_more(kind):
    share, rounds = _simulate(1.25, MEASURED_SIGMA, kind, seed=1)
    assert share["regression"] >= 19 / 20, share
    assert rounds <= RULE.max_rounds / 2, rounds


def test_power_at_1_25x_at_the_design_noise_matches_the_exact_characteristic():
    share, _ = _simulate(1.25, DESIGN_SIGMA, seed=2)
    p = round_probability(1.25, RULE.tolerance, DESIGN_SIGMA)
    exact = operating_characteristic(RULE, p)["regression"]
    se = math.sqrt(exact * (1 - exact) / SIMS)
    assert abs(share["regression"] - exact) <= 4 * se + 1e-9, (share, exact)
    assert exact >= SETTINGS.power  # the design point: sized to reach the goal there


def test_false_alarms_at_the_tolerance_itself_stay_below_alpha_even_with_bursts():
    """At a true slowdown of exactly 1 + tolerance (H0's boundary) the sign test's error
    holds whatever the noise: Ville's bound alpha."""
    for kind in ("normal", "bursty"):
        share, _ = _simulate(1 + RULE.tolerance, 0.08, kind, seed=3)
        se = math.sqrt(RULE.alpha / SIMS)
        assert share["regression"] <= RULE.alpha + 3 * se, (kind, share)
    exact = operating_characteristic(RULE, 0.5)
    assert exact["regression"] <= RULE.alpha


def test_exact_characteristic_is_a_distribution_and_monotone():
    prev = -1.0
    for p in (0.0, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        oc = operating_characteristic(RULE, p)
        assert oc["regression"] + oc["pass"] + oc["undecided"] == pytest.approx(1.0)
        assert oc["regression"] >= prev - 1e-12
        prev = oc["regression"]
    assert operating_characteristic(RULE, 1.0)["expected_rounds"] == RULE.min_rounds_to_reject


def test_rule_bounds_and_validation():
    rule = SignSPRT()  # the test's own defaults: p1 0.8, beta 0.05
    assert rule.min_rounds_to_reject == 10  # 10 x log(1.6) >= log(100)
    res = rule.run([math.log(1.3)] * 12)
    assert res.decision == "reject" and res.rounds == 10 and res.p_value <= rule.alpha
    res = rule.run([0.0] * 12)
    assert res.decision == "accept" and res.rounds == 4
    with pytest.raises(ValueError, match="max_rounds 5 is below the 10 rounds"):
        SignSPRT(max_rounds=5)
    with pytest.raises(ValueError, match="p1 must be between 0.5 and 1"):
        SignSPRT(p1=0.5)


def test_speedups_are_improvements_and_bursts_alone_are_not_regressions():
    faster = [math.log(1 / 1.4)] * RULE.min_rounds_to_reject
    assert paired_decision(faster, RULE)[0] == "improved"
    # half the rounds hit by huge bursts on the candidate's side, the rest equal: a sign
    # test reads no consistent slowdown, a mean-based test would
    bursts = [math.log(3.0) if i % 2 else 0.0 for i in range(RULE.max_rounds)]
    assert paired_decision(bursts, RULE)[0] != "regression"


# -- sizing the rule from the noise ------------------------------------------------------------
@pytest.mark.parametrize("runtime", sorted(MEASURED))
def test_sized_rule_predicts_the_goal_for_each_runtimes_measured_noise(runtime):
    """The issue's goal, as the rule's own exact calculation predicts it: >= 19/20 caught at
    x1.25 and <= 1/20 A/A false alarms at every runtime's measured noise."""
    pred = predict(RULE, MEASURED[runtime], SETTINGS.effect)
    assert pred["power"] >= 19 / 20 and pred["false_alarm"] <= 1 / 20, pred


def test_sized_rule_reaches_the_goal_exactly_up_to_its_design_noise():
    assert noise_limit(RULE, SETTINGS.effect, SETTINGS.power) >= DESIGN_SIGMA - 1e-3
    assert predict(RULE, DESIGN_SIGMA * 1.5, SETTINGS.effect)["power"] < SETTINGS.power
    # the ONNX Runtime noise that the old 60-round cap left at 0.94, simulated
    share, rounds = _simulate(1.25, MEASURED["onnxruntime"], seed=4)
    assert share["regression"] >= 19 / 20 and rounds < 40, (share, rounds)


@pytest.mark.parametrize("noise", [0.10, 0.15, 0.25, 0.30])
def test_size_rule_grows_the_rounds_with_the_noise_or_says_it_falls_short(noise):
    rule = size_rule(0.10, 0.01, 0.95, 1.25, noise, 200)
    power = predict(rule, noise, 1.25)["power"]
    if power >= 0.95:
        assert rule.max_rounds <= 200
        smaller = SignSPRT(tolerance=0.10, alpha=0.01, beta=rule.beta, p1=rule.p1,
                           max_rounds=rule.max_rounds - 1)
        if smaller.max_rounds >= smaller.min_rounds_to_reject:  # the fewest that reach it
            assert predict(smaller, noise, 1.25)["power"] < 0.95
    else:  # too noisy for 200 rounds: the cap is used and the prediction says so
        assert rule.max_rounds == 200 and noise > 0.25
    capped = size_rule(0.10, 0.01, 0.95, 1.25, 0.30, 60)
    assert capped.max_rounds == 60 and predict(capped, 0.30, 1.25)["power"] < 0.95


def test_size_rule_validates_its_promise():
    with pytest.raises(ValueError, match="minimum effect x1.05 must be above the tolerance"):
        size_rule(0.10, 0.01, 0.95, 1.05, 0.2, 200)
    with pytest.raises(ValueError, match="noise"):
        CheckSettings(noise=0.0)
    with pytest.raises(ValueError, match="power must be between"):
        CheckSettings(power=1.0)


def test_burst_rounds_do_not_inflate_the_noise_and_the_prediction_matches_simulation():
    """A sign test sees a burst of load as one round above or below: the noise it is
    predicted from is the bulk's sd plus the share of burst rounds, not the plain sd (which
    read 2.9 in a real check at load 15 and predicted a power of 0.015)."""
    rng = np.random.default_rng(5)
    d = _noise(rng, 4000, MEASURED_SIGMA, "bursty")
    sigma, bursts = paired_noise(d.tolist())
    assert sigma == pytest.approx(MEASURED_SIGMA, rel=0.2) and np.std(d) > 1.5 * sigma
    assert bursts == pytest.approx(0.10, abs=0.02)
    share, _ = _simulate(1.25, 0.155, "bursty", seed=6)
    pred = predict(RULE, 0.155, 1.25, bursts)["power"]
    assert abs(share["regression"] - pred) <= 0.02, (share, pred)
    with pytest.raises(ValueError, match="3 paired rounds"):
        paired_noise([0.1, 0.2])
