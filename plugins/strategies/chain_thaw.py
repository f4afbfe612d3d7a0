"""Chain-thaw (Felbo et al. 2017), the lecture's model 4."""
from __future__ import annotations

from typing import Optional

from harness.train.strategy import TrainingStrategy
from harness.train.loop import Phase


class ChainThaw(TrainingStrategy):
    """Chain-thaw: Felbo, Mislove, Søgaard, Rahwan & Lehmann 2017, "Using millions of
    emoji occurrences to learn any-domain representations for detecting sentiment,
    emotion and sarcasm" (DeepMoji), section 3.3.

    The paper: "Chain-thaw first fine-tunes any new layers (often only a Softmax layer)
    to the target task until convergence on a validation set. Then, the approach
    fine-tunes each layer individually starting from the first layer in the network.
    Lastly, the entire model is trained with all layers. Each time the model converges
    as measured on the validation set, the weights are reloaded to the best setting."

    So the phases are: ``new layers`` (the head), then each backbone layer group alone,
    from the first (input side) to the last, then ``all``. Each phase stops early when
    validation loss stops improving and restores its best weights before the next.

    Batch norm: frozen layers keep their statistics; in each phase only the batch-norm
    layers of the group being trained update theirs (all of them in the last phase).

    Args:
        lr: learning rate of every phase (default: the run's ``lr``; the paper uses a
            small rate for the layer-wise phases).
        epochs_per_phase: maximum epochs of each phase (default: the run's ``epochs``).
        schedule: ``constant`` or ``stlr``, restarted in each phase.
    """

    bn_policy = "freeze"

    def __init__(self, lr: Optional[float] = None, epochs_per_phase: Optional[int] = None,
                 schedule: Optional[str] = None):
        super().__init__(lr=lr, schedule=schedule)
        if epochs_per_phase is not None and int(epochs_per_phase) < 1:
            raise ValueError(f"epochs_per_phase must be >= 1, not {epochs_per_phase!r}")
        self.epochs_per_phase = int(epochs_per_phase) if epochs_per_phase else None

    def phases(self, model, ctx):
        groups = [g.name for g in model.layer_groups()]
        backbone = [g for g in groups if g != "head"]
        kw = dict(lr=self.lr, epochs=self.epochs_per_phase)
        return ([Phase("new layers", ["head"], **kw)]
                + [Phase(g, [g], **kw) for g in backbone]
                + [Phase("all", groups, **kw)])
