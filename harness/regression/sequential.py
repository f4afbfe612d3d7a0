"""The decision rule of the paired check: a sequential sign test that adds paired rounds until
it can decide, one test at the stated alpha.

Each paired round ``r`` gives ``d_r = log(candidate_r / base_r)`` (the round statistics of
the base and the candidate measured side by side). With the tolerance ``t`` (a candidate
may be up to ``1 + t`` times as slow), the question "is the candidate slower than allowed?"
is a test on ``p = P(d_r > log(1 + t))``:

* H0: ``p <= 1/2`` (the median slowdown is at most ``1 + t``), against
* H1: ``p >= p1`` (``p1`` = :attr:`SignSPRT.p1`, 0.8 by default: at the smallest slowdown the
  gate promises to catch, at least 80% of paired rounds read above the tolerance).

The test is Wald's sequential probability ratio test (A. Wald, "Sequential tests of
statistical hypotheses", Ann. Math. Statist. 16(2):117-186, 1945) for a Bernoulli parameter
applied to the signs of ``d_r - log(1 + t)``: a sequential sign test. After every round the
log likelihood ratio ``llr = s log(p1 / 0.5) + f log((1 - p1) / 0.5)`` (``s`` rounds above,
``f`` at or below the tolerance) is compared with two bounds:

* ``llr >= log(1 / alpha)``: reject H0, a regression. Under H0 the likelihood ratio is a
  non-negative (super)martingale, so by Ville's inequality (J. Ville, "Etude critique de la
  notion de collectif", 1939) the chance that it *ever* reaches ``1 / alpha`` is at most
  ``alpha``, whatever the distribution of the noise, however many rounds are added, and
  whatever rule stops them (this is also why ``min(1, 1 / max LR)`` is an always-valid
  p-value; Johari, Pekelis and Walsh, "Always valid inference", Operations Research 2022).
* ``llr <= log(beta / (1 - alpha))``: accept H0 (Wald's lower bound; ``1 - beta`` is the
  power at ``p = p1``).
* else: one more round, up to :attr:`SignSPRT.max_rounds`; a test still undecided then says so.

Why signs and not the values: a shared machine's noise comes in bursts (a round 2x slower now
and then), which breaks the normal model of a t-test or of a Gaussian SPRT; a sign test's
error rates hold for any continuous noise, only the rounds must be independent. The price is
rounds (at least 10 to reject at alpha = 0.01), and rounds are cheap here: a round times
calls on an already-created session, nothing else (:mod:`harness.regression.measure`).

The power is not assumed: :func:`operating_characteristic` computes the exact probabilities of
"regression", "pass" and "undecided" and the expected number of rounds for any ``p``, by
dynamic programming over the (rounds, successes) lattice; :func:`round_probability` turns a
slowdown and the noise of the paired log-ratios into ``p`` for normal noise.
``tests/test_regression_sequential.py`` checks both by simulation.
"""
from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable


@dataclass(frozen=True)
class SignSPRT:
    """Wald's SPRT on the signs of paired log-ratios beyond the tolerance (module docstring).

    Attributes:
        tolerance: a slowdown up to ``1 + tolerance`` is allowed (H0's boundary).
        alpha: the chance of a false regression at that boundary, at most (Ville).
        beta: one minus the power when a share ``p1`` of the rounds reads above the tolerance.
        p1: the alternative: share of rounds above the tolerance at the smallest slowdown
            the gate must catch (1.25x reads 0.8 with a paired log-ratio noise of 0.15).
        max_rounds: rounds after which an undecided test stops and says so.
    """

    tolerance: float = 0.10
    alpha: float = 0.01
    beta: float = 0.05
    p1: float = 0.8
    max_rounds: int = 60
    # (these are the test's own defaults; `bench check` sizes p1, beta and max_rounds from
    # its stated goal and noise with :func:`size_rule`)

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if not 0 < self.alpha < 1 or not 0 < self.beta < 1:
            raise ValueError(f"alpha and beta must be between 0 and 1, got {self.alpha}, "
                             f"{self.beta}")
        if not 0.5 < self.p1 < 1:
            raise ValueError(f"p1 must be between 0.5 and 1, got {self.p1}")
        if self.max_rounds < self.min_rounds_to_reject:
            raise ValueError(f"max_rounds {self.max_rounds} is below the {self.min_rounds_to_reject}"
                             f" rounds the test needs to reject at alpha = {self.alpha:g}; use "
                             f"--max-rounds {self.min_rounds_to_reject * 3} or more")

    @property
    def up(self) -> float:
        """LLR step of a round above the tolerance."""
        return math.log(self.p1 / 0.5)

    @property
    def down(self) -> float:
        """LLR step of a round at or below the tolerance (negative)."""
        return math.log((1 - self.p1) / 0.5)

    @property
    def upper(self) -> float:
        return math.log(1 / self.alpha)

    @property
    def lower(self) -> float:
        return math.log(self.beta / (1 - self.alpha))

    @property
    def min_rounds_to_reject(self) -> int:
        return math.ceil(self.upper / self.up - 1e-12)

    @property
    def threshold(self) -> float:
        """``log(1 + tolerance)``: a round counts for H1 when its log-ratio is above it."""
        return math.log1p(self.tolerance)

    def run(self, log_ratios: Iterable[float]) -> "SPRTResult":
        """The test on ``log_ratios`` in order, stopped at the first bound crossed."""
        llr, best, s, n = 0.0, 0.0, 0, 0
        c = self.threshold
        for d in log_ratios:
            n += 1
            above = d > c
            s += above
            llr += self.up if above else self.down
            best = max(best, llr)
            if llr >= self.upper:
                return SPRTResult("reject", n, s, llr, best)
            if llr <= self.lower:
                return SPRTResult("accept", n, s, llr, best)
            if n >= self.max_rounds:
                break
        return SPRTResult("undecided", n, s, llr, best)


