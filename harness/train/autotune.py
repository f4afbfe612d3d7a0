"""Layout and precision autotune: a short probe picks the fastest training set-up that keeps
the model's numerics.

Which memory layout and precision train a model fastest depends on the model and the
machine: channels-last gave MobileNetV2 at 64 px 1.42x on an AMD EPYC and 1.30x on a Xeon,
bf16 autocast 0.11x on the EPYC (no bf16 unit: emulated) and up to 1.68x on an AMX Xeon
(``benchmarks/bench_train_loop.py``, /work/shared/MEASUREMENT.md). So it is measured, not
guessed: :func:`candidates` lists the set-ups allowed, :func:`probe` times a few training
steps of each on one real batch and picks one by :func:`decide`.

What is allowed:

* layout (``[train] layout`` / ``--layout``): ``auto`` probes contiguous (NCHW) against
  channels-last (NHWC), the same model computed in another memory order; a candidate whose
  outputs differ from the contiguous ones beyond float reassociation (:data:`NUMERICS_RTOL`
  of the outputs' scale) is left out. ``contiguous`` or ``channels_last`` forces one.
* precision (``[train] amp`` / ``--amp``): ``off``, ``bf16``, ``fp16`` and ``auto`` force
  one, as before (``auto``: fp32 on the CPU, the GPU's AMP on CUDA). Only ``tune`` lets the
  probe try mixed precision: fp32 and the mixed precisions this device computes natively,
  detected, never assumed (CPU bf16 only with AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo``,
  CPU fp16 only with AVX512-FP16 or AMX-FP16; on CUDA fp16, and bf16 where
  ``torch.cuda.is_bf16_supported()``). Left-out precisions are listed with the reason.

The probe is honest but short (MEASUREMENT.md): each candidate trains on a copy of the
model (the cell's own weights and random-number streams are untouched), one warm-up step
each, then :data:`ROUNDS` rounds in which every candidate takes one step in a rotating
order; per candidate the median step time. A candidate replaces the baseline (the first:
contiguous, fp32 or the forced precision) only when its median is at least
:data:`MARGIN` faster and it won most rounds against the baseline, so noise keeps the
baseline rather than picking at random.

The probe has a time cap (``[train] autotune_max_s``, :data:`MAX_S` by default): a large
model on a slow or busy machine must not spend minutes choosing how to train. The cap is
checked before every step (a step already started is finished); when it is reached, only
complete rounds count, and with fewer than :data:`MIN_ROUNDS` of them the baseline is kept.
The record says so (``capped``: the cap, the seconds spent, the complete rounds), and the
run's table adds a line naming the capped probes.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from .device import PRECISION_NAMES, Precision, cpu_flags, parse_amp, place_module

LAYOUTS = ("auto", "contiguous", "channels_last")
#: rounds of interleaved timed steps, after one warm-up step per candidate
ROUNDS = 3
#: a candidate must be this much faster (median step) than the baseline to be picked
MARGIN = 0.05
#: default time cap of one probe, seconds (copies, numerics check, warm-up and rounds)
MAX_S = 30.0
#: complete rounds a capped probe needs to choose anything but the baseline
MIN_ROUNDS = 2
#: outputs of another layout may differ from contiguous ones by this fraction of their scale
NUMERICS_RTOL = 1e-4
#: bump when the probe changes, so cached choices are probed again
RECIPE = 2


@dataclass(frozen=True)
class Candidate:
    """A training set-up: memory ``layout`` and ``amp`` (``off``, ``bf16`` or ``fp16``)."""

    layout: str
    amp: str

    @property
    def name(self) -> str:
        return f"{self.layout} {PRECISION_NAMES[self.amp]}"


def native_mixed_precisions(dev: torch.device) -> tuple[list, list]:
    """``(amps this device computes natively, [why each other one is left out])``."""
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return ["bf16", "fp16"], []
        return ["fp16"], ["bf16: torch.cuda.is_bf16_supported() is False on this GPU"]
    flags = cpu_flags()
    have, notes = [], []
    for amp, units in (("bf16", ("avx512_bf16", "amx_bf16")), ("fp16", ("avx512_fp16",
                                                                        "amx_fp16"))):
        if any(u in flags for u in units):
            have.append(amp)
        else:
            notes.append(f"{amp}: this CPU lists none of {', '.join(units)} in /proc/cpuinfo "
                         f"(emulated {amp} is several times slower than fp32)")
    return have, notes


def candidates(dev: torch.device, layout: str, amp: str) -> tuple[list, list]:
    """The set-ups the probe may choose from, baseline first, and notes on left-out ones.

    Args:
        layout: ``auto``, ``contiguous`` or ``channels_last``.
        amp: the ``amp`` setting; only ``tune`` lets the probe choose a mixed precision.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    layouts = ["contiguous", "channels_last"] if layout == "auto" else [layout]
    notes: list = []
    if str(amp).lower() == "tune":
        mixed, notes = native_mixed_precisions(dev)
        amps = ["off"] + mixed
    else:
        amps = [parse_amp(amp, dev)]
    return [Candidate(lay, a) for a in amps for lay in layouts], notes


def _step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
             cand: Candidate, dev: torch.device) -> Callable[[], None]:
    """One training step of a copy of ``model`` in ``cand``'s layout and precision."""
    net = place_module(copy.deepcopy(model), dev, cand.layout == "channels_last").train()
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-6)
    xin = x.contiguous(memory_format=torch.channels_last) if cand.layout == "channels_last" else x
    prec = Precision(dev, cand.amp)

    def step():
        with prec.autocast():
            loss = loss_fn(net(xin), y)
        opt.zero_grad(set_to_none=True)
        prec.step(loss, opt)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    step.net = net
    step.xin = xin
    return step


