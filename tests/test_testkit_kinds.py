"""The test kit covers every kind (issue 27): executor, profile, preset, command and
estimator checks pass the built-ins and catch planted faults by name; the runtime check
hands the run's types (numpy images) and compares outputs with PyTorch's."""
from __future__ import annotations

import click
import numpy as np
import pytest
import torch

from harness import (EstimatorSpec, ExecutorSpec, PresetSpec, ProfileSpec, RuntimeSpec,
                     hookimpl)
from harness.run.executor import InProcessExecutor
from harness.testkit import (ConformanceError, check_command, check_estimator, check_executor,
                             check_preset, check_profile, check_runtime)


# -- estimators ----------------------------------------------------------------------------------
def _estimators():
    from harness.api.manager import PluginSystem
    return [n for n in PluginSystem(entry_points=False).estimators.names()
            if n != "linear_probe"]  # scikit-learn's CV probe: ~10 s a score on 2 cores


@pytest.mark.parametrize("name", _estimators())
def test_builtin_estimators_pass_the_kit(plugin_system, name):
    out = check_estimator(plugin_system.estimators.get(name))
    assert np.isfinite(out["informative"]) and np.isfinite(out["uninformative"])


def _separation(inputs):
    f, y = inputs.features, inputs.labels
    return float(np.linalg.norm([f[y == c].mean(0) for c in range(inputs.num_classes)]))


@pytest.mark.parametrize("spec,words", [
    (EstimatorSpec("nan", score=lambda i: float("nan")), ["'nan'", "finite"]),
    (EstimatorSpec("texty", score=lambda i: {"score": "good"}), ["'texty'", "not a number"]),
    (EstimatorSpec("flipped", score=_separation, higher_is_better=False),
     ["'flipped'", "higher_is_better=False"]),
    (EstimatorSpec("noisy", score=lambda i: float(np.random.rand())), ["'noisy'", "seed"]),
    (EstimatorSpec("needy", score=lambda i: float(i.source_probs.max()),
                   needs_source_classifier=True), ["'needy'", "EstimatorUnavailable"]),
])
def test_check_estimator_catches_planted_faults(spec, words):
    with pytest.raises(ConformanceError) as err:
        check_estimator(spec)
    for w in words:
        assert w in str(err.value), str(err.value)


# -- profiles and presets ---------------------------------------------------------------------
def test_check_profile_passes_builtins_and_names_an_unmeasurable_precision(plugin_system):
    for spec in plugin_system.profiles:
        assert "fp32" in check_profile(spec, plugin_system)["precisions"]
    with pytest.raises(ConformanceError, match="profile 'odd': no registered runtime measures "
                                               "fp8"):
        check_profile(ProfileSpec("odd", precisions=("fp32", "fp8")), plugin_system)
    with pytest.raises(ConformanceError, match="device is 'tpu'"):
        check_profile(ProfileSpec("tpu", device="tpu"), plugin_system)


def test_check_preset_passes_builtins_and_names_what_a_run_would_refuse(plugin_system):
    assert check_preset(plugin_system.presets.get("deploy"), plugin_system)["cells"] == 1
    with pytest.raises(ConformanceError) as err:
        check_preset(PresetSpec("typo", matrix={"backbones": ["resnet_18"]}), plugin_system)
    assert "preset 'typo'" in str(err.value) and "resnet18" in str(err.value)
    with pytest.raises(ConformanceError, match="give a mapping"):
        check_preset(PresetSpec("listy", matrix=lambda: ["resnet18"]), plugin_system)


# -- commands --------------------------------------------------------------------------------
class _Commands:
    @hookimpl
    def register_commands(self, cli):
        @cli.command("hello")
        def hello():
            """Say hello."""
            click.echo("hello")

        @cli.command("mute")
        def mute():
            click.echo("no help")

        @cli.command("crash")
        def crash():
            """Crash when run."""
            raise RuntimeError("boom")


def test_check_command_runs_the_command_and_names_faults(register_plugin):
    system = register_plugin(_Commands(), name="cmds")
    assert check_command("hello", system, args=())["output"] == "hello\n"
    assert check_command("hello", system)["help"] == "Say hello."
    with pytest.raises(ConformanceError, match="command 'mute': has no help text"):
        check_command("mute", system)
    with pytest.raises(ConformanceError, match="command 'crash': bench crash  exited 1.*boom"):
        check_command("crash", system, args=())
    with pytest.raises(ConformanceError, match="no plugin's register_commands"):
        check_command("absent", system)


# -- executors --------------------------------------------------------------------------------
class _Dropper(InProcessExecutor):
    def run(self, jobs, run_one, on_done):
        jobs = list(jobs)
        for job in jobs[1:]:
            on_done(run_one(job))


def test_check_executor_passes_inprocess_and_catches_a_dropped_cell(plugin_system):
    assert check_executor(plugin_system.executors.get("inprocess"))["statuses"] == ["ok", "ok"]
    with pytest.raises(ConformanceError) as err:
        check_executor(ExecutorSpec("dropper", factory=_Dropper))
    assert "executor 'dropper'" in str(err.value) and "returned no record" in str(err.value)
    with pytest.raises(ConformanceError, match="no run"):
        check_executor(ExecutorSpec("runless", factory=lambda: object()))


# -- runtimes: the run's types, outputs compared ----------------------------------------------
def _rt_measure(art, profile, settings, sign=1.0, outputs=True):
    from harness.measure.latency import measure
    assert isinstance(art.test_images, np.ndarray) and art.test_images.dtype == np.float32
    assert isinstance(art.calibration, np.ndarray)
    x = torch.from_numpy(art.test_images[:1])
    with torch.inference_mode():
        row = {"precision": "fp32", "stats": measure(lambda: art.model(x), 1, settings)}
        if outputs:
            row["test_outputs"] = sign * art.model(torch.from_numpy(art.test_images)).numpy()
    return [row]


def test_check_runtime_hands_numpy_images_and_compares_outputs():
    good = RuntimeSpec("good", available=lambda: (True, ""), measure=_rt_measure)
    assert check_runtime(good)["results"][0]["stats"]["p50_ms"] > 0
    neg = RuntimeSpec("neg", available=lambda: (True, ""),
                      measure=lambda a, p, s: _rt_measure(a, p, s, sign=-1.0))
    with pytest.raises(ConformanceError, match="runtime 'neg': result fp32: test_outputs "
                                               "disagree with PyTorch"):
        check_runtime(neg)
    mute = RuntimeSpec("mute", available=lambda: (True, ""),
                       measure=lambda a, p, s: _rt_measure(a, p, s, outputs=False))
    with pytest.raises(ConformanceError, match="runtime 'mute': result fp32 has no "
                                               "test_outputs"):
        check_runtime(mute)


def test_builtin_pytorch_runtime_passes_the_kit(plugin_system):
    out = check_runtime(plugin_system.runtimes.get("pytorch"))
    assert [r["precision"] for r in out["results"]] == ["fp32"]
