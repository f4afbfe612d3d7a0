"""The ``source:DATASET`` weight source: pretrain a backbone on a source dataset, here.

This is how the Yosinski et al. (2014, "How transferable are features in deep neural
networks?") experiments get their source networks (a base network trained on task A, whose
first n layers are copied into a network for task B), and how a server backbone gets real
pretrained weights when no ImageNet weights are reachable.

Syntax (the text after ``source:`` is free text, not an axis item)::

    source:DATASET
    source:DATASET,epochs=3,lr=0.001,batch_size=32,patience=2,image_size=32,seed=0
    source:fashion_mnist,n_train=5000,epochs=3      # other keys go to the dataset

``epochs``, ``lr``, ``batch_size``, ``patience``, ``image_size`` and ``seed`` configure the
pretraining; ``on_target=allow`` asks for pretraining on images of the target dataset
itself (see below); every other key is a parameter of the dataset.

Pretraining on the target's own images (the same dataset, or a subset or variant of it
that shares images: ``source:digits`` for a ``digits`` cell, ``source:fashion_mnist,
n_train=500`` for a ``fashion_mnist`` one) is not transfer: a cell so set up is refused
before anything runs (``bench run``) and when its weights load, unless the weights string
says ``on_target=allow`` (Yosinski et al.'s BnB control does, on purpose). Two class
subsets of one dataset (``classes=0-4`` and ``classes=5-9``) share no images. On the command line that is
``--weights resnet18=source:digits,epochs=3`` (the ``=`` after the backbone name is split
once, so the commas stay with the weights string).

The backbone is trained with a linear classifier on the dataset's training split, with
early stopping on its validation split (:func:`harness.train.loop.run_phase`, best epoch
restored); the classifier is dropped afterwards. The weights are cached under
``<cache dir>/source-weights/`` keyed by a SHA-256 of everything that determines them: the
architecture and its initial weights, the dataset and its parameters, the image size, the
training settings and the library versions. Files are written atomically. The source
classifier is kept beside the weights (``*.head.safetensors``) and set as the backbone's
``source_classifier``, which the LEEP and NCE estimators need.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import time
from pathlib import Path
from typing import Optional

from harness import __version__, WeightSourceSpec, hookimpl
from harness.api.errors import WeightsUnavailable
from harness.api.files import atomic_path, cache_dir as default_cache_dir

#: bump when the pretraining recipe changes, so old cache entries are not reused
RECIPE = 1
#: pretraining keys and defaults; ``None`` means: the cell's value (image size, seed)
TRAIN_KEYS = {"epochs": 5, "lr": 1e-3, "batch_size": 32, "patience": 2, "image_size": None,
              "seed": None}
_VERSIONED = ("torch", "timm", "numpy", "scikit-learn")


#: the key that asks for pretraining on the target's own images, and its one value
ON_TARGET, ALLOW = "on_target", "allow"


def parse_source(arg: str | None) -> tuple[str, dict, dict]:
    """``"digits,epochs=3,n_train=500"`` -> ``("digits", {"epochs": 3, ...}, {"n_train": 500})``.

    ``on_target=allow`` is checked and left out (it does not change the weights; see
    :func:`asks_on_target`)."""
    if not arg or not arg.strip():
        raise WeightsUnavailable("write source:DATASET (e.g. source:digits or "
                                 "source:digits,epochs=3); see bench list datasets")
    from harness.run.config import parse_value  # here: the run layer imports torch

    name, *rest = [p.strip() for p in arg.split(",")]
    train, data = dict(TRAIN_KEYS), {}
    for part in rest:
        if "=" not in part:
            raise WeightsUnavailable(f"source:{arg}: {part!r} must be key=value "
                                     f"(pretraining keys: {', '.join(TRAIN_KEYS)}; any other "
                                     f"key is a dataset parameter)")
        k, v = (s.strip() for s in part.split("=", 1))
        if k == ON_TARGET:
            if v != ALLOW:
                raise WeightsUnavailable(f"source:{arg}: {ON_TARGET} takes one value, "
                                         f"{ON_TARGET}={ALLOW} (pretrain on the target "
                                         f"dataset's own images on purpose); got {v!r}")
            continue
        (train if k in TRAIN_KEYS else data)[k] = parse_value(v)
    for k in ("epochs", "batch_size", "patience"):
        if not isinstance(train[k], int) or train[k] < 1:
            raise WeightsUnavailable(f"source:{arg}: {k} must be a positive integer")
    if not isinstance(train["lr"], (int, float)) or train["lr"] <= 0:
        raise WeightsUnavailable(f"source:{arg}: lr must be a positive number")
    return name, train, data


def asks_on_target(arg: str | None) -> bool:
    """Whether the weights string says ``on_target=allow``."""
    return any(p.replace(" ", "") == f"{ON_TARGET}={ALLOW}" for p in (arg or "").split(","))


def source_pretraining(arg: str | None) -> dict:
    """What ``source:ARG`` trains before its first cell (the run's plan shows it)."""
    name, train, data = parse_source(arg)
    return {"dataset": name, "dataset_params": data, "epochs": train["epochs"],
            "image_size": train["image_size"], "on_target": asks_on_target(arg)}


def _class_set(spec) -> set | None:
    if spec is None:
        return None
    from .datasets.offline import parse_classes
    try:
        return set(parse_classes(spec, 10**6))
    except ValueError:
        return None  # unreadable: assume the subsets may overlap


def shares_images(arg: str | None, dataset: str, dataset_params: dict) -> str | None:
    """Why ``source:ARG`` would pretrain on images of ``dataset`` (with its parameters),
    or None. The same dataset shares images whatever its subset parameters (``n_train``,
    ``val_frac``...: both draw from one pool), except two disjoint class subsets
    (``classes=0-4`` and ``classes=5-9``: no image has two classes)."""
    name, _, data = parse_source(arg)
    if name != dataset:
        return None
    src, tgt = _class_set(data.get("classes")), _class_set((dataset_params or {}).get("classes"))
    if src is not None and tgt is not None and not src & tgt:
        return None

    def label(n, params):
        return n + "".join(f",{k}={v}" for k, v in (params or {}).items())

    return (f"source:{arg} pretrains on {label(name, data)}, which shares images with the "
            f"target dataset {label(dataset, dataset_params)}: the backbone would be trained "
            f"on the target task's own images, which is not transfer. Pretrain on another "
            f"dataset ({_alternatives(arg, dataset)}), or add ,{ON_TARGET}={ALLOW} to the "
            f"weights string to do it on purpose")


def _alternatives(arg: str, dataset: str) -> str:
    """``source:OTHER`` suggestions with the same pretraining keys: registered offline
    classification datasets other than ``dataset`` (e.g. ``source:fashion_mnist,epochs=5``)."""
    keys = "".join(f",{p.strip()}" for p in arg.split(",")[1:]
                   if p.split("=", 1)[0].strip() in TRAIN_KEYS)
    try:
        from harness.api.manager import get_plugins
        others = [d.name for d in get_plugins().datasets
                  if d.offline and d.name != dataset and "classification" in d.tasks]
    except Exception:  # a suggestion only: never hide the refusal behind a plugin error
        others = []
    if not others:
        return "source:OTHER, see bench list datasets"
    return "e.g. " + " or ".join(f"source:{o}{keys}" for o in others[:2])


def _versions() -> dict:
    out = {"transfer-bench": __version__}
    for name in _VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _digest(state: dict, with_values: bool) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
        if with_values:
            h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_key(spec, backbone: "torch.nn.Module", dataset: str, data_params: dict, train: dict,
              hardware: Optional[dict] = None) -> tuple[str, dict]:
    """SHA-256 (hex) of everything that determines the pretrained weights, and that material.

    Weights pretrained on a GPU or in mixed precision differ from the CPU's fp32 ones, so
    the device type and precision are part of the key; CPU fp32 adds nothing (entries
    cached before devices existed stay valid)."""
    target = getattr(backbone, "model", backbone)
    state = target.state_dict()
    material = {
        "recipe": RECIPE,
        "backbone": spec.name, "architecture": getattr(backbone, "model_name", type(backbone).__name__),
        "pool": getattr(backbone, "pool", None),
        "layout": _digest(state, with_values=False),
        "initial_weights": _digest(state, with_values=True),
        "normalization": [list(backbone.mean), list(backbone.std)],
        "dataset": dataset, "dataset_params": data_params, "train": train,
        "versions": _versions(),
    }
    trained_on = _trained_on(hardware)
    if trained_on:
        material["trained_on"] = trained_on
    text = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest(), material


def _trained_on(hardware: Optional[dict]) -> Optional[dict]:
    """The device type and precision of the cache key, None for CPU fp32 (see
    :func:`cache_key`)."""
    hw = hardware or {}
    kind = str(hw.get("device", "cpu")).split(":")[0]
    amp = hw.get("amp", "off")
    return {"device": kind, "amp": amp} if kind != "cpu" or amp != "off" else None


def _hardware(context: dict) -> dict:
    """The cell's ``device`` and ``amp`` from a weight-source ``context``."""
    return {k: context[k] for k in ("device", "amp") if context.get(k)}


def _fill_train(train: dict, context: dict) -> dict:
    """``train`` with the cell's image size and seed where the weights string left them."""
    train["image_size"] = int(train["image_size"] or context.get("image_size") or 64)
    if train["seed"] is None:
        train["seed"] = int(context.get("seed") or 0)
    return train


def _stem_prefix(backbone: str, dataset: str) -> str:
    """The start of a cache entry's file names: backbone and source dataset."""
    return f"{backbone}__{dataset}__".replace(":", "_")


def _entries(folder: Path, backbone: str, dataset: str):
    """``(material, reached, complete)`` of the cache entries of ``backbone`` pretrained on
    ``dataset`` under ``folder`` (``complete``: its weight and classifier files exist)."""
    for info in sorted(folder.glob(f"{_stem_prefix(backbone, dataset)}*.json")):
        try:
            entry = json.loads(info.read_text())
            material, reached = entry["material"], entry["reached"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged entry is re-made when loaded; it tells nothing here
        base = info.with_suffix("")
        complete = (Path(f"{base}.safetensors").exists()
                    and Path(f"{base}.head.safetensors").exists())
        yield material, reached, complete


def pretraining_time(arg: str | None, context: dict) -> dict:
    """How long ``source:ARG`` pretrains for one cell (``context``: see
    :class:`harness.WeightSourceSpec`), from the cache entries of earlier pretrainings here:
    ``cached`` when an entry with every setting of this one (seed included) and today's
    library versions exists; otherwise the per-epoch time of entries that differ only in
    seed or epochs, times the epochs asked for (an upper bound: early stopping may end the
    pretraining sooner); otherwise no figure (``seconds`` None). An entry whose initial
    weights differ from this backbone's (another timm release) would be re-made: the plan's
    "cached" assumes the same build, which the library versions in the key make likely."""
    name, train, data = parse_source(arg)
    _fill_train(train, context)
    trained_on = _trained_on(_hardware(context))
    folder = Path(context.get("cache_dir") or default_cache_dir()) / "source-weights"
    versions, arch = _versions(), context.get("backbone_arg")
    loose = {k: v for k, v in train.items() if k not in ("seed", "epochs")}
    per_epoch = []
    for material, reached, complete in _entries(folder, context["backbone"], name):
        if (material.get("recipe") != RECIPE or material.get("dataset_params") != data
                or material.get("versions") != versions
                or material.get("trained_on") != trained_on
                or (arch and material.get("architecture") != arch)):
            continue
        theirs = material.get("train") or {}
        if complete and theirs == train:
            took = reached.get("source_train_seconds")
            return {"cached": True, "seconds": 0.0,
                    "basis": "cached here" + (f" (it took {took:.0f} s to make)" if took else "")}
        if {k: v for k, v in theirs.items() if k not in ("seed", "epochs")} == loose:
            runs = reached.get("source_epochs_run") or 0
            if runs and reached.get("source_train_seconds"):
                per_epoch.append(float(reached["source_train_seconds"]) / runs)
    if not per_epoch:
        return {"cached": False, "seconds": None,
                "basis": "never pretrained with these settings here"}
    import statistics
    each = statistics.median(per_epoch)
    return {"cached": False, "seconds": each * train["epochs"],
            "basis": f"{train['epochs']} epochs at the {each:.0f} s per epoch measured in "
                     f"{len(per_epoch)} earlier pretraining(s) here; early stopping may "
                     f"end it sooner"}


def _atomic_save(state: dict, path: Path) -> None:
    from safetensors.torch import save_file
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))