@dataclass(frozen=True)
class SPRTResult:
    """Where a :class:`SignSPRT` stopped: ``reject`` (H1), ``accept`` (H0) or ``undecided``."""

    decision: str
    rounds: int
    above: int
    llr: float
    max_llr: float

    @property
    def p_value(self) -> float:
        """The always-valid p-value ``min(1, 1 / max likelihood ratio)`` (Ville)."""
        return min(1.0, math.exp(-self.max_llr))


def paired_decision(log_ratios: list[float], rule: SignSPRT) -> tuple[str, SPRTResult, SPRTResult]:
    """``(status, slower, faster)`` of the gate for the paired log-ratios measured so far.

    ``slower`` tests ``candidate > (1 + tolerance) x base``, ``faster`` the mirror image
    (``-d``). Status: ``regression`` (slower rejected H0), ``improved`` (faster did),
    ``pass`` (slower accepted H0 and faster is done or out of rounds), ``undecided`` (slower
    ran out of rounds), or ``running`` (measure another round).
    """
    slow = rule.run(log_ratios)
    fast = rule.run([-d for d in log_ratios])
    out_of_rounds = len(log_ratios) >= rule.max_rounds
    if slow.decision == "reject":
        return "regression", slow, fast
    if fast.decision == "reject":
        return "improved", slow, fast
    if slow.decision == "accept" and (fast.decision == "accept" or out_of_rounds):
        return "pass", slow, fast
    if out_of_rounds:
        return "undecided", slow, fast
    return "running", slow, fast


def operating_characteristic(rule: SignSPRT, p: float) -> dict:
    """Exact error rates of ``rule`` when each round reads above the tolerance with chance
    ``p``: ``{"regression", "pass", "undecided", "expected_rounds", "regression_by_round"}``
    (dynamic programming over the rounds and the count of rounds above; no simulation).
    ``regression_by_round[n - 1]`` is the chance of a regression verdict within ``n`` rounds,
    i.e. the power of the same test capped at ``n`` rounds."""
    alive = {0: 1.0}  # successes -> probability of being still undecided
    rej = acc = expect = 0.0
    by_round = []
    for n in range(1, rule.max_rounds + 1):
        nxt: dict = {}
        for s, pr in alive.items():
            for s2, q in ((s + 1, p), (s, 1 - p)):
                m = pr * q
                llr = s2 * rule.up + (n - s2) * rule.down
                if llr >= rule.upper:
                    rej += m
                    expect += n * m
                elif llr <= rule.lower:
                    acc += m
                    expect += n * m
                else:
                    nxt[s2] = nxt.get(s2, 0.0) + m
        alive = nxt
        by_round.append(rej)
    und = sum(alive.values())
    return {"regression": rej, "pass": acc, "undecided": und,
            "expected_rounds": expect + rule.max_rounds * und, "regression_by_round": by_round}


def round_probability(slowdown: float, tolerance: float, sigma: float,
                      bursts: float = 0.0) -> float:
    """``P(d > log(1 + tolerance))`` for ``d ~ Normal(log(slowdown), sigma)``: the share of
    rounds above the tolerance at a true ``slowdown`` with paired log-ratio noise ``sigma``.
    With ``bursts`` (a share of rounds hit by a burst of load on one side, either side
    alike, far beyond the normal noise) those rounds read above with chance 1/2."""
    if sigma <= 0:
        core = 1.0 if math.log(slowdown) > math.log1p(tolerance) else 0.0
    else:
        core = 1 - NormalDist(math.log(slowdown), sigma).cdf(math.log1p(tolerance))
    return (1 - bursts) * core + bursts / 2


