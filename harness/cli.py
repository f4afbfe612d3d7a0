"""The ``bench`` command line. It knows no plugin by name: it asks the registries."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click

from . import __version__
from .api.errors import BenchError, ConfigError, UnknownName
from .api.manager import KINDS, get_plugins
from .run.hparam_search import STOPPED  # (imports nothing heavy: bench --help stays fast)

EPILOG_RUN = """\b
Examples:
  bench run                                   # the embedded default matrix
  bench run -b resnet18 -b mobilenetv2_100 -s frozen -s finetune
  bench run -s discriminative,factor=2.6 --weights resnet18=file:r18.pth
  bench run --matrix my_matrix.toml --out runs
"""


def _names(kind: str):
    """Shell completion of a registered name (``bench run -b res<TAB>``): the registries'
    names with their descriptions; parameters after a comma are left to the user."""
    def complete(ctx, param, incomplete):
        from click.shell_completion import CompletionItem
        try:
            specs = get_plugins().quick_specs(kind)  # only this kind's hooks: fast
        except Exception:  # completion must never print a traceback into the shell
            return []
        return [CompletionItem(s.name, help=(s.description or "").split("\n")[0][:70])
                for s in specs if s.name.startswith(incomplete)]
    complete.registry_kind = kind  # what the parameter names (tests/test_docs_commands.py)
    return complete


def _fail_usage(ctx: click.Context, exc: Exception) -> None:
    click.echo(f"Error: {exc}", err=True)
    ctx.exit(2)


class BenchGroup(click.Group):
    """Adds plugin commands lazily and turns user errors into clean messages."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._plugin_commands_added = False

    def _add_plugin_commands(self) -> None:
        if not self._plugin_commands_added:
            self._plugin_commands_added = True
            try:
                get_plugins().add_commands(self)
            except Exception as exc:  # never let a plugin break the CLI
                click.echo(f"warning: plugin commands not loaded: {exc}", err=True)

    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)  # as typed: the command that resumes an interrupted run repeats it
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["argv"] = argv
        return ctx

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # `bench run` says more (what is kept, how to resume)
            click.echo("\nInterrupted (Ctrl-C).", err=True)
            ctx.exit(130)

    def list_commands(self, ctx):
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None:
            self._add_plugin_commands()
            cmd = super().get_command(ctx, name)
        return cmd


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               # one way to show defaults, in every command
                                               "show_default": True},
             epilog="\b\nExample:\n  bench run\n  bench list backbones\n  bench plugins")
@click.version_option(__version__, prog_name="transfer-bench")
@click.option("--disable-plugin", "disable", multiple=True, metavar="NAME",
              help="Leave a plugin out (also: TRANSFER_BENCH_DISABLE_PLUGINS=a,b).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              show_default="TRANSFER_BENCH_CACHE, else ~/.cache/transfer-bench",
              help="Downloads, decoded images and weights.")
def cli(disable, cache_dir):
    """transfer-bench: which backbone, which way to adapt it, and what it costs."""
    if cache_dir:  # harness.run.cell.cache_dir() reads the variable, also in worker processes
        import os
        os.environ["TRANSFER_BENCH_CACHE"] = str(Path(cache_dir).expanduser().resolve())
    plugins = get_plugins(disable=disable) if disable else get_plugins()
    # a broken plugin is left out and the others work; say so once, on stderr, when a
    # command first uses the registries (bench run --help builds none)
    def warn_broken(system) -> None:
        for info in system.broken():
            click.echo(f"warning: {info.message}", err=True)
    plugins.when_built(warn_broken)
    for name in plugins.unknown_disabled:
        click.echo(f"warning: cannot disable {name!r}: no such plugin. Plugins: "
                   f"{', '.join(sorted(i.name for i in plugins.infos.values()))}", err=True)


# -- bench list -----------------------------------------------------------------------------
def kind_names() -> dict:
    """Every spelling of a kind ``bench list`` accepts -> the kind: ``backbones``,
    ``backbone``, ``weight-sources``, ``weight_source``..."""
    out = {}
    for kind, k in KINDS.items():
        for name in (kind, k.noun, k.noun + "s"):
            for spelling in (name, name.replace(" ", "-"), name.replace(" ", "_")):
                out.setdefault(spelling, kind)
    return out


