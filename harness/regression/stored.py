"""The decision rule against a stored baseline: one Mann-Whitney test at alpha on samples
shifted by the tolerance, with the number of fresh rounds sized from the stored noise.

A stored baseline holds ``n_b`` round samples ``x_i`` (probe-normalized CPU ms per call, or
instructions per call) measured earlier; the check measures ``n_f`` fresh ones ``y_j`` the
same way. With ``c = log(1 + tolerance)`` the check tests, once:

* H0: the fresh rounds are the stored ones slowed by at most ``1 + tolerance`` (in logs, the
  distribution of ``log y`` is that of ``log x`` shifted by at most ``c``), against
* H1: slowed by more.

The statistic is the one-sided Mann-Whitney U of ``log y_j - c`` against ``log x_i``
(H. B. Mann and D. R. Whitney, Ann. Math. Stat. 18, 1947): a regression when its p-value is
below alpha. Under H0 with a shift of exactly ``c`` the shifted samples are exchangeable and
the test is exact at alpha; for a smaller shift the U statistic is stochastically smaller,
so the false-alarm rate is at most alpha (the test is monotone in the shift). This is one
test: there is no "ratio above the tolerance AND significant, then confirmed twice" chain
whose power multiplies down.

Its power is predicted, not assumed: :func:`mwu_power` is the normal approximation of U
with its exact variance under a shift alternative (E. L. Lehmann, "Nonparametrics:
statistical methods based on ranks", 1975, section 2.3: ``Var U = n_b n_f [theta(1-theta) +
(n_f-1)(q1-theta^2) + (n_b-1)(q2-theta^2)]``) for normal noise of sd ``sigma`` on the log
samples, where ``theta = P(Y > X)`` and ``q1 = q2 = P(Y1 > X, Y2 > X)`` (a bivariate
normal orthant with correlation 1/2, from Owen's T function). :func:`fresh_rounds` picks the
smallest number of fresh rounds whose predicted power at ``min_effect`` reaches ``power``
for the stored samples' own noise: ``n_b`` is fixed by the file, so the power levels off
as ``n_f`` grows, and a stored sample too small or too noisy is reported as such.

What a stored baseline cannot give, and how the check guards it: its samples were measured
in another process at another time. The test's alpha assumes that the only difference
between the two samples is the code's; a drift between the two measurements (another CPU
model, a clock or power setting, another library version, another load) shifts all fresh
rounds alike. The probe normalization cancels the machine's speed roughly; H0 absorbs any
remaining drift up to the tolerance (a drift of +5% with unchanged code is still inside H0,
so false alarms stay at most alpha); a larger drift would read as a regression. So the
check refuses (an error, exit 2) to compare latency with a baseline measured on another
kind of machine or with other versions of the measured packages
(:func:`harness.regression.baseline.drift_reasons`), and ``bench check --against REV``,
which measures the base beside the candidate in the same job, is the recommended CI gate.
"""
from __future__ import annotations

import math
import statistics
from statistics import NormalDist

from .statistics import mann_whitney_greater

_N = NormalDist()


def _orthant(h: float) -> float:
    """``P(Z1 < h, Z2 < h)`` for standard normals with correlation 1/2 (Owen's T)."""
    from scipy.special import owens_t

    return float(_N.cdf(h) - 2 * owens_t(h, math.sqrt(1 / 3)))


def mwu_power(n_base: int, n_fresh: int, delta: float, sigma: float, alpha: float) -> float:
    """Predicted power of the one-sided Mann-Whitney test at ``alpha`` when the fresh log
    samples are the base's shifted by ``delta`` beyond H0's boundary, both with normal noise
    of sd ``sigma`` (normal approximation with Lehmann's exact variance; module docstring)."""
    m, n = n_base, n_fresh
    if 1 / math.comb(m + n, n) >= alpha:
        return 0.0  # the exact test's smallest p-value is not below alpha: it never rejects
    if sigma <= 0:
        return 1.0 if delta > 0 else 0.0
    h = delta / (sigma * math.sqrt(2))
    theta = _N.cdf(h)
    q = _orthant(h)
    var = m * n * (theta * (1 - theta) + (n - 1 + m - 1) * (q - theta ** 2))
    crit = m * n / 2 + _N.inv_cdf(1 - alpha) * math.sqrt(m * n * (m + n + 1) / 12) + 0.5
    if var <= 0:
        return 1.0 if m * n * theta >= crit else 0.0
    return 1 - _N.cdf((crit - m * n * theta) / math.sqrt(var))


def noise_of(logs: list[float]) -> float:
    """The sd of log samples (0 with fewer than 2)."""
    return statistics.stdev(logs) if len(logs) >= 2 else 0.0


def fresh_rounds(n_base: int, sigma: float, cs) -> tuple[int, float]:
    """``(fresh rounds, predicted power)``: the fewest fresh rounds (at least 5, at most
    ``cs.max_rounds``) whose :func:`mwu_power` at ``cs.effect`` reaches ``cs.power``
    with the stored samples' noise ``sigma``; ``cs.max_rounds`` and the power it reaches
    when none does."""
    delta = math.log(cs.effect) - math.log1p(cs.latency_tolerance)
    n, power = 5, 0.0
    for n in range(5, cs.max_rounds + 1):
        power = mwu_power(n_base, n, delta, sigma, cs.alpha)
        if power >= cs.power:
            break
    return n, power


def base_rounds_needed(sigma: float, cs, limit: int = 500) -> int | None:
    """The fewest stored rounds with which ``cs.max_rounds`` fresh ones reach ``cs.power``
    (None when even ``limit`` do not)."""
    delta = math.log(cs.effect) - math.log1p(cs.latency_tolerance)
    for m in range(3, limit + 1):
        if mwu_power(m, cs.max_rounds, delta, sigma, cs.alpha) >= cs.power:
            return m
    return None


def stored_decision(base: list[float], fresh: list[float], tolerance: float,
                    alpha: float) -> tuple[str, float, float]:
    """``(status, p_slower, p_faster)``: ``regression`` when the fresh samples are
    significantly more than ``1 + tolerance`` times the stored ones (the one test),
    ``improved`` when significantly less than ``1 / (1 + tolerance)`` times, else ``pass``."""
    c = math.log1p(tolerance)
    lb = [math.log(v) for v in base]
    lf = [math.log(v) for v in fresh]
    p_slow = mann_whitney_greater([v - c for v in lf], lb)
    p_fast = mann_whitney_greater(lb, [v + c for v in lf])
    if p_slow < alpha:
        return "regression", p_slow, p_fast
    if p_fast < alpha:
        return "improved", p_slow, p_fast
    return "pass", p_slow, p_fast


__all__ = ["mwu_power", "noise_of", "fresh_rounds", "base_rounds_needed", "stored_decision"]
