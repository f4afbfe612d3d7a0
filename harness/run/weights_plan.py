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
from ..api.files import cache_dir
from .timefmt import format_seconds


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
        timing: the pretraining's time in this run when the source can tell
            (``WeightSourceSpec.pretraining_time``), summed over the pretrainings the run's
            cells need (one per seed, image size and device): ``runs``, ``cached`` (how
            many are on disk already), ``seconds`` (the estimate of those that train,
            None when some cannot be estimated), ``unknown`` (how many) and ``basis``.
    """

    backbone: str
    weights: str
    origin: str
    pretrained: bool
    pretraining: Optional[dict] = None
    timing: Optional[dict] = None

    def as_dict(self) -> dict:
        return {"backbone": self.backbone, "weights": self.weights, "origin": self.origin,
                "pretrained": self.pretrained, "pretraining": self.pretraining,
                "timing": self.timing}

    def time_text(self) -> str:
        """``time: about 1 min 30 s (...)``, ``time: none, cached here (...)``, or
        ``time: unknown (...)``; empty without a pretraining."""
        t = self.timing
        if not self.pretraining:
            return ""
        if t is None:
            return "time: no estimate (the weight source cannot tell)"
        runs, todo = t["runs"], t["runs"] - t["cached"]
        many = f" for {todo - t['unknown']} pretraining(s)" if runs > 1 else ""
        if todo == 0:
            return f"time: none, {t['basis']}"
        parts = []
        if t["seconds"] is not None:
            parts.append(f"about {format_seconds(t['seconds'])}{many} ({t['basis']})")
        if t["unknown"]:
            why = t.get("unknown_basis") or t["basis"]
            parts.append(f"{'unknown' if not parts else str(t['unknown']) + ' unknown'}: "
                         f"{why}; its progress line gives the time left after its first "
                         f"epoch")
        if t["cached"]:
            parts.append(f"{t['cached']} of {runs} cached here")
        return "time: " + "; ".join(parts)

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
            text += "; " + self.time_text()
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


def _timing(plugins: PluginSystem, ws, arg, label: str, weights: str,
            cells: Optional[list]) -> Optional[dict]:
    """The pretraining time of ``label``'s ``weights`` over the distinct pretrainings the
    pretrained ``cells`` need (see :attr:`WeightsPlan.timing`)."""
    if ws.pretraining_time is None or cells is None:
        return None
    contexts = {}
    for c in cells:
        if (c.backbone.label() != label
                or not plugins.strategies.get(c.strategy.name).cls.pretrained):
            continue
        spec, barg = plugins.backbones.resolve(c.backbone.name)
        if (c.weights or spec.default_weights) != weights:
            continue
        ctx = {"backbone": spec.name, "backbone_arg": barg, "image_size": c.image_size,
               "seed": c.seed, "device": c.train.get("device"), "amp": c.train.get("amp")}
        contexts[tuple(sorted((k, str(v)) for k, v in ctx.items()))] = ctx
    if not contexts:
        return None
    out = {"runs": len(contexts), "cached": 0, "seconds": 0.0, "unknown": 0, "basis": ""}
    said: dict = {"cached": [], "unknown": [], "known": []}
    for ctx in contexts.values():
        got = ws.pretraining_time(arg, {**ctx, "cache_dir": cache_dir()}) or {}
        kind = ("cached" if got.get("cached") else
                "unknown" if got.get("seconds") is None else "known")
        if kind == "known":
            out["seconds"] += float(got["seconds"])
        else:
            out[kind] += 1
        said[kind].append(str(got.get("basis") or "no basis given"))
    if not said["known"]:
        out["seconds"] = None
    # the basis of the figure shown first: the estimate, else why unknown, else the cache
    first = said["known"] or said["unknown"] or said["cached"]
    out["basis"] = "; ".join(dict.fromkeys(first))
    out["unknown_basis"] = "; ".join(dict.fromkeys(said["unknown"]))
    return out


def weights_plan(plugins: PluginSystem, matrix: MatrixConfig,
                 cells: Optional[list] = None) -> list[WeightsPlan]:
    """Per backbone of ``matrix`` (and per item of its weights axis), the weights its
    pretrained cells load, their origin and the pretraining they imply, with its time
    where the source can estimate it from what was measured here (given the run's
    ``cells``: :class:`harness.run.config.CellConfig`). Cells of strategies that do not
    transfer (``scratch``) start from random weights whatever this says.

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
            timing = _timing(plugins, ws, arg, item.label(), weights, cells) if pre else None
            out.append(WeightsPlan(item.label(), weights, where or "backbone default",
                                   ws.pretrained, pre, timing))
    return out


def plan_lines(plugins: PluginSystem, matrix: MatrixConfig, any_pretrained: bool,
               cells: Optional[list] = None) -> list[str]:
    """The header's lines on weights: one per backbone (and weights axis item), with the
    time of each pretraining the run's ``cells`` need."""
    if not any_pretrained:
        return ["weights: random init for every cell (no strategy of the matrix starts from "
                "pretrained weights)"]
    return ["weights " + p.line() for p in weights_plan(plugins, matrix, cells)]


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
