"""Built-in reporters for ``bench report``: terminal table, Markdown, CSV, JSON, HTML, MLflow.

The table and Markdown reporters add the repeats table (mean ± 95% interval over seeds,
paired tests between strategies) and the recommendation within ``budget_ms``; a run made
with ``--rank-first K`` also shows its ranking next to the accuracy each pair measured.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from harness import ReporterSpec, hookimpl
from harness.api.errors import BenchError
from harness.api.files import atomic_write_text


def _emit(text: str, out: Path | None, name: str) -> str | None:
    """``text`` for the terminal, or written to ``out``: a file, or an existing folder to
    write ``name`` into."""
    if out is None:
        return text
    out = Path(out)
    if out.is_dir():
        out = out / name
    atomic_write_text(out, text)
    return f"wrote {out}"


def _ranking(store, records, fmt: str) -> str:
    """The ``--rank-first`` ranking next to the measured accuracy, when the run has one."""
    path = Path(store.path) / "ranking.json"
    if not path.exists():
        return ""
    from harness.report.ranking import ranking_text
    return "\n\n" + ranking_text(json.loads(path.read_text()), records, fmt=fmt)


def write_table(store, out=None, budget_ms: Optional[float] = None, mix_devices: bool = False):
    from harness.report.table import report_text  # on use: bench --help stays cheap

    records = store.records()
    return _emit(report_text(records, budget_ms, mix_devices=mix_devices)
                 + _ranking(store, records, "simple") + "\n", out, "report.txt")


def write_markdown(store, out=None, budget_ms: Optional[float] = None,
                   mix_devices: bool = False):
    from harness.report.table import report_text  # on use: bench --help stays cheap

    records = store.records()
    return _emit(report_text(records, budget_ms, fmt="github", mix_devices=mix_devices)
                 + _ranking(store, records, "github") + "\n", out, "report.md")


def write_csv(store, out=None):
    store.aggregate()
    return _emit((store.path / "results.csv").read_text(), out, "results.csv")


def write_json(store, out=None):
    return _emit(json.dumps(store.records(), indent=2, default=str) + "\n", out, "results.json")


def write_html(store, out=None, budget_ms: Optional[float] = None):
    from harness.report.report_html import write_html as _write
    path = _write(store, out, budget_ms)
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    return f"wrote {path} (plots embedded; also as {', '.join(pngs)} in {path.parent})"


def write_mlflow(store, out=None, budget_ms: Optional[float] = None):
    try:
        from harness.report.report_mlflow import log_run
    except ImportError as exc:  # the module imports MLflow lazily; this is our own import
        raise BenchError(f"the mlflow reporter cannot load: {exc}") from exc
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise BenchError("the mlflow reporter needs MLflow: pip install "
                         "'transfer-bench[mlflow]'") from None
    if out and Path(out).is_dir():
        out = Path(out) / "mlflow.db"
    uri = f"sqlite:///{Path(out).resolve()}" if out else None
    res = log_run(store, uri, budget_ms)
    text = (f"logged {res['logged']} cells to MLflow ({res['kept']} already there, "
            f"{res['replaced']} replaced), parent run {res['parent_run_id']} in experiment "
            f"{res['experiment_id']}; tracking store {res['tracking_uri']}")
    if res["tracking_uri"].startswith("sqlite:///"):
        text += f"\n  view it: mlflow ui --backend-store-uri {res['tracking_uri']}"
    if res["no_onnx"]:
        text += (f"\n  {len(res['no_onnx'])} cells have no kept ONNX file to log "
                 "(bench run --keep-onnx keeps them)")
    return text


def write_published(store, out=None):
    from harness.report.publish import publish
    if out and Path(out).exists() and not Path(out).is_dir():
        raise BenchError(f"--out {out} is a file; the publish reporter writes a CSV and a "
                         f"Markdown file into a folder: give a folder")
    paths = publish(store, Path(out) if out else Path("results"))
    return "wrote " + ", ".join(str(p) for p in paths)


@hookimpl
def register_reporters():
    return [
        ReporterSpec("table", write=write_table,
                     description="terminal table, repeats with 95% CI, recommendation"),
        ReporterSpec("markdown", write=write_markdown, description="the same as GitHub Markdown"),
        ReporterSpec("csv", write=write_csv, description="one row per cell x runtime"),
        ReporterSpec("json", write=write_json, description="every cell record"),
        ReporterSpec("html", write=write_html,
                     description="self-contained interactive HTML, works offline (Vega-Lite "
                                 "plots embedded; PNGs written beside it)"),
        ReporterSpec("mlflow", write=write_mlflow,
                     description="every cell an MLflow run under a parent run of the matrix "
                                 "(MLFLOW_TRACKING_URI, else RUN/mlflow/mlflow.db; --out "
                                 "FILE.db); extra transfer-bench[mlflow]"),
        ReporterSpec("publish", write=write_published,
                     description="CSV + Markdown named by the run's conditions, into --out "
                                 "(default results/)"),
    ]