def _kind(ctx, param, value):
    if value is None:
        return None
    names = kind_names()
    if value in names:
        return names[value]
    import difflib
    close = difflib.get_close_matches(value, list(names), n=1)
    raise click.BadParameter(f"{value!r} is not a kind" + (f"; did you mean {close[0]!r}?"
                             if close else "") + f" Kinds: {', '.join(sorted(KINDS))}",
                             ctx=ctx, param=param)


@cli.command("list", epilog="\b\nExamples:\n  bench list\n  bench list strategies\n"
                            "  bench list backbone")
@click.argument("kind", required=False, callback=_kind, metavar="[KIND]",
                shell_complete=lambda c, p, inc: sorted(k for k in KINDS if k.startswith(inc)))
@click.option("--measure", is_flag=True,
              help="Build each backbone whose plugin gives no facts, to count its parameters "
                   "and GMACs (imports torch: slower).")
def list_cmd(kind, measure):
    """List what the plugins registered (all kinds, or one KIND: backbones, strategies,
    datasets, tasks, weights, runtimes, profiles, reporters, executors, presets,
    estimators; singular works too). Fast: it builds and imports nothing heavy."""
    from tabulate import tabulate

    plugins = get_plugins()
    kinds = [kind] if kind else sorted(KINDS)
    for k in kinds:
        reg = plugins.registries[k]
        click.echo(f"{k} ({len(reg)}):")
        rows = [[s.name, _describe(k, s, measure), reg.plugin(s.name)] for s in reg]
        click.echo(tabulate(rows, headers=["name", "description", "plugin"], tablefmt="simple")
                   if rows else "  (none)")
        click.echo()


def _describe(kind: str, spec, measure: bool = False) -> str:
    text = spec.description or ""
    if kind == "backbones":
        text = f"[{spec.device_class}, weights: {spec.default_weights or 'none'}]" + (
            f" {text}" if text else "")
        facts = dict(spec.facts or {})
        if not facts.get("params"):
            if facts.get("note"):  # facts that depend on the backbone's parameters
                text += f"; {facts['note']}"
            elif not measure:  # building imports torch: bench list stays fast without it
                text += "; facts not given by its plugin (bench list backbones --measure)"
            else:
                from .train.model import measure_backbone
                try:
                    facts = {**measure_backbone(spec.build, facts.get("input_size")), **facts}
                except Exception as exc:
                    text += (f"; facts unknown: building it failed ({type(exc).__name__}: "
                             f"{exc})")
        if facts.get("params"):
            top1 = facts.get("imagenet_top1")
            n, mb = facts["params"], facts.get("weights_mb", 0)
            count = f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"
            text += (f"; {count} params, {mb:.0f} MB" if mb >= 10 else
                     f"; {count} params, {mb:.2g} MB")
            text += ((f", {facts['gmacs']:.{'2f' if facts['gmacs'] >= 0.01 else '2g'}} GMACs@{facts.get('gmacs_at')}px"
                      if facts.get("gmacs") is not None else "")
                     + (f", ImageNet top-1 {top1:.1f}%" if top1 is not None else
                        ", ImageNet top-1 unknown")
                     + (f", input {facts['input_size']}px, mean {_r(facts.get('mean'))} std "
                        f"{_r(facts.get('std'))}" if facts.get("input_size") else ""))
    elif kind == "strategies":
        params = spec.cls.parameters()
        if params:
            text += " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
    elif kind == "datasets":
        text = f"[{', '.join(spec.tasks)}{'; synthetic' if spec.synthetic else ''}] {text}"
    elif kind == "profiles":
        text = (f"batch {spec.batch_size}, threads {spec.threads or 'all'}, "
                f"{'/'.join(spec.precisions)}, {spec.device}")
    elif kind == "estimators":
        text += " (needs the weights' source classifier)" if spec.needs_source_classifier else ""
    elif kind == "runtimes":
        ok, why = spec.available()
        text += "" if ok else f" (unavailable here: {why})"
    return text


def _r(values) -> str:
    return "(" + ",".join(f"{v:.3g}" for v in values or ()) + ")"


