"""A model's structure as a fingerprint: what two models must share to run the same work.

A CNN's work per image does not depend on its weights: models with the same fingerprint
run the same operators on tensors of the same shapes, so their latency
(:mod:`harness.run.timing`) and their fastest training set-up (:mod:`harness.run.tuning`)
are measured once and shared.
"""
from __future__ import annotations

import hashlib
import json

import torch


def architecture_fingerprint(model: torch.nn.Module) -> str:
    """A SHA-256 of ``model``'s structure: module classes and ``extra_repr`` (kernel sizes,
    strides, groups...), parameter and buffer names, shapes and dtypes; no weight values."""
    modules = [(name, type(m).__module__ + "." + type(m).__qualname__, m.extra_repr())
               for name, m in model.named_modules()]
    tensors = [(kind, name, list(t.shape), str(t.dtype))
               for kind, items in (("param", model.named_parameters()),
                                   ("buffer", model.named_buffers()))
               for name, t in items]
    blob = json.dumps({"modules": modules, "tensors": tensors}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


__all__ = ["architecture_fingerprint"]
