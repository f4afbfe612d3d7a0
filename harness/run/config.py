"""Matrix configuration: axes, per-item parameters, settings; parsing of matrix files.

An axis item is a name with optional parameters. On the command line it is written
``NAME`` or ``NAME,key=value,key=value`` (``--strategy discriminative,factor=2.6``); in a
matrix file either that string or a table ``{name = "discriminative", factor = 2.6}``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from ..api.errors import ConfigError
from ..measure.latency import MeasureSettings
from ..train.loop import TrainSettings
from .hparam_search import TuneSettings

AXES = ("backbones", "tasks", "datasets", "strategies")


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.1' -> 0.1, 'true' -> True, 'a' -> 'a'."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class AxisItem:
    """A name on one axis of the matrix with its parameters."""

    name: str
    params: tuple = ()  # sorted (key, value) pairs, hashable

    @classmethod
    def parse(cls, value: Any, where: str = "") -> "AxisItem":
        if isinstance(value, AxisItem):
            return value
        if isinstance(value, dict):
            if "name" not in value or not isinstance(value["name"], str):
                raise ConfigError(f"{where}: an item given as a table needs a string 'name'")
            params = {k: v for k, v in value.items() if k != "name"}
            return cls(value["name"], tuple(sorted(params.items())))
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: expected a name or a table, got {value!r}")
        name, *rest = [p.strip() for p in value.split(",")]
        params = {}
        for part in rest:
            if "=" not in part:
                raise ConfigError(f"{where}: parameter {part!r} in {value!r} must be key=value")
            k, v = part.split("=", 1)
            params[k.strip()] = parse_value(v.strip())
        return cls(name, tuple(sorted(params.items())))

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    def label(self) -> str:
        if not self.params:
            return self.name
        return self.name + "," + ",".join(f"{k}={v}" for k, v in self.params)


def check_run_name(name: object) -> None:
    """A matrix's name becomes the run folder ``--out/NAME-HASH``: it must be one folder
    name, so that the run folder (and ``--fresh``'s removal of it) stays inside ``--out``.

    Raises:
        ConfigError: an empty name, a path (``/``, ``\\``), ``.``/``..``, an absolute path or
            a control character; the message says what a name may be.
    """
    why = None
    if not isinstance(name, str) or not name.strip():
        why = "is empty"
    elif "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        why = "holds a path separator"
    elif name in (".", "..") or name.startswith(".."):
        why = "leads out of --out ('..')"
    elif os.path.isabs(name):
        why = "is an absolute path"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "holds a control character"
    if why:
        raise ConfigError(f"run name {name!r} (--name, or name = in the matrix file) {why}; it "
                          f"names the run folder inside --out, so it must be one folder name "
                          f"such as 'flowers-test' (put the folder elsewhere with --out)")


@dataclass
class MatrixConfig:
    """Everything ``bench run`` needs to expand and run a matrix.

    A matrix file or a preset's mapping gives these keys; each one it leaves out takes the
    default below.

    Attributes:
        backbones, datasets, strategies: axis items (``"NAME"`` or ``"NAME,k=v"``).
            Default: empty, and a matrix must name at least one of each.
        tasks: default ``["classification"]``.
        weights: backbone name (or ``"*"`` for all) -> weights string. Default ``{}``:
            each backbone's ``BackboneSpec.default_weights``.
        runtimes: latency runtimes. Default ``[]`` (no latency measured).
        profiles: latency profiles. Default ``["mobile"]``.
        custom_profiles: profiles defined in the matrix (``[profile.NAME]`` in a file).
            Default ``{}``.
        seeds: repeats of every cell with seeds ``train.seed``, ``train.seed + 1``, ...
            Default ``1``.
        image_size: input size in pixels. Default ``64``.
        train: :class:`harness.train.loop.TrainSettings` (its defaults apply per key).
        latency: :class:`harness.measure.latency.MeasureSettings` (its defaults apply per key).
        name: names the run folder. Default ``"matrix"``.
        tune: :class:`harness.run.hparam_search.TuneSettings`: ``--tune N`` trials per cell
            and ``--halving`` (the ``[tune]`` table). Default: neither.
    """

    backbones: list = field(default_factory=list)
    tasks: Optional[list] = None  # None: the task a plugin declared default (validate fills it)
    datasets: list = field(default_factory=list)
    strategies: list = field(default_factory=list)
    #: backbone name or "*" -> a weights string, or a list of them: a weights axis (every
    #: pretrained cell of that backbone runs once per source; cells that train from
    #: scratch ignore weights and run once, see harness.run.runner.validate)
    weights: dict = field(default_factory=dict)
    runtimes: list = field(default_factory=list)
    profiles: Optional[list] = None  # None: the profile a plugin declared default
    custom_profiles: dict = field(default_factory=dict)  # name -> ProfileSpec kwargs
    seeds: int = 1
    image_size: int = 64
    train: TrainSettings = field(default_factory=TrainSettings)
    latency: MeasureSettings = field(default_factory=MeasureSettings)
    name: str = "matrix"
    tune: TuneSettings = field(default_factory=TuneSettings)
    # what the run prints, not what it runs: left out of to_dict() and so of the run key
    notes: list = field(default_factory=list, compare=False)
    user_weights: dict = field(default_factory=dict, compare=False)  # typed by the user
    #: where the other weights come from ("preset 'default'"), for the run's plan
    weights_from: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for axis in AXES:
            if getattr(self, axis) is not None:
                setattr(self, axis, [AxisItem.parse(v, axis) for v in getattr(self, axis)])
        check_run_name(self.name)
        if isinstance(self.tune, dict):
            self.tune = TuneSettings(**self.tune)
        if self.seeds < 1:
            raise ConfigError("seeds must be >= 1")
        if self.image_size < 8:
            raise ConfigError("image_size must be >= 8")

    def fill_defaults(self, plugins=None) -> "MatrixConfig":
        """Name the task and profile plugins declared default where the matrix names none.

        Args:
            plugins: the plugin system to ask; default: the process-wide one.
        """
        if self.tasks is None or self.profiles is None:
            from ..api.manager import get_plugins
            plugins = plugins if plugins is not None else get_plugins()
            if self.tasks is None:
                self.tasks = [AxisItem(plugins.default("tasks").name)]
            if self.profiles is None:
                self.profiles = [plugins.default("profiles").name]
        return self

    def cells(self) -> list["CellConfig"]:
        self.fill_defaults()
        out = []
        for ds, task, bb, st, seed in itertools.product(
                self.datasets, self.tasks, self.backbones, self.strategies, range(self.seeds)):
            for weights in self.weights_of(bb.name):
                out.append(CellConfig(
                    backbone=bb, task=task, dataset=ds, strategy=st, weights=weights,
                    seed=self.train.seed + seed, image_size=self.image_size,
                    train=asdict(self.train), runtimes=tuple(self.runtimes),
                    profiles=tuple(self.profiles), latency=asdict(self.latency),
                    tune=self.tune.to_dict() if self.tune.active else {}))
        return out

    def weights_of(self, backbone: str) -> list:
        """The weights a backbone's cells run with (``[None]``: the backbone's default)."""
        w = self.weights.get(backbone, self.weights.get("*"))
        return list(w) if isinstance(w, (list, tuple)) else [w]

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["notes"], d["user_weights"], d["weights_from"]
        if not self.tune.active:  # runs that do not tune keep the keys they had before
            del d["tune"]
        for axis in AXES:
            d[axis] = [i.label() for i in getattr(self, axis)]
        return d


@dataclass
class CellConfig:
    """One cell of the matrix, fully resolved except for plugin defaults."""

    backbone: AxisItem
    task: AxisItem
    dataset: AxisItem
    strategy: AxisItem
    weights: Optional[str]
    seed: int
    image_size: int
    train: dict
    runtimes: tuple
    profiles: tuple
    latency: dict
    #: the training device's name (GPU or CPU model), set when the run resolves the device
    #: (:func:`harness.train.device.resolve_hardware`); part of the key with ``train["device"]``
    device_name: str = ""
    #: :class:`harness.run.hparam_search.TuneSettings` as a dict when the run tunes or
    #: halves (part of the key then), else empty (and left out of the key)
    tune: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.tune:
            del d["tune"]
        for k in ("backbone", "task", "dataset", "strategy"):
            d[k] = getattr(self, k).label()
        d["runtimes"], d["profiles"] = list(self.runtimes), list(self.profiles)
        return d

    def key(self, versions: dict) -> str:
        """Hash of the whole configuration plus code and library versions."""
        blob = json.dumps({"cell": self.to_dict(), "versions": versions}, sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label(self) -> str:
        return (f"{self.backbone.label()} / {self.task.label()} / {self.dataset.label()} / "
                f"{self.strategy.label()} / seed {self.seed}")


# -- matrix files -------------------------------------------------------------------------
_TOP_KEYS = {
    "name": str, "backbones": list, "tasks": list, "datasets": list, "strategies": list,
    "runtimes": list, "profiles": list, "weights": dict, "seeds": int, "image_size": int,
    "train": dict, "latency": dict, "profile": dict, "description": str, "tune": dict,
}
_PROFILE_KEYS = {"batch_size": int, "threads": int, "precisions": list, "device": str,
                 "description": str}


def _find_line(text: str, key: str, section: Optional[str] = None) -> Optional[int]:
    """Line number (1-based) where ``key`` is set in a TOML or YAML text, if found."""
    cur = None
    pat = re.compile(r"^\s*(?:-\s*)?[\"']?" + re.escape(key) + r"[\"']?\s*[=:]")
    sec_pat = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
    for i, line in enumerate(text.splitlines(), 1):
        m = sec_pat.match(line)
        if m:
            cur = m.group(1)
            if section is None and cur == key:
                return i
            continue
        if pat.match(line) and (section is None or cur == section or
                                (cur is None and section is not None)):
            return i
    return None


def _type_name(t: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", list: "a list",
            dict: "a table", bool: "true or false"}[t]


def _check(value: Any, expected: type, key: str, text: str, path: Path,
           section: Optional[str] = None) -> None:
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        line = _find_line(text, key, section)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: key {key!r} must be {_type_name(expected)}, "
                          f"got {type(value).__name__} {value!r}")


def _unknown(key: str, allowed, text: str, path: Path, section: Optional[str] = None):
    import difflib
    line = _find_line(text, key, section)
    where = f"{path}:{line}" if line else str(path)
    close = difflib.get_close_matches(key, list(allowed), n=2)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    scope = f" in [{section}]" if section else ""
    return ConfigError(f"{where}: unknown key {key!r}{scope}.{hint} "
                       f"Allowed: {', '.join(sorted(allowed))}")


def load_matrix_file(path: Path) -> dict:
    """Read a TOML or YAML matrix file into the keyword arguments of :class:`MatrixConfig`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read matrix file {path}: {exc.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10: the same parser, as the tomli package
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return matrix_kwargs(data, text, path)


def matrix_kwargs(data: dict, text: str = "", path: Path = Path("<matrix>")) -> dict:
    """Validate a parsed matrix mapping; return :class:`MatrixConfig` keyword arguments."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table/mapping")
    kw: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _TOP_KEYS:
            raise _unknown(key, _TOP_KEYS, text, path)
        _check(value, _TOP_KEYS[key], key, text, path)
    if "name" in data:
        try:
            check_run_name(data["name"])
        except ConfigError as exc:
            if not text:  # not from a file: --name or a preset
                raise
            line = _find_line(text, "name")
            raise ConfigError(f"{path}:{line}: {exc}" if line else f"{path}: {exc}") from None
    for key in ("name", "backbones", "tasks", "datasets", "strategies", "runtimes",
                "profiles", "weights", "seeds", "image_size"):
        if key in data:
            kw[key] = data[key]
    for key in ("runtimes", "profiles"):
        for v in data.get(key, []):
            if not isinstance(v, str):
                _check(v, str, key, text, path)
    for k, v in data.get("weights", {}).items():
        if isinstance(v, list) and v:  # a weights axis: one run per source
            for w in v:
                _check(w, str, k, text, path, "weights")
        else:
            _check(v, str, k, text, path, "weights")
    for section, cls in (("train", TrainSettings), ("latency", MeasureSettings)):
        if section in data:
            allowed = {f.name: f.type for f in fields(cls)}
            for key, value in data[section].items():
                if key not in allowed:
                    raise _unknown(key, allowed, text, path, section)
                default = getattr(cls(), key)
                _check(value, type(default), key, text, path, section)
            try:
                kw[section] = cls(**data[section])
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: [{section}] {exc}") from None
    if "tune" in data:
        allowed = TuneSettings.keys()
        for key, value in data["tune"].items():
            if key not in allowed:
                raise _unknown(key, allowed, text, path, "tune")
            _check(value, allowed[key], key, text, path, "tune")
        try:
            kw["tune"] = TuneSettings(**data["tune"])
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for pname, pdef in data.get("profile", {}).items():
        _check(pdef, dict, pname, text, path, "profile")
        for key, value in pdef.items():
            if key not in _PROFILE_KEYS:
                raise _unknown(key, _PROFILE_KEYS, text, path, f"profile.{pname}")
            _check(value, _PROFILE_KEYS[key], key, text, path, f"profile.{pname}")
        kw.setdefault("custom_profiles", {})[pname] = dict(pdef)
    return kw
