"""Features of a frozen backbone, computed once: the cache the frozen and off-the-shelf
strategies train on, and the input of the transferability estimators (``bench rank``), so
that both see exactly the same features."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .data import TensorSplit
from .device import to_device
from .loop import TrainContext, count_flops, module_device
from .model import TransferModel


@torch.inference_mode()
def extract_features(model: TransferModel, split: TensorSplit, batch_size: int = 64,
                     ctx: Optional[TrainContext] = None) -> TensorSplit:
    """Run the (frozen, eval-mode) backbone once over ``split``; keep the targets.

    Batches stay small: on a 2-core CPU, MobileNetV2 at 64 px extracted 1000 images in
    0.75 s in batches of 64 and 2.2 s in batches of 256 (large batches' activations no
    longer fit the caches). The strategy passes the run's batch size, which also keeps the
    features bit-identical to the naive loop's. (The channels-last layout extracted 30%
    faster but changed the features by 1e-5, enough to move test accuracy by 0.6 points
    after 10 epochs; exactness won.)

    The features are computed and kept where the model is (on CUDA the cache stays in GPU
    memory), in fp32; with ``ctx`` the backbone runs on its device, layout and precision.
    """
    if ctx is not None:
        ctx.place(model)
    dev = module_device(model)
    was = model.backbone.training
    model.backbone.eval()
    layout = ctx is not None and ctx.channels_last
    with ctx.precision.autocast() if ctx is not None else contextlib.nullcontext():
        chunks = [model.features(x).float()
                  for x, _ in split.batches(batch_size, device=dev, channels_last=layout)]
    model.backbone.train(was)
    feats = torch.cat(chunks).clone() if chunks else torch.empty(0, device=dev)
    return TensorSplit(feats, to_device(split.targets, dev))


@torch.inference_mode()
def extraction_flops(model: TransferModel, split: TensorSplit) -> float:
    """FLOPs of running the backbone once over ``split`` (counted on one image, times the
    split's size: a CNN's FLOPs per image do not depend on the batch)."""
    x, _ = next(split.batches(1))
    x = x.to(module_device(model))
    was = model.backbone.training
    model.backbone.eval()
    _, flops = count_flops(lambda: model.features(x))
    model.backbone.train(was)
    return flops * len(split)
