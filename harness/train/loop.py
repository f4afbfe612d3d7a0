"""The training loop every strategy shares: phases, early stopping, learning curves.

A strategy describes *what* to train (a list of :class:`Phase`); this module does the
training. Each phase trains the named layer groups with their learning rates, stops
early when the validation loss has not improved for ``patience`` epochs ("until
validation loss starts to increase", as the lecture says) and, by default, restores
the weights of its best epoch before the next phase starts.

Budgets. Every run counts what it spends (:class:`Usage`): epochs, optimizer steps,
training images seen and training FLOPs (forward and backward of every optimizer step,
counted by ``torch.utils.flop_counter`` on the first step of each set of trainable
groups and scaled by the batch size; validation passes are not training and are not
counted). ``TrainSettings.budget`` says how much a strategy may spend:

- ``"phase"``: every phase may run up to ``epochs`` epochs, so a strategy of many phases
  (chain-thaw, gradual unfreezing) trains longer than a one-phase one;
- ``"epochs"``, ``"steps"``, ``"images"``: the whole fit may spend ``epochs`` epochs'
  worth of that unit (``epochs`` x batches per epoch steps, ``epochs`` x training images),
  whatever its phases; each phase gets an even share of what is left
  (:meth:`Usage.allowance`), and what an early-stopped phase leaves goes to the next.
  Strategies compared under one of these budgets get the same cap.
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

BUDGETS = ("phase", "epochs", "steps", "images")


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
        budget: ``"phase"`` (each phase up to ``epochs`` epochs) or ``"epochs"``,
            ``"steps"``, ``"images"``: the whole fit spends at most ``epochs`` epochs'
            worth of that unit (module docstring).
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
    budget: str = "phase"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.patience < 1:
            raise ValueError("patience must be >= 1")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, not {self.budget!r}")
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


@dataclass
class EpochRecord:
    """One epoch of training and the validation after it. ``rolled_back``: the phase it
    belongs to did not beat the best validation loss so far and was discarded."""

    phase: str
    epoch: int
    train_loss: float
    train_metric: float
    val_loss: float
    val_metric: float
    lr: float
    seconds: float
    trainable_groups: list = field(default_factory=list)
    steps: int = 0
    images: int = 0
    rolled_back: bool = False


@dataclass
class Usage:
    """What a fit spent on training, and what its budget allows.

    Attributes:
        unit: the budget's unit (``TrainSettings.budget``).
        limit: the budget in that unit (None for ``"phase"``).
        epochs, steps, images: epochs begun, optimizer steps, training images seen.
        train_flops: FLOPs of all optimizer steps (forward + backward), None when a part
            of the training was not counted (``flops_note`` says which).
    """

    unit: str = "phase"
    limit: Optional[int] = None
    epochs: int = 0
    steps: int = 0
    images: int = 0
    train_flops: Optional[float] = 0.0
    flops_note: str = ""

    def spent(self) -> int:
        return {"epochs": self.epochs, "steps": self.steps, "images": self.images}.get(
            self.unit, 0)

    def allowance(self, phases_left: int) -> Optional[int]:
        """This phase's share of what is left: an even split over the phases still to
        run (at least one unit while anything is left); None with no total budget."""
        if self.limit is None:
            return None
        left = max(0, self.limit - self.spent())
        return min(left, max(1, left // max(1, phases_left))) if left else 0

    def add_flops(self, flops: Optional[float], note: str = "") -> None:
        if flops is None or self.train_flops is None:
            self.train_flops = None
            self.flops_note = self.flops_note or note
        else:
            self.train_flops += flops

    def as_dict(self) -> dict:
        return dict(vars(self))


def budget_limit(settings: TrainSettings, n_train: int) -> Optional[int]:
    """The total budget of a fit in its unit (None for per-phase budgets)."""
    per_epoch = {"epochs": 1, "steps": max(1, -(-n_train // settings.batch_size)),
                 "images": n_train}.get(settings.budget)
    return None if per_epoch is None else settings.epochs * per_epoch


@dataclass
class History:
    """Per-epoch learning curves, the phases that produced them and what they spent.

    ``start`` is the validation loss and metric of the model before any training step
    (Torrey & Shavlik's "start"); every strategy records it (:func:`record_start`).
    """

    epochs: list = field(default_factory=list)
    phases: list = field(default_factory=list)  # [{name, groups, epochs_run, best_epoch, ...}]
    seconds: float = 0.0
    start: Optional[dict] = None
    usage: Usage = field(default_factory=Usage)

    def as_dict(self) -> dict:
        return {"epochs": [vars(e) for e in self.epochs], "phases": self.phases,
                "seconds": self.seconds, "start": self.start, "usage": self.usage.as_dict()}


@dataclass
class BestSoFar:
    """The best validation loss seen and the weights that had it (a checkpoint with
    ``save_best_only``). One per phase by default; chain-thaw shares one across phases."""

    loss: float = float("inf")
    state: Optional[dict] = None
    where: Optional[tuple] = None  # (phase name, epoch index in the history)


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
        #: builds the backbone exactly as a train-from-scratch cell does (same function,
        #: same seed); set by the cell runner, needed by strategies that re-initialise
        #: layers (``layer_transfer``). None where nobody provided one.
        self.scratch_backbone: Optional[Callable[[], nn.Module]] = None
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

    def new_history(self, n_train: int) -> "History":
        """An empty history whose usage carries this run's budget for ``n_train`` images."""
        h = History()
        h.usage = Usage(unit=self.settings.budget, limit=budget_limit(self.settings, n_train))
        return h


def record_start(module: nn.Module, val: TensorSplit, ctx: "TrainContext",
                 history: "History") -> None:
    """Evaluate ``module`` before any training step: the curve's epoch 0."""
    loss, metrics = evaluate(module, val, ctx)
    pm = ctx.task.primary_metric
    history.start = {"val_loss": loss, "val_metric": float(metrics[pm])}
    ctx.progress(f"before training val_loss={loss:.4f} val_{pm}={history.start['val_metric']:.4f}")


def count_flops(fn: Callable[[], object]) -> tuple[object, float]:
    """``(fn(), FLOPs it ran)``, counted by PyTorch's ``FlopCounterMode`` (matrix products
    and convolutions, forward and backward; element-wise ops count zero)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, float(counter.get_total_flops())


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
              on_epoch_start: Optional[Callable] = None, bn_policy: str = "freeze",
              best_so_far: Optional[BestSoFar] = None, phases_left: int = 1) -> float:
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
        best_so_far: a checkpoint shared across phases (chain-thaw): an epoch is saved
            only when it beats every epoch before it, in any phase, and the phase ends by
            loading that checkpoint, so a phase that did not beat it is rolled back
            (recorded as ``rolled_back``). Default: a fresh one for this phase.
        phases_left: phases still to run including this one, to share a total budget.
    """
    s = ctx.settings
    gm = groups_model if groups_model is not None else model
    ctx.place(model)
    forward = ctx.forward(model)
    precision = ctx.precision
    set_trainable(gm, phase.groups)
    named = dict(gm.named_parameters())
    param_groups = []
    for g in gm.layer_groups():
        params = [named[n] for n in g.params]
        if params:
            param_groups.append({"params": params, "lr": phase.lr_for(g.name, s.lr),
                                 "group": g.name})
    for pg in param_groups:
        pg["max_lr"] = pg["lr"]
    opt = torch.optim.AdamW(param_groups, weight_decay=s.weight_decay)
    schedule = phase.schedule or s.schedule
    patience = phase.patience or s.patience
    usage = history.usage
    if usage.unit != s.budget:  # a History() made by hand: the run's budget still applies
        usage.unit, usage.limit = s.budget, budget_limit(s, len(train))
    steps_per_epoch = max(1, -(-len(train) // s.batch_size))
    allowance = usage.allowance(phases_left)
    if allowance is None:  # per-phase budget
        max_epochs, total_steps = phase.epochs or s.epochs, None
    elif usage.unit == "epochs":
        max_epochs = min(phase.epochs, allowance) if phase.epochs else allowance
        total_steps = None
    else:  # steps or images: stop inside an epoch when the allowance is spent
        per_epoch = steps_per_epoch if usage.unit == "steps" else len(train)
        max_epochs = -(-allowance // per_epoch)
        if phase.epochs:
            max_epochs = min(max_epochs, phase.epochs)
        total_steps = allowance if usage.unit == "steps" else -(-allowance // s.batch_size)
    total_steps = total_steps or max(1, max_epochs * steps_per_epoch)
    # the rate of step t is max_lr * stlr(t, T): LambdaLR sets it, one scheduler step per batch
    sched = (torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: stlr_multiplier(t, total_steps, s.cut_frac, s.ratio))
        if schedule == "stlr" else None)
    last_lr = opt.param_groups[-1]["lr"]
    phase_start = (usage.steps, usage.images)
    shared = best_so_far is not None
    best = best_so_far if shared else BestSoFar()
    improved = False
    phase_best, best_epoch, wait = float("inf"), -1, 0
    augment = (flip_augment(ctx.task, ctx.info)
               if s.augment and train.images.dtype == torch.uint8 else None)
    flops_per_image: dict = {}  # trainable groups -> FLOPs of one image's training step
    t_phase = time.perf_counter()
    first_epoch = len(history.epochs)
    epochs_run = 0
    stopped = "max epochs"

    def spent_phase() -> int:
        if usage.unit == "steps":
            return usage.steps - phase_start[0]
        return usage.images - phase_start[1]

    for epoch in range(max_epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch, phase)
        trainable = [g.name for g in gm.layer_groups()
                     if any(named[p].requires_grad for p in g.params)]
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
        tot_loss, n_seen, n_steps, outs, tgts = 0.0, 0, 0, [], []
        key = tuple(trainable)
        for x, y in ctx.batches(train, s.batch_size, shuffle=True, generator=ctx.generator,
                                augment=augment):
            if allowance is not None and usage.unit in ("steps", "images"):
                if spent_phase() >= allowance:
                    break
                if usage.unit == "images" and len(x) > allowance - spent_phase():
                    # the last batch of an images budget is cut to what is left, so every
                    # strategy sees exactly the same number of images
                    x, y = x[:allowance - spent_phase()], y[:allowance - spent_phase()]
            last_lr = opt.param_groups[-1]["lr"]

            def train_step():
                with precision.autocast():
                    out = forward(x)
                    loss = ctx.task.loss(out, y)
                opt.zero_grad(set_to_none=True)
                precision.step(loss, opt, clip_norm=phase.clip_norm)
                return out, loss

            if key not in flops_per_image:
                (out, loss), flops = count_flops(train_step)
                flops_per_image[key] = flops / len(x)
            else:
                out, loss = train_step()
            if sched is not None:
                sched.step()
            n_steps += 1
            usage.steps += 1
            usage.images += len(x)
            usage.add_flops(flops_per_image[key] * len(x))
            # summed on the device: no host sync per batch on CUDA
            tot_loss = tot_loss + loss.detach().double() * len(x)
            n_seen += len(x)
            outs.append(out.detach())
            tgts.append(y)
        if not n_steps:
            break
        usage.epochs += 1
        tot_loss = float(tot_loss)
        train_metric = ctx.task.metrics(torch.cat(outs).float(), torch.cat(tgts), ctx.info)
        val_loss, val_metrics = evaluate(model, val, ctx)
        pm = ctx.task.primary_metric
        rec = EpochRecord(phase=phase.name, epoch=len(history.epochs),
                          train_loss=tot_loss / max(n_seen, 1),
                          train_metric=float(train_metric[pm]), val_loss=val_loss,
                          val_metric=float(val_metrics[pm]),
                          lr=float(last_lr), seconds=time.perf_counter() - t0,
                          trainable_groups=trainable, steps=n_steps, images=n_seen)
        history.epochs.append(rec)
        epochs_run += 1
        ctx.progress(f"{phase.name} epoch {epoch + 1}/{max_epochs} val_loss={val_loss:.4f} "
                     f"val_{pm}={rec.val_metric:.4f}")
        if epoch < phase.track_from:  # not yet the model the phase is meant to deliver
            continue
        if val_loss < best.loss - 1e-7:
            best.loss, best.where, improved = val_loss, (phase.name, rec.epoch), True
            if phase.restore_best:
                best.state = copy.deepcopy(model.state_dict())
        if val_loss < phase_best - 1e-7:
            phase_best, best_epoch, wait = val_loss, epoch, 0
        else:
            wait += 1
            if phase.early_stopping and wait >= patience:
                stopped = f"early stopping (patience {patience})"
                break
    else:
        if allowance is not None and max_epochs < (phase.epochs or s.epochs):
            stopped = "budget"
    if allowance is not None and usage.unit in ("steps", "images") and spent_phase() >= allowance:
        stopped = "budget"
    rolled_back = bool(shared and epochs_run and phase.restore_best and not improved
                       and best.state is not None)
    if phase.restore_best and best.state is not None:
        model.load_state_dict(best.state)
    if rolled_back:
        for e in history.epochs[first_epoch:]:
            e.rolled_back = True
    history.phases.append({"name": phase.name, "groups": list(phase.groups),
                           "epochs_run": epochs_run, "best_epoch": best_epoch,
                           "best_val_loss": phase_best, "restored_best": bool(phase.restore_best),
                           "improved_best_so_far": improved, "rolled_back": rolled_back,
                           "best_so_far_val_loss": best.loss, "stopped": stopped,
                           "steps": usage.steps - phase_start[0],
                           "images": usage.images - phase_start[1],
                           "schedule": schedule, "patience": patience,
                           "lrs": {pg["group"]: pg["max_lr"] for pg in opt.param_groups},
                           "seconds": time.perf_counter() - t_phase})
    return phase_best
