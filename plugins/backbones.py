"""Built-in backbones: VGG, ResNet and MobileNet families through timm, and any timm CNN.

``timm:NAME`` builds any timm architecture by name (``timm:convnext_nano``), so users are
not limited to this list.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import sys
from collections.abc import Mapping
from functools import lru_cache, partial
from pathlib import Path

from harness import BackboneSpec, hookimpl


def _timm_backbone(model_name: str, pool: str = "head"):
    """A :class:`~plugins._timm_backbone.TimmBackbone` (imported here, not at the top: the
    registry and ``bench --help`` stay free of torch and timm)."""
    from ._timm_backbone import TimmBackbone
    return TimmBackbone(model_name, pool=pool)

# name -> (family, device class, default weights, pooling, description)
_FAMILIES = {
    **{f"vgg{d}{bn}": ("vgg", "server", "imagenet", "avg",
                       f"VGG-{d}{' with batch norm' if bn else ''} (Simonyan & Zisserman 2015)")
       for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    **{f"resnet{d}": ("resnet", "server", "imagenet", "head", f"ResNet-{d} (He et al. 2016)")
       for d in (18, 34, 50, 101)},
    "mobilenetv2_100": ("mobilenet", "mobile", "packaged", "head",
                        "MobileNetV2 1.0 (Sandler et al. 2018)"),
    "mobilenetv3_small_100": ("mobilenet", "mobile", "imagenet", "head",
                              "MobileNetV3-Small 1.0 (Howard et al. 2019)"),
    "mobilenetv3_large_100": ("mobilenet", "mobile", "imagenet", "head",
                              "MobileNetV3-Large 1.0 (Howard et al. 2019)"),
}


def _check_any(arg: str | None = None, pool: str = "head") -> None:
    """``timm:NAME`` names an architecture timm has (checked before the run; builds nothing)."""
    if not arg:
        raise ValueError("write timm:ARCHITECTURE, e.g. timm:convnext_nano")
    import timm
    if not timm.is_model(arg):
        import difflib
        close = difflib.get_close_matches(arg, timm.list_models(), n=3)
        raise ValueError(f"timm has no architecture {arg!r}"
                         + (f"; did you mean {', '.join(close)}?" if close else
                            "; see timm.list_models() for the names"))


def _build_any(arg: str | None = None, pool: str = "head"):
    _check_any(arg, pool)
    return _timm_backbone(arg, pool=pool)


#: the facts of every built-in backbone, measured by :func:`measure_facts` and written by
#: ``python -m plugins.backbones --write-facts`` for the timm version it names, so that
#: ``bench list backbones`` reads them instead of importing torch and timm
FACTS_FILE = Path(__file__).with_name("backbone_facts.json")


def _installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


@lru_cache(maxsize=None)
def _facts_table() -> dict:
    """``{name: facts}`` from :data:`FACTS_FILE` when it was written for the installed timm
    (a timm that may define the models or weights differently is measured instead)."""
    try:
        table = json.loads(FACTS_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return table.get("facts", {}) if table.get("timm") == _installed("timm") else {}


@lru_cache(maxsize=None)
def backbone_facts(model_name: str, pool: str, weights: str) -> dict:
    """Parameter count, fp32 weight size, GMACs (at the weights' input size, see
    :func:`harness.train.model.measure_backbone`) and the default weights' facts: from
    :data:`FACTS_FILE` where it holds them for this timm, else measured."""
    known = _facts_table().get(model_name)
    if known and known.get("pool") == pool and known.get("default_weights") == weights:
        return {k: v for k, v in known.items() if k != "pool"}
    return measure_facts(model_name, pool, weights)


def measure_facts(model_name: str, pool: str, weights: str) -> dict:
    """:func:`backbone_facts` measured now (imports torch and timm; builds on meta)."""
    from harness.train.model import measure_backbone

    from .weights import default_weights_facts

    wfacts = default_weights_facts(model_name, weights)
    measured = measure_backbone(partial(_timm_backbone, model_name, pool=pool),
                                wfacts.get("input_size"))
    return {**measured, "default_weights": weights, **wfacts}


class _LazyFacts(Mapping):
    """Facts computed on first read, so building the registry stays instant."""

    def __init__(self, *key):
        self._key = key

    def _facts(self) -> dict:
        return backbone_facts(*self._key)

    def __getitem__(self, k):
        return self._facts()[k]

    def __iter__(self):
        return iter(self._facts())

    def __len__(self):
        return len(self._facts())


@hookimpl
def register_backbones():
    specs = [
        BackboneSpec(name, build=partial(_timm_backbone, model_name=name, pool=pool),
                     family=family, device_class=dclass, default_weights=weights,
                     description=desc, facts=_LazyFacts(name, pool, weights))
        for name, (family, dclass, weights, pool, desc) in _FAMILIES.items()
    ]
    specs.append(BackboneSpec("timm", build=_build_any, check=_check_any, family="timm",
                              device_class="server", default_weights="imagenet",
                              description="any timm CNN by name: timm:ARCHITECTURE",
                              facts={"note": "facts depend on the architecture named; a run "
                                             "records them (bench run -b timm:convnext_nano)"}))
    return specs


def write_facts(path: Path = FACTS_FILE) -> dict:
    """Measure every built-in backbone and write :data:`FACTS_FILE` (run it after a timm
    upgrade; tests/test_backbones.py checks the file against a measurement)."""
    table = {"timm": _installed("timm"), "torch": _installed("torch"),
             "written_by": "python -m plugins.backbones --write-facts",
             "facts": {name: {**measure_facts(name, pool, weights), "pool": pool}
                       for name, (_, _, weights, pool, _) in _FAMILIES.items()}}
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


if __name__ == "__main__":  # pragma: no cover - maintenance command
    if sys.argv[1:] != ["--write-facts"]:
        sys.exit("usage: python -m plugins.backbones --write-facts")
    print(f"wrote {len(write_facts()['facts'])} backbones' facts to {FACTS_FILE}")