def _pretrain(plugins, ds_spec, backbone, train: dict, data_params: dict, cache_dir: Path,
              progress, hardware: dict) -> tuple[dict, dict]:
    """Train ``backbone`` + a linear classifier on the source dataset, on the cell's device and
    in its precision (``hardware``: ``device``, ``amp``); return the classifier's tensors (on
    the CPU) and what it reached."""
    from harness.train.data import validate_splits
    from harness.train.model import TransferModel
    from harness.train.loop import History, Phase, TrainContext, TrainSettings, evaluate, run_phase

    try:
        data = ds_spec.load(task="classification", image_size=train["image_size"],
                            seed=train["seed"], cache_dir=cache_dir, **data_params)
    except TypeError as exc:
        raise WeightsUnavailable(f"source dataset {ds_spec.name}: bad parameter ({exc})") from None
    task = plugins.tasks.get("classification").factory(hidden=(), dropout=0.0)
    validate_splits(data, ds_spec.name, train["image_size"], task)
    import torch  # here, not at the top: the registry stays free of torch
    torch.manual_seed(train["seed"])
    model = TransferModel(backbone, task.build_head(backbone, data.info), "pooled")
    settings = TrainSettings(epochs=train["epochs"], batch_size=train["batch_size"],
                             lr=float(train["lr"]), patience=train["patience"], seed=train["seed"],
                             device=hardware.get("device", "cpu"), amp=hardware.get("amp", "off"))
    ctx = TrainContext(task, data.info, settings,
                       progress=lambda m: progress(f"source:{ds_spec.name} {m}"))
    history = History()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    ctx.epoch_hook = _time_left(train["epochs"], t0, progress, ds_spec.name)
    run_phase(model, Phase("source pretraining", [g.name for g in model.layer_groups()]),
              data.train, data.val, ctx, history)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    model.eval()
    _, val = evaluate(model, data.val, ctx)
    _, test = evaluate(model, data.test, ctx)
    phase = history.phases[-1]
    model.to("cpu")  # the backbone goes back where the cell builds its model
    linear = model.head[-1]
    head = {"weight": linear.weight.detach().clone(), "bias": linear.bias.detach().clone()}
    return head, {"source_val_accuracy": float(val["accuracy"]),
            "source_test_accuracy": float(test["accuracy"]),
            "source_epochs_run": phase["epochs_run"], "source_best_epoch": phase["best_epoch"] + 1,
            "source_sizes": data.sizes(), "source_train_seconds": seconds,
            "source_train_cpu_seconds": cpu,
            "source_curve": [round(e.val_metric, 4) for e in history.epochs]}