# -- bench plugins --------------------------------------------------------------------------
@cli.command("plugins", epilog="\b\nExample:\n  bench plugins\n  bench plugins --json")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plugins_cmd(ctx, as_json):
    """Show every plugin: where it comes from, its status and what it registers."""
    from tabulate import tabulate

    root = ctx.find_root().command
    if isinstance(root, BenchGroup):
        root._add_plugin_commands()  # so commands from plugins show (and their faults)
    infos = list(get_plugins().infos.values())
    if as_json:
        click.echo(json.dumps([{"name": i.name, "origin": i.origin, "status": i.status,
                                "registers": i.registers, "error": i.error,
                                "message": i.message} for i in infos],
                              indent=2))
        return
    rows = []
    for i in infos:
        regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(i.registers.items()))
        rows.append([i.name, i.origin, i.status, (regs or "-") if not i.error else i.error])
    click.echo(tabulate(rows, headers=["plugin", "from", "status", "registers"],
                        tablefmt="simple", maxcolwidths=[None, None, None, 90]))


# -- bench run ------------------------------------------------------------------------------
_MATRIX_OPTIONS = [
    click.option("-b", "--backbone", "backbones", multiple=True,
                 shell_complete=_names("backbones"), metavar="NAME[,k=v]",
                 help="Backbone axis (repeat for more)."),
    click.option("-t", "--task", "tasks", multiple=True,
                 shell_complete=_names("tasks"), metavar="NAME[,k=v]", help="Task axis."),
    click.option("-d", "--dataset", "datasets", multiple=True,
                 shell_complete=_names("datasets"), metavar="NAME[,k=v]",
                 help="Dataset axis."),
    click.option("-s", "--strategy", "strategies", multiple=True,
                 shell_complete=_names("strategies"), metavar="NAME[,k=v]",
                 help="Strategy axis; parameters after commas: -s chain_thaw,patience=1."),
    click.option("-r", "--runtime", "runtimes", multiple=True,
                 shell_complete=_names("runtimes"), metavar="NAME",
                 help="Latency runtimes."),
    click.option("-p", "--profile", "profiles", multiple=True,
                 shell_complete=_names("profiles"), metavar="NAME",
                 help="Latency profiles (mobile, server, or one defined in the matrix file)."),
    click.option("-w", "--weights", multiple=True, metavar="[BACKBONE=]SOURCE",
                 help="Weights for pretrained strategies: imagenet, packaged, file:PATH, ..."),
    click.option("-m", "--matrix", "matrix_file", type=click.Path(dir_okay=False),
                 help="A TOML or YAML matrix file."),
    click.option("--preset", default=None, shell_complete=_names("presets"),
                 show_default="the preset registered as the default",
                 help="A registered preset matrix (see bench list presets)."),
    click.option("--epochs", type=int, help="Maximum epochs per phase."),
    click.option("--batch-size", type=int, help="Training batch size."),
    click.option("--lr", type=float, help="Learning rate."),
    click.option("--schedule", type=click.Choice(["constant", "stlr"]), help="LR schedule."),
    click.option("--device", default=None, metavar="auto|cpu|cuda|cuda:N", show_default="auto",
                 help="Where cells train and evaluate; auto: CUDA when PyTorch sees a GPU "
                      "(the run header says which)."),
    click.option("--amp", default=None, show_default="auto",
                 type=click.Choice(["auto", "off", "bf16", "fp16", "tune"]),
                 help="Mixed precision; auto: bf16 on GPUs that have it, else fp16; fp32 on "
                      "the CPU. tune: a short probe per model picks fp32 or a mixed "
                      "precision this device computes natively."),
    click.option("--layout", default=None, show_default="auto",
                 type=click.Choice(["auto", "contiguous", "channels_last"]),
                 help="Training memory layout; auto: a short probe per model picks the "
                      "faster of contiguous and channels-last (cached per machine)."),
    click.option("--channels-last/--no-channels-last", default=None,
                 help="Same as --layout channels_last / --layout contiguous."),
    click.option("--tf32/--no-tf32", default=None, show_default="on",
                 help="Let fp32 matmuls and convolutions on CUDA use TF32 tensor cores, in "
                      "training and in the GPU runtimes' fp32 rows (recorded in every cell)."),
    click.option("--deterministic/--no-deterministic", default=None, show_default="off",
                 help="Deterministic algorithms (cuDNN deterministic, no benchmarking, "
                      "torch.use_deterministic_algorithms); recorded in every cell."),
    click.option("--compile/--no-compile", "compile", default=None, show_default="off",
                 help="torch.compile the forward passes (part of the cell key)."),
    click.option("--eval-batch-size", type=click.IntRange(min=0), default=None,
                 show_default="0: the training batch size",
                 help="Evaluation/prediction batch size."),
    click.option("--patience", type=click.IntRange(min=1),
                 help="Early-stopping patience (epochs without a better validation loss)."),
    click.option("--budget", type=click.Choice(["phase", "epochs", "steps", "images", "flops"]),
                 help="Training budget: per phase, or a total of --epochs epochs' worth of "
                      "epochs/steps/images/FLOPs (flops: of fine-tuning every layer) shared "
                      "by all phases (the same cap for every strategy; docs/strategies.md)."),
    click.option("--image-size", type=int, help="Input size in pixels."),
    click.option("--seeds", type=int, help="Repeat every cell with this many seeds."),
    click.option("--tune", type=click.IntRange(min=0), default=None, metavar="N",
                 help="Tune every cell's strategy with N Optuna trials (TPE) on the "
                      "train/validation split, then retrain the best once (docs/tuning.md)."),
    click.option("--tune-pruner", type=click.Choice(["median", "halving", "none"]),
                 default=None, show_default="median", help="Pruner of the tuning trials."),
    click.option("--halving/--no-halving", default=None,
                 help="Successive halving over the matrix's cells: stop cells whose "
                      "validation curve falls behind (docs/tuning.md)."),
    click.option("--halving-min-resource", type=click.IntRange(min=1), default=None,
                 metavar="EPOCHS", show_default="1",
                 help="Epochs before halving may stop a cell."),
    click.option("--halving-reduction-factor", type=click.IntRange(min=2), default=None,
                 metavar="ETA", show_default="3", help="Keep the best 1/ETA at each rung."),
]


