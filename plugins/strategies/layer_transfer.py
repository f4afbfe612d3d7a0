"""Yosinski et al. 2014 layer transfer: AnB, BnB, AnB+ and BnB+."""
from __future__ import annotations

from typing import Optional, Union

import torch

from harness.train.model import group_modules
from harness.train.strategy import TrainingStrategy
from harness.train.loop import Phase


class LayerTransfer(TrainingStrategy):
    """Copy the first ``n`` layer groups of a source network; re-initialise the rest.

    Yosinski, Clune, Bengio & Lipson 2014, "How transferable are features in deep neural
    networks?", NeurIPS, section 2: "A selffer network B3B: the first 3 layers are
    copied from baseB and frozen. The five higher layers (4-8) are initialized randomly
    and trained on dataset B ... A transfer network A3B: the first 3 layers are copied
    from baseA and frozen. The five higher layers (4-8) are initialized randomly and
    trained toward dataset B ... B3B+ and A3B+ are just like B3B and A3B, but where all
    layers learn."

    The source network is the backbone's weights, loaded before ``fit`` by the weight
    source of the run (``--weights resnet18=source:DATASET`` pretrains it on DATASET).
    Whether a cell is AnB or BnB is only which dataset those weights were trained on:
    source A and target B gives AnB; source and target the same dataset B gives BnB,
    the selffer control. Backbone layer groups play the role of the paper's layers.
    Groups above ``n`` get fresh random weights (``reset_parameters`` of their modules,
    seeded with the run's seed); the head is new as always.

    Early stopping: one phase on validation loss, best epoch restored. Batch norm:
    frozen copied groups keep the source statistics (``fine_tune=False``); everything
    updates with ``fine_tune=True``.

    Args:
        n: number of backbone layer groups copied from the source (0 .. all, or
            ``"all"``).
        fine_tune: False: copied groups frozen (AnB/BnB); True: they train too
            (AnB+/BnB+).
        lr: learning rate (default: the run's ``lr``).
        schedule: ``constant`` or ``stlr`` (default: the run's ``--schedule``).
    """

    bn_policy = "freeze"
    _seed = 0  # the run's seed, set by fit() before freeze_before_training

    def __init__(self, n: Union[int, str] = 1, fine_tune: bool = False,
                 lr: Optional[float] = None, schedule: Optional[str] = None):
        super().__init__(lr=lr, schedule=schedule)
        if n != "all" and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"layer_transfer n must be an integer >= 0 or 'all', not {n!r}")
        if not isinstance(fine_tune, bool):
            raise ValueError(f"fine_tune must be true or false, not {fine_tune!r}")
        self.n = n
        self.fine_tune = fine_tune
        if fine_tune:
            self.bn_policy = "train"

    def copied_groups(self, model) -> list[str]:
        """Names of the backbone groups kept from the source network."""
        backbone = [g.name for g in model.layer_groups() if g.name != "head"]
        n = len(backbone) if self.n == "all" else self.n
        if n > len(backbone):
            raise ValueError(f"layer_transfer n={n} but the backbone has {len(backbone)} "
                             f"layer groups ({', '.join(backbone)}); use n=0..{len(backbone)}")
        return backbone[:n]

    def freeze_before_training(self, model) -> None:
        copied = set(self.copied_groups(model))
        torch.manual_seed(self._seed)
        for g in model.layer_groups():
            if g.name == "head" or g.name in copied:
                continue
            for m in group_modules(model, g):
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()

    def phases(self, model, ctx):
        groups = [g.name for g in model.layer_groups()]
        copied = set(self.copied_groups(model))
        trained = groups if self.fine_tune else [g for g in groups if g not in copied]
        return [Phase("all" if self.fine_tune else f"above {len(copied)}", trained,
                      lr=self.lr)]

    def fit(self, model, data, ctx):
        self._seed = ctx.settings.seed
        return super().fit(model, data, ctx)
