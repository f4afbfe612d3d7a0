"""A cell's training layout and precision: forced by the settings, or probed once per
(model, image size, device) on this machine and cached (:mod:`harness.train.autotune`).

The probe's choice is kept in ``<cache dir>/autotune/KEY.json``, KEY a SHA-256 of the
machine (CPU model and instruction-set extensions, cores, GPU), PyTorch's version, the
training device and its thread count, the model's architecture (head included), the image
and batch size and the candidates. Cells of the same backbone (frozen, fine-tuned,
scratch) and later runs reuse it. A lock on the entry (:func:`harness.run.locks.cache_lock`)
makes a second worker wait for the first one's probe instead of probing at the same time
(two probes on shared cores would also time each other). A probe that fails is recorded
in the cell (``autotune.error``), which then trains in the baseline set-up, and is not
cached. A probe that reached its time cap (``[train] autotune_max_s``) is cached with its
``capped`` record when it still chose (enough complete rounds); one that kept the baseline
for lack of rounds is kept for this process only (the run's next cells of that model
train the same way), so a later run, maybe on a quieter machine, probes again. Every cell records what it trained in and how that was chosen (``rec["autotune"]``).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from ..api.files import atomic_write_text
from ..measure.fingerprint import machine_identity
from ..train.architecture import architecture_fingerprint
from ..train.autotune import MIN_ROUNDS, RECIPE, candidates, forced, probe
from .locks import cache_lock


def choose_setup(ctx, model: torch.nn.Module, train_split, cache_folder: Path, versions: dict,
                 cell_key: str) -> dict:
    """Settle ``ctx``'s layout and precision for ``model`` (:meth:`TrainContext.use`) and
    return the record of how (``chosen``, ``why``, the probe's times or ``cached``)."""
    s = ctx.settings
    cands, notes = candidates(ctx.device, s.layout, s.amp)
    if len(cands) == 1:
        info = forced(cands, notes)
    else:
        info = _probed(ctx, model, train_split, cands, notes, Path(cache_folder), versions,
                       cell_key)
    ctx.use(info["chosen"]["layout"], info["chosen"]["amp"])
    return info


def _key(ctx, model, train_split, cands, versions) -> str:
    parts = {"recipe": RECIPE, "machine": machine_identity(), "versions": versions,
             "device": str(ctx.device), "threads": torch.get_num_threads(),
             "architecture": architecture_fingerprint(model),
             "input": list(train_split.images.shape[1:]), "batch": ctx.settings.batch_size,
             "candidates": [c.name for c in cands], "max_s": ctx.settings.autotune_max_s}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()
                          ).hexdigest()[:20]


#: probes that reached their time cap before they could choose (the baseline kept for
#: lack of rounds), kept for this process only: the run's next cells of that model train
#: in the same set-up, and a later run, maybe on a quieter machine, probes again
_UNDECIDED: dict = {}


def _probed(ctx, model, train_split, cands, notes, folder: Path, versions, cell_key) -> dict:
    path = folder / f"{_key(ctx, model, train_split, cands, versions)}.json"
    if str(path) in _UNDECIDED:
        return {**_UNDECIDED[str(path)], "cached": True, "notes": notes}
    with cache_lock(path):
        try:
            cached = json.loads(path.read_text())
            return {**cached, "cached": True, "notes": notes}
        except (OSError, ValueError):
            pass
        x, y = next(train_split.batches(ctx.settings.batch_size))
        try:
            info = probe(model, x, y, ctx.task.loss, ctx.device, cands,
                         max_s=ctx.settings.autotune_max_s)
        except Exception as exc:  # recorded in the cell, never cached
            base = forced(cands[:1])
            return {**base, "why": f"the probe failed, trained in the baseline {cands[0].name}",
                    "error": f"{type(exc).__name__}: {exc}", "probed": False, "notes": notes}
        info.update(probed=True, probed_by=cell_key, at=time.time())
        if info.get("capped") and info.get("rounds", 0) < MIN_ROUNDS:
            _UNDECIDED[str(path)] = info
        else:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(info, default=str))
    return {**info, "cached": False, "notes": notes}


__all__ = ["choose_setup"]
