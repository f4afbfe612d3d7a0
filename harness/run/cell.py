"""Running one cell of the matrix: data, model, weights, training, test, export, latency."""
from __future__ import annotations

import contextlib
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .config import CellConfig
from ..train.data import DataSplits, validate_splits
from ..train.device import (backend_state, device_name, is_cuda_oom, release_cuda_memory,
                            visible_id, watch_nondeterminism)
from ..api.errors import BenchError
from ..api.files import cache_dir
from ..measure.env import package_versions
from ..measure.export import export_onnx
from ..train.architecture import architecture_fingerprint
from ..measure.isolate import measure_in_worker
from ..measure.lifetime import temp_folder
from ..measure.latency import MeasureSettings
from ..api.manager import PluginSystem
from ..train.model import TransferModel, changed_parameters, count_parameters, parameter_fingerprints
from ..api.specs import ProfileSpec
from ..train.loop import SELECTION, TrainContext, TrainSettings, evaluate
from . import contracts
from .timing import CellTiming, TimingCache, measure_shared
from .tuning import choose_setup
from .hparam_search import STOPPED, Stopped, TuneSettings, search, split_params, without_test

_DATA_CACHE: dict = {}


def load_data(plugins: PluginSystem, cfg: CellConfig) -> DataSplits:
    key = (cfg.dataset, cfg.task.name, cfg.image_size, cfg.seed)
    if key not in _DATA_CACHE:
        spec = plugins.datasets.get(cfg.dataset.name)
        if cfg.task.name not in spec.tasks:
            raise BenchError(f"dataset {spec.name!r} has no labels for task {cfg.task.name!r}; "
                             f"it supports: {', '.join(spec.tasks)}")
        with contracts.blame(plugins, "datasets", spec.name, "loading its splits"):
            splits = spec.load(task=cfg.task.name, image_size=cfg.image_size, seed=cfg.seed,
                               cache_dir=cache_dir(), **cfg.dataset.kwargs)
        # a dataset that breaks the contract fails here, naming itself, not in the loss
        task = plugins.tasks.get(cfg.task.name).factory(**cfg.task.kwargs)
        validate_splits(splits, spec.name, cfg.image_size, task)
        _DATA_CACHE[key] = splits
        if len(_DATA_CACHE) > 8:  # keep memory bounded over long matrices
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
    return _DATA_CACHE[key]


