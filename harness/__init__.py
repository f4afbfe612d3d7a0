"""transfer-bench: measure how to reuse a pretrained CNN for a new vision task.

Plugins write ``from harness import hookimpl`` and return specs (``from harness import
BackboneSpec``). The sub-packages are mapped in harness/README.md.
"""
from __future__ import annotations

import sys

from .measure.lifetime import arm_from_env

arm_from_env()  # a bench worker dies with its parent from its first import on (lifetime.py)

import pluggy  # noqa: E402

from .api import errors, specs  # noqa: E402
from .api.lazy import LazyCallable  # noqa: E402
from .api.specs import (BackboneSpec, DatasetSpec, EstimatorInput, EstimatorSpec,  # noqa: E402
                        ExecutorSpec, PresetSpec, ProfileSpec, ReporterSpec, RuntimeSpec,
                        SearchDim, StrategySpec, TaskSpec, WeightSourceSpec)

# ``import harness.specs`` / ``from harness.specs import ...`` (the layout before sub-packages)
# keep working for third-party plugins: the module lives in harness/api/specs.py.
sys.modules.setdefault(__name__ + ".specs", specs)
# ``harness.errors`` likewise (the exceptions a plugin raises: EstimatorUnavailable, ...)
sys.modules.setdefault(__name__ + ".errors", errors)

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("transfer_bench")
"""Marker for hook implementations: ``@hookimpl def register_backbones(): ...``."""

__all__ = [
    "hookimpl", "LazyCallable", "BackboneSpec", "DatasetSpec", "EstimatorInput", "EstimatorSpec", "ExecutorSpec",
    "PresetSpec", "ProfileSpec", "ReporterSpec", "RuntimeSpec", "SearchDim", "StrategySpec", "TaskSpec", "WeightSourceSpec", "__version__",
]
