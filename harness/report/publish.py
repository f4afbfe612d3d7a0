"""Publishing a run into ``results/``: its CSV and its report as Markdown, under file names
that state the conditions (:func:`harness.run.results.condition_stem`)."""
from __future__ import annotations

from pathlib import Path

from ..api.files import atomic_write_text
from ..run.results import RunStore, condition_stem
from .table import report_text


def publish(store: RunStore, folder: Path) -> list[Path]:
    """Copy a run's aggregated CSV, and its report as Markdown, into ``folder`` under names
    that state the conditions (see :func:`condition_stem`). Returns the written paths."""
    stem = condition_stem(store.config(), store.environment())
    store.aggregate()
    folder = Path(folder)
    csv_path, md_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    atomic_write_text(csv_path, (store.path / "results.csv").read_text())
    env = store.environment()
    head = (f"# {stem}\n\nRun folder `{store.path.name}`; CPU {env.get('cpu')}, "
            f"{env.get('affinity') or env.get('cpu_count')} cores, torch threads "
            f"{env.get('torch_threads')}; versions: "
            + ", ".join(f"{k} {v}" for k, v in sorted(env.get("versions", {}).items())) + "\n\n")
    atomic_write_text(md_path, head + report_text(store.records(), fmt="github") + "\n")
    return [csv_path, md_path]
