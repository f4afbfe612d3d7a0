"""``bench baseline`` and ``bench check``: CI regression checks of latency and accuracy.

The logic lives in :mod:`harness.regression`; this plugin only adds the commands.
Exit status of ``bench check``: 0 every check holds, 1 a regression, 2 an error (a broken or
missing baseline, a cell that cannot be rebuilt or measured, a fresh metric that is missing).
"""
from __future__ import annotations

from pathlib import Path

import click

from harness import hookimpl

EPILOG_BASELINE = """\b
Examples:
  bench baseline create --out baseline.json -b mobilenetv3_small_100 -d digits -s frozen -r pytorch
  bench baseline create --out baseline.json --from-run runs/default-1a2b3c4d5e
  bench baseline update baseline.json                   # re-measure latency here
"""

EPILOG_CHECK = """\b
Examples:
  bench check --baseline baseline.json                  # latency of the same models
  bench check --baseline baseline.json --run runs/pr-run --markdown check.md --junit check.xml
  bench check --baseline baseline.json --retrain --latency-tolerance 0.15 --accuracy-drop 0.02
  bench check --against origin/main -b mobilenetv2_100 -d digits -s frozen -r pytorch \\
      -p mobile --image-size 32                        # base and candidate side by side
Exit status: 0 all hold, 1 regression, 2 error.
"""


def _progress(quiet: bool):
    if quiet:
        return lambda m: None
    return lambda m: click.echo(f"  {m}", err=True)


def _round_options(fn):
    for opt in reversed([
        click.option("--rounds", type=int, default=None,
                     show_default="20 stored by bench baseline; bench check --baseline sizes "
                                  "its fresh rounds from the stored noise; --against adds "
                                  "rounds until it decides (--max-rounds)",
                     help="Interleaved measurement rounds per runtime x profile."),
        click.option("--calls", type=int, default=None, show_default="15",
                     help="Timed calls per round."),
        click.option("--calibrate/--no-calibrate", default=None,
                     show_default="on for a stored baseline, off for --against",
                     help="Time a fixed matmul probe before every round and normalize by it."),
        click.option("--statistic", type=click.Choice(["cpu", "min", "median"]), default=None,
                     show_default="cpu",
                     help="A round's sample: process CPU time per call, or the fastest / "
                          "median call's wall time."),
        click.option("-q", "--quiet", is_flag=True, help="No progress messages."),
    ]):
        fn = opt(fn)
    return fn


def _round_settings(base: dict, rounds, calls, calibrate, statistic=None):
    from harness.regression import RoundSettings
    kw = dict(base)
    for k, v in (("rounds", rounds), ("calls", calls), ("calibrate", calibrate),
                 ("statistic", statistic)):
        if v is not None:
            kw[k] = v
    return RoundSettings(**kw)


def _fail(ctx, exc) -> None:
    click.echo(f"Error: {exc}", err=True)
    ctx.exit(2)