def matrix_options(fn):
    """Add the options that describe a matrix (``bench run``'s) to a click command.

    Their values, passed to the command by name, are what
    :func:`harness.run.options.matrix_from_options` takes; plugin commands that run a
    matrix (``bench baseline create``) use both, so they read like ``bench run``.
    """
    for opt in reversed(_MATRIX_OPTIONS):
        fn = opt(fn)
    return fn


#: what register_commands hands plugins with the group: ``cli.matrix_options`` decorates a
#: plugin command with bench run's matrix options (so a plugin never imports this module)
BenchGroup.matrix_options = staticmethod(matrix_options)


@cli.command("run", epilog=EPILOG_RUN)
@matrix_options
@click.option("--name", default=None,
              show_default="the preset's or file's, with '-custom' when an option changed "
                           "an axis",
              help="Name of the matrix (run folder and published files).")
@click.option("--out", "out_root", default="runs", show_default=True,
              type=click.Path(file_okay=False),
              help="Where the run writes: the folder that holds run folders (OUT/NAME-HASH).")
@click.option("--fresh", is_flag=True, help="Discard finished cells of the same matrix.")
@click.option("--executor", default=None, shell_complete=_names("executors"),
              show_default="inprocess; processes with --jobs N>1 or --cell-timeout",
              help="How cells run: inprocess, processes, ray (see bench list executors).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Cells at once; --jobs N>1 without --executor uses worker processes.")
@click.option("--address", default=None, metavar="ADDR",
              help="Ray cluster to join (ray://HOST:10001 or auto); --out must be shared.")
@click.option("--cell-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Kill a cell's worker after this long (processes).")
@click.option("--keep-onnx", is_flag=True,
              help="Keep each cell's ONNX file as RUN/onnx/KEY.onnx (the mlflow reporter "
                   "logs it).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON at the end.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--budget-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              expose_value=False, callback=lambda c, _, v: c.meta.__setitem__("budget_ms", v),
              help="Latency budget (p50, ms) of the recommendation printed at the end.")
@click.option("--rank-first", type=click.IntRange(min=1), default=None, metavar="K",
              help="Score every backbone with a transferability estimator first (frozen "
                   "features, seconds) and train only the K best per dataset.")
@click.option("--rank-by", default="logme", show_default=True, metavar="ESTIMATOR[,k=v]",
              help="The estimator --rank-first uses (see bench list estimators).")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (cells, weights and their source, pretrainings, runtimes, "
                   "an estimated time) and stop: nothing is trained or written.")
