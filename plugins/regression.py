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
  bench baseline update --out baseline.json             # re-measure latency here
"""

EPILOG_CHECK = """\b
Examples:
  bench check --baseline baseline.json                  # latency of the same models
  bench check --baseline baseline.json --run runs/pr-run --markdown check.md --junit check.xml
  bench check --baseline baseline.json --retrain --latency-tolerance 0.15 --accuracy-drop 0.02
Exit status: 0 all hold, 1 regression, 2 error.
"""


def _progress(quiet: bool):
    if quiet:
        return lambda m: None
    return lambda m: click.echo(f"  {m}", err=True)


def _round_options(fn):
    for opt in reversed([
        click.option("--rounds", type=int, default=None,
                     help="Interleaved measurement rounds per runtime x profile [10]."),
        click.option("--calls", type=int, default=None, help="Timed calls per round [15]."),
        click.option("--calibrate/--no-calibrate", default=None,
                     help="Time a fixed matmul probe before every round and normalize by it "
                          "[on]."),
        click.option("--statistic", type=click.Choice(["cpu", "min", "median"]), default=None,
                     help="A round's sample: process CPU time per call, or the fastest / "
                          "median call's wall time [cpu]."),
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


def baseline_group():
    """The ``bench baseline`` command group."""
    from harness.cli import matrix_options

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
    @click.option("--latency-tolerance", type=float, default=0.10, show_default=True)
    @click.option("--accuracy-drop", type=float, default=0.01, show_default=True)
    @click.option("--alpha", type=float, default=0.01, show_default=True)
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
        _report_created(entries, out)

    @baseline.command("update", epilog=EPILOG_BASELINE)
    @click.option("--out", required=True, type=click.Path(dir_okay=False),
                  help="The baseline file to update in place.")
    @click.option("--from-run", "from_run", type=click.Path(file_okay=False, exists=True),
                  help="Also take fresh metrics from this run folder.")
    @_round_options
    @click.pass_context
    def update(ctx, out, from_run, rounds, calls, calibrate, statistic, quiet):
        """Re-measure a baseline's latency here (and its metrics from a run); keep its [check]."""
        from harness.api.errors import BenchError
        from harness.api.manager import get_plugins
        from harness import regression as rg

        plugins = get_plugins()
        try:
            old = rg.load_baseline(Path(out))
            rs = _round_settings(old["measure"], rounds, calls, calibrate, statistic)
            entries = old["cells"]
            if from_run:
                fresh = rg.fresh_metrics_from_run(Path(from_run))
                for e in entries:
                    if e["id"] in fresh and fresh[e["id"]][0] is not None:
                        e["metric"] = fresh[e["id"]][0]
            rg.attach_latency(plugins, entries, rs, _progress(quiet))
            new = rg.new_baseline(entries, rs, rg.CheckSettings(**old["check"]),
                                  f"update of {old.get('source', '?')}")
            rg.write_baseline(Path(out), new)
        except (BenchError, ValueError) as exc:
            _fail(ctx, exc)
            return
        _report_created(entries, out)

    return baseline


def _report_created(entries, out) -> None:
    problems = [(e["label"], k, v.get("error") or v.get("unavailable"))
                for e in entries for k, v in e["latency"].items()
                if v.get("error") or v.get("unavailable")]
    n = sum(len(e["latency"]) for e in entries)
    click.echo(f"wrote {out}: {len(entries)} cell(s), {n} latency series")
    for label, key, why in problems:
        click.echo(f"  note: {label} {key}: {why}", err=True)