def baseline_group(matrix_options):
    """The ``bench baseline`` command group; ``matrix_options`` is the decorator the CLI
    hands plugins (``cli.matrix_options`` in ``register_commands``) for bench run's matrix
    options.

    Long only because click defines the commands and their options inside it; the bodies hand
    over to :mod:`harness.regression`.
    """
    @click.group("baseline", epilog=EPILOG_BASELINE)
    def baseline():
        """Create or update a baseline file for `bench check`."""

    @baseline.command("create", epilog=EPILOG_BASELINE)
    @click.option("--out", required=True, type=click.Path(dir_okay=False),
                  help="Baseline file to write (JSON).")
    @click.option("--from-run", "from_run", type=click.Path(file_okay=False, exists=True),
                  help="Take the cells and their metrics from this run folder.")
    @click.option("--latency-only", is_flag=True,
                  help="Do not train: record latency only (no accuracy check later).")
    @click.option("--latency-tolerance", type=float, default=0.10, show_default=True,
                  help="Allowed slowdown ratio - 1, stored for bench check.")
    @click.option("--accuracy-drop", type=float, default=0.01, show_default=True,
                  help="Allowed drop of the metric, stored for bench check.")
    @click.option("--alpha", type=float, default=0.01, show_default=True,
                  help="Significance level, stored for bench check.")
    @matrix_options
    @_round_options
    @click.pass_context
    def create(ctx, out, from_run, latency_only, latency_tolerance, accuracy_drop, alpha,
               rounds, calls, calibrate, statistic, quiet, **opts):
        """Measure cells and write a baseline: configs, metrics, raw latency, environment."""
        from harness.api.errors import BenchError
        from harness.api.manager import get_plugins
        from harness import regression as rg
        from harness.run.options import matrix_from_options

        plugins = get_plugins()
        progress = _progress(quiet)
        try:
            cs = rg.CheckSettings(latency_tolerance=latency_tolerance,
                                  accuracy_drop=accuracy_drop, alpha=alpha)
            rs = _round_settings({}, rounds, calls, calibrate, statistic)
            if from_run:
                entries = rg.entries_from_run(plugins, Path(from_run))
                source = f"run {from_run}"
            else:
                matrix = matrix_from_options(plugins, opts)
                entries = rg.entries_from_matrix(plugins, matrix, train=not latency_only,
                                                 progress=progress)
                source = f"matrix {matrix.name}"
            rg.attach_latency(plugins, entries, rs, progress)
            rg.write_baseline(Path(out), rg.new_baseline(entries, rs, cs, source))
        except (BenchError, ValueError) as exc:
            _fail(ctx, exc)
            return
        _report_created(entries, out, cs, rs)

    @baseline.command("update", epilog=EPILOG_BASELINE)
    @click.argument("baseline_file", metavar="BASELINE", required=False,
                    type=click.Path(dir_okay=False))
    @click.option("--out", type=click.Path(dir_okay=False), default=None,
                  show_default="BASELINE, updated in place",
                  help="Where to write the updated baseline.")
    @click.option("--from-run", "from_run", type=click.Path(file_okay=False, exists=True),
                  help="Also take fresh metrics from this run folder.")
    @_round_options
    @click.pass_context
    def update(ctx, baseline_file, out, from_run, rounds, calls, calibrate, statistic, quiet):
        """Re-measure the latency of BASELINE here (and its metrics from a run); keep its
        [check] settings."""
        from harness.api.errors import BenchError
        from harness.api.manager import get_plugins
        from harness import regression as rg

        if baseline_file is None:
            if out is None:
                _fail(ctx, "give the baseline to update: bench baseline update BASELINE "
                           "[--out NEW_FILE]")
                return
            # the old spelling: --out named the input, updated in place
            click.echo(f"warning: 'bench baseline update --out {out}' is deprecated: --out "
                       f"names where a command writes, and the baseline to update is an "
                       f"argument. This run updates {out} in place, as "
                       f"'bench baseline update {out}' does; write that instead.", err=True)
            baseline_file = out
        out = out or baseline_file
        plugins = get_plugins()
        try:
            old = rg.load_baseline(Path(baseline_file))
            rs = _round_settings(old["measure"], rounds, calls, calibrate, statistic)
            entries = old["cells"]
            if from_run:
                fresh = rg.fresh_metrics_from_run(Path(from_run))
                for e in entries:
                    if e["id"] in fresh and fresh[e["id"]][0] is not None:
                        e["metric"] = fresh[e["id"]][0]
            rg.attach_latency(plugins, entries, rs, _progress(quiet))
            cs = rg.CheckSettings(**old["check"])
            new = rg.new_baseline(entries, rs, cs, f"update of {old.get('source', '?')}")
            rg.write_baseline(Path(out), new)
        except (BenchError, ValueError) as exc:
            _fail(ctx, exc)
            return
        _report_created(entries, out, cs, rs)

    return baseline