def _time_left(epochs: int, t0: float, progress, name: str):
    """An epoch hook that says, after each pretraining epoch, the time left at most (the
    epochs left at the mean epoch time so far; early stopping may end it sooner)."""
    from harness.run.timefmt import format_seconds
    done = [0]

    def hook(_rec) -> None:
        done[0] += 1
        left = epochs - done[0]
        if left > 0:
            each = (time.perf_counter() - t0) / done[0]
            progress(f"source:{name} about {format_seconds(each * left)} left at most "
                     f"({left} epoch(s) of up to {epochs}, {each:.0f} s each)")
    return hook


def load_source(spec, backbone, arg, context) -> dict:
    """Weight source ``source:DATASET[,k=v...]``: pretrained here on DATASET, cached on disk."""
    from harness.run.locks import cache_lock  # on use: importing the plugin stays cheap
    from harness.run.results import atomic_write_json


    plugins = context.get("plugins")
    if plugins is None:
        from harness.api.manager import get_plugins
        plugins = get_plugins()
    name, train, data_params = parse_source(arg)
    target_ds = context.get("dataset")
    overlap = (shares_images(arg, target_ds, context.get("dataset_params") or {})
               if target_ds else None)
    if overlap and not asks_on_target(arg):
        raise WeightsUnavailable(overlap)
    ds_spec = plugins.datasets.get(name)  # unknown names list the registered datasets
    if "classification" not in ds_spec.tasks:
        raise WeightsUnavailable(f"source:{name}: the dataset has no classification labels "
                                 f"(it has {', '.join(ds_spec.tasks)}); pick a classification "
                                 f"dataset from bench list datasets")
    _fill_train(train, context)
    root = Path(context.get("cache_dir") or default_cache_dir())
    hardware = _hardware(context)
    key, material = cache_key(spec, backbone, name, data_params, train, hardware)
    folder = root / "source-weights"
    folder.mkdir(parents=True, exist_ok=True)
    stem = _stem_prefix(spec.name, name) + key[:16]
    wpath, ipath = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    hpath = folder / f"{stem}.head.safetensors"
    target = getattr(backbone, "model", backbone)
    progress = context.get("progress") or (lambda m: None)
    with cache_lock(wpath):  # parallel workers wait for one pretraining instead of repeating it
        # an entry without its classifier file predates keeping it: pretrain again
        if wpath.exists() and ipath.exists() and hpath.exists():
            from safetensors.torch import load_file
            from .weights import load_state_dict_checked
            reached = json.loads(ipath.read_text())["reached"]
            load_state_dict_checked(target, load_file(str(wpath)),
                                    f"cached source weights {wpath}")
            head = load_file(str(hpath))
            cached = True
        else:
            progress(f"pretraining on source dataset {name} (cached afterwards)")
            head, reached = _pretrain(plugins, ds_spec, backbone, train, data_params, root,
                                      progress, hardware)
            _atomic_save(head, hpath)
            _atomic_save(target.state_dict(), wpath)
            atomic_write_json(ipath, {"key": key, "material": material, "reached": reached})
            cached = False
    from harness.train.model import SourceClassifier
    backbone.source_classifier = SourceClassifier(head["weight"], head["bias"],
                                                  f"{name} ({head['weight'].shape[0]} classes)")
    notes = ([f"pretrained on images of the target dataset ({name}) on purpose "
              f"({ON_TARGET}={ALLOW}): this is not transfer"] if overlap else [])
    acc = reached["source_val_accuracy"]
    return {"description": (f"pretrained here on {name} ({reached['source_epochs_run']} epochs at "
                            f"{train['image_size']} px, source val accuracy {acc:.3f}); "
                            f"not ImageNet"),
            "short": f"source:{name} (val {acc:.2f})", "pretrained": True,
            "source_dataset": name, "source_dataset_params": data_params, "source_train": train,
            **reached, "cached": cached, "cache_key": key, "file": str(wpath),
            "imagenet_top1": None, "input_size": train["image_size"],
            "mean": list(backbone.mean), "std": list(backbone.std), "notes": notes}


@hookimpl
def register_weight_sources():
    return [WeightSourceSpec(
        "source", load=load_source, pretraining=source_pretraining,
        shares_images=shares_images, pretraining_time=pretraining_time,
        description="source:DATASET[,epochs=N,lr=..,image_size=..]: pretrain on a source "
                    "dataset here (cached by a hash of everything that determines it); "
                    "never on the target's own images unless on_target=allow")]
