"""A matrix from command-line options: the one way `bench run` and plugin commands build it.

``bench run`` and plugin commands that take a matrix (``bench baseline create``) accept the
same options (``-b/-t/-d/-s/-r/-p/-w``, ``--matrix``/``--preset``, training settings); the
click decorator for them is :func:`harness.cli.matrix_options` (handed to plugin commands
as ``cli.matrix_options`` in ``register_commands``), and :func:`matrix_from_options`
turns their values into a :class:`~harness.run.config.MatrixConfig`.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Optional

from .contracts import PluginFault, blame, plugin_label
from ..api.errors import ConfigError
from ..api.manager import PluginSystem
from .config import MatrixConfig, load_matrix_file
from .runner import build_matrix

AXES = ("backbones", "tasks", "datasets", "strategies")
"""The options that replace an axis of the matrix (each may be repeated)."""
LISTS = AXES + ("runtimes", "profiles")
TRAIN = ("epochs", "batch_size", "lr", "schedule", "patience", "budget", "device", "amp",
         "layout", "compile", "eval_batch_size", "tf32", "deterministic")
"""Options that replace a ``[train]`` setting."""
TUNE = {"tune": "trials", "tune_pruner": "pruner", "halving": "halving",
        "halving_min_resource": "min_resource", "halving_reduction_factor": "reduction_factor"}
"""Options that replace a ``[tune]`` setting (option name -> setting)."""


def weights_mapping(values: Iterable[str]) -> dict:
    """``-w [BACKBONE=]SOURCE`` values as the matrix's ``weights`` table (``*``: every backbone)."""
    out = {}
    for v in values:
        if "=" in v:
            bb, src = v.split("=", 1)
            out[bb.strip()] = src.strip()
        else:
            out["*"] = v.strip()
    return out


def kwargs_to_mapping(kw: dict) -> dict:
    """:func:`~harness.run.config.matrix_kwargs` output back to the mapping ``build_matrix`` takes."""
    out = dict(kw)
    for k in ("train", "latency", "tune"):
        if k in out and not isinstance(out[k], dict):
            out[k] = asdict(out[k])
    if "custom_profiles" in out:
        out["profile"] = out.pop("custom_profiles")
    return out


def matrix_from_options(plugins: PluginSystem, opts: dict) -> MatrixConfig:
    """The matrix that options describe: a file (``matrix_file``), a preset, or the default one.

    Args:
        opts: option values by name: ``matrix_file``, ``preset``, ``name``, the axes
            (:data:`AXES`), ``runtimes``, ``profiles``, ``weights`` (``-w`` values), the
            training settings (:data:`TRAIN`; ``channels_last`` True/False is read as
            ``layout``), ``image_size``, ``seeds``; missing or ``None``
            ones leave the file's or preset's value.

    The matrix keeps its file's or preset's name, or ``NAME-custom`` once an option replaced
    an axis (its results are no longer that matrix's); ``opts["name"]`` sets it outright.

    Raises:
        ConfigError: both a file and a preset, or a broken file (names the file and line).
        UnknownName: no such preset (lists the choices).
    """
    if opts.get("matrix_file") and opts.get("preset"):
        raise ConfigError("give --matrix or --preset, not both")
    if opts.get("matrix_file"):
        base = kwargs_to_mapping(load_matrix_file(Path(opts["matrix_file"])))
        base_name = f"matrix file {opts['matrix_file']}"
    else:
        spec = (plugins.presets.get(opts["preset"]) if opts.get("preset")
                else plugins.default("presets"))
        with blame(plugins, "presets", spec.name, "giving its matrix"):
            base = spec.resolve()
        if not isinstance(base, dict):
            raise PluginFault(f"{plugin_label(plugins, 'presets', spec.name)} gives a "
                              f"{type(base).__name__} as its matrix; give a mapping in the "
                              f"matrix-file format")
        base_name = f"preset {spec.name!r}"
    if opts.get("channels_last") is not None:  # --channels-last/--no-channels-last
        layout = "channels_last" if opts["channels_last"] else "contiguous"
        if opts.get("layout") not in (None, layout):
            raise ConfigError(f"--layout {opts['layout']} contradicts "
                              f"--{'' if opts['channels_last'] else 'no-'}channels-last; "
                              f"give one of them")
        opts = {**opts, "layout": layout}
    overrides = {k: tuple(opts.get(k) or ()) for k in LISTS}
    overrides.update(weights=weights_mapping(opts.get("weights") or ()),
                     train={k: opts[k] for k in TRAIN if opts.get(k) is not None},
                     tune={v: opts[k] for k, v in TUNE.items() if opts.get(k) is not None},
                     # --tf32/--no-tf32 means the GPU runtimes' fp32 rows too
                     latency=({"tf32": opts["tf32"]} if opts.get("tf32") is not None else {}),
                     image_size=opts.get("image_size"), seeds=opts.get("seeds"))
    name: Optional[str] = opts.get("name")
    if name:
        base = {**base, "name": name}
    elif any(overrides[a] for a in AXES):
        base = {**base, "name": f"{base.get('name', 'matrix')}-custom"}
    return build_matrix(base, overrides, base_name)


__all__ = ["AXES", "TRAIN", "TUNE", "weights_mapping", "kwargs_to_mapping", "matrix_from_options"]
