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
- ``"flops"``: the whole fit may spend the training FLOPs of ``epochs`` epochs of
  fine-tuning every layer group: ``epochs`` x training images x the FLOPs of one image's
  training step with every parameter trainable (:func:`training_flops_per_image`,
  counted on the cell's model before training). A strategy whose steps cost less (a head
  on cached features, one group of chain-thaw) trains more epochs on the same compute.
  A batch is cut to the images the phase's allowance still pays for (at the cost of the
  trainable groups, known after their first counted step, else at the full-model cost,
  an upper bound), so no fit spends more than its limit. Without an epoch cap from the
  budget, a phase also stops after ``FLOPS_EPOCH_GUARD`` x ``epochs`` epochs (a guard
  for steps that cost almost nothing; ``stopped`` says so). A slanted triangular
  schedule spans the steps the allowance buys at the full-model cost; cheaper steps
  carry on at its lowest rate.

Whole schedules. A multi-phase strategy (chain-thaw, gradual unfreezing) is only what its
paper defines when every phase runs. Under a total budget each phase therefore has a
minimum (:func:`phase_minimum`: the epochs before ``track_from`` in full, then one unit of
the model it delivers), the phases' allowances keep the minima of the phases still to come
in reserve, and :func:`check_budget` refuses, before anything trains, a budget smaller
than the sum of the minima, with a sentence that names the smallest ``epochs`` that works.

The kept model. Every selection (early stopping, restoring the best epoch, chain-thaw's
rollback) uses one criterion, the validation loss (:data:`SELECTION`); the epoch whose
weights the fit delivers is ``History.kept_epoch``.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..api.errors import BenchError
from .data import DataInfo, TensorSplit
from .autotune import LAYOUTS, MAX_S as AUTOTUNE_MAX_S
from .device import (AMPS, Precision, configure_backends, parse_amp, place_module,
                     runtime_device, to_device)
from .phase import Phase  # defined in phase.py (torch-free); importable from here as before
from .model import (TransferModel, changed_parameters, group_modules, parameter_fingerprints,
                    set_trainable)
from .schedules import SCHEDULES, stlr_multiplier
from .task import Task

BUDGETS = ("phase", "epochs", "steps", "images", "flops")
#: under ``budget = "flops"`` a phase runs at most this many times ``epochs`` epochs
FLOPS_EPOCH_GUARD = 50
#: the one criterion of every selection: early stopping, the restored best epoch, chain-thaw's
#: rollback, and so the kept model whose validation metric the reports call "best"
SELECTION = "val_loss"


