"""The stored-baseline rule (harness.regression.stored) on SIMULATED samples, and how a check
against a stored baseline refuses what it cannot compare. No timing here."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness import regression as rg
from harness.regression.stored import (base_rounds_needed, fresh_rounds, mwu_power,
                                       stored_decision)

CS = rg.CheckSettings()
SIMS = 400  # scipy's exact Mann-Whitney per simulated check: a few ms each


def _check(rng, n_base, sigma, slowdown, cs=CS):
    """One simulated check: a stored sample, fresh rounds sized from its noise, one test."""
    base = np.exp(rng.normal(0.0, sigma, n_base))
    n, _ = fresh_rounds(n_base, float(np.std(np.log(base), ddof=1)), cs)
    fresh = np.exp(math.log(slowdown) + rng.normal(0.0, sigma, n))
    return stored_decision(base.tolist(), fresh.tolist(), cs.latency_tolerance, cs.alpha)[0]


@pytest.mark.parametrize("sigma", [0.03, 0.06])
def test_false_alarms_at_the_tolerance_stay_at_alpha_and_a_a_passes(sigma):
    rng = np.random.default_rng(0)
    at_tol = [_check(rng, 20, sigma, 1 + CS.latency_tolerance) for _ in range(SIMS)]
    se = math.sqrt(CS.alpha / SIMS)
    assert at_tol.count("regression") / SIMS <= CS.alpha + 3 * se
    a_a = [_check(rng, 20, sigma, 1.0) for _ in range(SIMS // 8)]
    assert a_a.count("regression") == 0  # a drift of 0 is far inside H0


@pytest.mark.parametrize("sigma", [0.03, 0.06])
def test_power_at_the_minimum_effect_is_what_the_sizing_predicts(sigma):
    rng = np.random.default_rng(1)
    got = [_check(rng, 20, sigma, CS.effect) for _ in range(SIMS)]
    assert got.count("regression") / SIMS >= 0.92  # predicted >= 0.95; 400 checks' spread


def test_power_prediction_agrees_with_simulation():
    rng = np.random.default_rng(2)
    delta = math.log(1.25) - math.log(1.1)
    for m, n, sigma in ((10, 10, 0.08), (20, 20, 0.10)):
        hits = sum(stored_decision(np.exp(rng.normal(0, sigma, m)).tolist(),
                                   np.exp(rng.normal(math.log(1.25), sigma, n)).tolist(),
                                   0.10, 0.01)[0] == "regression" for _ in range(SIMS))
        pred = mwu_power(m, n, delta, sigma, 0.01)
        assert abs(hits / SIMS - pred) <= 0.08, (m, n, sigma, hits / SIMS, pred)


def test_sizing_grows_with_the_noise_and_says_when_the_stored_sample_is_too_small():
    quiet, noisy = fresh_rounds(20, 0.03, CS), fresh_rounds(20, 0.09, CS)
    assert quiet[0] < noisy[0] and quiet[1] >= CS.power and noisy[1] >= CS.power
    n, power = fresh_rounds(5, 0.15, CS)  # 5 stored rounds of noise 0.15: never enough
    assert n == CS.max_rounds and power < CS.power
    need = base_rounds_needed(0.15, CS)
    assert need is not None and need > 5
    assert mwu_power(need, CS.max_rounds, math.log(1.25 / 1.1), 0.15, CS.alpha) >= CS.power
    # 6 stored and 3 fresh rounds: the exact test's smallest p is 1/84 > 0.01, so no power
    assert mwu_power(6, 3, 1.0, 0.01, CS.alpha) == 0.0


def test_one_test_decides_without_a_confirmation_chain():
    base = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.03, 0.97]
    slower = [v * 1.5 for v in base]
    v = rg.compare_latency("c", "k", {"round_ms": base}, {"round_ms": slower}, CS, False)
    assert v.status == "regression" and v.p_value < CS.alpha
    assert "predicted power" in v.note and "confirm" not in v.note
    assert v.detail["predicted_power"] >= CS.power
    within = [v * 1.05 for v in base]  # inside the tolerance: one test, no regression
    assert rg.compare_latency("c", "k", {"round_ms": base}, {"round_ms": within}, CS,
                              False).status == "pass"


def _baseline(**fingerprint):
    env_fp = rg.baseline.machine_fingerprint(rg.baseline.environment())
    from harness.measure.env import package_versions
    return {"fingerprint": {**env_fp, **fingerprint},
            "environment": {"versions": package_versions()},
            "measure": {"rounds": 5, "calls": 3}, "check": {},
            "cells": [{"id": "x", "label": "cell x", "config": {}, "metric": None,
                       "latency": {"pytorch/one/fp32": {"round_ms": [1.0] * 5}}}]}


def test_another_machine_or_other_versions_are_refused_not_measured():
    assert rg.drift_reasons(_baseline()) == []
    other = _baseline(cpu="Some Other CPU @ 1.0GHz")
    (v,) = [v for v in rg.run_check(None, other, CS) if v.check.startswith("latency")]
    assert v.status == "error" and "another kind of machine" in v.note
    assert "Some Other CPU" in v.note and "--against" in v.note
    assert rg.exit_code([v]) == 2
    old = _baseline()
    old["environment"]["versions"]["torch"] = "0.0.1"
    (reason,) = rg.drift_reasons(old)
    assert "other package versions" in reason and "torch 0.0.1 ->" in reason


def test_legacy_confirm_key_is_dropped_with_a_note(tmp_path):
    import json
    data = {"format": rg.FORMAT, "version": rg.VERSION, "check": {"confirm": 2, "p1": 0.8},
            "measure": {}, "cells": [{"id": "x", "label": "l", "config": {}, "profiles": {},
                                      "latency": {}}]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    loaded = rg.load_baseline(path)
    assert loaded["check"] == {}
    assert any("confirm" in n and "no longer used" in n for n in loaded["legacy_notes"])
