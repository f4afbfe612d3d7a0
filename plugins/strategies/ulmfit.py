"""ULMFiT's fine-tuning techniques (Howard & Ruder 2018): discriminative fine-tuning,
gradual unfreezing, and the two combined with slanted triangular learning rates.

Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text Classification",
ACL, section 3.2 (discriminative fine-tuning, eq. 2; slanted triangular learning rates,
eq. 3, see :func:`harness.train.schedules.stlr_multiplier`) and section 3.3 (gradual
unfreezing). Layer groups play the role of the paper's layers; the head is the top.
"""
from __future__ import annotations

from typing import Optional

from harness.train.strategy import TrainingStrategy
from harness.train.phase import Phase


def discriminative_lrs(groups: list[str], lr: float, factor: float) -> dict:
    """ULMFiT's rates: the top group (the head) gets ``lr``, and each group below gets
    the rate of the group above divided by ``factor`` (eta^{l-1} = eta^l / 2.6)."""
    top = len(groups) - 1
    return {g: lr / factor ** (top - i) for i, g in enumerate(groups)}


def _check_factor(factor) -> float:
    if float(factor) <= 0:
        raise ValueError(f"factor must be > 0, not {factor!r}")
    return float(factor)


class Discriminative(TrainingStrategy):
    """Discriminative fine-tuning (ULMFiT, section 3.2): every layer group trains, each
    with its own rate; the head has the base rate and group l-1 has group l's rate
    divided by ``factor`` ("we found it to work well to first choose the learning rate
    eta^L of the last layer ... and then use eta^{l-1} = eta^l / 2.6").

    Early stopping: one phase on validation loss, best epoch restored. Batch norm:
    statistics update (all layers train).

    Args:
        lr: rate of the head (default: the run's ``lr``).
        factor: ratio between the rates of neighbouring groups (2.6 in the paper).
        schedule: ``constant`` or ``stlr`` (default: the run's ``--schedule``).
    """

    bn_policy = "train"

    def __init__(self, lr: Optional[float] = None, factor: float = 2.6,
                 schedule: Optional[str] = None):
        super().__init__(lr=lr, schedule=schedule)
        self.factor = _check_factor(factor)

    def phases(self, model, ctx):
        groups = [g.name for g in model.layer_groups()]
        return [Phase("all", groups, lr=discriminative_lrs(groups, self.base_lr(ctx),
                                                          self.factor))]


class GradualUnfreezing(TrainingStrategy):
    """Gradual unfreezing (ULMFiT, section 3.3): "We first unfreeze the last layer and
    fine-tune all unfrozen layers for one epoch. We then unfreeze the next lower frozen
    layer and repeat, until we fine-tune all layers until convergence at the last
    iteration."

    One phase: epoch 1 trains the head, epoch k trains the top k groups, and from epoch
    G (G = number of groups) on everything trains. The phase runs at most G - 1 + the
    run's ``epochs`` epochs (or the run's total ``[train] budget``, which caps it like
    every other strategy; a total budget below G - 1 full epochs plus one unit of the
    fully unfrozen model is refused before training, with the smallest ``epochs`` that
    works: docs/strategies.md). Early-stopping patience counts only epochs with every group
    trainable, and the epoch restored at the end is the best of those: the paper's model
    is the fully unfrozen one "fine-tuned until convergence", so a weight set from before
    the bottom group was ever trained is not a candidate.

    Batch norm: frozen groups keep their statistics; a group's batch-norm layers update
    from the epoch it is unfrozen.

    Args:
        lr: learning rate (default: the run's ``lr``).
        schedule: ``constant`` or ``stlr`` (default: the run's ``--schedule``), over the
            whole phase.
    """

    bn_policy = "freeze"
    factor: Optional[float] = None  # no discriminative rates

    def _rates(self, groups: list[str], ctx):
        if self.factor is None:
            return self.lr
        return discriminative_lrs(groups, self.base_lr(ctx), self.factor)

    def phases(self, model, ctx):
        groups = [g.name for g in model.layer_groups()]
        n = len(groups)
        return [Phase("gradual unfreezing", groups, lr=self._rates(groups, ctx),
                      epochs=n - 1 + ctx.settings.epochs, track_from=n - 1)]

    def on_epoch_start(self, model, phase, epoch):
        from harness.train.model import set_trainable
        groups = [g.name for g in model.layer_groups()]
        set_trainable(model, groups[max(0, len(groups) - 1 - epoch):])


class ULMFiT(GradualUnfreezing):
    """The ULMFiT classifier fine-tuning recipe (Howard & Ruder 2018, sections 3.2-3.3):
    gradual unfreezing, with discriminative rates (factor 2.6) and slanted triangular
    learning rates (cut_frac and ratio from the run, 0.1 and 32 by default).

    Early stopping and batch norm: as :class:`GradualUnfreezing`.

    Args:
        lr: maximum rate of the head (default: the run's ``lr``).
        factor: discriminative factor (2.6).
        schedule: ``stlr`` (default) or ``constant``.
    """

    def __init__(self, lr: Optional[float] = None, factor: float = 2.6,
                 schedule: Optional[str] = "stlr"):
        super().__init__(lr=lr, schedule=schedule)
        self.factor = _check_factor(factor)