def _report_created(entries, out, cs, rs) -> None:
    """What was written, each series' noise and the fresh rounds and power a check against
    it will have; a series too noisy (or too short) for the promise says how many stored
    rounds it would need."""
    from harness.regression import fresh_round_plan
    from harness.regression.stored import base_rounds_needed

    problems = [(e["label"], k, v.get("error") or v.get("unavailable"))
                for e in entries for k, v in e["latency"].items()
                if v.get("error") or v.get("unavailable")]
    n = sum(len(e["latency"]) for e in entries)
    click.echo(f"wrote {out}: {len(entries)} cell(s), {n} latency series")
    for label, key, why in problems:
        click.echo(f"  note: {label} {key}: {why}", err=True)
    labels = {e["id"]: e["label"] for e in entries}
    for (cid, key), (fresh, power, sigma, stored) in sorted(fresh_round_plan(
            entries, cs, rs.calibrate).items()):
        line = (f"  {labels[cid]} {key}: {stored} rounds, noise sd {sigma:.3f}; a check will "
                f"take {fresh} fresh rounds, predicted power {power:.3f} at x{cs.effect:g}")
        if power < cs.power:
            need = base_rounds_needed(sigma, cs)
            line += (f" (below the {cs.power:g} goal: " +
                     (f"store {need} rounds, --rounds {need})" if need else
                      "too noisy for it here: use `bench check --against REV`)"))
        click.echo(line)


def check_command(matrix_options):
    """The ``bench check`` command (``matrix_options``: as :func:`baseline_group` takes it).

    Long only because click defines the commands and their options inside it; the bodies hand
    over to :mod:`harness.regression`.
    """
    @click.command("check", epilog=EPILOG_CHECK)
    @click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False),
                  help="Baseline file from `bench baseline create` (with --against: only "
                       "its cells and settings are used).")
    @click.option("--against", "against", metavar="REV",
                  help="Measure git revision REV (or a source folder) beside this code, "
                       "interleaved in this job, and compare them paired (latency only).")
    @click.option("--run", "run", type=click.Path(file_okay=False, exists=True),
                  help="Read fresh metrics from this run folder.")
    @click.option("--retrain", is_flag=True, help="Retrain the baseline's cells for fresh metrics.")
    @click.option("--no-latency", is_flag=True, help="Check metrics only.")
    @click.option("--latency-tolerance", type=float, default=None,
                  show_default="the baseline's [check] table, else 0.10",
                  help="Allowed slowdown ratio - 1.")
    @click.option("--accuracy-drop", type=float, default=None,
                  show_default="the baseline's [check] table, else 0.01",
                  help="Allowed drop of the metric.")
    @click.option("--alpha", type=float, default=None, show_default="0.01",
                  help="Significance level.")
    @click.option("--min-effect", type=float, default=None,
                  show_default="1.25 at the default tolerance; (1 + tolerance) x 1.25/1.10",
                  help="The smallest slowdown the check promises to catch; its rounds are "
                       "sized for it.")
    @click.option("--power", type=float, default=None, show_default="0.95",
                  help="The promised chance of catching --min-effect.")
    @click.option("--noise", type=float, default=None, show_default="0.30",
                  help="--against: the sd of the paired per-round log ratios the sequential "
                       "test is sized for (the check prints the noise it read).")
    @click.option("--max-rounds", type=int, default=None, show_default="200",
                  help="Cap on rounds: paired rounds of --against (a test still undecided "
                       "then says so, exit 2) and fresh rounds against a stored baseline.")
    @click.option("--processes", type=click.IntRange(min=1), default=None, show_default="3",
                  help="--against: worker processes per side; rounds rotate over every "
                       "base/candidate pairing, so one process slower or faster than its twin "
                       "moves only its share of the rounds (start-up x K).")
    @click.option("--markdown", type=click.Path(dir_okay=False), help="Write a Markdown summary.")
    @click.option("--junit", type=click.Path(dir_okay=False), help="Write JUnit XML.")
    @matrix_options
    @_round_options
    @click.pass_context
    def check(ctx, baseline_path, against, run, retrain, no_latency, latency_tolerance,
              accuracy_drop, alpha, min_effect, power, noise, max_rounds, processes, markdown,
              junit, rounds, calls, calibrate, statistic, quiet, **matrix_opts):
        """Re-measure a baseline's cells (or measure REV beside this code) and say whether
        they got slower or less accurate."""
        from harness.api.errors import BenchError
        from harness.api.manager import get_plugins
        from harness import regression as rg

        try:
            plan = _check_plan(get_plugins(), baseline_path, against, run, retrain, no_latency,
                               matrix_opts, {"latency_tolerance": latency_tolerance,
                                             "accuracy_drop": accuracy_drop, "alpha": alpha,
                                             "min_effect": min_effect, "power": power,
                                             "noise": noise, "max_rounds": max_rounds,
                                             "processes": processes},
                               (rounds, calls, calibrate, statistic))
            for w in plan["warnings"]:
                click.echo(f"warning: {w}", err=True)
            if against:
                verdicts = rg.paired_check(plan["entries"], against, plan["cs"], plan["rs"],
                                           plugins=get_plugins(), progress=_progress(quiet))
            else:
                verdicts = rg.run_check(get_plugins(), plan["baseline"], plan["cs"], plan["rs"],
                                        run=Path(run) if run else None, retrain=retrain,
                                        latency=not no_latency, progress=_progress(quiet),
                                        fresh_rounds=rounds)
        except (BenchError, ValueError) as exc:
            _fail(ctx, exc)
            return
        click.echo(rg.verdict_table(verdicts))
        for line in rg.power_lines(verdicts):
            click.echo(line)
        click.echo("\n" + rg.summary_line(verdicts))
        counters = next((v.detail["counters"] for v in verdicts if "counters" in v.detail), "")
        if counters and not no_latency:
            click.echo(f"note: {counters}; latency verdicts compare CPU time", err=True)
        rg.write_reports(verdicts, plan["warnings"], plan["source"], markdown, junit)
        for p in (markdown, junit):
            if p:
                click.echo(f"wrote {p}", err=True)
        ctx.exit(rg.exit_code(verdicts))

    return check


