"""transfer-bench: measure how to reuse a pretrained CNN for a new vision task.

Plugins write ``from harness import hookimpl`` and return specs from :mod:`harness.specs`.
"""
from __future__ import annotations

import pluggy

from .specs import (BackboneSpec, DatasetSpec, ExecutorSpec, PresetSpec, ProfileSpec,
                    ReporterSpec, RuntimeSpec, StrategySpec, TaskSpec, WeightSourceSpec)

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("transfer_bench")
"""Marker for hook implementations: ``@hookimpl def register_backbones(): ...``."""

__all__ = [
    "hookimpl", "BackboneSpec", "DatasetSpec", "ExecutorSpec", "PresetSpec", "ProfileSpec", "ReporterSpec",
    "RuntimeSpec", "StrategySpec", "TaskSpec", "WeightSourceSpec", "__version__",
]