@click.pass_context
def run_cmd(ctx, out_root, fresh, executor, jobs, address, cell_timeout, keep_onnx, as_json,
            quiet, rank_first, rank_by, dry_run, **matrix_opts):
    """Run a matrix of backbone x task x strategy x dataset and report accuracy and latency.

    With no option it runs the embedded default matrix (offline, a few minutes on 2 CPU
    cores). Options replace the axis or setting they name; the rest comes from the
    matrix file, the preset, or the default.
    """
    import time

    from .run.options import matrix_from_options
    from .run.runner import dry_run as plan_only, run_matrix

    t0 = time.perf_counter()
    plugins = get_plugins()
    matrix = None
    try:
        matrix = matrix_from_options(plugins, matrix_opts)
        if dry_run:
            plan = plan_only(plugins, matrix, Path(out_root),
                             (rank_first, rank_by) if rank_first is not None else None)
            click.echo("\n".join(plan.lines()))
            return
        ranking = None
        if rank_first is not None:
            ranking = _rank_first(plugins, matrix, rank_first, rank_by, quiet)
        executor = executor or plugins.default(
            "executors", "parallel" if (jobs or 1) > 1 or cell_timeout else "default").name
        store = run_matrix(plugins, matrix, Path(out_root), executor=executor,
                           executor_options={"jobs": jobs, "address": address,
                                             "cell_timeout": cell_timeout},
                           fresh=fresh, show_progress=not quiet, keep_onnx=keep_onnx,
                           ranking=ranking)
    except (UnknownName, ConfigError) as exc:
        _fail_usage(ctx, exc)
        return
    except BenchError as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(1)
        return
    except KeyboardInterrupt:
        _interrupted(ctx, plugins, matrix, Path(out_root))
        return
    records = store.records()
    if as_json:
        click.echo(json.dumps(records, indent=2, default=str))
    else:
        from .report.table import report_text
        click.echo(report_text(records, ctx.meta.get("budget_ms")))
        if ranking is not None:
            from .report.ranking import ranking_text
            click.echo("\n" + ranking_text(ranking, records))
        click.echo(f"\nresults: {store.path}")
    _next_steps(store.path, records, time.perf_counter() - t0)
    # a cell successive halving stopped early (--halving) is a result, not a failure
    failed = [r for r in records if r.get("status") not in ("ok", STOPPED)]
    if failed:
        click.echo(f"{len(failed)} of {len(records)} cells failed; their errors are in the "
                   f"table and in {store.path}/cells/", err=True)
        ctx.exit(1)


def _interrupted(ctx: click.Context, plugins, matrix, out_root: Path) -> None:
    """After Ctrl-C: say what the run folder keeps and the exact command that resumes it
    (the same one, without ``--fresh``), then exit 130 (128 + SIGINT, the shell's code)."""
    import shlex

    from .run.results import RunStore
    from .run.runner import run_dir_for

    argv = [a for a in ctx.meta.get("argv", sys.argv[1:]) if a != "--fresh"]
    again = shlex.join([ctx.find_root().info_name or "bench", *argv])
    kept = "nothing was kept: no cell had started"
    path = run_dir_for(out_root, matrix, plugins) if matrix is not None else None
    if path is not None and path.is_dir():
        store = RunStore(path)
        statuses = [r.get("status") for r in store.records()]
        ok, stopped = statuses.count("ok"), statuses.count(STOPPED)
        total = len(store.order()) or "?"
        how = f"({ok} ok, {stopped} stopped early by --halving)" if stopped else "ok"
        finished = ok + stopped
        kept = (f"kept: {finished} of {total} cells finished {how}, their records in {path}/cells "
                f"(results.json rebuilt; bench report {shlex.quote(str(path))} shows them); "
                f"the cells that were running or not started run when you resume"
                if finished else f"no cell had finished yet ({path} keeps the run's settings); "
                           f"all {total} cells run when you resume")
    click.echo(f"\nInterrupted (Ctrl-C); {kept}. Resume with:\n  {again}", err=True)
    ctx.exit(130)


def _next_steps(path: Path, records: list, seconds: float) -> None:
    """The end of a run, on stderr (stdout stays the table or the JSON): how long it took
    and the commands that read the run folder."""
    from .run.plan import format_seconds

    ok = sum(1 for r in records if r.get("status") == "ok")
    stopped = sum(1 for r in records if r.get("status") == STOPPED)
    also = f", {stopped} stopped early by --halving" if stopped else ""
    click.echo(f"took {format_seconds(seconds)} ({ok} of {len(records)} cells ok{also})\n"
               f"next:\n"
               f"  bench report {path}                  # this table again\n"
               f"  bench report {path} --format html    # interactive page: {path}/report/report.html\n"
               f"  bench compare {path} OTHER_RUN       # cells matched, deltas", err=True)


