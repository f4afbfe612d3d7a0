"""Layout/precision autotune: which set-ups are allowed, the probe, the decision, the cache."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import harness.train.autotune as at
from harness.api.errors import ConfigError
from harness.train.autotune import Candidate, candidates, decide, probe
from harness.train.loop import TrainSettings

CPU = torch.device("cpu")


def names(cands):
    return [c.name for c in cands]


def test_auto_layout_probes_both_layouts_in_the_forced_precision():
    cands, _ = candidates(CPU, "auto", "off")
    assert names(cands) == ["contiguous fp32", "channels_last fp32"]
    assert names(candidates(CPU, "channels_last", "auto")[0]) == ["channels_last fp32"]
    assert names(candidates(CPU, "auto", "bf16")[0]) == ["contiguous bf16", "channels_last bf16"]


@pytest.mark.parametrize("flags, mixed", [(set(), []), ({"avx512_bf16"}, ["bf16"]),
                                          ({"amx_bf16", "amx_fp16"}, ["bf16", "fp16"])])
def test_mixed_precision_only_when_tune_allows_it_and_the_cpu_has_it(monkeypatch, flags, mixed):
    monkeypatch.setattr(at, "cpu_flags", lambda: flags)
    cands, notes = candidates(CPU, "contiguous", "tune")
    assert [c.amp for c in cands] == ["off"] + mixed
    for amp in {"bf16", "fp16"} - set(mixed):
        assert any(n.startswith(amp) and "/proc/cpuinfo" in n for n in notes)
    # never without --amp tune, whatever the CPU has
    assert [c.amp for c in candidates(CPU, "auto", "auto")[0]] == ["off", "off"]


def test_bad_layout_and_contradictions_are_refused():
    with pytest.raises(ValueError, match="layout must be one of"):
        TrainSettings(layout="nhwc")
    with pytest.raises(ValueError, match="contradicts"):
        TrainSettings(layout="contiguous", channels_last=True)
    assert TrainSettings(channels_last=True).layout == "channels_last"


def test_decide_needs_a_margin_and_most_rounds():
    base, cl = "contiguous fp32", "channels_last fp32"
    assert decide({base: [1.0, 1.0, 1.0], cl: [0.7, 0.7, 0.7]}, base)[0] == cl
    assert decide({base: [1.0, 1.0, 1.0], cl: [0.98, 0.98, 0.98]}, base)[0] == base  # < 5%
    # faster median but lost 2 of 3 paired rounds: noise, keep the baseline
    assert decide({base: [0.2, 0.5, 0.5], cl: [0.3, 0.6, 0.4]}, base)[0] == base
    assert decide({base: [0.5, 0.5, 0.5], cl: [0.7, 0.7, 0.7]}, base)[0] == base


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout(0.5)  # draws random numbers: the probe must not shift them
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.drop(self.conv(x).mean((2, 3))))


class LayoutSensitive(Net):
    """Computes something else in channels-last: the numerics check must leave it out."""

    def forward(self, x):
        out = super().forward(x)
        return out + 1.0 if x.is_contiguous(memory_format=torch.channels_last) else out


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g)


def test_probe_times_each_candidate_and_leaves_model_and_rng_alone():
    torch.manual_seed(0)
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cands, _ = candidates(CPU, "auto", "off")
    info = probe(model, *batch(), nn.functional.cross_entropy, CPU, cands)
    assert info["chosen_name"] in names(cands)
    assert {n: len(t) for n, t in info["step_ms"].items()} == {n: at.ROUNDS for n in names(cands)}
    assert all(t > 0 for ts in info["step_ms"].values() for t in ts)
    assert info["numerics"]["channels_last fp32"]["ok"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert info["capped"] is None and info["max_s"] == at.MAX_S


class Ticks:
    """A fake clock: each reading is ``step`` seconds after the previous one."""

    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


@pytest.mark.parametrize("max_s, rounds, chose_baseline", [(1.5, 0, True), (14.5, 2, False)])
def test_a_probe_stops_at_its_time_cap_and_says_so(max_s, rounds, chose_baseline):
    """The cap is checked before each step; only complete rounds count, and with fewer
    than MIN_ROUNDS the baseline is kept."""
    cands, _ = candidates(CPU, "auto", "off")
    info = probe(Net(), *batch(), nn.functional.cross_entropy, CPU, cands, max_s=max_s,
                 clock=Ticks(1.0))
    assert info["capped"]["max_s"] == max_s and info["capped"]["elapsed_s"] > max_s
    assert info["capped"]["complete_rounds"] == info["rounds"] == rounds
    assert {len(t) for t in info["step_ms"].values()} == {rounds}
    assert "time cap" in info["why"]
    if chose_baseline:
        assert info["chosen_name"] == "contiguous fp32" and "kept" in info["why"]


def test_the_table_names_a_capped_probe():
    from harness.report.table import autotune_note, table_notes
    rec = {"config": {"backbone": "big_net"}, "autotune": {
        "chosen_name": "contiguous fp32",
        "capped": {"max_s": 30.0, "elapsed_s": 31.2, "complete_rounds": 1}}}
    line = autotune_note([rec])
    assert "big_net" in line and "31.2 s of 30 s" in line and "autotune_max_s" in line
    assert line in table_notes([rec])
    assert autotune_note([{"autotune": {"capped": None}}]) == ""


def test_the_time_cap_must_be_positive():
    with pytest.raises(ValueError, match="autotune_max_s"):
        TrainSettings(autotune_max_s=0)


def test_a_layout_that_changes_the_outputs_is_left_out():
    cands, _ = candidates(CPU, "auto", "off")
    info = probe(LayoutSensitive(), *batch(), nn.functional.cross_entropy, CPU, cands)
    assert info["left_out"] == ["channels_last fp32"]
    assert not info["numerics"]["channels_last fp32"]["ok"]
    assert info["chosen_name"] == "contiguous fp32"
    assert list(info["step_ms"]) == ["contiguous fp32"]


# -- the cell side: cached per machine, recorded, forced by the settings ----------------------
class _Ctx:
    def __init__(self, **train):
        from harness.testkit import make_tiny_splits
        from harness.train.loop import TrainContext
        from plugins.tasks.classification import Classification

        self.data = make_tiny_splits(16, n_train=32)
        self.ctx = TrainContext(Classification(), self.data.info,
                                TrainSettings(batch_size=8, device="cpu", **train))


def test_choose_setup_probes_once_then_reuses_and_records(tmp_path, monkeypatch):
    import harness.run.tuning as tuning
    calls = []

    def fake_probe(model, x, y, loss, dev, cands, max_s):
        calls.append(names(cands))
        assert max_s == at.MAX_S  # [train] autotune_max_s reaches the probe
        return {"chosen": {"layout": "channels_last", "amp": "off"},
                "chosen_name": "channels_last fp32", "why": "planted"}

    monkeypatch.setattr(tuning, "probe", fake_probe)
    for cell in ("a", "b"):
        c = _Ctx()
        info = tuning.choose_setup(c.ctx, Net(), c.data.train, tmp_path, {"torch": "x"}, cell)
        assert c.ctx.channels_last and c.ctx.precision.name == "fp32"
    assert calls == [["contiguous fp32", "channels_last fp32"]]
    assert info["cached"] and info["probed_by"] == "a"


def test_a_probe_capped_before_it_could_choose_is_reused_by_this_process_only(
        tmp_path, monkeypatch):
    import harness.run.tuning as tuning
    calls = []

    def capped(model, x, y, loss, dev, cands, max_s):
        calls.append(1)
        return {"chosen": {"layout": "contiguous", "amp": "off"},
                "chosen_name": "contiguous fp32", "why": "kept: time cap", "rounds": 0,
                "capped": {"max_s": max_s, "elapsed_s": max_s + 1, "complete_rounds": 0}}

    monkeypatch.setattr(tuning, "probe", capped)
    monkeypatch.setattr(tuning, "_UNDECIDED", {})
    for cell in ("a", "b"):
        c = _Ctx()
        info = tuning.choose_setup(c.ctx, Net(), c.data.train, tmp_path, {}, cell)
    assert calls == [1] and info["cached"] and info["capped"]["complete_rounds"] == 0
    assert not list(tmp_path.glob("*.json"))  # a later run probes again
    monkeypatch.setattr(tuning, "_UNDECIDED", {})  # a new process
    c = _Ctx()
    tuning.choose_setup(c.ctx, Net(), c.data.train, tmp_path, {}, "c")
    assert calls == [1, 1]


def test_a_failed_probe_is_recorded_not_cached(tmp_path, monkeypatch):
    import harness.run.tuning as tuning

    def boom(*a, **kw):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(tuning, "probe", boom)
    c = _Ctx()
    info = tuning.choose_setup(c.ctx, Net(), c.data.train, tmp_path, {}, "a")
    assert "probe exploded" in info["error"] and not c.ctx.channels_last
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("train, layout, precision", [
    ({"layout": "channels_last", "amp": "off"}, True, "fp32"),
    ({"layout": "contiguous", "amp": "bf16"}, False, "bf16")])
def test_forced_settings_skip_the_probe(tmp_path, monkeypatch, train, layout, precision):
    import harness.run.tuning as tuning
    monkeypatch.setattr(tuning, "probe", lambda *a, **kw: pytest.fail("probed a forced set-up"))
    c = _Ctx(**train)
    info = tuning.choose_setup(c.ctx, Net(), c.data.train, tmp_path, {}, "a")
    assert info["probed"] is False and "forced" in info["why"]
    assert c.ctx.channels_last is layout and c.ctx.precision.name == precision


def test_channels_last_flags_become_the_layout(plugin_system):
    from harness.run.options import matrix_from_options
    m = matrix_from_options(plugin_system, {"channels_last": False})
    assert m.train.layout == "contiguous"
    assert matrix_from_options(plugin_system, {"channels_last": True}).train.layout == \
        "channels_last"
    assert matrix_from_options(plugin_system, {}).train.layout == "auto"
    with pytest.raises(ConfigError, match="contradicts"):
        matrix_from_options(plugin_system, {"channels_last": True, "layout": "contiguous"})


def test_candidate_names():
    assert Candidate("channels_last", "bf16").name == "channels_last bf16"
