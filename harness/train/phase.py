"""A stretch of training (:class:`Phase`), torch-free: strategy modules import it at their
top, and ``bench list`` imports strategy modules without torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .schedules import SCHEDULES


@dataclass
class Phase:
    """One stretch of training.

    Attributes:
        name: shown in learning curves ("new layers", "backbone.layer1", "all"...).
        groups: names of the layer groups trained in this phase.
        lr: one learning rate for all groups, or a mapping group name -> rate.
        epochs: maximum epochs (``None``: the settings' ``epochs``).
        restore_best: load the best-validation-loss weights when the phase ends.
        early_stopping: stop when validation loss stops improving.
        schedule: ``"constant"`` or ``"stlr"``; ``None`` uses the settings' schedule.
        track_from: the first epoch (0-based, within the phase) that may become the best
            and from which early-stopping patience counts (gradual unfreezing: the first
            epoch with every group trainable).
        eval_modules: names of submodules kept in eval mode while training (a frozen
            backbone whose dropout and batch norm must behave as at inference).
        patience: early-stopping patience of this phase (``None``: the settings').
        clip_norm: clip the global gradient norm of each step to this (``None``: no clip).
    """

    name: str
    groups: list
    lr: object = None
    epochs: Optional[int] = None
    restore_best: bool = True
    early_stopping: bool = True
    schedule: Optional[str] = None
    track_from: int = 0
    eval_modules: tuple = ()
    patience: Optional[int] = None
    clip_norm: Optional[float] = None

    def __post_init__(self) -> None:
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"phase {self.name!r}: schedule must be one of "
                             f"{', '.join(SCHEDULES)}, not {self.schedule!r}")

    def lr_for(self, group: str, default: float) -> float:
        if isinstance(self.lr, dict):
            return float(self.lr.get(group, default))
        return float(self.lr) if self.lr is not None else default
