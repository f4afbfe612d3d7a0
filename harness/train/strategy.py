"""Base class of fine-tune strategies: lifecycle methods with no-op defaults.

A strategy is a class (registered through ``register_strategies``) instantiated per
cell with the user's parameters. The default :meth:`Strategy.fit` calls, in order:

1. :meth:`freeze_before_training` - once, before anything is trained;
2. :meth:`phases` - the list of :class:`harness.train.loop.Phase` to run; under a total
   ``[train] budget`` they are checked to fit it (:func:`harness.train.loop.check_budget`:
   every phase gets at least its minimum, or the fit fails here, before training, saying
   which budget would do);
3. the model is evaluated on the validation split (the learning curve's epoch 0,
   ``History.start``);
4. for each phase, :meth:`on_epoch_start` before every epoch.

A strategy with ``shared_checkpoint = True`` keeps one best-so-far checkpoint across its
phases (DeepMoji's chain-thaw): a phase that does not beat it is rolled back.

A strategy also declares what it trains, :meth:`trained_parameters` (default: the
groups its phases name); the test kit checks the declaration against what training
changed.

Override :meth:`fit` only for strategies that do not train by gradient descent on the
model (e.g. a shallow model on extracted features) or that train on cached features.

Parameters: a strategy's parameters are the keywords of its ``__init__``; an unknown one
is an error that lists the accepted ones. :class:`TrainingStrategy` adds the two every
gradient-trained strategy takes: ``lr`` and ``schedule`` (``constant`` or ``stlr``,
overriding the run's ``--schedule`` for this strategy only).
"""
from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, Optional

from ..api.lazy import lazy_exports
from .phase import Phase
from .schedules import SCHEDULES

if TYPE_CHECKING:  # torch-free at import: bench list reads a strategy's parameters
    from .data import DataSplits
    from .loop import History, TrainContext
    from .model import TransferModel


class Strategy:
    """A way of adapting a (pretrained) backbone plus a new head to a target task.

    A worked example with its test: docs/plugins/strategy.md.

    Class attributes:
        pretrained: whether the strategy starts from pretrained weights (False for
            training from scratch, which uses random initialisation).
        bn_policy: ``"freeze"`` (batch-norm layers of frozen groups keep their
            statistics) or ``"train"`` (they update).
        shared_checkpoint: one best-validation-loss checkpoint across all phases (a
            phase that does not improve on it is rolled back) instead of one per phase.

    Args:
        **params: strategy parameters from the command line or matrix file; each must
            be a keyword of the subclass's ``__init__``.
    """

    pretrained: bool = True
    bn_policy: str = "freeze"
    schedule: Optional[str] = None
    shared_checkpoint: bool = False

    def __init__(self, **params: Any):
        if params:
            raise TypeError(f"{type(self).__name__} takes no parameter(s) {sorted(params)}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def checked(self, *args: Any, **params: Any) -> None:
            if self.__dict__.get("_checking_params"):  # a super().__init__ call
                init(self, *args, **params)
                return
            allowed = type(self).parameters()
            unknown = sorted(set(params) - set(allowed))
            if unknown:
                raise TypeError(
                    f"strategy {type(self).__name__} has no parameter(s) {', '.join(unknown)}; "
                    f"it takes: {', '.join(sorted(allowed)) or 'no parameters'}")
            self._checking_params = True
            try:
                init(self, *args, **params)
            finally:
                del self._checking_params

        cls.__init__ = checked

    # -- lifecycle ----------------------------------------------------------------------
    def freeze_before_training(self, model: TransferModel) -> None:
        """Called once before training. Default: nothing."""

    def phases(self, model: TransferModel, ctx: TrainContext) -> list[Phase]:
        """The phases to train. Default: everything, in one phase."""
        return [Phase("all", [g.name for g in model.layer_groups()])]

    def on_epoch_start(self, model: TransferModel, phase: Phase, epoch: int) -> None:
        """Called before every epoch of every phase. Default: nothing."""

    def trained_parameters(self, model: TransferModel, ctx: TrainContext) -> list[str]:
        """Names (as in ``model.named_parameters()``) of every parameter this strategy may
        change; it promises to leave all others bit-identical.

        The test kit's :func:`harness.testkit.check_strategy` holds a strategy to it: each
        parameter named here must change in a short training run and every other must keep
        its exact bytes. Default: the parameters of the layer groups that :meth:`phases`
        names. Override it when ``on_epoch_start`` freezes part of a group (e.g. all but
        the biases) or when ``fit`` is overridden.
        """
        named = {g.name: g.params for g in model.layer_groups()}
        groups = {g for ph in self.phases(model, ctx) for g in ph.groups}
        return [p for g in model.layer_groups() if g.name in groups for p in named[g.name]]

    # -- driver -------------------------------------------------------------------------
    def fit(self, model: TransferModel, data: DataSplits, ctx: TrainContext) -> History:
        """Train ``model`` on ``data``; return its learning curves."""
        from .loop import BestSoFar, check_budget, record_start, run_phase

        history = ctx.new_history(len(data.train), model, data.train)
        self.freeze_before_training(model)
        phases = self.phases(model, ctx)
        needs = check_budget(phases, ctx.settings, len(data.train), type(self).__name__,
                             ctx.reference_flops)
        record_start(model, data.val, ctx, history)
        best = BestSoFar() if self.shared_checkpoint else None
        for i, phase in enumerate(phases):
            if phase.schedule is None:
                phase.schedule = self.schedule
            run_phase(model, phase, data.train, data.val, ctx, history,
                      on_epoch_start=lambda e, p: self.on_epoch_start(model, p, e),
                      bn_policy=self.bn_policy, best_so_far=best,
                      phases_left=len(phases) - i, reserve=sum(needs[i + 1:]) if needs else 0)
        return history

    @classmethod
    def parameters(cls) -> dict:
        """Parameters the strategy accepts, with their defaults (for ``bench list``)."""
        sig = inspect.signature(cls.__init__)
        return {n: (p.default if p.default is not inspect.Parameter.empty else None)
                for n, p in sig.parameters.items()
                if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


class TrainingStrategy(Strategy):
    """Base of strategies trained by gradient descent; takes ``lr`` and ``schedule``.

    Args:
        lr: maximum learning rate (default: the run's ``lr``).
        schedule: ``"constant"`` or ``"stlr"`` (slanted triangular, Howard & Ruder 2018);
            default: the run's ``--schedule``.
    """

    def __init__(self, lr: Optional[float] = None, schedule: Optional[str] = None):
        if lr is not None and float(lr) <= 0:
            raise ValueError(f"lr must be > 0, not {lr!r}")
        if schedule is not None and schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
        self.lr = float(lr) if lr is not None else None
        self.schedule = schedule

    def base_lr(self, ctx: TrainContext) -> float:
        """This strategy's maximum learning rate."""
        return self.lr if self.lr is not None else ctx.settings.lr


#: :class:`harness.train.model.HeadOnly`, its home before this module became torch-free
__getattr__ = lazy_exports(__name__, {"HeadOnly": (".model", "HeadOnly")})