def _rank_first(plugins, matrix, k: int, rank_by: str, quiet: bool) -> dict:
    """Score the matrix's backbones with ``rank_by`` (its first seed) and keep the top ``k``
    per dataset; returns the ranking that run_matrix stores and the report shows."""
    import time

    from .run.rank import rank_matrix, rank_units, resolve_estimators, top_backbones

    estimators = resolve_estimators(plugins, [rank_by])
    (item, spec), = estimators
    first = min(c.seed for c in matrix.cells())
    units = [u for u in rank_units(matrix) if u.seed == first]
    t0 = time.perf_counter()
    rows = rank_matrix(plugins, matrix, estimators, units=units,
                       progress=(lambda m: None) if quiet else
                       (lambda m: click.echo(f"ranking: {m}", err=True)))
    seconds = time.perf_counter() - t0
    kept = top_backbones(rows, item.label(), k, spec.higher_is_better)
    for r in rows:
        why = r.get("error") or (r["estimates"].get(item.label()) or {}).get("unavailable") \
            or (r["estimates"].get(item.label()) or {}).get("error")
        if why:
            click.echo(f"warning: {r['backbone']} on {r['dataset']} was not ranked and is not "
                       f"trained: {why}", err=True)
    return {"estimator": item.label(), "k": k, "higher_is_better": spec.higher_is_better,
            "kept": kept, "rows": rows, "seconds": seconds}


# -- bench rank -----------------------------------------------------------------------------
@cli.command("rank", epilog="\b\nExamples:\n  bench rank -d digits\n"
                             "  bench rank -b mobilenetv2_100 -b resnet18 -e logme -e leep\n"
                             "  bench rank --preset default --json > ranking.json")
@click.option("-b", "--backbone", "backbones", multiple=True, metavar="NAME[,k=v]",
              help="Backbones to score (repeat for more).")
@click.option("-t", "--task", "tasks", multiple=True, metavar="NAME[,k=v]",
              help="Task (estimators score classification labels).")
@click.option("-d", "--dataset", "datasets", multiple=True, metavar="NAME[,k=v]",
              help="Target datasets.")
@click.option("-w", "--weights", multiple=True, metavar="[BACKBONE=]SOURCE",
              help="Weights to score: imagenet, packaged, file:PATH, source:DATASET, random.")
@click.option("-e", "--estimator", "estimators", multiple=True, metavar="NAME[,k=v]",
              show_default="all", help="Estimators (see bench list estimators).")
@click.option("-m", "--matrix", "matrix_file", type=click.Path(dir_okay=False),
              help="A TOML or YAML matrix file (its backbones, datasets, weights).")
@click.option("--preset", default=None, help="A registered preset matrix.")
@click.option("--image-size", type=int, help="Input size in pixels.")
@click.option("--batch-size", type=int, help="Batch size of the feature pass.")
@click.option("--seeds", type=int, help="Score every pair on this many seeds' data splits.")
@click.option("--sort-by", default=None, metavar="ESTIMATOR",
              show_default="bench run --rank-by's default where it ran, else the first",
              help="Order each dataset's pairs by this estimator's rank.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the rows as JSON to this file.")
@click.pass_context
def rank_cmd(ctx, backbones, tasks, datasets, weights, estimators, matrix_file, preset,
             image_size, batch_size, seeds, sort_by, as_json, out):
    """Score backbones on target data before training: transferability estimators (LogME,
    LEEP, NCE, H-score, GBC, kNN, linear probe) on frozen features computed once per
    backbone, weights and dataset; each estimate is timed."""
    from .report.ranking import rank_table
    from .run.rank import rank_matrix, resolve_estimators
    from .run.results import atomic_write_json

    from .run.options import matrix_from_options

    plugins = get_plugins()
    try:
        matrix = matrix_from_options(plugins, {
            "backbones": backbones, "tasks": tasks, "datasets": datasets, "weights": weights,
            "matrix_file": matrix_file, "preset": preset, "image_size": image_size,
            "seeds": seeds, "batch_size": batch_size})
        for axis in ("backbones", "datasets", "tasks"):
            reg = plugins.registries[axis]
            for item in getattr(matrix, axis):
                reg.resolve(item.name)
        for w in matrix.weights.values():
            plugins.weights.resolve(w)
        chosen = resolve_estimators(plugins, estimators)
        labels = [i.label() for i, _ in chosen]
        if sort_by is not None and sort_by not in labels:
            raise ConfigError(f"--sort-by {sort_by!r} is not among the estimators run: "
                              f"{', '.join(labels)}")
        rows = rank_matrix(plugins, matrix, chosen,
                           progress=lambda m: click.echo(f"rank: {m}", err=True))
    except (UnknownName, ConfigError) as exc:
        _fail_usage(ctx, exc)
        return
    if out:
        atomic_write_json(Path(out), rows)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        click.echo(rank_table(rows, labels, sort_by or _default_rank_by(ctx, labels),
                              higher_is_better={i.label(): s.higher_is_better
                                                for i, s in chosen}))
    failed = [e["error"] for r in rows for e in r.get("estimates", {}).values()
              if e.get("error")]
    if any(r.get("error") for r in rows) or failed:
        ctx.exit(1)