STORED_CAVEAT = ("a stored baseline was measured in another process at another time: its alpha "
                 "holds only while the drift between the two measurements stays within the "
                 "tolerance (docs/ci-check.md); `bench check --against REV` measures the base "
                 "beside this code instead")


def _check_plan(plugins, baseline_path, against, run, retrain, no_latency, matrix_opts: dict,
                overrides: dict, round_opts: tuple) -> dict:
    """What a check compares: entries, check and round settings, warnings, a source label."""
    from harness.api.errors import BenchError
    from harness import regression as rg
    from harness.run.options import matrix_from_options

    if run and retrain:
        raise BenchError("give --run or --retrain, not both")
    named = any(v for k, v in matrix_opts.items() if v not in (None, ()))
    if against and (run or retrain or no_latency):
        raise BenchError("--against compares latency only; check metrics with --baseline "
                         "FILE and --run/--retrain in a second step")
    if against and round_opts[0] is not None:
        raise BenchError("--against adds paired rounds until one sequential test decides: "
                         "--rounds is for a stored baseline (--baseline); bound the paired "
                         "rounds with --max-rounds")
    if not against and overrides.get("processes") is not None:
        raise BenchError("--processes sets the worker processes per side of a paired check "
                         "(--against REV); a stored baseline's fresh rounds run in one worker")
    if not against and overrides.get("noise") is not None:
        raise BenchError("--noise sizes the paired check's sequential test (--against REV); "
                         "a stored baseline's rounds are sized from its own stored noise")
    if not against and not baseline_path:
        raise BenchError("give --baseline FILE (a stored baseline) or --against REV (measure "
                         "the base revision beside this code)")
    if baseline_path and named:
        raise BenchError("give --baseline FILE or matrix options (-b/-d/-s/-m...), not both")
    base = rg.load_baseline(Path(baseline_path)) if baseline_path else None
    if base is not None:
        entries = base["cells"]
    else:  # --against with matrix options: the cells' architectures, no training needed
        entries = rg.entries_from_matrix(plugins, matrix_from_options(plugins, matrix_opts),
                                         train=False)
    cs_kw = dict(base["check"]) if base else {}
    cs_kw.update({k: v for k, v in overrides.items() if v is not None})
    if against and round_opts[2] is None:
        # the paired rounds are measured side by side: a probe has no machine drift to cancel
        # there and only adds its own noise (docs/ci-check.md)
        round_opts = (*round_opts[:2], rg.PAIRED_CALIBRATE, *round_opts[3:])
    rs = _round_settings(base["measure"] if base else {}, *round_opts)
    warnings = list(base.get("legacy_notes", [])) if base else []
    if base is not None and not against and not no_latency:
        warnings.append(STORED_CAVEAT)
    source = (f"{baseline_path}" if not against else
              f"revision {against} measured beside this code" +
              (f" (cells of {baseline_path})" if baseline_path else ""))
    return {"entries": entries, "baseline": base, "cs": rg.CheckSettings(**cs_kw), "rs": rs,
            "warnings": warnings, "source": source}


