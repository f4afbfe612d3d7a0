"""Yosinski et al. 2014 layer transfer: AnB, BnB, AnB+ and BnB+."""
from __future__ import annotations

from typing import Optional, Union

from harness.train.strategy import TrainingStrategy
from harness.train.phase import Phase


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
    Groups above ``n`` get fresh random weights from the backbone's own initialisation:
    the backbone is built again by the same function, with the same seed, that builds a
    train-from-scratch cell (``TrainContext.scratch_backbone``), and those groups'
    parameters and batch-norm statistics are copied from it. So the layers AnB trains
    from random start exactly where the scratch cell's start (timm's init, not PyTorch's
    per-module default). The head is new as always.

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
    _fresh = None  # the scratch-build function of the run, set by fit()

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
        if self._fresh is None:
            raise RuntimeError("layer_transfer needs the run's scratch-build function "
                               "(TrainContext.scratch_backbone) to re-initialise layers as a "
                               "scratch cell would; the cell runner sets it")
        copied = set(self.copied_groups(model))
        reinit = {p for g in model.layer_groups() if g.name != "head" and g.name not in copied
                  for p in g.params}
        if not reinit:
            return
        import torch  # here, not at the top: bench list reads the parameters without torch

        with torch.random.fork_rng(devices=[]):  # leave the training RNG as it was
            fresh = self._fresh().state_dict()
        # a module is re-initialised whole: its parameters and its buffers (BN statistics)
        modules = {p[len("backbone."):].rsplit(".", 1)[0] for p in reinit}
        own = model.backbone.state_dict()
        with torch.no_grad():
            for k, v in own.items():
                if k.rsplit(".", 1)[0] in modules:
                    if k not in fresh or fresh[k].shape != v.shape:
                        raise RuntimeError(f"the scratch build has no tensor {k!r} of shape "
                                           f"{tuple(v.shape)}; it is not this backbone")
                    v.copy_(fresh[k])

    def phases(self, model, ctx):
        groups = [g.name for g in model.layer_groups()]
        copied = set(self.copied_groups(model))
        trained = groups if self.fine_tune else [g for g in groups if g not in copied]
        return [Phase("all" if self.fine_tune else f"above {len(copied)}", trained,
                      lr=self.lr)]

    def fit(self, model, data, ctx):
        self._fresh = ctx.scratch_backbone
        return super().fit(model, data, ctx)