def _numerics(ref_net, net, x_ref, x) -> dict:
    """Eval-mode fp32 outputs of ``net`` against the contiguous reference."""
    with torch.no_grad():
        was = (ref_net.training, net.training)
        ref_net.eval(), net.eval()
        ref, got = ref_net(x_ref).float(), net(x).float()
        ref_net.train(was[0]), net.train(was[1])
    scale = float(ref.abs().max()) or 1.0
    diff = float((got - ref).abs().max())
    return {"max_abs_diff": diff, "scale": scale, "rtol": NUMERICS_RTOL,
            "ok": bool(diff <= NUMERICS_RTOL * scale)}


def decide(times: dict, baseline: str) -> tuple[str, str]:
    """``(chosen candidate, why)`` from per-candidate step times (interleaved rounds)."""
    med = {c: statistics.median(t) for c, t in times.items()}
    best = min(med, key=med.get)
    if best == baseline:
        return baseline, f"{baseline} was fastest (median {med[baseline] * 1e3:.1f} ms/step)"
    ratio = med[baseline] / med[best]
    wins = sum(b < a for a, b in zip(times[baseline], times[best]))
    if ratio < 1 + MARGIN or wins * 2 <= len(times[baseline]):
        return baseline, (f"kept {baseline}: {best} was {ratio:.2f}x, won {wins} of "
                          f"{len(times[baseline])} rounds (needs >= {1 + MARGIN:.2f}x and most "
                          f"rounds)")
    return best, (f"{best} {ratio:.2f}x faster than {baseline}, won {wins} of "
                  f"{len(times[best])} rounds")


def probe(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
          dev: torch.device, cands: list, max_s: float = MAX_S,
          clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time a few training steps of every candidate on one batch; return what was seen and
    the choice (``chosen``: ``{"layout", "amp"}``). The caller's model, its weights and the
    random-number streams are left as they were. ``max_s`` caps the probe's time (module
    doc); ``clock`` is its timer (tests pass a fake one)."""
    if max_s <= 0:
        raise ValueError(f"the probe's time cap must be > 0 s, not {max_s!r}")
    t0 = clock()
    capped: dict = {}

    def over(where: str) -> bool:
        if not capped and clock() - t0 > max_s:
            capped.update(max_s=max_s, elapsed_s=round(clock() - t0, 3), stopped_at=where)
        return bool(capped)

    x, y = x.to(dev), y.to(dev)
    done = 0
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        steps = {c.name: _step_fn(model, x, y, loss_fn, c, dev) for c in cands}
        base = cands[0].name
        numerics = {}
        for c in cands:
            if c.layout != cands[0].layout and c.amp == cands[0].amp:
                numerics[c.name] = _numerics(steps[base].net, steps[c.name].net,
                                             steps[base].xin, steps[c.name].xin)
        bad = {n for n, r in numerics.items() if not r["ok"]}
        bad |= {c.name for c in cands if c.layout != cands[0].layout
                and Candidate(c.layout, cands[0].amp).name in bad}
        kept = [n for n in steps if n not in bad]
        times: dict = {n: [] for n in kept}
        if len(kept) > 1:
            for n in kept:  # warm-up: first-call costs (kernel choice, allocation)
                if over("warm-up"):
                    break
                steps[n]()
            for r in range(ROUNDS):
                for n in kept[r % len(kept):] + kept[:r % len(kept)]:
                    if over(f"round {r + 1}"):
                        break
                    s = clock()
                    steps[n]()
                    times[n].append(clock() - s)
                if capped:
                    break
                done += 1
    times = {n: ts[:done] for n, ts in times.items()}  # complete rounds only
    if len(kept) == 1:
        chosen, why = base, "one candidate"
    elif capped and done < MIN_ROUNDS:
        chosen, why = base, (f"kept {base}: the probe reached its time cap of {max_s:g} s "
                             f"({capped['stopped_at']}) after {done} complete round(s); "
                             f"choosing needs {MIN_ROUNDS}")
    else:
        chosen, why = decide(times, base)
        if capped:
            why += f" (time cap {max_s:g} s reached: {done} of {ROUNDS} rounds)"
    if capped:
        capped["complete_rounds"] = done
    pick = next(c for c in cands if c.name == chosen)
    return {"chosen": asdict(pick), "chosen_name": chosen, "why": why,
            "step_ms": {n: [round(t * 1e3, 3) for t in ts] for n, ts in times.items()},
            "median_ms": {n: round(statistics.median(ts) * 1e3, 3)
                          for n, ts in times.items() if ts},
            "numerics": numerics, "left_out": sorted(bad), "batch": list(x.shape),
            "rounds": done, "warmup_steps": 1, "max_s": max_s, "capped": capped or None,
            "probe_s": clock() - t0}


def forced(cands: list, notes: Optional[list] = None) -> dict:
    """The record of a set-up the settings force (one candidate: nothing to probe)."""
    c = cands[0]
    return {"chosen": asdict(c), "chosen_name": c.name, "why": "forced by the settings "
            "(layout and amp allow one set-up)", "probed": False, "notes": list(notes or [])}


__all__ = ["LAYOUTS", "Candidate", "candidates", "native_mixed_precisions", "probe", "decide",
           "forced", "ROUNDS", "MARGIN", "RECIPE", "MAX_S", "MIN_ROUNDS"]
