"""The training loop every strategy shares: phases, early stopping, learning curves.

A strategy describes *what* to train (a list of :class:`Phase`); this module does the
training. Each phase trains the named layer groups with their learning rates, stops
early when the validation loss has not improved for ``patience`` epochs ("until
validation loss starts to increase", as the lecture says) and, by default, restores
the weights of its best epoch before the next phase starts.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from .data import DataInfo, TensorSplit
from .device import AMPS, Precision, parse_amp, place_module, runtime_device, to_device
from .model import TransferModel, group_modules, set_trainable
from .schedules import SCHEDULES, stlr_multiplier
from .task import Task


@dataclass
class TrainSettings:
    """Settings shared by every strategy; strategies may override per phase.

    Attributes:
        epochs: maximum epochs of a phase.
        batch_size: training batch size.
        lr: maximum learning rate.
        weight_decay: AdamW weight decay.
        patience: epochs without a better validation loss before a phase stops.
        schedule: ``"constant"`` or ``"stlr"`` (slanted triangular, ULMFiT).
        cut_frac, ratio: STLR parameters (defaults from the ULMFiT paper).
        seed: seeds weight init of new layers and batch order.
        device: ``auto`` (CUDA when PyTorch sees a GPU, else the CPU), ``cpu``, ``cuda`` or
            ``cuda:N`` (:mod:`harness.train.device`). Model, heads, cached features, batches and
            metrics all live there.
        amp: mixed precision: ``auto`` (CUDA: bf16 where supported, else fp16; CPU: off),
            ``off`` (fp32), ``bf16`` or ``fp16`` (autocast; fp16 with a gradient scaler).
            Evaluation runs in the same precision; losses and metrics are computed in fp32.
        channels_last: train (and evaluate) in the channels-last memory layout.
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` on CUDA (cuDNN picks the fastest
            convolution algorithm per shape; off keeps results reproducible).
        compile: ``torch.compile`` the training and evaluation forward passes.
        eval_batch_size: batch size of evaluation and prediction; 0 follows ``batch_size``
            (large batches were measured slower per image than 64 on our 2-core CPUs).
        augment: random horizontal flips of training images (half of each batch), with
            their targets mirrored by the task (``Task.flip_targets``: boxes and keypoints
            follow the image, left/right keypoints swap).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 2
    schedule: str = "constant"
    cut_frac: float = 0.1
    ratio: float = 32.0
    seed: int = 0
    device: str = "auto"
    augment: bool = False
    amp: str = "auto"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    eval_batch_size: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, "
                             f"not {self.schedule!r}")
        if str(self.amp).lower() not in AMPS + ("fp32",):
            raise ValueError(f"amp must be one of {', '.join(AMPS)}, not {self.amp!r}")
        if self.eval_batch_size < 0:
            raise ValueError("eval_batch_size must be >= 0 (0: the training batch size)")


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
        min_epochs: early stopping cannot end the phase before this many epochs (gradual
            unfreezing must reach the bottom group first).
        eval_modules: names of submodules kept in eval mode while training (a frozen
            backbone whose dropout and batch norm must behave as at inference).
    """

    name: str
    groups: list
    lr: object = None
    epochs: Optional[int] = None
    restore_best: bool = True
    early_stopping: bool = True
    schedule: Optional[str] = None
    min_epochs: int = 0
    eval_modules: tuple = ()

    def __post_init__(self) -> None:
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"phase {self.name!r}: schedule must be one of "
                             f"{', '.join(SCHEDULES)}, not {self.schedule!r}")

    def lr_for(self, group: str, default: float) -> float:
        if isinstance(self.lr, dict):
            return float(self.lr.get(group, default))
        return float(self.lr) if self.lr is not None else default


@dataclass
class EpochRecord:
    phase: str
    epoch: int
    train_loss: float
    train_metric: float
    val_loss: float
    val_metric: float
    lr: float
    seconds: float
    trainable_groups: list = field(default_factory=list)


@dataclass
class History:
    """Per-epoch learning curves and the phases that produced them."""

    epochs: list = field(default_factory=list)
    phases: list = field(default_factory=list)  # [{name, groups, epochs_run, best_epoch, ...}]
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"epochs": [vars(e) for e in self.epochs], "phases": self.phases,
                "seconds": self.seconds}


class TrainContext:
    """Everything a strategy needs besides the model and the data."""

    def __init__(self, task: Task, info: DataInfo, settings: TrainSettings,
                 progress: Optional[Callable[[str], None]] = None):
        self.task = task
        self.info = info
        self.settings = settings
        self.progress = progress or (lambda msg: None)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.device = runtime_device(settings.device)
        self.precision = Precision(self.device, parse_amp(settings.amp, self.device))
        self._compiled: dict = {}
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(settings.cudnn_benchmark)

    @property
    def eval_batch_size(self) -> int:
        return self.settings.eval_batch_size or self.settings.batch_size

    def place(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the training device (and layout); idempotent."""
        return place_module(module, self.device, self.settings.channels_last)

    def forward(self, module: nn.Module) -> nn.Module:
        """What to call for ``module``'s forward pass: ``torch.compile(module)`` (built once
        per module) with ``compile``, else the module itself. State dicts, modes and
        parameters stay the module's own."""
        if not self.settings.compile:
            return module
        key = id(module)
        if key not in self._compiled or self._compiled[key][0] is not module:
            self._compiled[key] = (module, torch.compile(module))
        return self._compiled[key][1]

    def batches(self, split: TensorSplit, batch_size: int, **kw):
        """``split.batches`` on this context's device and layout."""
        return split.batches(batch_size, device=self.device,
                             channels_last=self.settings.channels_last, **kw)


def flip_augment(task: Task, info: DataInfo) -> Callable:
    """``augment(x, y, generator)``: mirror a random half of the batch, images and targets,
    in place (``TensorSplit.batches`` hands it the batch's own copies).

    Raises:
        NotImplementedError: the task cannot mirror its targets (the message says so).
    """
    if type(task).flip_targets is Task.flip_targets:  # fail before training, not mid-epoch
        task.flip_targets(None, info)

    def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
        # x and y are the batch's own copies (TensorSplit.batches indexes), so in place is safe
        mask = torch.rand(len(x), generator=g) < 0.5
        if mask.any():
            mask = mask.to(x.device)
            x[mask] = x[mask].flip(-1)
            y[mask] = task.flip_targets(y[mask], info)
        return x, y

    return augment


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (the CPU for an empty one)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict(module: nn.Module, split: TensorSplit, batch_size: int = 64,
            precision: Optional[Precision] = None, channels_last: bool = False) -> torch.Tensor:
    """fp32 outputs of ``module`` on a whole split, in eval mode, on the module's device
    (batches are copied there), in ``precision``'s autocast when given."""
    was_training = module.training
    module.eval()
    dev = module_device(module)
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        outs = [module(x).float()
                for x, _ in split.batches(batch_size, device=dev, channels_last=channels_last)]
    module.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, device=dev)


def evaluate(module: nn.Module, split: TensorSplit, ctx: TrainContext) -> tuple[float, dict]:
    """(loss, metrics) of ``module`` on ``split``, computed on the module's device."""
    out = predict(ctx.forward(module), split, ctx.eval_batch_size, ctx.precision,
                  ctx.settings.channels_last)
    targets = to_device(split.targets, out.device)
    with torch.no_grad():
        loss = float(ctx.task.loss(out, targets))
    return loss, ctx.task.metrics(out, targets, ctx.info)


def run_phase(model: nn.Module, phase: Phase, train: TensorSplit, val: TensorSplit,
              ctx: TrainContext, history: History, groups_model: Optional[TransferModel] = None,
              on_epoch_start: Optional[Callable] = None, bn_policy: str = "freeze") -> float:
    """Train one phase; return its best validation loss.

    Args:
        model: the module trained (the full model, or a head on cached features).
        phase: what to train.
        groups_model: the model whose layer groups ``phase.groups`` names (defaults to
            ``model``).
        on_epoch_start: ``f(epoch, phase)`` called before each epoch (gradual unfreezing).
        bn_policy: ``"freeze"`` keeps batch-norm layers of frozen groups in eval mode, so
            their running statistics stay those of the pretrained weights; ``"train"``
            lets them update.
    """
    s = ctx.settings
    gm = groups_model if groups_model is not None else model
    ctx.place(model)
    forward = ctx.forward(model)
    precision = ctx.precision
    set_trainable(gm, phase.groups)
    param_groups = []
    for g in gm.layer_groups():
        params = [p for n, p in gm.named_parameters() if n in set(g.params)]
        if params:
            param_groups.append({"params": params, "lr": phase.lr_for(g.name, s.lr),
                                 "group": g.name})
    for pg in param_groups:
        pg["max_lr"] = pg["lr"]
    opt = torch.optim.AdamW(param_groups, weight_decay=s.weight_decay)
    schedule = phase.schedule or s.schedule
    max_epochs = phase.epochs or s.epochs
    steps_per_epoch = max(1, -(-len(train) // s.batch_size))
    total_steps = max_epochs * steps_per_epoch
    # the rate of step t is max_lr * stlr(t, T): LambdaLR sets it, one scheduler step per batch
    sched = (torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: stlr_multiplier(t, total_steps, s.cut_frac, s.ratio))
        if schedule == "stlr" else None)
    last_lr = opt.param_groups[-1]["lr"]
    best_loss, best_state, best_epoch, wait = float("inf"), None, -1, 0
    augment = (flip_augment(ctx.task, ctx.info)
               if s.augment and train.images.dtype == torch.uint8 else None)
    t_phase = time.perf_counter()
    epochs_run = 0
    for epoch in range(max_epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch, phase)
        trainable = [g.name for g in gm.layer_groups()
                     if any(dict(gm.named_parameters())[p].requires_grad for p in g.params)]
        model.train()
        if bn_policy == "freeze":
            for g in gm.layer_groups():
                if g.name not in trainable:
                    for m in group_modules(gm, g):
                        if isinstance(m, nn.modules.batchnorm._BatchNorm):
                            m.eval()
        for name in phase.eval_modules:
            model.get_submodule(name).eval()
        t0 = time.perf_counter()
        tot_loss, n_seen, outs, tgts = 0.0, 0, [], []
        for x, y in ctx.batches(train, s.batch_size, shuffle=True, generator=ctx.generator,
                                augment=augment):
            last_lr = opt.param_groups[-1]["lr"]
            with precision.autocast():
                out = forward(x)
                loss = ctx.task.loss(out, y)
            opt.zero_grad(set_to_none=True)
            precision.step(loss, opt)
            if sched is not None:
                sched.step()
            # summed on the device: no host sync per batch on CUDA
            tot_loss = tot_loss + loss.detach().double() * len(x)
            n_seen += len(x)
            outs.append(out.detach())
            tgts.append(y)
        tot_loss = float(tot_loss)
        train_metric = ctx.task.metrics(torch.cat(outs).float(), torch.cat(tgts), ctx.info)
        val_loss, val_metrics = evaluate(model, val, ctx)
        pm = ctx.task.primary_metric
        rec = EpochRecord(phase=phase.name, epoch=len(history.epochs), train_loss=tot_loss / max(n_seen, 1),
                          train_metric=float(train_metric[pm]), val_loss=val_loss,
                          val_metric=float(val_metrics[pm]),
                          lr=float(last_lr), seconds=time.perf_counter() - t0,
                          trainable_groups=trainable)
        history.epochs.append(rec)
        epochs_run += 1
        ctx.progress(f"{phase.name} epoch {epoch + 1}/{max_epochs} val_loss={val_loss:.4f} "
                     f"val_{pm}={rec.val_metric:.4f}")
        if val_loss < best_loss - 1e-7:
            best_loss, best_epoch, wait = val_loss, epoch, 0
            if phase.restore_best:
                best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
            if phase.early_stopping and wait >= s.patience and epochs_run >= phase.min_epochs:
                break
    if phase.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    history.phases.append({"name": phase.name, "groups": list(phase.groups),
                           "epochs_run": epochs_run, "best_epoch": best_epoch,
                           "best_val_loss": best_loss, "restored_best": bool(phase.restore_best),
                           "schedule": schedule,
                           "lrs": {pg["group"]: pg["max_lr"] for pg in opt.param_groups},
                           "seconds": time.perf_counter() - t_phase})
    return best_loss
