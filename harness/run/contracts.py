"""What every cell holds its plugins to: the test kit's contracts, checked in the run.

The test kit (:mod:`harness.testkit`) checks a plugin once, on a tiny model; a run meets
the plugin on real models, data and settings. So each cell also checks, cheaply, the
promises the kit checks, and a broken one fails the cell with a sentence that names the
plugin, its distribution and the fault (never a bare library error from deep inside
training):

- a backbone's layer groups hold every parameter exactly once (:func:`check_layer_groups`);
- a weight source keeps the backbone's parameter names and shapes (:func:`state_shapes`,
  :func:`check_weights_kept`);
- the backbone gives the feature size it declares and the task's head takes it
  (:func:`check_features`);
- what a strategy declares frozen (everything outside
  :meth:`harness.train.strategy.Strategy.trained_parameters`) keeps its exact bytes, and
  every layer group it declares trained changed: in each phase, the groups the phase
  names and no other (:func:`check_training`, :func:`check_phase`);
- a pretrained weight source changed some parameter (:func:`check_weights_loaded`), the
  backbone's features are finite, the task's loss is a finite scalar
  (:func:`check_loss`) and its metrics hold a finite primary metric
  (:func:`check_metrics`), ``fit`` returns a ``History`` (:func:`check_history`);
- any other exception a plugin raises is reported under the plugin's name (:func:`blame`).

The costs: one forward pass of two images before training, and the parameter fingerprints
the cell takes anyway to count what training changed.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ..api.errors import BenchError
from ..api.hookspecs import KINDS
from ..api.tolerance import DEFAULT_TOLERANCE, OUTPUT_TOLERANCE, tolerance_key


class PluginFault(BenchError):
    """A plugin broke its contract during a run; the message names the plugin, its
    distribution and the fault."""


def plugin_label(plugins, kind: str, name: str) -> str:
    """``backbone 'x' of plugin 'p' (dist 1.0)``: how a fault names what broke it.

    Args:
        kind: a registry name (``"backbones"``, ``"weights"``, ...).
        name: the registered name (``NAME:ARG`` strings resolve to ``NAME``).
    """
    reg = plugins.registries.get(kind)
    noun = KINDS[kind].noun if kind in KINDS else kind
    if reg is None:
        return f"{noun} {name!r}"
    try:
        spec, _arg = reg.resolve(name)
        pname = reg.plugin(spec.name)
    except (KeyError, BenchError):
        return f"{noun} {name!r}"
    info = plugins.infos.get(pname)
    return f"{noun} {spec.name!r} of {info.label if info else f'plugin {pname!r}'}"


@contextlib.contextmanager
def blame(plugins, kind: str, name: str, doing: str,
          hint: Optional[Callable[[], Optional[str]]] = None) -> Iterator[None]:
    """Re-raise what a plugin's code raises as a :class:`PluginFault` naming the plugin.

    Errors meant for the user already (:class:`harness.api.errors.BenchError`: weights
    that cannot be had, a dataset to install) and ``MemoryError`` pass unchanged.

    Args:
        doing: what the plugin was asked to do (``"loading weights"``).
        hint: called on failure; a sentence that explains the failure better, or None.
    """
    try:
        yield
    except (BenchError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        better = hint() if hint is not None else None
        raise PluginFault(f"{plugin_label(plugins, kind, name)} failed while {doing}: "
                          f"{better + '; ' if better else ''}{type(exc).__name__}: {exc}"
                          ) from exc


def _some(names: list, n: int = 4) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def check_layer_groups(plugins, backbone_name: str, backbone: nn.Module) -> int:
    """The backbone's layer groups hold each of its parameters exactly once.

    Returns the number of parameters covered. Raises :class:`PluginFault` naming the
    backbone's plugin and the parameters missing, doubled or unknown."""
    who = plugin_label(plugins, "backbones", backbone_name)
    with blame(plugins, "backbones", backbone_name, "listing its layer groups"):
        groups = list(backbone.layer_groups())
    names = [g.name for g in groups]
    problems = []
    if not groups:
        problems.append("layer_groups() is empty")
    if len(set(names)) != len(names):
        problems.append(f"layer group names repeat ({_some(names)})")
    if "head" in names:
        problems.append("a layer group is called 'head', the name of the task's head")
    params = [n for n, _ in backbone.named_parameters()]
    listed = [p for g in groups for p in g.params]
    missing = [p for p in params if p not in set(listed)]
    unknown = sorted(set(listed) - set(params))
    seen: set = set()
    twice = sorted({p for p in listed if p in seen or seen.add(p)})
    if missing:
        problems.append(f"{len(missing)} parameter(s) are in no layer group, so no strategy "
                        f"can train or freeze them by group ({_some(missing)})")
    if twice:
        problems.append(f"{len(twice)} parameter(s) are in more than one layer group "
                        f"({_some(twice)})")
    if unknown:
        problems.append(f"layer groups name {len(unknown)} parameter(s) the backbone does not "
                        f"have ({_some(unknown)})")
    if problems:
        raise PluginFault(f"{who} breaks the layer-group contract (every parameter in exactly "
                          f"one group): " + "; ".join(problems))
    return len(params)