def paired_noise(log_ratios: list[float]) -> tuple[float, float]:
    """``(sigma, bursts)`` of paired log-ratios: ``sigma`` the normal-equivalent sd of their
    bulk (1.4826 x the median absolute deviation from their median, which a few rounds
    caught in a burst of load do not inflate), ``bursts`` the share of rounds further than
    3 ``sigma`` from the median. A sign test sees a burst as one round above or below,
    whatever its size, so this pair, not the plain sd, predicts its power
    (:func:`round_probability`). Needs 3 rounds or more."""
    if len(log_ratios) < 3:
        raise ValueError(f"the noise needs 3 paired rounds or more, got {len(log_ratios)}")
    med = statistics.median(log_ratios)
    dev = [abs(d - med) for d in log_ratios]
    sigma = 1.4826 * statistics.median(dev)
    if sigma <= 0:  # more than half the rounds identical: the sd of the rest, if any
        sigma = statistics.pstdev(log_ratios)
        return sigma, 0.0
    return sigma, sum(x > 3 * sigma for x in dev) / len(dev)


# p1 is kept inside this range whatever the design noise: near 1 a single round at or below
# the tolerance (one burst of load on the candidate's side... or the base's) would accept H0
P1_RANGE = (0.6, 0.9)


@functools.lru_cache(maxsize=64)
def size_rule(tolerance: float, alpha: float, power: float, min_effect: float, noise: float,
              cap: int) -> SignSPRT:
    """The sequential sign test sized so that its own exact power calculation predicts
    ``power`` at a slowdown of ``min_effect`` when the paired log-ratios have sd ``noise``.

    ``p1`` is the share of rounds above the tolerance at ``min_effect`` under that noise
    (:func:`round_probability`, kept within :data:`P1_RANGE`); ``beta`` starts at
    ``1 - power`` and is halved (down to ``(1 - power) / 16``) while even ``cap`` rounds do
    not reach ``power`` (Wald's bounds are approximate, and a cap leaves some tests
    undecided); ``max_rounds`` is then the smallest number of rounds at which
    :func:`operating_characteristic` reaches ``power``. When no ``beta`` reaches it within
    ``cap`` rounds the rule uses ``cap`` rounds and the ``beta`` that comes closest: its predicted power
    (:func:`predict`) then says by how much it falls short.

    Raises:
        ValueError: ``min_effect`` not above ``1 + tolerance``, or a bad power/noise.
    """
    if not min_effect > 1 + tolerance:
        raise ValueError(f"the minimum effect x{min_effect:g} must be above the tolerance "
                         f"x{1 + tolerance:g} (a slowdown the gate may let pass cannot be one "
                         "it promises to catch); give a larger --min-effect")
    if not 0.5 < power < 1:
        raise ValueError(f"power must be between 0.5 and 1, got {power}")
    if not noise > 0:
        raise ValueError(f"noise (the paired log-ratio sd the rule is sized for) must be > 0, "
                         f"got {noise}")
    p1 = min(max(round_probability(min_effect, tolerance, noise), P1_RANGE[0]), P1_RANGE[1])
    best = None  # (power within cap rounds, beta): the fallback when none reaches `power`
    for k in range(5):
        beta = (1 - power) / 2 ** k
        rule = SignSPRT(tolerance=tolerance, alpha=alpha, beta=beta, p1=p1,
                        max_rounds=max(cap, 1))
        by_round = operating_characteristic(rule, p1)["regression_by_round"]
        enough = next((n for n, r in enumerate(by_round, 1) if r >= power), None)
        if enough is not None:
            n = max(enough, rule.min_rounds_to_reject)
            return SignSPRT(tolerance=tolerance, alpha=alpha, beta=beta, p1=p1, max_rounds=n)
        if best is None or by_round[-1] > best[0]:
            best = (by_round[-1], beta)
    return SignSPRT(tolerance=tolerance, alpha=alpha, beta=best[1], p1=p1, max_rounds=cap)


def predict(rule: SignSPRT, noise: float, min_effect: float, bursts: float = 0.0) -> dict:
    """What ``rule`` is predicted to do at paired log-ratio sd ``noise`` (and a share
    ``bursts`` of burst rounds, :func:`paired_noise`): ``power`` (chance of "regression" at
    ``min_effect``), ``false_alarm`` (at x1.00) and the expected rounds at each
    (``rounds_at_effect``, ``rounds_at_1``), from :func:`operating_characteristic`."""
    hit = operating_characteristic(
        rule, round_probability(min_effect, rule.tolerance, noise, bursts))
    aa = operating_characteristic(rule, round_probability(1.0, rule.tolerance, noise, bursts))
    return {"power": hit["regression"], "false_alarm": aa["regression"],
            "rounds_at_effect": hit["expected_rounds"], "rounds_at_1": aa["expected_rounds"]}


def noise_limit(rule: SignSPRT, min_effect: float, power: float) -> float:
    """The largest paired log-ratio sd at which ``rule`` still predicts ``power`` at
    ``min_effect`` (bisection; 0 when it never does)."""
    lo, hi = 1e-4, 2.0
    if predict(rule, lo, min_effect)["power"] < power:
        return 0.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if predict(rule, mid, min_effect)["power"] >= power else (lo, mid)
    return lo


__all__ = ["SignSPRT", "SPRTResult", "paired_decision", "operating_characteristic",
           "round_probability", "paired_noise", "size_rule", "predict", "noise_limit",
           "P1_RANGE"]