class BudgetTooSmall(BenchError, ValueError):
    """A total training budget too small for a strategy's whole schedule (raised before
    training; the message gives the smallest budget that works)."""


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
            ``off`` (fp32), ``bf16`` or ``fp16`` (autocast; fp16 with a gradient scaler),
            or ``tune``: mixed precision allowed, each cell's probe picks fp32 or a mixed
            precision the device computes natively (:mod:`harness.train.autotune`).
            Evaluation runs in the same precision; losses and metrics are computed in fp32.
        layout: memory layout of training and evaluation: ``auto`` (each cell's probe
            picks contiguous or channels-last, whichever trains faster with the same
            numerics; a :class:`TrainContext` used directly stays contiguous),
            ``contiguous`` or ``channels_last``.
        autotune_max_s: time cap of the layout/precision probe, seconds
            (:mod:`harness.train.autotune`); a probe that reaches it keeps the baseline
            unless enough rounds finished, and says so in the cell's record and the table.
        channels_last: ``True`` is the same as ``layout = "channels_last"`` (the older
            spelling; ``False`` leaves ``layout`` as it is).
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` on CUDA (cuDNN times its
            convolution algorithms per shape and keeps the fastest). Off alone does not make
            GPU results repeatable: that takes ``deterministic``.
        tf32: fp32 matmuls and convolutions on CUDA may use TF32 tensor cores (Ampere and
            newer): ``torch.backends.cuda.matmul.allow_tf32`` and ``cudnn.allow_tf32``, both
            recorded in every cell (:func:`harness.train.device.configure_backends`).
        deterministic: deterministic algorithms (``torch.use_deterministic_algorithms``,
            ``cudnn.deterministic``, cuDNN benchmarking off): the same seed then gives the
            same result on the same GPU and software, unless an operation has no
            deterministic implementation: those run anyway and the cell names them
            (``hardware.nondeterministic_ops``). Recorded in every cell.
        compile: ``torch.compile`` the training and evaluation forward passes.
        eval_batch_size: batch size of evaluation and prediction; 0 follows ``batch_size``
            (large batches were measured slower per image than 64 on our 2-core CPUs).
        augment: random horizontal flips of training images (half of each batch), with
            their targets mirrored by the task (``Task.flip_targets``: boxes and keypoints
            follow the image, left/right keypoints swap).
        budget: ``"phase"`` (each phase up to ``epochs`` epochs) or ``"epochs"``,
            ``"steps"``, ``"images"``, ``"flops"``: the whole fit spends at most
            ``epochs`` epochs' worth of that unit (``"flops"``: of fine-tuning every
            layer; module docstring).
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
    layout: str = "auto"
    autotune_max_s: float = AUTOTUNE_MAX_S
    channels_last: bool = False
    cudnn_benchmark: bool = False
    tf32: bool = True
    deterministic: bool = False
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
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")
        if self.channels_last:
            if self.layout == "contiguous":
                raise ValueError("channels_last = true contradicts layout = 'contiguous'; "
                                 "give one of them")
            self.layout = "channels_last"
        if not self.autotune_max_s > 0:
            raise ValueError(f"autotune_max_s must be > 0 seconds, not {self.autotune_max_s!r}")
        if self.eval_batch_size < 0:
            raise ValueError("eval_batch_size must be >= 0 (0: the training batch size)")
        if self.deterministic and self.cudnn_benchmark:
            raise ValueError("deterministic and cudnn_benchmark exclude each other (cuDNN "
                             "benchmarking picks algorithms by timing); turn one off")


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
    limit: Optional[float] = None
    epochs: int = 0
    steps: int = 0
    images: int = 0
    train_flops: Optional[float] = 0.0
    flops_note: str = ""

    def spent(self) -> float:
        if self.unit == "flops":
            if self.train_flops is None:
                raise BenchError(f"budget = \"flops\" cannot be kept: part of the training "
                                 f"was not counted ({self.flops_note or 'no reason given'}); "
                                 f"use another budget")
            return self.train_flops
        return {"epochs": self.epochs, "steps": self.steps, "images": self.images}.get(
            self.unit, 0)

    def allowance(self, phases_left: int, minimum: int = 1, reserve: int = 0) -> Optional[int]:
        """This phase's share of what is left: an even split over the phases still to
        run, at least ``minimum`` (the phase's own, :func:`phase_minimum`), never eating
        into ``reserve`` (the minima of the phases after it); None with no total budget."""
        if self.limit is None:
            return None
        left = max(0, self.limit - self.spent())
        share = max(minimum, left // max(1, phases_left))
        return max(0, min(share, left - reserve))

    def add_flops(self, flops: Optional[float], note: str = "") -> None:
        if flops is None or self.train_flops is None:
            self.train_flops = None
            self.flops_note = self.flops_note or note
        else:
            self.train_flops += flops

    def as_dict(self) -> dict:
        return dict(vars(self))


def budget_limit(settings: TrainSettings, n_train: int,
                 flops_per_image: Optional[float] = None) -> Optional[float]:
    """The total budget of a fit in its unit (None for per-phase budgets, and for
    ``"flops"`` until the full-model ``flops_per_image`` is known)."""
    per_epoch = {"epochs": 1, "steps": max(1, -(-n_train // settings.batch_size)),
                 "images": n_train,
                 "flops": None if flops_per_image is None else n_train * flops_per_image,
                 }.get(settings.budget)
    return None if per_epoch is None else settings.epochs * per_epoch


def phase_minimum(phase: Phase, settings: TrainSettings, n_train: int,
                  flops_per_image: Optional[float] = None) -> Optional[float]:
    """The smallest allowance, in the budget's unit, that runs ``phase`` as defined: its
    epochs before ``track_from`` in full (gradual unfreezing: one per newly unfrozen
    group), then one unit of the model it delivers (an epoch; a step; a batch of images;
    under ``"flops"`` those images at the full-model cost, an upper bound). None under
    the per-phase budget."""
    unit = settings.budget
    steps_per_epoch = max(1, -(-n_train // settings.batch_size))
    full = phase.track_from
    if unit == "epochs":
        return full + 1
    if unit == "steps":
        return full * steps_per_epoch + 1
    if unit == "images":
        return full * n_train + min(settings.batch_size, n_train)
    if unit == "flops" and flops_per_image is not None:
        return (full * n_train + min(settings.batch_size, n_train)) * flops_per_image
    return None


def _unit_words(unit: str, n: float) -> str:
    if unit == "flops":
        return f"{n:.3g} training FLOPs"
    word = {"epochs": "epoch", "steps": "optimizer step", "images": "training image"}[unit]
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_budget(phases: list, settings: TrainSettings, n_train: int,
                 strategy: str = "the strategy",
                 flops_per_image: Optional[float] = None) -> Optional[list]:
    """Each phase's minimum (:func:`phase_minimum`), after checking that the run's total
    budget covers their sum; None under the per-phase budget.

    Raises:
        BudgetTooSmall: the budget cannot run every phase; the message names the phases,
            what each needs, and the smallest ``epochs`` that would do.
    """
    needs = [phase_minimum(p, settings, n_train, flops_per_image) for p in phases]
    limit = budget_limit(settings, n_train, flops_per_image)
    if limit is None or None in needs:
        return None
    if any(p.epochs is not None and p.epochs < p.track_from + 1 for p in phases):
        bad = next(p for p in phases if p.epochs is not None and p.epochs < p.track_from + 1)
        raise BudgetTooSmall(
            f"{strategy}: phase {bad.name!r} may run {bad.epochs} epoch(s) but needs "
            f"{bad.track_from + 1} to reach the model it delivers")
    total = sum(needs)
    if total <= limit:
        return needs
    per_epoch = limit / settings.epochs  # units in one epoch
    epochs_needed = math.ceil(total / per_epoch - 1e-9)
    names = [p.name for p in phases]
    shown = ", ".join(names if len(names) <= 6 else names[:4] + ["...", names[-1]])
    unit_epoch = 1 if settings.budget == "epochs" else per_epoch
    why = "; ".join(
        f"{p.name!r}: {p.track_from} full epoch(s) while its groups unfreeze, then "
        f"{_unit_words(settings.budget, n - p.track_from * unit_epoch)} with every group "
        f"trainable" for p, n in zip(phases, needs) if p.track_from) or (
        f"{_unit_words(settings.budget, needs[0])} per phase")
    raise BudgetTooSmall(
        f"{strategy} runs {len(phases)} phase(s) ({shown}) and needs at least "
        f"{_unit_words(settings.budget, total)} to train every one of them ({why}), but "
        f"budget = \"{settings.budget}\" with epochs = {settings.epochs} allows "
        f"{_unit_words(settings.budget, limit)}. Set epochs to at least {epochs_needed} "
        f"(--epochs or [train] epochs), or budget = \"phase\" (each phase up to epochs "
        f"epochs).")


@dataclass
class History:
    """Per-epoch learning curves, the phases that produced them and what they spent.

    ``start`` is the validation loss and metric of the model before any training step
    (Torrey & Shavlik's "start"); every strategy records it (:func:`record_start`).
    ``kept_epoch`` is the index in ``epochs`` of the epoch whose weights the fit delivers
    (the best by :data:`SELECTION` among those the strategy may keep; None before any).
    """

    epochs: list = field(default_factory=list)
    phases: list = field(default_factory=list)  # [{name, groups, epochs_run, best_epoch, ...}]
    seconds: float = 0.0
    start: Optional[dict] = None
    usage: Usage = field(default_factory=Usage)
    kept_epoch: Optional[int] = None

    def as_dict(self) -> dict:
        return {"epochs": [vars(e) for e in self.epochs], "phases": self.phases,
                "seconds": self.seconds, "start": self.start, "usage": self.usage.as_dict(),
                "kept_epoch": self.kept_epoch, "selection": SELECTION}


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
        amp = parse_amp(settings.amp, self.device)
        # "tune" and layout "auto" are settled by the cell's probe (harness.train.autotune)
        # through use(); until then, and for contexts used directly, fp32 and contiguous
        self.precision = Precision(self.device, "off" if amp == "tune" else amp)
        self.channels_last = settings.layout == "channels_last"
        self._compiled: dict = {}
        #: FLOPs of one image's training step: model -> {(trainable groups, input shape):
        #: FLOPs}, counted once per fit (:func:`count_flops` costs about one extra step),
        #: shared by the phases of a strategy that train the same groups again; keyed by the
        #: module itself (weakly), so a model built later in the fit never inherits a count
        self.flops_per_image = weakref.WeakKeyDictionary()
        #: builds the backbone exactly as a train-from-scratch cell does (same function,
        #: same seed); set by the cell runner, needed by strategies that re-initialise
        #: layers (``layer_transfer``). None where nobody provided one.
        self.scratch_backbone: Optional[Callable[[], nn.Module]] = None
        #: under ``budget = "flops"``: FLOPs of one image's training step with every
        #: parameter of the cell's model trainable (the unit of the limit)
        self.reference_flops: Optional[float] = None
        #: ``f(record)`` called after every epoch's validation with its
        #: :class:`EpochRecord` (the validation curve as it grows); a tuning trial or the
        #: halving of a matrix reports it to a pruner there (:mod:`harness.run.hparam_search`)
        #: and stops the fit by raising. None: nobody listens.
        self.epoch_hook: Optional[Callable[["EpochRecord"], None]] = None
        #: the numerics in force (TF32, determinism), recorded in the cell
        self.backends = configure_backends(settings.cudnn_benchmark, settings.tf32,
                                           settings.deterministic)

    @property
    def eval_batch_size(self) -> int:
        return self.settings.eval_batch_size or self.settings.batch_size

    def use(self, layout: str, amp: str) -> None:
        """Train in ``layout`` (``contiguous`` or ``channels_last``) and precision ``amp``
        (``off``, ``bf16``, ``fp16``): what the cell's autotune chose."""
        self.channels_last = layout == "channels_last"
        self.precision = Precision(self.device, amp)

    def place(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the training device (and layout); idempotent."""
        return place_module(module, self.device, self.channels_last)

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
                             channels_last=self.channels_last, **kw)

    def new_history(self, n_train: int, model: Optional[nn.Module] = None,
                    train: Optional[TensorSplit] = None) -> "History":
        """An empty history whose usage carries this run's budget for ``n_train`` images.

        Under ``budget = "flops"`` pass the whole ``model`` and the ``train`` split: the
        limit is counted on them (:func:`training_flops_per_image`); without them the
        first phase counts it on the module it trains."""
        if self.settings.budget == "flops" and model is not None and train is not None:
            self.reference_flops = training_flops_per_image(model, train, self)
        h = History()
        h.usage = Usage(unit=self.settings.budget,
                        limit=budget_limit(self.settings, n_train, self.reference_flops))
        return h


class NonFiniteLoss(BenchError):
    """A training, validation or test loss that is NaN or infinite. The cell fails: early
    stopping and "best epoch" comparisons are meaningless on NaN (every comparison is
    false), so training on would report a model chosen at random as "ok"."""


def check_finite(loss: float, what: str) -> float:
    """``loss``, or :class:`NonFiniteLoss` saying ``what`` it is and what to look at."""
    if not math.isfinite(loss):
        raise NonFiniteLoss(
            f"{what} is {loss}: training diverged or a target (box, keypoint, visibility) is "
            f"NaN or infinite, so the cell fails rather than report a model chosen on it; "
            f"check the dataset's annotations, or lower the learning rate")
    return loss


def record_start(module: nn.Module, val: TensorSplit, ctx: "TrainContext",
                 history: "History") -> None:
    """Evaluate ``module`` before any training step: the curve's epoch 0."""
    try:
        loss, metrics = evaluate(module, val, ctx)
    except NonFiniteLoss as exc:
        raise NonFiniteLoss(f"before training: {exc}") from None
    pm = ctx.task.primary_metric
    history.start = {"val_loss": loss, "val_metric": float(metrics[pm])}
    ctx.progress(f"before training val_loss={loss:.4f} val_{pm}={history.start['val_metric']:.4f}")


def training_flops_per_image(model: nn.Module, train: TensorSplit, ctx: "TrainContext"
                             ) -> float:
    """FLOPs of one image's training step (forward and backward) with every parameter of
    ``model`` trainable, counted (:func:`count_flops`) on two training images; the model
    is left as it was (parameters, batch-norm statistics, gradients, trainable flags, mode
    and the random number generators)."""
    params = list(model.parameters())
    flags, grads = [p.requires_grad for p in params], [p.grad for p in params]
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    was_training = model.training
    x, y = next(iter(ctx.batches(train, min(2, len(train)))))
    ctx.place(model)
    try:
        with torch.random.fork_rng(devices=[]):
            for p in params:
                p.requires_grad_(True)
            model.train()

            def step():
                with ctx.precision.autocast():
                    loss = ctx.task.loss(ctx.forward(model)(x), y)
                loss.backward()
            _, flops = count_flops(step, exact_modes=ctx.settings.compile)
    finally:
        for p, f, g in zip(params, flags, grads):
            p.requires_grad_(f)
            p.grad = g
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        model.train(was_training)
    return flops / len(x)


def snapshot(module: nn.Module) -> dict:
    """A copy of ``module``'s state dict (the best epoch's weights), tensor by tensor:
    ``clone`` is about 3x faster than ``copy.deepcopy`` of the state dict (measured 1.9
    against 6.5 ms for MobileNetV2, once per improving epoch)."""
    return {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)
            for k, v in module.state_dict().items()}


def count_flops(fn: Callable[[], object], exact_modes: bool = False) -> tuple[object, float]:
    """``(fn(), FLOPs it ran)``: matrix products and convolutions, forward and backward
    (element-wise ops count zero), by PyTorch's own FLOP formulas
    (``torch.utils.flop_counter.flop_registry``).

    Hand-written around that registry because ``FlopCounterMode`` also tracks every module
    (hooks on each call, for its per-module table), which made the counted training step
    cost 0.09 s more than an uncounted one for MobileNetV2 at 64 px here, against 0.03 s
    for this plain dispatch mode: the totals are identical
    (``tests/test_strategies.py::test_training_flops_are_counted_per_step``).
    ``exact_modes``: use ``FlopCounterMode`` itself (it also counts inside higher-order
    operators, e.g. a ``torch.compile``'d forward)."""
    if exact_modes:
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            out = fn()
        return out, float(counter.get_total_flops())
    with _TotalFlops() as counter:
        out = fn()
    return out, float(counter.total)


class _TotalFlops(TorchDispatchMode):
    """Sums the FLOPs of every op PyTorch's registry has a formula for (nothing else)."""

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry
        self.registry = flop_registry
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.registry.get(getattr(func, "_overloadpacket", func))
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


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
    """(loss, metrics) of ``module`` on ``split``, computed on the module's device.

    Raises:
        NonFiniteLoss: the loss is NaN or infinite.
    """
    out = predict(ctx.forward(module), split, ctx.eval_batch_size, ctx.precision,
                  ctx.channels_last)
    targets = to_device(split.targets, out.device)
    with torch.no_grad():
        loss = check_finite(float(ctx.task.loss(out, targets)),
                            f"the loss on {len(split)} evaluated images")
    return loss, ctx.task.metrics(out, targets, ctx.info)


def run_phase(model: nn.Module, phase: Phase, train: TensorSplit, val: TensorSplit,
              ctx: TrainContext, history: History, groups_model: Optional[TransferModel] = None,
              on_epoch_start: Optional[Callable] = None, bn_policy: str = "freeze",
              best_so_far: Optional[BestSoFar] = None, phases_left: int = 1,
              reserve: int = 0) -> float:
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
        reserve: what the phases after this one need at least (their
            :func:`phase_minimum`), kept out of this phase's allowance.
    """
    gm = groups_model if groups_model is not None else model
    ctx.place(model)
    set_trainable(gm, phase.groups)
    run = _PhaseRun(model, gm, phase, train, ctx, history, best_so_far, phases_left, reserve)
    for epoch in range(run.max_epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch, phase)
        trainable = _enter_train_mode(model, gm, phase, bn_policy)
        t0 = time.perf_counter()
        step = run.train_epoch(trainable)
        if step is None:  # the budget was spent before this epoch's first step
            break
        rec = run.validate(step, val, trainable, t0)
        if ctx.epoch_hook is not None:
            ctx.epoch_hook(rec)
        ctx.progress(f"{phase.name} epoch {epoch + 1}/{run.max_epochs} "
                     f"val_loss={rec.val_loss:.4f} "
                     f"val_{ctx.task.primary_metric}={rec.val_metric:.4f}")
        if run.after_epoch(epoch, rec):
            break
    else:
        if run.allowance is not None and run.max_epochs < (phase.epochs or ctx.settings.epochs):
            run.stopped = "budget"
        elif ctx.settings.budget == "flops" and not phase.epochs:
            run.stopped = f"epoch guard ({FLOPS_EPOCH_GUARD} x epochs)"
    return run.finish()


def _enter_train_mode(model: nn.Module, gm: nn.Module, phase: Phase, bn_policy: str) -> list:
    """``model.train()``, except batch norm of frozen groups (``bn_policy="freeze"``) and the
    phase's ``eval_modules``; returns the names of the trainable groups."""
    named = dict(gm.named_parameters())
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
    return trainable


@dataclass
class _EpochSteps:
    """What one epoch's training steps produced (summed on the device: no host sync per
    batch on CUDA)."""

    loss_sum: object
    images: int
    steps: int
    outputs: list
    targets: list
    last_lr: float


class _PhaseRun:
    """The state of one :func:`run_phase`: its optimizer and schedule, its limits under the
    run's budget, its best epoch and early-stopping count."""

    def __init__(self, model, gm, phase: Phase, train: TensorSplit, ctx: TrainContext,
                 history: History, best_so_far: Optional[BestSoFar], phases_left: int,
                 reserve: int = 0):
        s = ctx.settings
        self.model, self.phase, self.train = model, phase, train
        self.ctx, self.history = ctx, history
        self.forward = ctx.forward(model)
        self.opt = _phase_optimizer(gm, phase, s)
        self.schedule = phase.schedule or s.schedule
        self.patience = phase.patience or s.patience
        self.usage = usage = history.usage
        if s.budget == "flops" and ctx.reference_flops is None:  # new_history had no model
            ctx.reference_flops = training_flops_per_image(model, train, ctx)
        if usage.unit != s.budget or (usage.unit == "flops" and usage.limit is None):
            # a History() made by hand: the run's budget still applies
            usage.unit = s.budget
            usage.limit = budget_limit(s, len(train), ctx.reference_flops)
        self.allowance = usage.allowance(
            phases_left, phase_minimum(phase, s, len(train), ctx.reference_flops) or 1, reserve)
        self.gm = gm
        self.before = parameter_fingerprints(gm)  # which groups the phase changes
        self.max_epochs, total_steps = _phase_limits(phase, s, usage.unit, self.allowance,
                                                     len(train), ctx.reference_flops)
        # the rate of step t is max_lr * stlr(t, T): LambdaLR sets it, one step per batch
        self.sched = (torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda t: stlr_multiplier(t, total_steps, s.cut_frac, s.ratio))
            if self.schedule == "stlr" else None)
        self.start = (usage.steps, usage.images, usage.train_flops or 0.0)
        self.shared = best_so_far is not None
        self.best = best_so_far if self.shared else BestSoFar()
        self.improved = False
        self.phase_best, self.best_epoch, self.wait = float("inf"), -1, 0
        self.augment = (flip_augment(ctx.task, ctx.info)
                        if s.augment and train.images.dtype == torch.uint8 else None)
        self.t_phase = time.perf_counter()
        self.first_epoch = len(history.epochs)
        self.epochs_run = 0
        self.stopped = "max epochs"
        self.budget_spent = False  # a batch was cut or refused for the allowance
        self.maybe_skipped: list = []  # fp16 steps the scaler may have skipped (StepTaken)

    def spent(self) -> float:
        """Steps, images or FLOPs this phase has spent (the unit of its budget)."""
        if self.usage.unit == "steps":
            return self.usage.steps - self.start[0]
        if self.usage.unit == "flops":
            return self.usage.spent() - self.start[2]
        return self.usage.images - self.start[1]

    def _budget_cut(self, x, y, per_image: Optional[float] = None):
        """The batch under a steps/images/FLOPs allowance: None when it is spent; the last
        batch is cut to what is left (images; under FLOPs the images the rest pays for at
        ``per_image``, else at the full-model cost), so no strategy spends more."""
        if self.allowance is None or self.usage.unit not in ("steps", "images", "flops"):
            return x, y
        left = self.allowance - self.spent()
        if self.usage.unit == "flops":
            left = int(left // (per_image or self.ctx.reference_flops))
        if left <= 0:
            self.budget_spent = True
            return None
        if self.usage.unit in ("images", "flops") and len(x) > left:
            self.budget_spent = True
            x, y = x[:left], y[:left]
        return x, y

    def train_epoch(self, trainable: list) -> Optional[_EpochSteps]:
        """Every training batch of one epoch; None when no step was taken."""
        ctx, precision, opt, usage = self.ctx, self.ctx.precision, self.opt, self.usage
        s = ctx.settings
        counted = ctx.flops_per_image.setdefault(self.model, {})
        key = (tuple(trainable), tuple(self.train.images.shape[1:]))
        done = _EpochSteps(0.0, 0, 0, [], [], opt.param_groups[-1]["lr"])
        for x, y in ctx.batches(self.train, s.batch_size, shuffle=True,
                                generator=ctx.generator, augment=self.augment):
            cut = self._budget_cut(x, y, counted.get(key))
            if cut is None:
                break
            x, y = cut
            done.last_lr = opt.param_groups[-1]["lr"]

            def train_step():
                with precision.autocast():
                    out = self.forward(x)
                    loss = ctx.task.loss(out, y)
                opt.zero_grad(set_to_none=True)
                taken = precision.step(loss, opt, clip_norm=self.phase.clip_norm)
                return out, loss, taken

            if key not in counted:
                (out, loss, taken), flops = count_flops(train_step, exact_modes=s.compile)
                counted[key] = flops / len(x)
            else:
                out, loss, taken = train_step()
            if taken is not True:  # fp16: the scaler may have skipped it; read at the end
                self.maybe_skipped.append(taken)
            if self.sched is not None:
                self.sched.step()
            done.steps += 1
            usage.steps += 1
            usage.images += len(x)
            usage.add_flops(counted[key] * len(x))
            done.loss_sum = done.loss_sum + loss.detach().double() * len(x)
            done.images += len(x)
            done.outputs.append(out.detach())
            done.targets.append(y)
        if not done.steps:
            return None
        usage.epochs += 1
        return done

    def validate(self, done: _EpochSteps, val: TensorSplit, trainable: list,
                 t0: float) -> EpochRecord:
        """Train metrics of the epoch, then the validation pass: the epoch's record."""
        ctx = self.ctx
        pm = ctx.task.primary_metric
        train_metric = ctx.task.metrics(torch.cat(done.outputs).float(),
                                        torch.cat(done.targets), ctx.info)
        where = f"phase {self.phase.name!r} epoch {self.epochs_run + 1}"
        train_loss = check_finite(float(done.loss_sum) / max(done.images, 1),
                                  f"{where}: the training loss")
        try:
            val_loss, val_metrics = evaluate(self.model, val, ctx)
        except NonFiniteLoss as exc:
            raise NonFiniteLoss(f"{where}, validation: {exc}") from None
        rec = EpochRecord(phase=self.phase.name, epoch=len(self.history.epochs),
                          train_loss=train_loss,
                          train_metric=float(train_metric[pm]), val_loss=val_loss,
                          val_metric=float(val_metrics[pm]), lr=float(done.last_lr),
                          seconds=time.perf_counter() - t0, trainable_groups=trainable,
                          steps=done.steps, images=done.images)
        self.history.epochs.append(rec)
        self.epochs_run += 1
        return rec

    def after_epoch(self, epoch: int, rec: EpochRecord) -> bool:
        """Checkpoint a better epoch, count patience; True when the phase stops early."""
        phase, best = self.phase, self.best
        if epoch < phase.track_from:  # not yet the model the phase is meant to deliver
            return False
        if rec.val_loss < best.loss - 1e-7:
            best.loss, best.where, self.improved = rec.val_loss, (phase.name, rec.epoch), True
            if phase.restore_best:
                best.state = snapshot(self.model)
        if rec.val_loss < self.phase_best - 1e-7:
            self.phase_best, self.best_epoch, self.wait = rec.val_loss, epoch, 0
            return False
        self.wait += 1
        if phase.early_stopping and self.wait >= self.patience:
            self.stopped = f"early stopping (patience {self.patience})"
            return True
        return False

    def finish(self) -> float:
        """Restore the best weights, mark a rolled-back phase, record the phase."""
        phase, best, usage = self.phase, self.best, self.usage
        if self.budget_spent or (self.allowance is not None and usage.unit in ("steps", "images")
                                 and self.spent() >= self.allowance):
            self.stopped = "budget"
        rolled_back = bool(self.shared and self.epochs_run and phase.restore_best
                           and not self.improved and best.state is not None)
        changed = set(changed_parameters(self.gm, self.before))  # before any restore
        changed_groups = [g.name for g in self.gm.layer_groups()
                          if any(p in changed for p in g.params)]
        if phase.restore_best and best.state is not None:
            self.model.load_state_dict(best.state)
            self.history.kept_epoch = best.where[1]
        elif self.epochs_run:  # no checkpoint to go back to: the last epoch's weights stay
            self.history.kept_epoch = len(self.history.epochs) - 1
        if rolled_back:
            for e in self.history.epochs[self.first_epoch:]:
                e.rolled_back = True
        self.history.phases.append({
            "name": phase.name, "groups": list(phase.groups), "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch, "best_val_loss": self.phase_best,
            "restored_best": bool(phase.restore_best), "improved_best_so_far": self.improved,
            "rolled_back": rolled_back, "best_so_far_val_loss": best.loss,
            "stopped": self.stopped, "allowance": self.allowance, "unit": usage.unit,
            "changed_groups": changed_groups, "steps": usage.steps - self.start[0],
            # optimiser steps fp16's gradient scaler skipped (inf/NaN gradients): they
            # changed nothing (one wait for the device, here at the phase's end)
            "steps_skipped": sum(1 for t in self.maybe_skipped if not t),
            "first_epoch": self.first_epoch,
            "images": usage.images - self.start[1], "schedule": self.schedule,
            "patience": self.patience,
            "lrs": {pg["group"]: pg["max_lr"] for pg in self.opt.param_groups},
            "seconds": time.perf_counter() - self.t_phase})
        return self.phase_best


def _phase_optimizer(gm: nn.Module, phase: Phase, s: TrainSettings) -> torch.optim.Optimizer:
    """AdamW over the layer groups with trainable parameters, each at the phase's rate for
    it (``max_lr`` keeps that rate for the schedule and the record)."""
    named = dict(gm.named_parameters())
    param_groups = []
    for g in gm.layer_groups():
        params = [named[n] for n in g.params]
        if params:
            lr = phase.lr_for(g.name, s.lr)
            param_groups.append({"params": params, "lr": lr, "max_lr": lr, "group": g.name})
    return torch.optim.AdamW(param_groups, weight_decay=s.weight_decay)


def _phase_limits(phase: Phase, s: TrainSettings, unit: str, allowance: Optional[float],
                  n_train: int, flops_per_image: Optional[float] = None) -> tuple[int, int]:
    """(maximum epochs, total optimizer steps for the schedule) of a phase under the
    budget's ``allowance`` (None: a per-phase budget)."""
    steps_per_epoch = max(1, -(-n_train // s.batch_size))
    if allowance is None:  # per-phase budget
        max_epochs, total_steps = phase.epochs or s.epochs, None
    elif unit == "flops":  # the allowance ends the phase; the guard bounds cheap steps
        max_epochs = phase.epochs or FLOPS_EPOCH_GUARD * s.epochs
        total_steps = max(1, int(allowance // (flops_per_image * s.batch_size)))
    elif unit == "epochs":
        max_epochs = min(phase.epochs, allowance) if phase.epochs else allowance
        total_steps = None
    else:  # steps or images: stop inside an epoch when the allowance is spent
        per_epoch = steps_per_epoch if unit == "steps" else n_train
        max_epochs = -(-allowance // per_epoch)
        if phase.epochs:
            max_epochs = min(max_epochs, phase.epochs)
        total_steps = allowance if unit == "steps" else -(-allowance // s.batch_size)
    return max_epochs, total_steps or max(1, max_epochs * steps_per_epoch)