def gmacs(module: torch.nn.Module, image_size: int) -> Optional[float]:
    """Multiply-accumulates (GMACs) of one image, from PyTorch's own FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode
    was = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.rand(1, 3, image_size, image_size))
        return counter.get_total_flops() / 2e9
    except Exception:  # some exotic ops are not counted; say so with None
        return None
    finally:
        module.train(was)


@dataclass
class Artifacts:
    """What a runtime plugin measures: the trained model, its ONNX file, sample data.

    The same types reach a runtime in ``bench run`` (in its worker process, or in this one)
    and in the test kit's :func:`harness.testkit.check_runtime`: images are numpy arrays.

    Attributes:
        model: the trained :class:`harness.train.model.TransferModel` (eval mode, on the
            CPU, fp32; takes float images in [0, 1], normalization inside).
        image_size: the input size (square).
        workdir: a temporary folder for the runtime's own files (removed after the cell).
        onnx_path: the exported ONNX file when the runtime's spec says ``needs_onnx``.
        calibration: float32 numpy ``(N, 3, S, S)`` images in [0, 1] from the training
            split, for int8 calibration.
        evaluate_outputs: ``f(outputs on test_images) -> metrics`` (the task's metrics).
        test_images: float32 numpy ``(N, 3, S, S)`` test images in [0, 1] (at most 512).
            Outputs on them, returned as ``test_outputs`` for every precision, are
            compared with PyTorch's (:func:`harness.run.contracts.check_runtime_row`);
            for precisions other than fp32 they also become ``accuracy_after``.
        extra: free-form; ``{}``.
    """

    model: TransferModel
    image_size: int
    workdir: Path
    onnx_path: Optional[Path] = None
    calibration: Optional[np.ndarray] = None  # float images in [0, 1] for int8 calibration
    evaluate_outputs: Optional[Callable] = None  # f(outputs on test images) -> metrics
    test_images: Optional[np.ndarray] = None
    extra: dict = field(default_factory=dict)


CALIBRATION_IMAGES = 64


def calibration_images(data: DataSplits) -> np.ndarray:
    """A cell's int8 calibration images: its first ``CALIBRATION_IMAGES`` training images as
    float32 numpy in [0, 1]. `bench run` and `bench check` (both sides of a paired check)
    use these."""
    return (data.train.images[:CALIBRATION_IMAGES].float() / 255.0).numpy()


def no_default_weights_message(backbone: str) -> str:
    """What a cell and ``bench run`` say when a pretrained strategy meets a backbone with no
    default weights (``BackboneSpec.default_weights`` is None) and the user gave none."""
    return (f"backbone {backbone!r} has no default weights, so pretrained strategies start "
            f"from random init; give --weights {backbone}=SOURCE (e.g. file:PATH) for "
            f"pretrained ones")


def resolve_profile(plugins: PluginSystem, name: str, custom: dict) -> ProfileSpec:
    if name in custom:
        kw = dict(custom[name])
        if "precisions" in kw:
            kw["precisions"] = tuple(kw["precisions"])
        return ProfileSpec(name=name, **kw)
    return plugins.profiles.get(name)


@contextlib.contextmanager
def timed(rec: dict, name: str):
    """Add the wall-clock seconds of the block to ``rec["timers"][name]`` (where a cell's
    time went: ``benchmarks/bench_default_split.py`` reads them)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timers = rec.setdefault("timers", {})
        timers[name] = timers.get(name, 0.0) + time.perf_counter() - t0


def run_cell(plugins: PluginSystem, cfg: CellConfig, key: str,
             progress: Callable[[str], None] = lambda m: None,
             custom_profiles: Optional[dict] = None, onnx_dir: Optional[Path] = None,
             halving=None) -> dict:
    """Run one cell; never raises for the cell's own failures (they go in the record).

    With ``onnx_dir`` the cell's exported ONNX file is kept there as ``KEY.onnx`` (its path
    is recorded in ``onnx.kept``). With ``halving`` (a
    :class:`harness.run.hparam_search.CellHalving`) the cell reports its validation curve
    to the matrix's successive halving, which may stop it: status ``stopped (halving)``,
    with its partial curve."""
    rec: dict = {"key": key, "config": cfg.to_dict(), "status": "running",
                 "started": time.time()}
    try:
        _run(plugins, cfg, rec, progress, custom_profiles or {}, onnx_dir, halving)
        rec["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except Stopped as exc:  # successive halving stopped the cell: not a failure
        rec.update(status=STOPPED, note=str(exc))
        if "train_s" in rec.get("timers", {}):  # what its partial fit cost (a run's total
            rec["train_seconds"] = rec["timers"]["train_s"]  # train s counts it)
    except MemoryError as exc:
        rec.update(status="oom", error=f"MemoryError: {exc}")
    except Exception as exc:  # a failing cell records its error and the matrix goes on
        status = "oom" if is_cuda_oom(exc) else "failed"
        rec.update(status=status, error=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc())
    finally:
        release_cuda_memory()  # the next cell (or another worker) gets this GPU's memory
    rec["finished"] = time.time()
    return rec


def backbone_facts(bb_spec, backbone, model, winfo: dict, image_size: int) -> dict:
    """What the report shows about a cell's backbone: class, size, cost, its weights."""
    return {
        "device_class": bb_spec.device_class, "family": bb_spec.family,
        "params_total": count_parameters(model), "params_backbone": count_parameters(backbone),
        "gmacs": gmacs(model, image_size), "image_size": image_size,
        "layer_groups": [g.name for g in model.layer_groups()],
        "weights_mb": sum(t.numel() * t.element_size()
                          for t in backbone.state_dict().values()) / 2**20,
        "imagenet_top1": winfo.get("imagenet_top1"),
        "weights_input_size": winfo.get("input_size", backbone.input_size),
        "mean": list(backbone.mean), "std": list(backbone.std),
    }


def curve_summary(rec: dict, higher_is_better: bool = True) -> Optional[dict]:
    """This cell's own validation curve, as figures of the model it delivers; None without
    a curve.

    ``best`` is the delivered model's validation metric (``rec["kept_model"]``): the epoch
    kept by the one selection criterion, the validation loss (``selection``), not the
    highest metric of any epoch (a rolled-back chain-thaw phase's weights were thrown
    away). ``mean`` is over epoch 0 and the kept epochs (:func:`kept_curve`); rolled-back
    epochs stay in the plotted curve and are counted in ``rolled_back_epochs`` only.
    ``start`` is epoch 0, before training; with a new head it is chance by construction
    (``start_is_chance``, ``start_note``). ``higher_is_better`` is not needed since
    nothing is picked by the metric; it stays for callers. The benefits against scratch
    need the scratch cell too and are computed across cells
    (:func:`harness.report.benefits.transfer_benefits`)."""
    from .records import CHANCE_NOTE, kept_curve, kept_value, learning_curve, start_is_chance

    curve = kept_curve(rec)
    if not curve:
        return None
    hist = rec.get("history") or {}
    out = {"start": curve[0], "best": kept_value(rec), "mean": sum(curve) / len(curve),
           "kept_epochs": len(curve) - 1 if hist.get("start") else len(curve),
           "rolled_back_epochs": len(learning_curve(rec)) - len(curve),
           "selection": hist.get("selection", SELECTION),
           "start_is_chance": start_is_chance(rec)}
    if out["start_is_chance"]:
        out["start_note"] = CHANCE_NOTE
    return out


def kept_model_record(model: torch.nn.Module, data: DataSplits, ctx: TrainContext,
                      history) -> dict:
    """The delivered model evaluated again on the validation split, checked against the
    epoch the fit says it kept (``History.kept_epoch``): the figures reported as "best"
    must be those of the weights the cell hands on.

    Raises:
        RuntimeError: the delivered weights are not the kept epoch's (a strategy restored
            the wrong checkpoint); the cell fails rather than report thrown-away weights.
    """
    loss, metrics = evaluate(model, data.val, ctx)
    out = {"val_loss": loss, "val_metric": float(metrics[ctx.task.primary_metric]),
           "epoch": history.kept_epoch, "selection": SELECTION}
    if history.kept_epoch is not None:
        e = history.epochs[history.kept_epoch]
        if not math.isclose(e.val_loss, loss, rel_tol=1e-3, abs_tol=1e-4):
            raise RuntimeError(
                f"the trained model's validation loss is {loss:.6f}, but the epoch the "
                f"strategy kept (epoch {history.kept_epoch + 1}, phase {e.phase!r}) had "
                f"{e.val_loss:.6f}: the delivered weights are not the kept ones, so this "
                f"cell's figures would describe weights it threw away")
    return out


def _run(plugins: PluginSystem, cfg: CellConfig, rec: dict, progress, custom_profiles,
         onnx_dir: Optional[Path] = None, halving=None) -> None:
    with contracts.blame(plugins, "tasks", cfg.task.name, "building the task"):
        task = plugins.tasks.get(cfg.task.name).factory(**cfg.task.kwargs)
    st_cls = plugins.strategies.get(cfg.strategy.name).cls
    with contracts.blame(plugins, "strategies", cfg.strategy.name, "being created"):
        strategy = st_cls(**cfg.strategy.kwargs)

    progress("loading data")
    with timed(rec, "data_s"):
        data = load_data(plugins, cfg)
    rec["data"] = {"name": data.info.name, "sizes": data.sizes(), "synthetic": data.info.synthetic,
                   "source": data.info.source, "notes": list(data.info.notes),
                   "num_classes": data.info.num_classes}

    settings = TrainSettings(**{**cfg.train, "seed": cfg.seed})
    ctx = TrainContext(task, data.info, settings, progress=progress)
    rec["hardware"] = hardware_record(ctx, cfg)

    with timed(rec, "weights_s"):  # a source: weight source pretrains here (once, cached)
        bb_spec, backbone, winfo, scratch_backbone = build_backbone(
            plugins, cfg, pretrained=strategy.pretrained, progress=progress,
            context={"device": str(ctx.device), "amp": ctx.precision.amp})
    rec["weights"] = winfo
    rec["transfer"] = bool(strategy.pretrained)  # False: a baseline of the transfer benefits

    torch.manual_seed(cfg.seed)
    model = _checked_model(plugins, cfg, backbone, task, data, rec)
    # the task's head is new and random: the metric before training is chance by construction
    rec["start_is_chance"] = True
    rec["backbone_facts"] = backbone_facts(bb_spec, backbone, model, winfo, cfg.image_size)

    with timed(rec, "autotune_s"):  # layout and precision: forced, cached or probed here
        rec["autotune"] = choose_setup(ctx, model, data.train, cache_dir() / "autotune",
                                       library_versions(plugins, ("torch", "python",
                                                                  "transfer-bench")),
                                       rec["key"])
    rec["hardware"] = hardware_record(ctx, cfg)
    # before tuning: a cell an earlier run of this folder stopped is not tuned again
    finish = _report_to_halving(halving, cfg, task, ctx, rec) if halving is not None else None
    tune = TuneSettings(**cfg.tune)
    if tune.trials:
        with timed(rec, "tune_s"):
            strategy = _tuned(plugins, cfg, task, data, ctx, tune, rec, progress)
    ctx.place(model)
    before = parameter_fingerprints(model)
    ctx.scratch_backbone = scratch_backbone
    nondeterministic: list = []
    try:
        with timed(rec, "train_s"), watch_nondeterminism(nondeterministic):
            history = _checked_fit(plugins, cfg, strategy, model, data, ctx, before, rec)
    except Exception:  # (an interrupt leaves the trial running: a rerun takes it up)
        if finish is not None:  # a failed fit leaves the study as failed (a rerun retries)
            finish(None, failed=True)
        raise
    if finish is not None:
        curve = rec["halving"]["curve"]
        finish(_best(curve, task.higher_is_better) if curve else None)
    ctx.epoch_hook = None
    if finish is not None and not rec["halving"]["curve"]:
        rec["halving"]["note"] = ("no per-epoch validation curve (the strategy does not train "
                                  "by epochs): halving could not stop it, it ran in full")
    rec["train_seconds"] = rec["timers"]["train_s"]
    rec["history"] = history.as_dict()
    rec["budget"] = history.usage.as_dict()
    # parameters training actually changed (a bias-only strategy counts its biases, not
    # the whole groups they sit in)
    named = dict(model.named_parameters())
    changed = set(changed_parameters(model, before))
    rec["trainable_params"] = sum(named[n].numel() for n in changed)
    # the layer groups the delivered model changed (a rolled-back phase's group may not be)
    rec["changed_groups"] = [g.name for g in model.layer_groups()
                             if any(p in changed for p in g.params)]
    rec["strategy"] = {"name": cfg.strategy.name, "bn_policy": strategy.bn_policy,
                       "pretrained": strategy.pretrained}
    model.eval()
    rec["kept_model"] = kept_model_record(model, data, ctx, history)
    with timed(rec, "test_s"), watch_nondeterminism(nondeterministic), \
            contracts.blame(plugins, "tasks", cfg.task.name, "scoring the test split"):
        test_loss, test_metrics = evaluate(model, data.test, ctx)
    contracts.check_metrics(plugins, cfg.task.name, task, test_metrics)
    if ctx.settings.deterministic:  # with any named, this run is not fully repeatable
        rec["hardware"]["nondeterministic_ops"] = nondeterministic
    rec["metric_name"] = task.primary_metric
    rec["higher_is_better"] = task.higher_is_better
    rec["test_loss"] = test_loss
    rec["test_metrics"] = test_metrics
    summary = curve_summary(rec, task.higher_is_better)
    if summary is not None:
        rec["curve_summary"] = summary

    # export and the latency runtimes take the trained model on the CPU, in fp32, contiguous
    model.to("cpu").to(memory_format=torch.contiguous_format)
    release_cuda_memory()  # the latency workers measure on this GPU: leave them its memory
    with timed(rec, "latency_stage_s"):  # export, conversions, quantization and timing
        rec["latency"] = _measure_latency(plugins, cfg, model, data, ctx, progress,
                                          custom_profiles, rec, onnx_dir)
    failed = contracts.failed_measurements(rec["latency"])
    if failed:  # the cell is ok, but a rerun measures it again (RunStore.finished)
        rec["failed_measurements"] = failed


def _best(curve: list, higher_is_better: bool) -> float:
    return max(curve) if higher_is_better else min(curve)


def _report_to_halving(halving, cfg: CellConfig, task, ctx: TrainContext, rec: dict):
    """Report every epoch's validation metric to the matrix's successive halving (one
    study per dataset, task and seed); when it stops the cell, keep the partial curve.
    Returns ``finish(value)``, which closes the cell's trial (once).

    Raises:
        Stopped: an earlier, interrupted run of this folder had stopped the cell (its
            partial curve is recorded as then).
    """
    epochs: list = []
    rec["halving"] = {"group": [cfg.dataset.label(), cfg.task.label(), cfg.seed],
                      "min_resource": halving.settings.min_resource,
                      "reduction_factor": halving.settings.reduction_factor, "curve": [],
                      "engine": getattr(halving, "engine", type(halving).__name__)}

    def partial() -> dict:  # the record as it stands, with the curve so far
        return {**rec, "history": {"epochs": list(epochs), "partial": True}}

    try:
        trial = halving.start(tuple(rec["halving"]["group"]), task.higher_is_better,
                              key=rec.get("key"), snapshot=partial)
    except Stopped as exc:
        epochs.extend(getattr(exc, "epochs", []))
        rec["halving"].update(curve=[float(e["val_metric"]) for e in epochs],
                              stopped_after_epochs=len(epochs),
                              resumed="stopped by an earlier run of this folder, which was "
                                      "interrupted before it saved the record")
        rec["history"] = partial()["history"]
        raise
    if trial.resumed:
        rec["halving"]["resumed"] = trial.resumed

    def hook(r) -> None:
        epochs.append(dict(vars(r)))
        rec["halving"]["curve"].append(float(r.val_metric))
        try:
            trial.report(r.val_metric, epochs[-1])
        except Stopped:
            trial.finish(None)
            rec["halving"]["stopped_after_epochs"] = len(epochs)
            rec["history"] = partial()["history"]
            raise

    ctx.epoch_hook = hook
    return trial.finish


def _tuned(plugins, cfg: CellConfig, task, data: DataSplits, ctx: TrainContext,
           tune: TuneSettings, rec: dict, progress):
    """Tune the cell's strategy on the training and validation splits
    (:func:`harness.run.hparam_search.search`); set ``ctx.settings`` to the best trial's
    ``[train]`` settings and return the strategy built with its parameters. Parameters
    the user gave the strategy (``-s finetune,lr=0.01``) stay fixed, not searched."""
    spec = plugins.strategies.get(cfg.strategy.name)
    space = tuple(d for d in spec.search_space if d.name not in cfg.strategy.kwargs)
    if not space:
        rec["tuning"] = {"skipped": f"strategy {spec.name!r} declares no search space "
                                    f"(StrategySpec.search_space) or the user fixed all of it"}
        return spec.cls(**cfg.strategy.kwargs)
    trial_data = without_test(data)  # a trial cannot score on the test split
    rng = torch.get_rng_state()  # the final fit draws as an untuned cell would

    def objective(params: dict, report):
        s_kw, t_kw = split_params(spec, params)
        tctx = TrainContext(task, data.info, TrainSettings(**{**cfg.train, **t_kw,
                                                             "seed": cfg.seed}))
        tctx.use("channels_last" if ctx.channels_last else "contiguous", ctx.precision.amp)
        strategy = spec.cls(**{**cfg.strategy.kwargs, **s_kw})
        _, backbone, _, scratch = build_backbone(
            plugins, cfg, pretrained=strategy.pretrained,
            context={"device": str(tctx.device), "amp": tctx.precision.amp})
        torch.manual_seed(cfg.seed)
        model = TransferModel(backbone, task.build_head(backbone, data.info), task.head_input)
        tctx.place(model)
        tctx.scratch_backbone = scratch
        tctx.epoch_hook = lambda r: report(r.val_metric)
        # every trial's fit draws what the final fit will (common random numbers): trials
        # differ only by their parameters, the untuned trial is the untuned cell and the
        # retrained best trial is the trial it was chosen by (where training is
        # deterministic); with its own draws, an unstable fit (fine-tuning every layer on
        # 200 images) could score 0.63 on validation in its trial and 0.17 retrained
        torch.set_rng_state(rng)
        history = strategy.fit(model, trial_data, tctx)
        kept = kept_model_record(model, trial_data, tctx, history)  # checks the kept epoch
        return kept["val_metric"], {
            "epochs": len(history.epochs), "steps": history.usage.steps,
            "images": history.usage.images, "train_flops": history.usage.train_flops}

    # trial 0 trains the cell as it would run untuned (no parameter drawn): the search
    # never delivers worse on validation, and the median pruner compares against a curve
    # that learns (not only against rates that diverged to chance; docs/tuning.md)
    rec["tuning"] = search(space, objective, tune, task.higher_is_better, cfg.seed, progress,
                           untuned_first=True)
    torch.set_rng_state(rng)
    s_kw, t_kw = split_params(spec, rec["tuning"]["best"]["params"])
    ctx.settings = TrainSettings(**{**cfg.train, **t_kw, "seed": cfg.seed})
    rec["tuning"]["fixed"] = dict(cfg.strategy.kwargs)
    return spec.cls(**{**cfg.strategy.kwargs, **s_kw})


def _checked_model(plugins, cfg, backbone, task, data, rec: dict) -> TransferModel:
    """The cell's model, once the backbone's layer groups and feature size and the task's
    head have kept their contracts (:mod:`harness.run.contracts`; ``rec["contracts"]``)."""
    covered = contracts.check_layer_groups(plugins, cfg.backbone.name, backbone)
    with contracts.blame(plugins, "tasks", cfg.task.name, "building its head"):
        head = task.build_head(backbone, data.info)
    shapes = contracts.check_features(plugins, cfg.backbone.name, cfg.task.name, backbone,
                                      head, task.head_input, cfg.image_size)
    model = TransferModel(backbone, head, task.head_input)
    contracts.check_loss(plugins, cfg.task.name, task, model, data.train, data.info)
    rec.setdefault("contracts", {}).update(
        layer_groups=f"{covered} parameters, each in exactly one group",
        features=f"{shapes['features']} -> head {shapes['outputs']}")
    return model


def _checked_fit(plugins, cfg, strategy, model, data, ctx, before: dict, rec: dict):
    """``strategy.fit``, holding the strategy to what it declares trained and frozen."""
    declared = contracts.declared_trained(plugins, cfg.strategy.name, strategy, model, ctx)
    groups = contracts.layer_group_map(model)
    with contracts.blame(plugins, "strategies", cfg.strategy.name, "training",
                         hint=lambda: contracts.froze_everything(model)):
        history = strategy.fit(model, data, ctx)
    contracts.check_history(plugins, cfg.strategy.name, history)
    rec.setdefault("contracts", {})["strategy"] = contracts.check_training(
        plugins, cfg.strategy.name, declared, before, model, history, groups)
    return history


def hardware_record(ctx: TrainContext, cfg: CellConfig) -> dict:
    """Where and how the cell trained (``rec["hardware"]``; the table's "trained on")."""
    s = ctx.settings
    rec = {"device": str(ctx.device), "device_name": device_name(ctx.device),
           "precision": ctx.precision.name, "channels_last": bool(ctx.channels_last),
           "layout": "channels_last" if ctx.channels_last else "contiguous",
           "compile": bool(s.compile),
           "cudnn_benchmark": bool(s.cudnn_benchmark) if ctx.device.type == "cuda" else None,
           "eval_batch_size": ctx.eval_batch_size, "tf32": bool(s.tf32),
           "deterministic": bool(s.deterministic), "backends": backend_state()}
    if ctx.device.type == "cuda":
        rec["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cfg.device_name and cfg.device_name != rec["device_name"]:
        rec["resolved_by_driver"] = cfg.device_name  # the driver saw another device
    return rec


def _measure_latency(plugins, cfg, model, data, ctx, progress, custom_profiles, rec,
                     onnx_dir: Optional[Path] = None) -> list:
    """Latency rows of every (profile, runtime, precision); each runtime runs in its own
    worker process (:mod:`harness.measure.isolate`). Outputs a runtime returns on the test images
    (``test_outputs``, for lower precisions) become ``accuracy_after`` here, scored by the
    task's own metrics."""
    if not cfg.runtimes:
        return []
    with temp_folder() as workdir:  # removed on any exit; swept next run after a SIGKILL
        return _latency_rows(plugins, cfg, model, data, ctx, progress, custom_profiles, rec,
                             workdir, onnx_dir)


def _export(rec: dict, art: Artifacts, model, image_size: int, runtimes: list, workdir: Path,
            onnx_dir: Optional[Path]) -> None:
    """Export the cell's model to ONNX (``art.onnx_path``), check it with the first runtime
    that verifies exports, keep a copy in ``onnx_dir``; ``rec["onnx"]`` says how it went."""
    try:
        art.onnx_path = export_onnx(model, image_size, workdir / "model.onnx")
        rec["onnx"] = {"file_mb": art.onnx_path.stat().st_size / 2**20}
        verify = next((r.verify_export for r in runtimes if r.verify_export), None)
        rec["onnx"]["parity"] = (
            verify(model, art.onnx_path, image_size) if verify
            else "not checked: no runtime of the cell verifies exports")
        if onnx_dir is not None:
            from ..api.files import atomic_write_bytes
            kept = Path(onnx_dir) / f"{rec['key']}.onnx"
            atomic_write_bytes(kept, art.onnx_path.read_bytes())
            rec["onnx"]["kept"] = str(kept)
    except Exception as exc:
        rec["onnx"] = {"error": f"{type(exc).__name__}: {exc}"}
        if getattr(exc, "result", None):  # ParityError: keep how far off the export was
            rec["onnx"]["parity"] = exc.result
        raise


def _latency_rows(plugins, cfg, model, data, ctx, progress, custom_profiles, rec,
                  workdir: Path, onnx_dir: Optional[Path] = None) -> list:
    task = ctx.task
    # Every test image, the ones the fp32 test metric used: an accuracy after conversion is
    # compared with that metric (table, recommendation, Pareto front), so it must be scored
    # on the same images, not on a subset (issue 25).
    test_x, test_y = data.test.images, data.test.targets
    art = Artifacts(model=model.eval(), image_size=cfg.image_size, workdir=workdir,
                    calibration=calibration_images(data),
                    test_images=(test_x.float() / 255.0).numpy(),
                    evaluate_outputs=lambda out: task.metrics(torch.as_tensor(out), test_y,
                                                              data.info))
    runtimes = [plugins.runtimes.get(r) for r in cfg.runtimes]
    gpu = visible_id(ctx.device)
    if gpu is not None:  # the latency workers measure on the GPU this cell trained on, alone
        art.extra["cuda_visible_devices"] = gpu
    if onnx_dir is not None or any(r.needs_onnx for r in runtimes):
        progress("exporting ONNX")
        with timed(rec, "export_s"):  # the export and its parity check
            _export(rec, art, model, cfg.image_size, runtimes, workdir, onnx_dir)
    settings = MeasureSettings(**cfg.latency)
    timing = cell_timing(plugins, cfg, model, rec["key"], settings)
    out = []
    for pname in cfg.profiles:
        profile = resolve_profile(plugins, pname, custom_profiles)
        threads = profile.threads or os.cpu_count() or 1
        for rt in runtimes:
            base = {"runtime": rt.name, "profile": profile.name, "batch_size": profile.batch_size,
                    "threads": threads}
            try:
                ok, reason = rt.available()
            except Exception as exc:  # the runtime's fault, not the cell's: a named row
                out.append({**base, "precision": "-", "error": (
                    f"{contracts.plugin_label(plugins, 'runtimes', rt.name)}: available() "
                    f"raised {type(exc).__name__}: {exc}")})
                continue
            if not ok:
                out.append({**base, "precision": "-", "unavailable": reason})
                continue
            progress(f"latency {rt.name} {profile.name}")
            def scored(prof, sets, suffix, rt=rt):  # one worker run, scored on this cell
                rows = measure_in_worker(rt.measure, art, prof, sets,
                                         label=f"{rt.name}-{prof.name}{suffix}")
                return [_scored_row(plugins, rt.name, dict(r), art, model, task, len(test_x))
                        for r in rows]

            try:
                results = measure_shared(scored, rt.measure, rt.name, profile, settings, timing)
            except Exception as exc:
                out.append({**base, "precision": "-", "error": (
                    f"{contracts.plugin_label(plugins, 'runtimes', rt.name)} failed: "
                    f"{type(exc).__name__}: {exc}")})
                continue
            out.extend({**base, **r} for r in results)
    return out


def _scored_row(plugins, runtime: str, r: dict, art, model, task, n_test: int) -> dict:
    """A runtime's row with its outputs on the test images compared with PyTorch's
    (``outputs_check``) and, below fp32, scored by the task (``accuracy_after``)."""
    outputs = r.pop("test_outputs", None)
    if outputs is not None and len(outputs) != n_test:
        r = {k: v for k, v in r.items() if k != "stats"}
        r["error"] = (f"{runtime} returned outputs for {len(outputs)} test images, "
                      f"the test set has {n_test}: its accuracy after "
                      f"conversion would not be comparable with the fp32 test "
                      f"metric, so the row is not reported")
        outputs = None
    contracts.check_runtime_row(plugins, runtime, r, outputs, lambda: reference(model, art))
    if outputs is not None and r.get("precision") != "fp32":
        metrics = art.evaluate_outputs(outputs)
        r["accuracy_after"] = metrics.get(task.primary_metric)
        r["metric_after"] = task.primary_metric
        r["metrics_after"] = {k: v for k, v in metrics.items()
                              if isinstance(v, (int, float))}
        r["evaluated_on"] = int(len(outputs))  # == the test set's size
    return r


def reference(model, art) -> np.ndarray:
    """PyTorch's outputs on ``art.test_images``, computed once per cell."""
    if "reference_outputs" not in art.extra:
        art.extra["reference_outputs"] = contracts.reference_outputs(model, art.test_images)
    return art.extra["reference_outputs"]


def cell_timing(plugins: PluginSystem, cfg: CellConfig, model: torch.nn.Module, key: str,
                settings: MeasureSettings) -> Optional[CellTiming]:
    """How this cell shares latency timings (:mod:`harness.run.timing`): keyed by its
    architecture (the trained model's structure, head included), image size and library
    versions; None when ``[latency] reuse_timing`` is off."""
    if not settings.reuse_timing:
        return None
    return CellTiming(TimingCache(cache_dir() / "latency-timing"), key, cfg.label(),
                      {"architecture": architecture_fingerprint(model),
                       "image_size": cfg.image_size, "versions": library_versions(plugins)})


def library_versions(plugins: PluginSystem, only: Optional[tuple] = None) -> dict:
    """The installed versions of :func:`~harness.measure.env.package_versions` without its
    ``plugin NAME`` entries (they read differently in the driver and in a worker, and the
    code that measures is keyed by its source); ``only`` keeps those names."""
    return {k: v for k, v in package_versions(plugins).items()
            if not k.startswith("plugin ") and (only is None or k in only)}


def build_backbone(plugins: PluginSystem, cfg: CellConfig, pretrained: bool = True,
                   progress: Callable[[str], None] = lambda m: None,
                   context: Optional[dict] = None):
    """A cell's backbone, seeded, with its weights loaded: the one path of training cells
    (:func:`_run`) and of ranking (:mod:`harness.run.rank`).

    Args:
        pretrained: the strategy starts from pretrained weights (else the default source).
        context: more entries for the weight source's context (``device``, ``amp``).

    Returns:
        ``(backbone spec, backbone, weights info, scratch builder)``; the builder makes the
        backbone as a train-from-scratch cell does (same function, same seed), for
        strategies that re-initialise groups (``ctx.scratch_backbone``).
    """
    bb_spec, bb_arg = plugins.backbones.resolve(cfg.backbone.name)
    kwargs = dict(cfg.backbone.kwargs)
    if bb_arg is not None:
        kwargs["arg"] = bb_arg

    def scratch_backbone():
        torch.manual_seed(cfg.seed)
        return bb_spec.build(**kwargs)

    with contracts.blame(plugins, "backbones", cfg.backbone.name, "building"):
        backbone = scratch_backbone()
    weights = ((cfg.weights or bb_spec.default_weights) if pretrained
               else plugins.default("weights").name)
    no_default = weights is None  # the backbone declares no default weights, the user gave none
    weights = weights or plugins.default("weights").name
    progress(f"loading weights {weights}")
    ws_spec, ws_arg = plugins.weights.resolve(weights)
    shapes = contracts.state_shapes(backbone)
    fingerprints = parameter_fingerprints(backbone) if ws_spec.pretrained else {}
    with contracts.blame(plugins, "weights", weights, f"loading into {cfg.backbone.name!r}"):
        winfo = dict(ws_spec.load(bb_spec, backbone, ws_arg, {
            "cache_dir": cache_dir(), "plugins": plugins, "image_size": cfg.image_size,
            "seed": cfg.seed, "dataset": cfg.dataset.name,
            "dataset_params": dict(cfg.dataset.kwargs), "progress": progress,
            **(context or {})}) or {})
    contracts.check_weights_kept(plugins, weights, cfg.backbone.name, shapes, backbone)
    contracts.check_weights_loaded(plugins, weights, cfg.backbone.name, fingerprints, backbone,
                                   bool(winfo.get("pretrained", ws_spec.pretrained)))
    if no_default:
        winfo["description"] = "random init (not pretrained)"
        winfo["note"] = no_default_weights_message(cfg.backbone.name)
    winfo.setdefault("source", weights)
    winfo.setdefault("pretrained", ws_spec.pretrained)
    winfo.setdefault("description", weights if ws_spec.pretrained else f"{weights} (not pretrained)")
    return bb_spec, backbone, winfo, scratch_backbone
