"""Built-in fine-tune strategies, one module per strategy family.

Every strategy that trains stops early when validation loss stops improving ("fine-tune
... until validation loss starts to increase", lecture), restores its best epoch, and
documents its batch-norm policy. Parameters are given as ``NAME,key=value`` on the
command line (``--strategy layer_transfer,n=3,fine_tune=true``) or as a table in a matrix
file (``{name = "discriminative", factor = 2.6}``).
"""
from __future__ import annotations

from harness.api.lazy import lazy_exports
from harness import SearchDim, StrategySpec, hookimpl

__all__ = ["Scratch", "Frozen", "FineTune", "OffTheShelf", "ChainThaw", "GradualUnfreezing",
           "Discriminative", "ULMFiT", "LayerTransfer"]


#: AdamW weight decay, searched for every gradient-trained strategy: Kornblith et al. 2019
#: ("Do Better ImageNet Models Transfer Better?", section 3) tune it with the learning rate,
#: over a log grid of roughly this range; the run's default is 1e-4.
WEIGHT_DECAY = SearchDim("weight_decay", 1e-6, 1e-2, default=1e-4)
#: Training from scratch takes larger rates than fine-tuning (Li et al. 2020, "Rethinking
#: the Hyperparameters for Fine-tuning", section 3: the best fine-tuning rate is lower the
#: closer source and target are); a new head alone (frozen) tolerates large rates too.
SCRATCH_SPACE = (SearchDim("lr", 1e-4, 1e-1, default=1e-3), WEIGHT_DECAY)
#: Fine-tuning pretrained weights: "fine-tune with a smaller learning rate" (lecture);
#: Li et al. 2020 and Kornblith et al. 2019 search about 1e-5..1e-2 with Adam-type optimizers.
FINETUNE_SPACE = (SearchDim("lr", 1e-5, 1e-2, default=1e-3), WEIGHT_DECAY)
#: DeepMoji (Felbo et al. 2017) uses Adam at 1e-3 for the new layers and 1e-4 afterwards:
#: each rate is searched a decade either side of the paper's value.
CHAIN_THAW_SPACE = (SearchDim("new_lr", 1e-4, 1e-2, default=1e-3),
                    SearchDim("lr", 1e-5, 1e-3, default=1e-4), WEIGHT_DECAY)


@hookimpl
def register_strategies():
    # imported here, not at the top: importing the plugin (bench --help) stays cheap
    from .basic import FineTune, Scratch
    from .chain_thaw import ChainThaw
    from .frozen import Frozen
    from .layer_transfer import LayerTransfer
    from .offtheshelf import OffTheShelf
    from .ulmfit import ULMFiT, Discriminative, GradualUnfreezing
    return [
        StrategySpec("scratch", cls=Scratch, search_space=SCRATCH_SPACE,
                     description="model 1: random init, train everything"),
        StrategySpec("frozen", cls=Frozen, search_space=SCRATCH_SPACE,
                     description="model 2: frozen pretrained backbone, train the new head "
                                 "on cached features"),
        StrategySpec("finetune", cls=FineTune, search_space=FINETUNE_SPACE,
                     description="model 3: pretrained backbone, fine-tune everything"),
        StrategySpec("offtheshelf", cls=OffTheShelf,
                     description="off-the-shelf features: L2-normalised, linear SVM, C picked "
                                 "on validation (Razavian et al. 2014); model=logreg, "
                                 "normalize=standard, C=1 for the older recipe"),
        StrategySpec("chain_thaw", cls=ChainThaw, search_space=CHAIN_THAW_SPACE,
                     description="model 4: new layers (new_lr), each group first to last, then "
                                 "all (lr); one best-so-far checkpoint, phases that do not beat "
                                 "it rolled back (Felbo et al. 2017, DeepMoji)"),
        StrategySpec("gradual_unfreezing", cls=GradualUnfreezing, search_space=FINETUNE_SPACE,
                     description="unfreeze one more group from the top each epoch "
                                 "(Howard & Ruder 2018, ULMFiT)"),
        StrategySpec("discriminative", cls=Discriminative, search_space=FINETUNE_SPACE,
                     description="per-group rates, lower = upper / factor (2.6) "
                                 "(Howard & Ruder 2018, ULMFiT)"),
        StrategySpec("ulmfit", cls=ULMFiT, search_space=FINETUNE_SPACE,
                     description="ULMFiT recipe: discriminative + gradual unfreezing + STLR "
                                 "(Howard & Ruder 2018)"),
        StrategySpec("layer_transfer", cls=LayerTransfer, search_space=FINETUNE_SPACE,
                     description="copy first n groups, re-init the rest; fine_tune=false: "
                                 "AnB/BnB, true: AnB+/BnB+ (Yosinski et al. 2014)"),
    ]


# what used to be imported at the top, imported on first use
__getattr__ = lazy_exports(__name__, {
    'FineTune': ('.basic', 'FineTune'),
    'Scratch': ('.basic', 'Scratch'),
    'ChainThaw': ('.chain_thaw', 'ChainThaw'),
    'Frozen': ('.frozen', 'Frozen'),
    'LayerTransfer': ('.layer_transfer', 'LayerTransfer'),
    'OffTheShelf': ('.offtheshelf', 'OffTheShelf'),
    'ULMFiT': ('.ulmfit', 'ULMFiT'),
    'Discriminative': ('.ulmfit', 'Discriminative'),
    'GradualUnfreezing': ('.ulmfit', 'GradualUnfreezing'),
})
