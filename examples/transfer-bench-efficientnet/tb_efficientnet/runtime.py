"""The runtime ``pytorch-channels-last``: PyTorch eager on the CPU with NHWC tensors.

Convolutions in oneDNN prefer the channels-last (NHWC) memory format; converting the
model and the input avoids layout reorders inside each convolution. Compare it with the
built-in ``pytorch`` runtime in the same run to see what the format buys on this CPU.
"""
from __future__ import annotations

import copy
import os

import torch

from harness.measure.latency import measure


def measure_channels_last(art, profile, settings) -> list[dict]:
    if profile.device != "cpu":
        return [{"precision": "fp32", "unavailable": "pytorch-channels-last runs cpu profiles "
                 f"only; profile {profile.name!r} asks for {profile.device}"}]
    model = copy.deepcopy(art.model).eval().to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(profile.batch_size, 3, art.image_size, art.image_size, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    old = torch.get_num_threads()
    torch.set_num_threads(profile.threads or os.cpu_count() or 1)
    try:
        with torch.inference_mode():
            stats = measure(lambda: model(x), profile.batch_size, settings)
            # outputs on the test images (numpy, in every run): the run compares them with
            # PyTorch's own, so a layout bug shows as a disagreement, not as a fast number
            test = torch.from_numpy(art.test_images)
            outputs = torch.cat([model(b.contiguous(memory_format=torch.channels_last))
                                 for b in test.split(32)]).numpy()
    finally:
        torch.set_num_threads(old)
    return [{"precision": "fp32", "stats": stats, "device": "cpu",
             "memory_format": "channels_last", "test_outputs": outputs}]