def _default_rank_by(ctx: click.Context, labels: list) -> Optional[str]:
    """``bench run --rank-by``'s default when it is among the estimators run, so that
    ``bench rank`` lists pairs in the order ``--rank-first`` would keep them."""
    run = ctx.find_root().command.get_command(ctx, "run")
    default = next((p.default for p in run.params if p.name == "rank_by"), None)
    return default if default in labels else (labels[0] if labels else None)


# -- bench report ---------------------------------------------------------------------------
def _open_run(ctx: click.Context, run: str):
    """A RunStore for RUN, or a usage error when RUN is not a run folder."""
    from .run.results import RunStore, is_run_folder

    path = Path(run)
    if not is_run_folder(path):
        _fail_usage(ctx, f"{run} is not a run folder (no config.json of a bench run, no cell "
                         f"records in cells/); nothing was written to it. Give a folder that "
                         f"bench run printed as 'results: RUN'")
    return RunStore(path)


@cli.command("report", epilog="\b\nExample:\n  bench report runs/default-1a2b3c4d5e\n"
                               "  bench report RUN --format markdown > results.md\n"
                               "  bench report RUN --format html --budget-ms 5")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="table", show_default=True,
              shell_complete=_names("reporters"),
              help="A registered reporter (see bench list reporters).")
@click.option("--out", type=click.Path(), default=None,
              show_default="standard output; html: RUN/report/report.html",
              help="Where to write: a file, or an existing folder (the format's file name "
                   "in it: report.txt, report.md, results.csv, results.json, report.html, "
                   "mlflow.db).")
@click.option("--budget-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              show_default="no limit",
              help="Latency budget (p50, ms) of the recommendation.")
@click.option("--mix-devices", is_flag=True,
              help="Rank GPU and CPU latency rows in one recommendation pool (without it: a "
                   "pool each; their latencies answer different deployment questions).")
@click.pass_context
def report_cmd(ctx, run, fmt, out, budget_ms, mix_devices):
    """Show a finished (or interrupted) run."""
    import inspect

    try:
        reporter = get_plugins().reporters.get(fmt)
    except UnknownName as exc:
        _fail_usage(ctx, exc)
        return
    store = _open_run(ctx, run)
    try:  # results.json follows cells/ (a run killed between the two left it behind)
        store.aggregate()
    except OSError:
        pass  # a read-only run folder: the report reads cells/ itself
    params = inspect.signature(reporter.write).parameters
    kw = {"budget_ms": budget_ms} if "budget_ms" in params or any(
        p.kind is p.VAR_KEYWORD for p in params.values()) else {}
    if budget_ms is not None and not kw:
        click.echo(f"note: reporter {fmt!r} has no recommendation; --budget-ms ignored",
                   err=True)
    if mix_devices:
        if "mix_devices" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kw["mix_devices"] = True
        else:
            click.echo(f"note: reporter {fmt!r} does not pool devices; --mix-devices ignored",
                       err=True)
    from .run.contracts import blame
    try:
        with blame(get_plugins(), "reporters", fmt, f"writing the report of {run}"):
            try:
                text = reporter.write(store, Path(out) if out else None, **kw)
            except OSError as exc:  # --out not writable, a file where a folder is needed, ...
                raise BenchError(f"reporter {fmt!r} cannot write {out or exc.filename or run}: "
                                 f"{exc.strerror or exc}; give --out a writable file or "
                                 f"existing folder") from None
    except BenchError as exc:  # the user's (--out) or a plugin's fault (PluginFault)
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(1)
        return
    if text:
        click.echo(text)


