"""Chain-thaw (Felbo et al. 2017), the lecture's model 4."""
from __future__ import annotations

from typing import Optional

from harness.train.strategy import TrainingStrategy
from harness.train.phase import Phase

#: DeepMoji's ``train_by_chain_thaw`` defaults: Adam at 1e-3 for the new layers, 1e-4 for
#: every later phase, gradients clipped to norm 1, early-stopping patience 5.
PAPER_NEW_LR, PAPER_LR, PAPER_CLIP_NORM, PAPER_PATIENCE = 1e-3, 1e-4, 1.0, 5
LR_RATIO = 10  # PAPER_NEW_LR / PAPER_LR


class ChainThaw(TrainingStrategy):
    """Chain-thaw: Felbo, Mislove, Søgaard, Rahwan & Lehmann 2017, "Using millions of
    emoji occurrences to learn any-domain representations for detecting sentiment,
    emotion and sarcasm" (DeepMoji), section 3.3, and its reference code
    (``deepmoji/finetuning.py``, ``chain_thaw`` / ``train_by_chain_thaw``).

    The paper: "Chain-thaw first fine-tunes any new layers (often only a Softmax layer)
    to the target task until convergence on a validation set. Then, the approach
    fine-tunes each layer individually starting from the first layer in the network.
    Lastly, the entire model is trained with all layers. Each time the model converges
    as measured on the validation set, the weights are reloaded to the best setting."

    So the phases are: ``new layers`` (the head), then each backbone layer group alone,
    from the first (input side) to the last, then ``all``. As in the reference code, one
    checkpoint (monitor ``val_loss``, best only) is shared by all phases and each phase
    ends by reloading it: a phase whose epochs never beat the best validation loss so far
    is rolled back (its epochs are marked ``rolled_back`` in the learning curve, the phase
    record says so, and the table counts it). Early stopping restarts in each phase
    (Keras' ``EarlyStopping`` resets at the start of every ``fit``).

    Learning rates: the reference code uses Adam at ``initial_lr = 1e-3`` for the new
    layers and ``next_lr = 1e-4`` for every later phase, with ``clipnorm = 1``. Our
    optimizer is AdamW (Adam with decoupled weight decay), so Adam's rates carry over one
    to one: ``new_lr`` defaults to the run's ``lr`` (1e-3 unless set, the paper's value)
    and ``lr`` to ``new_lr`` x 1e-4 / 1e-3, keeping the paper's ratio of 10 when the run's
    rate is changed. Gradients are clipped to global norm ``clip_norm`` (1.0, as the
    paper's ``clipnorm``).

    Batch norm: frozen layers keep their statistics; in each phase only the batch-norm
    layers of the group being trained update theirs (all of them in the last phase).

    Args:
        new_lr: rate of the first phase, the new layers (default: the run's ``lr``).
        lr: rate of every later phase (default: ``new_lr`` / 10, DeepMoji's ratio).
        patience: early-stopping patience of every phase (default: the run's
            ``patience``; DeepMoji's own default is 5).
        epochs_per_phase: maximum epochs of each phase (default: the run's ``epochs``,
            or the phase's share of a total ``[train] budget``). Under a total budget
            every phase gets at least one epoch (step, batch of images): a budget smaller
            than the number of phases is refused before training, with the smallest
            ``epochs`` that runs them all (docs/strategies.md).
        clip_norm: global gradient-norm clip (DeepMoji: 1.0); 0 turns it off.
        schedule: ``constant`` or ``stlr``, restarted in each phase.
    """

    bn_policy = "freeze"
    shared_checkpoint = True

    def __init__(self, new_lr: Optional[float] = None, lr: Optional[float] = None,
                 patience: Optional[int] = None, epochs_per_phase: Optional[int] = None,
                 clip_norm: float = PAPER_CLIP_NORM, schedule: Optional[str] = None):
        super().__init__(lr=lr, schedule=schedule)
        if new_lr is not None and float(new_lr) <= 0:
            raise ValueError(f"new_lr must be > 0, not {new_lr!r}")
        for name, v in (("epochs_per_phase", epochs_per_phase), ("patience", patience)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1, not {v!r}")
        if float(clip_norm) < 0:
            raise ValueError(f"clip_norm must be >= 0, not {clip_norm!r}")
        self.new_lr = float(new_lr) if new_lr is not None else None
        self.patience = patience
        self.epochs_per_phase = epochs_per_phase
        self.clip_norm = float(clip_norm) or None

    def rates(self, ctx) -> tuple[float, float]:
        """``(new_lr, lr)``: the new layers' rate and every later phase's."""
        new_lr = self.new_lr if self.new_lr is not None else ctx.settings.lr
        lr = self.lr if self.lr is not None else new_lr / LR_RATIO
        return new_lr, lr

    def phases(self, model, ctx):
        groups = [g.name for g in model.layer_groups()]
        backbone = [g for g in groups if g != "head"]
        new_lr, lr = self.rates(ctx)
        kw = dict(epochs=self.epochs_per_phase, patience=self.patience,
                  clip_norm=self.clip_norm)
        return ([Phase("new layers", ["head"], lr=new_lr, **kw)]
                + [Phase(g, [g], lr=lr, **kw) for g in backbone]
                + [Phase("all", groups, lr=lr, **kw)])