def state_shapes(module: nn.Module) -> dict:
    """``{name: shape}`` of a module's state dict (parameters and buffers)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_weights_kept(plugins, weights: str, backbone_name: str, before: dict,
                       backbone: nn.Module) -> None:
    """The weight source left the backbone's state-dict names and shapes as they were
    (``before`` from :func:`state_shapes` just before it loaded)."""
    after = state_shapes(backbone)
    if after == before:
        return
    gone = sorted(set(before) - set(after))
    new = sorted(set(after) - set(before))
    reshaped = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    what = []
    if reshaped:
        k = reshaped[0]
        what.append(f"changed the shape of {len(reshaped)} tensor(s) ({k}: {before[k]} -> "
                    f"{after[k]}{', ...' if len(reshaped) > 1 else ''})")
    if gone:
        what.append(f"removed {len(gone)} ({_some(gone)})")
    if new:
        what.append(f"added {len(new)} ({_some(new)})")
    raise PluginFault(f"{plugin_label(plugins, 'weights', weights)} changed backbone "
                      f"{backbone_name!r} while loading: it " + "; ".join(what) + ". A weight "
                      "source loads weights into the backbone it is given, in place "
                      "(backbone.load_state_dict(state)), without replacing modules")


def check_features(plugins, backbone_name: str, task_name: str, backbone: nn.Module,
                   head: nn.Module, head_input: str, image_size: int) -> dict:
    """The backbone gives the feature size it declares and the task's head takes it.

    One forward pass of two random images at ``image_size`` (eval mode, no gradient; the
    modules' training modes are restored). Returns ``{"features": shape, "outputs":
    shape}``."""
    bb_who = plugin_label(plugins, "backbones", backbone_name)
    if not isinstance(head, nn.Module):
        raise PluginFault(f"{plugin_label(plugins, 'tasks', task_name)} built a head of type "
                          f"{type(head).__name__}; build_head returns a torch.nn.Module")
    spatial = head_input == "spatial"
    attr = "feature_channels" if spatial else "num_features"
    declared = getattr(backbone, attr, None)
    if not isinstance(declared, int) or declared < 1:
        raise PluginFault(f"{bb_who} declares {attr} = {declared!r}; set it to the size of "
                          f"what {'forward_spatial' if spatial else 'forward'} returns")
    modes = [(m, m.training) for m in (backbone, head)]
    x = torch.rand(2, 3, image_size, image_size)
    try:
        backbone.eval()
        head.eval()
        with torch.no_grad():
            with blame(plugins, "backbones", backbone_name,
                       f"computing features of {image_size}x{image_size} images"):
                feats = backbone.forward_spatial(x) if spatial else backbone(x)
            size = int(feats.shape[1]) if feats.dim() >= 2 else None
            if size != declared or (not spatial and feats.dim() != 2):
                raise PluginFault(
                    f"{bb_who} declares {attr} = {declared} but "
                    f"{'forward_spatial' if spatial else 'forward'} gives features of shape "
                    f"{tuple(feats.shape)}; make {attr} the size it returns")
            if not bool(torch.isfinite(feats).all()):
                raise PluginFault(f"{bb_who} gives non-finite features (NaN or inf) for "
                                  f"images in [0, 1] with its weights loaded")
            with blame(plugins, "tasks", task_name,
                       f"running its head on {backbone_name!r}'s features of shape "
                       f"{tuple(feats.shape)} ({attr} = {declared}): the head does not fit "
                       f"the declared feature size"):
                out = head(feats)
    finally:
        for m, was in modes:
            m.train(was)
    return {"features": list(feats.shape), "outputs": list(out.shape)}


def check_weights_loaded(plugins, weights: str, backbone_name: str, before: dict,
                         backbone: nn.Module, pretrained: bool) -> None:
    """A source whose weights count as pretrained changed at least one parameter (``before``:
    :func:`harness.train.model.parameter_fingerprints` of the freshly built backbone);
    otherwise the cell would train random weights under a pretrained label."""
    from ..train.model import changed_parameters

    if pretrained and before and not changed_parameters(backbone, before):
        raise PluginFault(f"{plugin_label(plugins, 'weights', weights)} says its weights are "
                          f"pretrained but loading them changed no parameter of "
                          f"{backbone_name!r}; load them into the backbone it is given, in "
                          f"place")


def check_loss(plugins, task_name: str, task, model: nn.Module, split, split_info) -> None:
    """The task's loss on the model's outputs for two training images is a finite scalar
    tensor and its metrics name its primary metric (checked before training, where a
    broken loss or metric would fail deep inside it, blamed on the strategy)."""
    x, y = split.images[:2].float() / 255.0, split.targets[:2]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
            with blame(plugins, "tasks", task_name, "computing its loss"):
                loss = task.loss(out, y)
            with blame(plugins, "tasks", task_name, "computing its metrics"):
                metrics = task.metrics(out, y, split_info)
    finally:
        model.train(was)
    if not isinstance(metrics, dict) or task.primary_metric not in metrics:
        check_metrics(plugins, task_name, task, metrics)  # names what is missing
    if not (torch.is_tensor(loss) and loss.dim() == 0 and bool(torch.isfinite(loss))):
        shown = float(loss) if torch.is_tensor(loss) and loss.numel() == 1 else loss
        raise PluginFault(f"{plugin_label(plugins, 'tasks', task_name)} gives a loss of "
                          f"{shown!r} on two training images; loss() returns a finite scalar "
                          f"tensor")


def check_metrics(plugins, task_name: str, task, metrics) -> None:
    """The task's test metrics hold its primary metric as a finite number."""
    who = plugin_label(plugins, "tasks", task_name)
    if not isinstance(metrics, dict) or task.primary_metric not in metrics:
        got = sorted(metrics) if isinstance(metrics, dict) else type(metrics).__name__
        raise PluginFault(f"{who}: metrics() lacks its primary metric "
                          f"{task.primary_metric!r} (it gave {got})")
    value = metrics[task.primary_metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise PluginFault(f"{who}: its primary metric {task.primary_metric!r} is {value!r}, "
                          f"not a finite number")


def check_history(plugins, strategy_name: str, history) -> None:
    """``fit`` returned a :class:`harness.train.loop.History`."""
    from ..train.loop import History

    if not isinstance(history, History):
        raise PluginFault(f"{plugin_label(plugins, 'strategies', strategy_name)}: fit() "
                          f"returned {type(history).__name__}; return the "
                          f"harness.train.loop.History of ctx.new_history()")


def declared_trained(plugins, strategy_name: str, strategy, model: nn.Module, ctx) -> list:
    """What the strategy declares it may train
    (:meth:`harness.train.strategy.Strategy.trained_parameters`), asked before ``fit`` as
    the kit asks it; names that are not parameters of the model are a fault."""
    with blame(plugins, "strategies", strategy_name, "declaring its trained parameters"):
        declared = list(strategy.trained_parameters(model, ctx))
    names = {n for n, _ in model.named_parameters()}
    unknown = sorted(set(declared) - names)
    if unknown:
        raise PluginFault(f"{plugin_label(plugins, 'strategies', strategy_name)} declares "
                          f"trained parameters the model does not have ({_some(unknown)}); "
                          f"trained_parameters() returns names from model.named_parameters()")
    return declared


def froze_everything(model: nn.Module) -> Optional[str]:
    """A hint for a strategy whose training failed: it left no parameter trainable."""
    if not any(p.requires_grad for p in model.parameters()):
        return ("it left no parameter trainable (requires_grad is False everywhere), so "
                "there is nothing to optimise")
    return None


def check_training(plugins, strategy_name: str, declared: list, before: dict,
                   model: nn.Module, history=None, groups: Optional[dict] = None) -> dict:
    """What training froze and changed agrees with what the strategy declared.

    Compared after training (``before``: the fingerprints taken just before ``fit``):

    - every parameter the strategy does not declare trained
      (:meth:`harness.train.strategy.Strategy.trained_parameters`) keeps its exact bytes;
    - when it declares some trained, at least one of them changed;
    - per phase of the shared loop (``history.phases`` entries with ``changed_groups``,
      measured before any rollback): :func:`check_phase` (each group the phase names
      changed; no other group did);
    - every layer group holding a parameter it declares trained is changed in the model
      it delivers, unless a rollback or an earlier best epoch explains why not
      (:func:`check_groups_trained`).

    "Changed" means any element of any parameter of the group differs. A group may stay as
    it was, and the record says why (``unchanged``), only when the phases that name it
    took no optimiser step (fp16 steps the gradient scaler skipped do not count) or
    stopped (early stopping, budget) while gradual unfreezing had not reached it yet, when
    it has no parameter elements, or (in the delivered model only) when the phases that
    trained it were rolled back or the kept epoch came before them.

    Args:
        declared: :func:`declared_trained`'s names.
        before: :func:`harness.train.model.parameter_fingerprints` before ``fit``.
        history: what ``fit`` returned (None: only the first two checks).
        groups: ``{group name: parameter names}`` of the model's layer groups before
            ``fit`` (:func:`layer_group_map`).

    Returns:
        ``{"declared_trained", "declared_frozen", "changed"}`` (parameter tensors), with
        ``history``: ``"phases_checked"``, ``"groups_trained"`` and ``"unchanged"``
        (``{group: why}`` for each excused group).
    """
    from ..train.model import parameter_fingerprints

    now = parameter_fingerprints(model)
    changed = {n for n in before if now.get(n) != before[n]}  # replaced ones count too
    wanted = set(declared)
    frozen = [n for n in before if n not in wanted]
    touched = [n for n in frozen if n in changed]
    who = plugin_label(plugins, "strategies", strategy_name)
    if touched:
        raise PluginFault(f"{who} changed {len(touched)} of the {len(frozen)} parameters it "
                          f"declares frozen ({_some(touched)}): it trains what "
                          f"trained_parameters() leaves out; freeze them or declare them")
    if declared and not wanted & changed:
        raise PluginFault(f"{who} declares {len(declared)} parameter(s) trained "
                          f"({_some(declared)}) but training changed none of them: it froze "
                          f"what it declares trained")
    out = {"declared_trained": len(declared), "declared_frozen": len(frozen),
           "changed": len(changed)}
    if history is None:
        return out
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    records = [p for p in getattr(history, "phases", None) or []
               if isinstance(p, dict) and "changed_groups" in p and "groups" in p]
    empty = {g for g, params in (groups or {}).items()
             if not any(sizes.get(p, 1) for p in params)}
    seen: dict = {g: "it has no parameter elements" for g in empty}
    for rec in records:
        check_phase(who, rec, history, seen)
    out["phases_checked"] = len(records)
    if groups is not None:
        out.update(check_groups_trained(who, declared, groups, changed, seen, history))
    return out


def layer_group_map(model: nn.Module) -> dict:
    """``{group name: parameter names}`` of ``model.layer_groups()``, taken before ``fit``
    for :func:`check_training` (a strategy may replace modules while it trains)."""
    return {g.name: list(g.params) for g in model.layer_groups()}


def _grew_then_stopped(rec: dict, history) -> Optional[list]:
    """Gradual unfreezing (Howard & Ruder 2018, section 3.3) that stopped before it
    unfroze everything: the groups trainable in any epoch of the phase, when the trainable
    set grew during the phase and the phase stopped early (early stopping or its budget);
    else None."""
    first, n = rec.get("first_epoch"), rec.get("epochs_run") or 0
    if first is None or not n or str(rec.get("stopped", "max epochs")) == "max epochs":
        return None
    epochs = list(getattr(history, "epochs", None) or [])[first:first + n]
    sets = [set(getattr(e, "trainable_groups", None) or ()) for e in epochs]
    if len(sets) < 2 or not sets[0] < sets[-1]:
        return None
    return sorted(set().union(*sets))


def check_phase(who: str, rec: dict, history, seen: dict) -> None:
    """One phase of the shared loop (:func:`harness.train.loop.run_phase`'s record) changed
    exactly the layer groups it names: when the phase took an optimiser step, each named
    group has a changed parameter, and no group
    it does not name changed (both measured before any rollback). A named group at a
    learning rate of 0 is declared trained and left as it was: a fault.

    ``seen`` collects ``{group: "changed" or why it may stay as it was}`` over the phases
    for :func:`check_groups_trained`. Raises :class:`PluginFault` naming the phase."""
    name, named = rec.get("name"), list(rec["groups"])
    did = set(rec["changed_groups"])
    extra = [g for g in rec["changed_groups"] if g not in named]
    if extra:
        raise PluginFault(f"{who} changed layer group(s) {', '.join(extra)} in phase {name!r}, "
                          f"which trains only {', '.join(named) or 'no group'}: it trains "
                          f"groups its phase declares frozen; name them in the Phase's "
                          f"groups or keep them frozen (requires_grad False)")
    excused = {g: why for g, why in seen.items() if why != "changed"}  # empty groups
    for g in did:
        seen[g] = "changed"
    steps = int(rec.get("steps") or 0) - int(rec.get("steps_skipped") or 0)
    reached = _grew_then_stopped(rec, history)
    missing = []
    for g in named:
        if g in did:
            continue
        if g in excused:
            why = excused[g]
        elif steps < 1:
            skipped = int(rec.get("steps_skipped") or 0)
            why = f"phase {name!r} took no optimiser step" + (
                f" (the fp16 gradient scaler skipped all {skipped})" if skipped
                else f" (stopped: {rec.get('stopped', 'unknown')})")
        elif reached is not None and g not in reached:
            why = (f"phase {name!r} stopped ({rec.get('stopped')}) before gradual "
                   f"unfreezing reached it")
        else:
            missing.append(g)
            continue
        seen.setdefault(g, why)
    if missing:
        raise PluginFault(f"{who} declares layer group(s) {', '.join(missing)} trained in "
                          f"phase {name!r} but its {steps} optimiser step(s) changed none of "
                          f"their parameters: it froze what it declares trained (changed: "
                          f"{', '.join(rec['changed_groups']) or 'nothing'}); keep them "
                          f"trainable or leave them out of the phase")


def check_groups_trained(who: str, declared: list, groups: dict, changed: set,
                         seen: dict, history=None) -> dict:
    """Every layer group holding a parameter the strategy declares trained is changed in
    the model ``fit`` delivers (``changed``: compared after training), unless it may stay
    as it was for a recorded reason:

    - a phase excused it (``seen``, from :func:`check_phase`: no optimiser step, gradual
      unfreezing stopped before reaching it, no parameter elements);
    - its phases changed it (``seen[g] == "changed"``) but the delivered weights predate
      every epoch that trained it and was not rolled back: chain-thaw's rolled-back
      phases (Felbo et al. 2017), or a phase that restored its best epoch from before the
      group was unfrozen (``history.kept_epoch`` and each epoch's ``trainable_groups``).

    Returns ``{"groups_trained", "unchanged"}`` (``{group: why}``)."""
    wanted = set(declared)
    missing, undone, unchanged, trained = [], [], {}, 0
    for g, params in groups.items():
        if not wanted & set(params):
            continue
        trained += 1
        if changed & set(params):
            continue
        if seen.get(g) == "changed":
            why = _delivered_before_training(g, history)
            if why is None:
                undone.append(g)
            else:
                unchanged[g] = why
        elif g in seen:
            unchanged[g] = seen[g]
        else:
            missing.append(g)
    if missing:
        raise PluginFault(f"{who} declares the parameters of layer group(s) "
                          f"{', '.join(missing)} trained (trained_parameters()) but training "
                          f"changed none of them: it froze what it declares trained; train "
                          f"them or leave them out of trained_parameters()")
    if undone:
        raise PluginFault(f"{who} declares layer group(s) {', '.join(undone)} trained and its "
                          f"phases changed them, but the model it delivers has them as before "
                          f"training (no rollback or earlier best epoch explains it): it undid "
                          f"what it declares trained")
    return {"groups_trained": trained, "unchanged": unchanged}


def _delivered_before_training(group: str, history) -> Optional[str]:
    """Why the delivered model may hold ``group`` as before training although a phase
    changed it (see :func:`check_groups_trained`), or None when nothing explains it."""
    kept = getattr(history, "kept_epoch", None)
    epochs = list(getattr(history, "epochs", None) or [])
    if kept is None or not epochs:
        return None
    trained = [i for i, e in enumerate(epochs)
               if group in (getattr(e, "trainable_groups", None) or ())]
    kept_on = [i for i in trained if not getattr(epochs[i], "rolled_back", False)]
    if not trained or any(i <= kept for i in kept_on):
        return None
    if not kept_on:
        return "every phase that trained it was rolled back (no better validation loss)"
    return (f"the delivered weights are epoch {kept + 1}'s, from before any kept epoch "
            f"trained it")


# -- runtimes: outputs against PyTorch's -------------------------------------------------------
# OUTPUT_TOLERANCE (per precision) and DEFAULT_TOLERANCE: the project's one table,
# harness.api.tolerance, imported above


def reference_outputs(model: nn.Module, images, batch: int = 64):
    """PyTorch eager fp32 outputs of ``model`` (on the CPU) on ``images`` (numpy
    ``(N, 3, S, S)`` float32 in [0, 1]), as a float32 numpy array."""
    import numpy as np

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    with torch.inference_mode():
        outs = [model(x[i:i + batch]).float() for i in range(0, len(x), batch)]
    return torch.cat(outs).numpy()


def compare_outputs(outputs, reference, precision: str) -> dict:
    """How far a runtime's outputs on the test images are from PyTorch's.

    Returns ``{"ok", "rel_rms", "max_abs_diff", "tolerance", "images", "metric",
    "against"}`` (``ok`` False with a ``problem`` for a shape mismatch or non-finite
    outputs), the ``outputs_check`` of a latency row."""
    import numpy as np

    tol = OUTPUT_TOLERANCE.get(precision, DEFAULT_TOLERANCE)  # harness.api.tolerance
    out = {"tolerance": tol, "metric": "relative RMS difference ||out - ref|| / ||ref||",
           "against": "PyTorch eager fp32 (CPU) on the same test images"}
    try:
        got = np.asarray(outputs, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        return {**out, "ok": False, "problem": f"test_outputs are not an array: {exc}"}
    ref = np.asarray(reference, dtype=np.float32)
    out["images"] = int(ref.shape[0])
    if got.shape != ref.shape:
        return {**out, "ok": False, "problem": f"test_outputs have shape {got.shape}, "
                f"PyTorch's {ref.shape}"}
    if not np.isfinite(got).all():
        return {**out, "ok": False, "problem": "test_outputs hold NaN or inf"}
    diff = got - ref
    norm = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))) if ref.size else 0.0
    rms = float(np.sqrt(np.mean(diff.astype(np.float64) ** 2))) if diff.size else 0.0
    rel = rms / norm if norm > 0 else (0.0 if rms == 0 else float("inf"))
    return {**out, "ok": bool(rms <= tol * norm + 1e-6), "rel_rms": rel,
            "max_abs_diff": float(np.abs(diff).max()) if diff.size else 0.0}


