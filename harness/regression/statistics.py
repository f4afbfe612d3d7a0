"""The significance test of the latency check."""
from __future__ import annotations

import math


def _ranks(values: list[float]) -> tuple[list[float], list[int]]:
    """Average ranks (1-based) and the sizes of tie groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties, i = [], 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


def _exact_u_sf(u: float, n1: int, n2: int) -> float:
    """P(U >= u) under H0 from the exact null distribution (no ties)."""
    # counts[n][k]: arrangements of n x-values among the others with U == k, built by
    # the recursion of Mann & Whitney (1947), eq. (1), one n2 step at a time.
    prev = [[1] for _ in range(n1 + 1)]  # n2 = 0: U is 0
    for m in range(1, n2 + 1):
        cur = [[1]]
        for n in range(1, n1 + 1):
            size = n * m + 1
            row = [0] * size
            a, b = prev[n], cur[n - 1]  # last element from y (U += 0)... or from x (U += m)
            for k, c in enumerate(a):
                row[k] += c
            for k, c in enumerate(b):
                row[k + m] += c
            cur.append(row)
        prev = cur
    dist = prev[n1]
    total = sum(dist)
    return sum(dist[math.ceil(u - 1e-9):]) / total


def mann_whitney_greater(x: list[float], y: list[float]) -> float:
    """One-sided p-value that ``x`` is stochastically greater than ``y``.

    The Mann-Whitney U test (H. B. Mann and D. R. Whitney, "On a test of whether one of two
    random variables is stochastically larger than the other", Ann. Math. Stat. 18, 1947):
    ``U = R_x - n_x (n_x + 1) / 2`` from the rank sum of ``x``; the exact null distribution
    when there are no ties and the samples are small, else the normal approximation with
    tie and continuity corrections (as ``scipy.stats.mannwhitneyu``).
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one value")
    ranks, ties = _ranks(list(x) + list(y))
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    if all(t == 1 for t in ties) and n1 * n2 <= 2500:
        return _exact_u_sf(u, n1, n2)
    n = n1 + n2
    mu = n1 * n2 / 2
    tie_term = sum(t ** 3 - t for t in ties) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term))
    if sigma == 0:
        return 1.0
    z = (u - mu - 0.5) / sigma
    return 0.5 * math.erfc(z / math.sqrt(2))
