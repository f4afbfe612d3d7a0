"""Each backbone's weights before a run: what they are, who chose them, what they train.

:func:`weights_plan` says, per backbone of a matrix (and per item of a weights axis), the
weights string its pretrained cells load, where it comes from (the user: a ``--weights``
option or a matrix file; a preset; or the backbone's own default) and any source
pretraining it implies (dataset, epochs, image size), from the weight source's
``WeightSourceSpec.pretraining``. The run's header prints :func:`plan_lines`.

:func:`refuse_target_pretraining` refuses a matrix, before anything runs, whose pretrained
cells would pretrain a backbone on images of their own target dataset
(``WeightSourceSpec.shares_images``) without the weights string asking for it: that is not
transfer (issue 25: ``bench run -b resnet18 -d digits`` pretrained on digits for 17 minutes
under the default preset's ``source:digits`` and became the server pick).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..api.errors import ConfigError
from ..api.manager import PluginSystem
from .config import MatrixConfig


@dataclass(frozen=True)
class WeightsPlan:
    """One backbone's weights in a run.

    Attributes:
        backbone: the backbone's label.
        weights: the weights string its pretrained cells load (``random`` where it has no
            default and none was given).
        origin: ``"user"`` (``--weights`` or a matrix file), ``"preset 'NAME'"``,
            ``"backbone default"`` or ``"none: random init"``.
        pretrained: whether these weights count as pretrained.
        pretraining: what loading them trains first (``WeightSourceSpec.pretraining``:
            ``dataset``, ``dataset_params``, ``epochs``, ``image_size``, ``on_target``),
            or None.
    """

    backbone: str
    weights: str
    origin: str
    pretrained: bool
    pretraining: Optional[dict] = None

    def as_dict(self) -> dict:
        return {"backbone": self.backbone, "weights": self.weights, "origin": self.origin,
                "pretrained": self.pretrained, "pretraining": self.pretraining}

    def line(self) -> str:
        """``resnet18: source:digits,epochs=5 (preset 'default'); pretrains on digits...``"""
        text = f"{self.backbone}: {self.weights} ({self.origin})"
        p = self.pretraining
        if p:
            params = "".join(f",{k}={v}" for k, v in (p.get("dataset_params") or {}).items())
            size = f" at {p['image_size']} px" if p.get("image_size") else ""
            text += (f"; pretrains here on {p['dataset']}{params} for up to {p['epochs']} "
                     f"epochs{size} before its first pretrained cell (cached afterwards)")
            if p.get("on_target"):
                text += "; on the target's own images, as asked (on_target): not transfer"
        elif not self.pretrained:
            text += "; not pretrained"
        return text


def _origin(matrix: MatrixConfig, backbone: str) -> Optional[str]:
    user = matrix.user_weights or {}
    if backbone in user or "*" in user:
        return "user"
    if backbone in matrix.weights or "*" in matrix.weights:
        return matrix.weights_from or f"preset {matrix.name!r}"
    return None


def weights_plan(plugins: PluginSystem, matrix: MatrixConfig) -> list[WeightsPlan]:
    """Per backbone of ``matrix`` (and per item of its weights axis), the weights its
    pretrained cells load, their origin and the pretraining they imply. Cells of
    strategies that do not transfer (``scratch``) start from random weights whatever this
    says.

    Raises:
        harness.api.errors.UnknownName: a weight source nobody registered.
        Exception: what a source's ``pretraining`` raises for a bad argument.
    """
    out = []
    for item in matrix.backbones:
        spec, _ = plugins.backbones.resolve(item.name)
        origin = _origin(matrix, item.name)
        for weights in matrix.weights_of(item.name):
            where = origin
            if weights is None:
                weights, where = spec.default_weights, "backbone default"
            if weights is None:
                weights, where = plugins.default("weights").name, "none: random init"
            ws, arg = plugins.weights.resolve(weights)
            pre = ws.pretraining(arg) if ws.pretraining is not None else None
            out.append(WeightsPlan(item.label(), weights, where or "backbone default",
                                   ws.pretrained, pre))
    return out


def plan_lines(plugins: PluginSystem, matrix: MatrixConfig, any_pretrained: bool) -> list[str]:
    """The header's lines on weights: one per backbone (and weights axis item)."""
    if not any_pretrained:
        return ["weights: random init for every cell (no strategy of the matrix starts from "
                "pretrained weights)"]
    return ["weights " + p.line() for p in weights_plan(plugins, matrix)]


def refuse_target_pretraining(plugins: PluginSystem, matrix: MatrixConfig, cells: list) -> None:
    """Raise before anything runs when a pretrained cell's weights would pretrain on images
    of the cell's own dataset and the weights string does not ask for it.

    Raises:
        ConfigError: naming each backbone, its weights and their origin, the dataset, and
            the ways out.
    """
    problems, seen, backbones = [], set(), set()
    for cell in cells:
        if not plugins.strategies.get(cell.strategy.name).cls.pretrained:
            continue
        spec, _ = plugins.backbones.resolve(cell.backbone.name)
        weights = cell.weights or spec.default_weights
        if not weights:
            continue
        ws, arg = plugins.weights.resolve(weights)
        key = (cell.backbone.label(), weights, cell.dataset.label())
        if ws.shares_images is None or key in seen:
            continue
        seen.add(key)
        why = ws.shares_images(arg, cell.dataset.name, dict(cell.dataset.kwargs))
        pre = ws.pretraining(arg) if ws.pretraining is not None else {}
        if why and not (pre or {}).get("on_target"):
            origin = _origin(matrix, cell.backbone.name) or "backbone default"
            problems.append(f"{cell.backbone.label()} on {cell.dataset.label()} "
                            f"(weights {weights}, from {origin}): {why}")
            backbones.add(cell.backbone.label())
    if problems:
        bbs = sorted(backbones)
        raise ConfigError(
            "refused: source pretraining on the target dataset's own images:\n  "
            + "\n  ".join(problems)
            + "\nOther ways out: --weights "
            + " --weights ".join(f"{b}={plugins.default('weights').name}" for b in bbs)
            + " (no pretraining), --weights BACKBONE=file:PATH (your own weights), or leave "
              "these backbones out (-b)")
