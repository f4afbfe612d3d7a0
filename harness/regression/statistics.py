"""The significance test of the latency check."""
from __future__ import annotations


def mann_whitney_greater(x: list[float], y: list[float]) -> float:
    """One-sided p-value that ``x`` is stochastically greater than ``y``.

    The Mann-Whitney U test (H. B. Mann and D. R. Whitney, "On a test of whether one of two
    random variables is stochastically larger than the other", Ann. Math. Stat. 18, 1947),
    computed by ``scipy.stats.mannwhitneyu``: its exact null distribution when there are no
    ties and the samples are small (then the smallest p is ``1 / C(n_x + n_y, n_x)``, which
    :func:`harness.regression.check.run_check` relies on), else the normal approximation
    with tie and continuity corrections.
    """
    from scipy.stats import mannwhitneyu

    if len(x) == 0 or len(y) == 0:
        raise ValueError("both samples need at least one value")
    ties = len(set(x) | set(y)) < len(x) + len(y)
    method = "exact" if not ties and len(x) * len(y) <= 2500 else "asymptotic"
    return float(mannwhitneyu(x, y, alternative="greater", method=method).pvalue)
