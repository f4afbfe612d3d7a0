"""Built-in reporters for ``bench report``: terminal table, Markdown, CSV and JSON."""
from __future__ import annotations

import json
from pathlib import Path

from harness import ReporterSpec, hookimpl
from harness.results import atomic_write_text
from harness.table import summary_table


def _emit(text: str, out: Path | None) -> str | None:
    if out is None:
        return text
    atomic_write_text(Path(out), text)
    return f"wrote {out}"


def write_table(store, out=None):
    return _emit(summary_table(store.records()) + "\n", out)


def write_markdown(store, out=None):
    return _emit(summary_table(store.records(), fmt="github") + "\n", out)


def write_csv(store, out=None):
    store.aggregate()
    return _emit((store.path / "results.csv").read_text(), out)


def write_json(store, out=None):
    return _emit(json.dumps(store.records(), indent=2, default=str) + "\n", out)


@hookimpl
def register_reporters():
    return [
        ReporterSpec("table", write=write_table, description="terminal table"),
        ReporterSpec("markdown", write=write_markdown, description="GitHub Markdown table"),
        ReporterSpec("csv", write=write_csv, description="one row per cell x runtime"),
        ReporterSpec("json", write=write_json, description="every cell record"),
    ]
