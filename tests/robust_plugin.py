"""A tiny plugin for the robustness tests (tests/test_robustness.py), importable by name so
that ``bench run`` subprocesses and their workers load it as a third-party plugin.

``python tests/robust_plugin.py ARGS...`` is ``bench ARGS...`` with this plugin registered.
"""
from __future__ import annotations

import os
import sys
import time

from harness import BackboneSpec, DatasetSpec, RuntimeSpec, StrategySpec, hookimpl
from harness.testkit import TinyBackbone, make_tiny_splits
from harness.train.strategy import Strategy

NAME = "robust-plugin"


def load_quadrants(task, image_size, seed, cache_dir, n_train: int = 96):
    """The test kit's learnable 4-class problem."""
    return make_tiny_splits(image_size, n_train=n_train, seed=seed)


class Slow(Strategy):
    """Trains the head after sleeping ``sleep_s`` (so a kill lands mid-cell)."""

    pretrained = False

    def __init__(self, sleep_s: float = 0.0):
        self.sleep_s = float(sleep_s)

    def freeze_before_training(self, model):
        if self.sleep_s:
            time.sleep(self.sleep_s)

    def fit(self, model, data, ctx):
        log = os.environ.get("ROBUST_LOG")
        if log:  # one line per training, to count how often each cell ran
            with open(log, "a") as f:
                f.write(f"seed {ctx.settings.seed} pid {os.getpid()}\n")
        return super().fit(model, data, ctx)


def slow_available():
    return True, ""


def slow_measure(art, profile, settings):
    """A latency 'runtime' that writes its worker's pid to $ROBUST_MEASURE_MARKER and hangs
    (the tests kill bench while it measures); without the variable it returns a row."""
    marker = os.environ.get("ROBUST_MEASURE_MARKER")
    if marker:
        tmp = marker + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, marker)
        time.sleep(120)
    return [{"precision": p, "stats": {"p50_ms": 1.0, "p90_ms": 1.0, "mean_ms": 1.0}}
            for p in profile.precisions]


@hookimpl
def register_backbones():
    return [BackboneSpec("tinynet", build=TinyBackbone, device_class="mobile",
                         default_weights="random", description="test backbone")]


@hookimpl
def register_datasets():
    return [DatasetSpec("quadrants", load=load_quadrants, synthetic=True)]


@hookimpl
def register_runtimes():
    return [RuntimeSpec("slowrt", available=slow_available, measure=slow_measure,
                        description="test: hangs while $ROBUST_MEASURE_MARKER is set",
                        precisions=("fp32",))]


@hookimpl
def register_strategies():
    return [StrategySpec("slow", cls=Slow, description="test: sleeps, then trains the head")]


MATRIX = """\
name = "robust"
backbones = ["tinynet"]
datasets = ["quadrants"]
strategies = [{strategies}]
runtimes = [{runtimes}]
profiles = ["tiny"]
seeds = {seeds}
image_size = 16

[train]
epochs = 1
batch_size = 32

[latency]
min_s = 0.02
min_count = 3
warmup_s = 0.0

[profile.tiny]
batch_size = 1
threads = 1
precisions = ["fp32"]
"""


def write_matrix(path, strategies=('"slow"',), runtimes=('"pytorch"',), seeds: int = 1):
    """A tiny matrix file (one cell per strategy and seed); returns its path."""
    path.write_text(MATRIX.format(strategies=", ".join(strategies),
                                  runtimes=", ".join(runtimes), seeds=seeds))
    return path


def main(argv: list[str]) -> None:
    from harness.api.manager import get_plugins
    from harness.cli import main as bench_main

    system = get_plugins()
    system.register(sys.modules[__name__], name=NAME, origin="tests/robust_plugin.py")
    system.rebuild()
    sys.argv = ["bench", *argv]
    bench_main()


if __name__ == "__main__":  # register the module under its import name, as workers import it
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import robust_plugin

    robust_plugin.main(sys.argv[1:])
