"""Learning-rate schedules shared by every strategy that trains."""
from __future__ import annotations

import math


def stlr_multiplier(t: int, total: int, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """Slanted triangular learning rate, as a fraction of the maximum rate.

    Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text Classification"
    (ULMFiT), eq. 3, as written in the lecture::

        cut = floor(T * cut_frac)
        p   = t / cut                                   if t < cut
              1 - (t - cut) / (cut * (1 / cut_frac - 1)) otherwise
        eta_t = eta_max * (1 + p * (ratio - 1)) / ratio

    Args:
        t: the current training iteration, counted from 0.
        total: T, the number of training iterations (epochs x batches per epoch).
        cut_frac: fraction of iterations during which the rate increases.
        ratio: how much smaller the lowest rate is than the maximum.
    """
    if total < 1:
        raise ValueError("total iterations must be >= 1")
    if not 0 < cut_frac < 1:
        raise ValueError("cut_frac must be in (0, 1)")
    cut = max(1, math.floor(total * cut_frac))  # guard T * cut_frac < 1 (tiny runs)
    if t < cut:
        p = t / cut
    else:
        p = 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    p = max(p, 0.0)  # past T (early-stopping phases may run over) stay at the floor
    return (1 + p * (ratio - 1)) / ratio


SCHEDULES = ("constant", "stlr")