# -- bench compare --------------------------------------------------------------------------
#: ``bench compare --format``: the output formats named as ``bench report``'s reporters
#: name them -> the tabulate style that writes it (csv and json are written directly)
COMPARE_FORMATS = {"table": None, "markdown": "github", "csv": None, "json": None}


def _compare_format(ctx, param, value):
    """``--format`` is an output format, as in ``bench report``; a tabulate style given there
    (the old meaning: ``--format github``) still works, with a note saying what to write."""
    if value in COMPARE_FORMATS:
        return value
    from tabulate import tabulate_formats
    if value in tabulate_formats:
        click.echo(f"warning: --format {value} is a table style; --format now takes an output "
                   f"format ({', '.join(COMPARE_FORMATS)}), as bench report's does. This run "
                   f"uses --format table --table-style {value}; write that instead (the old "
                   f"spelling goes in a later release).", err=True)
        ctx.meta["compare_style"] = value
        return "table"
    raise click.BadParameter(f"{value!r} is not an output format; choose one of "
                             f"{', '.join(COMPARE_FORMATS)}", ctx=ctx, param=param)


@cli.command("compare", epilog="\b\nExamples:\n  bench compare runs/default-1a2b runs/default-9f8e"
                                "\n  bench compare RUN_A RUN_B --format markdown > diff.md"
                                "\n  bench compare RUN_A RUN_B --format table --table-style grid")
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="table", show_default=True, callback=_compare_format,
              metavar="|".join(COMPARE_FORMATS),
              shell_complete=lambda c, p, inc: [f for f in COMPARE_FORMATS if f.startswith(inc)],
              help="Output format, named as bench report's: table, markdown, csv, json.")
@click.option("--table-style", "style", default="simple", show_default=True,
              help="The tabulate style of --format table: simple, grid, rst, ...")
@click.pass_context
def compare_cmd(ctx, run_a, run_b, fmt, style):
    """Compare two runs: cells matched by configuration, metric deltas, latency ratios B/A."""
    from tabulate import tabulate, tabulate_formats

    from .report.table import compare_rows, setting_differences

    style = ctx.meta.get("compare_style", style)
    if style not in tabulate_formats:
        _fail_usage(ctx, f"unknown --table-style {style!r}; choose one of "
                         f"{', '.join(tabulate_formats)}")
    a, b = _open_run(ctx, run_a), _open_run(ctx, run_b)
    headers, rows, notes = compare_rows(a.records(), b.records())
    if fmt == "json":
        click.echo(json.dumps({"a": str(a.path), "b": str(b.path),
                               "rows": [dict(zip(headers, r)) for r in rows], "notes": notes},
                              indent=2, default=str))
        ctx.exit(0 if rows else 1)
    if fmt == "csv":
        import csv
        import io
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([headers, *rows])
        click.echo(buf.getvalue(), nl=False)
        for n in notes:
            click.echo(n, err=True)
        ctx.exit(0 if rows else 1)
    click.echo(f"A: {a.path}\nB: {b.path}")
    for what, fa, fb in (("settings", a.config, b.config), ("environment", a.environment,
                                                            b.environment)):
        try:
            diffs = setting_differences(fa().get("matrix", fa()) if what == "settings" else fa(),
                                        fb().get("matrix", fb()) if what == "settings" else fb())
        except (OSError, ValueError) as exc:
            diffs = [f"cannot read: {exc}"]
        if diffs:
            click.echo(f"{what} that differ:\n  " + "\n  ".join(diffs[:30]))
    if not rows:
        click.echo("no configuration finished in both runs", err=True)
    else:
        click.echo(tabulate(rows, headers=headers, disable_numparse=True,
                            tablefmt=COMPARE_FORMATS[fmt] or style))
    for n in notes:
        click.echo(n)
    if not rows:
        ctx.exit(1)


def main() -> None:  # console-script entry point
    from .measure.allocator import tune
    from .measure.lifetime import exit_on_signals
    exit_on_signals()  # SIGTERM (timeout, kill) cleans up like Ctrl-C does
    tune()  # fewer page faults per batch; see harness/measure/allocator.py
    try:
        cli(prog_name="bench")
    except BenchError as exc:  # pragma: no cover - safety net
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
