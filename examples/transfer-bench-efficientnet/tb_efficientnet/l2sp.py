"""L2-SP fine-tuning: weight decay toward the pretrained weights instead of toward zero.

Li, X., Grandvalet, Y. and Davoine, F. (2018). "Explicit Inductive Bias for Transfer
Learning with Convolutional Networks". ICML 2018, PMLR 80:2825-2834.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

from harness.train.phase import Phase
from harness.train.strategy import Strategy

if TYPE_CHECKING:  # torch is imported where it is used: listing the strategy needs none
    import torch

    from harness.train.loop import History


class L2SP(Strategy):
    """Fine-tune every layer with the L2-SP penalty of Li et al. (2018), eq. (4):

        Omega(w) = alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_Sbar||^2

    where ``w0_S`` are the pretrained (starting point) weights of the backbone layers
    ``S`` and ``w_Sbar`` the new head's weights. The penalty replaces the run's plain
    weight decay (set to 0 while this strategy trains), as in the paper, and is added
    to the gradient of every step (its exact gradient, ``alpha * (w - w0)`` and
    ``beta * w``); recorded training losses are the task loss alone.

    Batch norm: statistics update (every layer is trainable).

    Args:
        alpha: strength of the pull toward the pretrained weights.
        beta: L2 strength on the new head. The paper selects ``alpha`` and ``beta`` by
            cross-validation on the target task; the defaults are a starting point.
        lr: learning rate (default: the run's ``lr``).
    """

    pretrained = True
    bn_policy = "train"

    def __init__(self, alpha: float = 0.1, beta: float = 0.01, lr: float | None = None):
        if alpha < 0 or beta < 0:
            raise ValueError(f"l2sp: alpha and beta must be >= 0 (got alpha={alpha}, beta={beta})")
        self.alpha, self.beta, self.lr = float(alpha), float(beta), lr

    @staticmethod
    def penalty(model, anchors: dict, alpha: float, beta: float) -> torch.Tensor:
        """Omega(w) of eq. (4) for ``model`` given the starting weights ``anchors``."""
        import torch

        total = torch.zeros(())
        for name, p in model.backbone.named_parameters():
            total = total + alpha / 2 * (p - anchors[name]).pow(2).sum()
        for p in model.head.parameters():
            total = total + beta / 2 * p.pow(2).sum()
        return total

    def attach(self, model) -> list:
        """Take the current backbone weights as ``w0`` and add the penalty's gradient to
        every parameter's gradient from now on; returns the hook handles to remove."""
        handles = []
        for p in model.backbone.parameters():
            w0 = p.detach().clone()
            handles.append(p.register_hook(
                lambda g, p=p, w0=w0: g + self.alpha * (p.detach() - w0)))
        for p in model.head.parameters():
            handles.append(p.register_hook(lambda g, p=p: g + self.beta * p.detach()))
        return handles

    def fit(self, model, data, ctx) -> History:
        from harness.train.loop import record_start, run_phase

        handles = self.attach(model)
        ctx_l2sp = copy.copy(ctx)  # same task, data info, progress and generator
        ctx_l2sp.settings = dataclasses.replace(ctx.settings, weight_decay=0.0)
        history = ctx.new_history(len(data.train))
        record_start(model, data.val, ctx, history)
        try:
            run_phase(model, Phase("all (L2-SP)", [g.name for g in model.layer_groups()],
                                   lr=self.lr), data.train, data.val, ctx_l2sp, history,
                      bn_policy=self.bn_policy)
        finally:
            for h in handles:
                h.remove()
        return history
