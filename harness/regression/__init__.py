"""The CI regression check (`bench check`, `bench baseline`): baselines, noise-robust latency statistics, verdicts, reports.

A *baseline* file (JSON) holds, per cell, its configuration, its primary metric and the raw
latency samples of every runtime x profile x precision, plus the environment and machine
fingerprint it was measured on and the tolerances to check with (its ``check`` table).

How latency is compared (why it holds on a noisy, shared machine):

* **Same model, no retraining.** Latency is measured on the cell's *architecture*
  (backbone + task head rebuilt from the cell's configuration, seeded random weights)
  through the registered runtime plugins. Trained weights do not change the work a dense
  CNN does per image, so a latency check needs no training; the baseline and the check
  use the very same procedure, so they are comparable. Accuracy comes from a fresh run
  (``--run``) or a retraining (``--retrain``).
* **Each model loaded once.** A measuring worker runs every target's runtime plugin once
  (conversion, session creation, compilation) and keeps the function it timed; every round
  then times only calls of it, so no per-round set-up dilutes a regression of any runtime.
* **Interleaved rounds.** Every runtime x profile of every cell is measured in short
  blocks, the blocks of all cells interleaved, so a burst of load hits a few rounds of every
  cell rather than all rounds of one. Each block gives one sample: by default the median of
  its calls' process CPU time (see :class:`RoundSettings` for why; wall-clock ``min`` and
  ``median`` are options), and the wall-clock timings of every call are kept too.
* **Calibration probe.** Right before each block a fixed ``torch.mm`` workload is timed
  the same way with the same threads; the block's sample divided by the probe's cancels
  the machine's speed (another CPU model, a clock change). Comparisons use these
  normalized samples.
* **Against a stored baseline:** one one-sided Mann-Whitney U test (Mann & Whitney 1947) at
  ``alpha`` on the fresh samples shifted by the tolerance, in as many fresh rounds as the
  stored samples' noise needs for the stated power at ``min_effect`` (:mod:`.stored`);
  refused (an error) on another kind of machine or with other package versions.
* **Paired (``--against REV``):** base and candidate workers side by side, paired rounds
  added until one sequential test decides at ``alpha`` (:mod:`.sequential`: Wald's SPRT on
  the signs of the per-round log ratios beyond the tolerance; its power is computed exactly
  and simulated, not assumed). int8 conversions are calibrated on the same images on both
  sides (:mod:`.calibration`). The rule is sized for a stated noise, goal and minimum
  effect, and the check prints the power predicted for the noise it measured.

Modules, bottom up: ``sequential``, ``settings``, ``statistics`` and ``stored``; ``calibration``;
``rebuild`` (a cell's model back from its configuration); ``measure`` (a session's blocks),
``worker`` (that session in a fresh process) and ``rounds`` (the interleaved rounds, in
either); ``baseline`` (files); ``verdict``; ``reports``;
``check`` (orchestration). This package re-exports their public names.
"""
from .baseline import (drift_reasons, load_baseline, make_entry, new_baseline,
                       resolved_profiles, write_baseline)
from .check import (attach_latency, entries_from_matrix, entries_from_run,
                    fresh_metrics_from_run, fresh_round_plan, run_check)
from .measure import Session, latency_key, probe
from .rounds import measure_latency
from .paired import (PAIRED_CALIBRATE, base_tree, compare_paired, paired_check, paired_rounds,
                     run_paired)
from .rebuild import build_architecture, cell_config, cell_identity
from .sequential import (SignSPRT, noise_limit, operating_characteristic, paired_decision,
                         paired_noise, predict, round_probability, size_rule)
from .stored import fresh_rounds, mwu_power, stored_decision
from .reports import (junit_xml, markdown_summary, power_lines, summary_line, verdict_table,
                      write_reports)
from .settings import FORMAT, VERSION, BaselineError, CheckSettings, RoundSettings
from .statistics import mann_whitney_greater
from .verdict import Verdict, compare_latency, compare_metric, exit_code

__all__ = [
    "FORMAT", "VERSION", "BaselineError", "CheckSettings", "RoundSettings", "Session", "Verdict",
    "SignSPRT", "operating_characteristic", "paired_decision", "round_probability",
    "size_rule", "predict", "paired_noise", "noise_limit", "fresh_rounds", "mwu_power", "stored_decision",
    "PAIRED_CALIBRATE", "base_tree", "compare_paired", "paired_check", "paired_rounds",
    "run_paired",
    "attach_latency", "build_architecture", "cell_config", "cell_identity", "compare_latency",
    "compare_metric", "entries_from_matrix", "entries_from_run", "exit_code",
    "drift_reasons", "fresh_metrics_from_run", "fresh_round_plan", "junit_xml", "latency_key",
    "load_baseline", "make_entry", "power_lines", "mann_whitney_greater", "markdown_summary",
    "measure_latency", "new_baseline", "probe", "resolved_profiles", "run_check",
    "summary_line", "verdict_table", "write_baseline", "write_reports",
]