def check_command():
    """The ``bench check`` command."""

    @click.command("check", epilog=EPILOG_CHECK)
    @click.option("--baseline", "baseline_path", required=True, type=click.Path(dir_okay=False),
                  help="Baseline file from `bench baseline create`.")
    @click.option("--run", "run", type=click.Path(file_okay=False, exists=True),
                  help="Read fresh metrics from this run folder.")
    @click.option("--retrain", is_flag=True, help="Retrain the baseline's cells for fresh metrics.")
    @click.option("--no-latency", is_flag=True, help="Check metrics only.")
    @click.option("--latency-tolerance", type=float, default=None,
                  help="Allowed slowdown ratio - 1 [baseline's check table, else 0.10].")
    @click.option("--accuracy-drop", type=float, default=None,
                  help="Allowed drop of the metric [baseline's check table, else 0.01].")
    @click.option("--alpha", type=float, default=None, help="Significance level [0.01].")
    @click.option("--confirm", type=int, default=None,
                  help="Re-measurements that must confirm a latency regression [2].")
    @click.option("--markdown", type=click.Path(dir_okay=False), help="Write a Markdown summary.")
    @click.option("--junit", type=click.Path(dir_okay=False), help="Write JUnit XML.")
    @_round_options
    @click.pass_context
    def check(ctx, baseline_path, run, retrain, no_latency, latency_tolerance, accuracy_drop,
              alpha, confirm, markdown, junit, rounds, calls, calibrate, statistic, quiet):
        """Re-measure a baseline's cells and say whether they got slower or less accurate."""
        from harness.api.errors import BenchError
        from harness.api.manager import get_plugins
        from harness import regression as rg

        try:
            if run and retrain:
                raise BenchError("give --run or --retrain, not both")
            base = rg.load_baseline(Path(baseline_path))
            cs_kw = dict(base["check"])
            for k, v in (("latency_tolerance", latency_tolerance),
                         ("accuracy_drop", accuracy_drop), ("alpha", alpha),
                         ("confirm", confirm)):
                if v is not None:
                    cs_kw[k] = v
            cs = rg.CheckSettings(**cs_kw)
            rs = _round_settings(base["measure"], rounds, calls, calibrate, statistic)
            warnings = [] if no_latency else rg.fingerprint_warnings(base)
            for w in warnings:
                click.echo(f"warning: {w}", err=True)
            verdicts = rg.run_check(get_plugins(), base, cs, rs,
                                    run=Path(run) if run else None, retrain=retrain,
                                    latency=not no_latency, progress=_progress(quiet))
        except (BenchError, ValueError) as exc:
            _fail(ctx, exc)
            return
        click.echo(rg.verdict_table(verdicts))
        click.echo("\n" + rg.summary_line(verdicts))
        rg.write_reports(verdicts, warnings, baseline_path, markdown, junit)
        for p in (markdown, junit):
            if p:
                click.echo(f"wrote {p}", err=True)
        ctx.exit(rg.exit_code(verdicts))

    return check


# -- planting a slowdown (for benchmarks and tests of the check itself) ----------------------
class SlowedModel:
    """Wraps a model so each call busy-waits ``extra`` x the CPU time the call itself took.

    A busy-wait (not a sleep) adds CPU work, as a real slower kernel would; it is sized by
    the calling thread's CPU time (``time.thread_time``), so it is ``extra`` more *work*
    however much the machine is contended (sizing it by wall time would add more work
    whenever the call happened to be preempted). Meant for one-thread profiles: work on
    other intra-op threads is not counted.
    """

    def __init__(self, model, extra: float):
        self.model, self.extra = model, extra

    def eval(self):
        self.model.eval()
        return self

    def __call__(self, *args, **kwargs):
        import time
        t0 = time.thread_time()
        out = self.model(*args, **kwargs)
        until = t0 + (time.thread_time() - t0) * (1.0 + self.extra)
        while time.thread_time() < until:
            pass
        return out


def slowdown_plugin(spec, extra: float):
    """A plugin object registering ``spec.name`` again, ``extra`` (0.25 = 25%) slower per call.

    Register it after leaving out the plugin that provides ``spec`` (the names would clash),
    e.g. ``PluginSystem(disable=[provider])`` then ``system.register(slowdown_plugin(...))``.
    Only runtimes that call ``art.model`` (PyTorch eager) are slowed.
    """
    import dataclasses

    from harness import RuntimeSpec

    def measure(art, profile, settings):
        return spec.measure(dataclasses.replace(art, model=SlowedModel(art.model, extra)),
                            profile, settings)

    class _Plugin:
        @staticmethod
        @hookimpl
        def register_runtimes():
            return [RuntimeSpec(spec.name, available=spec.available, measure=measure,
                                needs_onnx=spec.needs_onnx, packages=spec.packages,
                                description=f"{spec.description} + planted {extra:.0%} slowdown")]

    return _Plugin()


@hookimpl
def register_commands(cli):
    cli.add_command(baseline_group())
    cli.add_command(check_command())
