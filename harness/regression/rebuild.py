"""Rebuilding a baseline cell's model (its architecture, seeded weights) from its configuration."""
from __future__ import annotations

import hashlib
import json
from dataclasses import fields

import torch

from ..api.manager import PluginSystem
from ..run.config import AxisItem, CellConfig
from ..train.data import DataInfo
from ..train.model import TransferModel


def cell_identity(config: dict) -> str:
    """What makes two cells the same model and training (not how latency is measured)."""
    keep = {k: v for k, v in config.items() if k not in ("runtimes", "profiles", "latency")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_config(config: dict) -> CellConfig:
    """A :class:`CellConfig` back from its ``to_dict()``."""
    kw = dict(config)
    for k in ("backbone", "task", "dataset", "strategy"):
        kw[k] = AxisItem.parse(kw[k], k)
    kw["runtimes"], kw["profiles"] = tuple(kw.get("runtimes", ())), tuple(kw.get("profiles", ()))
    names = {f.name for f in fields(CellConfig)}
    return CellConfig(**{k: v for k, v in kw.items() if k in names})


def build_architecture(plugins: PluginSystem, entry: dict) -> TransferModel:
    """The cell's backbone + head with seeded random weights (latency does not need training)."""
    cfg = cell_config(entry["config"])
    bb_spec, bb_arg = plugins.backbones.resolve(cfg.backbone.name)
    task = plugins.tasks.get(cfg.task.name).factory(**cfg.task.kwargs)
    info_kw = {k: v for k, v in (entry.get("data_info") or {}).items()
               if k in {f.name for f in fields(DataInfo)}}
    info = DataInfo(**{"name": cfg.dataset.name, **info_kw})
    torch.manual_seed(cfg.seed)
    kwargs = dict(cfg.backbone.kwargs)
    if bb_arg is not None:
        kwargs["arg"] = bb_arg
    backbone = bb_spec.build(**kwargs)
    head = task.build_head(backbone, info)
    return TransferModel(backbone, head, task.head_input).eval()
