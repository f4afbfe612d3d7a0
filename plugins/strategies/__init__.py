"""Built-in fine-tune strategies, one module per strategy family.

Every strategy that trains stops early when validation loss stops improving ("fine-tune
... until validation loss starts to increase", lecture), restores its best epoch, and
documents its batch-norm policy. Parameters are given as ``NAME,key=value`` on the
command line (``--strategy layer_transfer,n=3,fine_tune=true``) or as a table in a matrix
file (``{name = "discriminative", factor = 2.6}``).
"""
from __future__ import annotations

from harness import StrategySpec, hookimpl

from .basic import FineTune, Scratch
from .chain_thaw import ChainThaw
from .frozen import Frozen
from .layer_transfer import LayerTransfer
from .offtheshelf import OffTheShelf
from .ulmfit import ULMFiT, Discriminative, GradualUnfreezing

__all__ = ["Scratch", "Frozen", "FineTune", "OffTheShelf", "ChainThaw", "GradualUnfreezing",
           "Discriminative", "ULMFiT", "LayerTransfer"]


@hookimpl
def register_strategies():
    return [
        StrategySpec("scratch", cls=Scratch,
                     description="model 1: random init, train everything"),
        StrategySpec("frozen", cls=Frozen,
                     description="model 2: frozen pretrained backbone, train the new head "
                                 "on cached features"),
        StrategySpec("finetune", cls=FineTune,
                     description="model 3: pretrained backbone, fine-tune everything"),
        StrategySpec("offtheshelf", cls=OffTheShelf,
                     description="off-the-shelf features: L2-normalised, linear SVM, C picked "
                                 "on validation (Razavian et al. 2014); model=logreg, "
                                 "normalize=standard, C=1 for the older recipe"),
        StrategySpec("chain_thaw", cls=ChainThaw,
                     description="model 4: new layers (new_lr), each group first to last, then "
                                 "all (lr); one best-so-far checkpoint, phases that do not beat "
                                 "it rolled back (Felbo et al. 2017, DeepMoji)"),
        StrategySpec("gradual_unfreezing", cls=GradualUnfreezing,
                     description="unfreeze one more group from the top each epoch "
                                 "(Howard & Ruder 2018, ULMFiT)"),
        StrategySpec("discriminative", cls=Discriminative,
                     description="per-group rates, lower = upper / factor (2.6) "
                                 "(Howard & Ruder 2018, ULMFiT)"),
        StrategySpec("ulmfit", cls=ULMFiT,
                     description="ULMFiT recipe: discriminative + gradual unfreezing + STLR "
                                 "(Howard & Ruder 2018)"),
        StrategySpec("layer_transfer", cls=LayerTransfer,
                     description="copy first n groups, re-init the rest; fine_tune=false: "
                                 "AnB/BnB, true: AnB+/BnB+ (Yosinski et al. 2014)"),
    ]