# -- planting a slowdown (for benchmarks and tests of the check itself) ----------------------
class BusyWait:
    """A timed call followed by ``extra`` x the process CPU time the call itself took, spun on
    the calling thread.

    A busy-wait (not a sleep) adds CPU work, as a real slower kernel would. Its size is the
    call's process CPU time (``time.process_time``: every thread, so a multi-threaded
    runtime's call is slowed by ``extra`` of all its work), and it is sized in CPU time, not
    wall time, so it is ``extra`` more *work* however much the machine is contended. The
    spin is counted on the calling thread alone (``time.thread_time``): a thread pool that
    spins after its work (XNNPACK's pthreadpool does, under ExecuTorch) burns process CPU time
    during the wait, and a wait counted in process time can end early and add less than
    ``extra``. (Counted in process time, a +25% plant in ExecuTorch, MobileNetV2 at 32 px on
    2 threads, read only x1.06-x1.09 in paired checks.)
    """

    def __init__(self, fn, extra: float):
        self.fn, self.extra = fn, extra

    def __call__(self):
        import time
        t0 = time.process_time()
        out = self.fn()
        spin = (time.process_time() - t0) * self.extra
        t1 = time.thread_time()
        while time.thread_time() - t1 < spin:
            pass
        return out


class SlowdownPlugin:
    """A plugin registering runtime ``name`` again, ``extra`` (0.25 = 25%) slower per call.

    Every call the runtime times goes through :class:`BusyWait`
    (:func:`harness.measure.latency.wrap_calls`), so any runtime (PyTorch, ONNX Runtime,
    OpenVINO, ExecuTorch, ...) can be slowed. It takes the runtime from the plugin module
    ``provider`` (e.g. ``plugins.runtimes``), so it pickles by name and travels to worker
    processes. Register it after leaving out that provider (the names would clash):
    ``system.unregister(provider)`` then ``system.register(SlowdownPlugin(...))``.
    """

    def __init__(self, provider: str, name: str, extra: float):
        self.provider, self.name, self.extra = provider, name, extra

    @hookimpl
    def register_runtimes(self):
        import importlib

        from harness import RuntimeSpec

        spec = next(s for s in importlib.import_module(self.provider).register_runtimes()
                    if s.name == self.name)
        return [RuntimeSpec(spec.name, available=spec.available,
                            measure=_SlowedMeasure(spec.measure, self.extra),
                            needs_onnx=spec.needs_onnx, packages=spec.packages,
                            verify_export=spec.verify_export, precisions=spec.precisions,
                            description=f"{spec.description} + planted {self.extra:.0%} "
                                        "slowdown")]


class _SlowedMeasure:
    def __init__(self, measure, extra: float):
        self.measure, self.extra = measure, extra

    def __call__(self, art, profile, settings):
        from harness.measure.latency import wrap_calls
        with wrap_calls(lambda fn: BusyWait(fn, self.extra)):
            return self.measure(art, profile, settings)


def slowdown_plugin(plugins, runtime: str, extra: float) -> tuple[str, "SlowdownPlugin"]:
    """``(provider, plugin)``: the plugin that provides ``runtime`` in ``plugins`` and a
    :class:`SlowdownPlugin` to register in its place."""
    provider = plugins.runtimes.plugin(runtime)
    return provider, SlowdownPlugin(provider, runtime, extra)


@hookimpl
def register_commands(cli):
    # bench run's matrix options come with the group: a plugin never imports the CLI
    cli.add_command(baseline_group(cli.matrix_options))
    cli.add_command(check_command(cli.matrix_options))