def check_runtime_row(plugins, runtime: str, row: dict, outputs,
                      reference: Callable[[], object]) -> None:
    """Set ``row["outputs_check"]`` (:func:`compare_outputs`, or ``ok`` None when the
    runtime returned no outputs to compare) and, for outputs that disagree, ``row
    ["disagrees"]``: a sentence naming the runtime's plugin. Such a row is marked in the
    table and left out of the recommendation; the next run measures it again."""
    if not row.get("stats"):
        return
    prec = str(row.get("precision"))
    if outputs is None:
        row["outputs_check"] = {"ok": None, "problem": "not compared: the runtime returned no "
                                "test_outputs (outputs on artifacts.test_images)"}
        return
    # a GPU fp32 row that ran with TF32 tensor cores (its "tf32") has TF32's 10-bit mantissa
    key = tolerance_key(prec, row.get("tf32"))
    check = row["outputs_check"] = compare_outputs(outputs, reference(), key)
    if not check["ok"]:
        why = check.get("problem") or (f"relative RMS difference {check['rel_rms']:.3g} > "
                                       f"{check['tolerance']:g} allowed for {prec}")
        row["disagrees"] = (f"{plugin_label(plugins, 'runtimes', runtime)}: its {prec} "
                            f"outputs disagree with PyTorch's on {check.get('images', '?')} "
                            f"test images ({why}); left out of the recommendation")


def failed_measurements(rows: list) -> list:
    """``RUNTIME PROFILE PRECISION`` of each latency row that failed (an error, or outputs
    that disagree with PyTorch's): a rerun measures the cell again for them."""
    return [f"{r.get('runtime')} {r.get('profile')} {r.get('precision')}" for r in rows
            if r.get("error") or (r.get("outputs_check") or {}).get("ok") is False]
