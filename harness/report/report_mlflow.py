"""Log a run into MLflow (``bench report RUN --format mlflow``; extra ``transfer-bench[mlflow]``).

The matrix is a parent run and every cell a child run of it (MLflow's ``mlflow.parentRunId``
tag) in the experiment ``transfer-bench/<matrix name>``:

- parameters: the cell's configuration, flattened (``backbone``, ``strategy``,
  ``train.epochs``, ...); the parent gets the matrix's;
- metrics: ``test_<metric>`` for every scalar test metric, ``test_loss``, ``train_seconds``,
  parameter counts; the learning curve per epoch (``train_<metric>``, ``val_<metric>``,
  ``train_loss``, ``val_loss``, ``lr`` with ``step`` = epoch); per runtime/profile/precision
  ``latency_p50_ms/RUNTIME/PROFILE/PRECISION``, ``latency_p90_ms/...``,
  ``latency_noisy/...`` (1 when the figure failed the stability criterion) and
  ``latency_iqr_rel/...`` (its IQR / p50) and, for lower
  precisions, ``test_<metric>/RUNTIME/PROFILE/PRECISION`` (the metric after conversion, on
  the same test images as ``test_<metric>``; a record scored on the first N images only
  logs ``test_<metric>_firstN/...`` instead, see :mod:`harness.report.scoring`);
- artifacts: the cell's JSON record, and its ONNX file where the run kept it
  (``bench run --keep-onnx``); the parent gets config.json, environment.json, results.csv,
  the recommendation as JSON and the HTML report where one was written.

A cell that failed is a ``FAILED`` run with its error as the tag ``error``. Logging the same
run folder again adds only what changed: a cell already logged with the same finish time
is left alone, one that ran again (after a resume) replaces its old run.

The tracking store is ``MLFLOW_TRACKING_URI`` where set, else a local SQLite database
``RUN/mlflow/mlflow.db``. A SQLite store keeps its artifacts in the folder ``artifacts``
beside the database (here ``RUN/mlflow/artifacts``; ``mlflow ui
--backend-store-uri sqlite:///RUN/mlflow/mlflow.db`` shows it).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Optional

from .scoring import scored_on_subset

RUN_TAG = "transfer_bench_run_id"
"""Tag of the parent and child runs: a hash of the run folder's path (the folder itself is
the tag ``transfer_bench_run_folder``)."""
CELL_TAG = "transfer_bench_cell"
FINISHED_TAG = "transfer_bench_finished"
_BATCH = 100  # MLflow takes at most 100 params (and 1000 metrics) per log_batch


def default_tracking_uri(store) -> str:
    """``MLFLOW_TRACKING_URI``, else the SQLite store under the run folder."""
    return (os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(store.path / 'mlflow' / 'mlflow.db').resolve()}")


def _key(text: str) -> str:
    """A metric or parameter name MLflow accepts (letters, digits, _ - . / space)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def _params(d: dict) -> dict:
    """Nested settings as MLflow parameters: dotted names, JSON for non-strings."""
    from .table import flatten
    return {_key(k): v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
            for k, v in flatten(d or {}).items()}


def _num(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def cell_metrics(rec: dict) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` of everything measured in one cell record."""
    out = []
    name = rec.get("metric_name") or "metric"
    for k, v in (rec.get("test_metrics") or {}).items():
        if _num(v) is not None:
            out.append((f"test_{k}", _num(v), 0))
    facts = rec.get("backbone_facts") or {}
    for key, v in (("test_loss", rec.get("test_loss")),
                   ("train_seconds", rec.get("train_seconds")),
                   ("params_total", facts.get("params_total")),
                   ("params_trained", rec.get("trainable_params")),
                   ("gmacs", facts.get("gmacs"))):
        if _num(v) is not None:
            out.append((key, _num(v), 0))
    for step, e in enumerate((rec.get("history") or {}).get("epochs", [])):
        for key, field in ((f"train_{name}", "train_metric"), (f"val_{name}", "val_metric"),
                           ("train_loss", "train_loss"), ("val_loss", "val_loss"), ("lr", "lr")):
            if _num(e.get(field)) is not None:
                out.append((key, _num(e[field]), step))
    for lat in rec.get("latency") or []:
        st = lat.get("stats")
        if not st:
            continue
        where = "/".join(_key(str(lat.get(k))) for k in ("runtime", "profile", "precision"))
        for q in ("p50_ms", "p90_ms"):
            if _num(st.get(q)) is not None:
                out.append((f"latency_{q}/{where}", _num(st[q]), 0))
        if st.get("noise"):  # 1: failed the stability criterion (harness.report.noise)
            out.append((f"latency_noisy/{where}", float(bool(st["noise"].get("noisy"))), 0))
            if _num(st["noise"].get("iqr_rel")) is not None \
                    and math.isfinite(st["noise"]["iqr_rel"]):
                out.append((f"latency_iqr_rel/{where}", _num(st["noise"]["iqr_rel"]), 0))
        if _num(lat.get("accuracy_after")) is not None:
            # compared with test_<metric> only when scored on the same images; a record
            # scored on a subset logs it under a key that states the subset's size
            sub = scored_on_subset(rec, lat)
            key = f"test_{name}_first{sub[0]}" if sub else f"test_{name}"
            out.append((f"{key}/{where}", _num(lat["accuracy_after"]), 0))
    return [(_key(k), v, s) for k, v, s in out]


def _cell_name(rec: dict) -> str:
    cfg = rec.get("config") or {}
    parts = [cfg.get(k) for k in ("backbone", "strategy", "dataset")]
    name = " / ".join(str(p) for p in parts if p)
    return name + (f" / seed {cfg['seed']}" if cfg.get("seed") is not None else "")


def _log(client, run_id: str, params: dict, metrics: list, tags: dict) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    ps = [Param(k, str(v)[:6000]) for k, v in params.items()]
    ms = [Metric(k, v, now, s) for k, v, s in metrics]
    ts = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
    for i in range(0, max(len(ps), len(ms), len(ts)), _BATCH):
        client.log_batch(run_id, metrics=ms[i:i + _BATCH], params=ps[i:i + _BATCH],
                         tags=ts[i:i + _BATCH])


def _find(client, exp_id: str, filter_string: str) -> list:
    return client.search_runs([exp_id], filter_string=filter_string, max_results=50_000)


def log_run(store, tracking_uri: Optional[str] = None, budget_ms: Optional[float] = None
            ) -> dict:
    """Log a run folder as a parent run with one child run per cell.

    Args:
        store: a :class:`harness.run.results.RunStore`.
        tracking_uri: the MLflow tracking store; default :func:`default_tracking_uri`.
        budget_ms: latency budget of the recommendation logged with the parent.

    Returns:
        ``{"tracking_uri", "experiment_id", "parent_run_id", "logged", "kept", "replaced",
        "no_onnx"}`` (the last: keys of cells without a kept ONNX file).
    """
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri(store)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    config = store.config()
    matrix = config.get("matrix") or {}
    exp_id = _experiment(client, uri, f"transfer-bench/{matrix.get('name') or 'matrix'}")
    run_id = hashlib.sha256(str(store.path.resolve()).encode()).hexdigest()[:20]
    records = store.records()
    pid = _log_parent(client, exp_id, run_id, store, config, records, budget_ms)
    existing = {r.data.tags[CELL_TAG]: r for r in _find(
        client, exp_id, f"tags.{RUN_TAG} = '{run_id}'") if CELL_TAG in r.data.tags}
    counts = {"logged": 0, "kept": 0, "replaced": 0}
    no_onnx = []
    for rec in records:
        if rec.get("status") == "running":
            continue  # still running (or killed with its run): log it once it has finished
        old = existing.get(rec.get("key"))
        if old is not None and old.data.tags.get(FINISHED_TAG) == str(rec.get("finished", "")):
            counts["kept"] += 1
            continue
        if old is not None:
            client.delete_run(old.info.run_id)
            counts["replaced"] += 1
        if not _log_cell(client, exp_id, run_id, pid, store, rec):
            no_onnx.append(rec.get("key"))
        counts["logged"] += 1
    client.set_terminated(pid, "FINISHED")
    return {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": pid, **counts,
            "no_onnx": no_onnx}


def _experiment(client, uri: str, name: str) -> str:
    """The id of experiment ``name``, created where missing (with a sqlite store, its
    artifacts beside the database rather than in ./mlruns)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if uri.startswith("sqlite:///"):
        return client.create_experiment(name, artifact_location=(
            Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri())
    return client.create_experiment(name)  # a tracking server decides where artifacts go


def _log_parent(client, exp_id: str, run_id: str, store, config: dict, records: list,
                budget_ms: Optional[float]) -> str:
    """The run folder's parent run (found again by its tag, else created): the matrix as
    params once, cell counts, the folder's files and the recommendation. Returns its id."""
    from .recommend import recommend
    from ..run.results import atomic_write_json

    folder = str(store.path.resolve())
    parents = [p for p in _find(client, exp_id, f"tags.{RUN_TAG} = '{run_id}'")
               if CELL_TAG not in p.data.tags]
    parent = parents[0] if parents else client.create_run(
        exp_id, run_name=store.path.name,
        tags={RUN_TAG: run_id, "transfer_bench_run_folder": folder})
    pid = parent.info.run_id
    if not parents:
        _log(client, pid, _params(config.get("matrix") or {}), [], {})
    _log(client, pid, {}, [("cells", float(len(records)), 0),
                           ("cells_ok", float(sum(r.get("status") == "ok" for r in records)), 0)],
         {"executor": config.get("executor", "")})
    for name in ("config.json", "environment.json", "results.csv", "report/report.html"):
        if (store.path / name).exists():
            client.log_artifact(pid, str(store.path / name))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recommendation.json"
        atomic_write_json(path, [r.as_dict() for r in recommend(records, budget_ms)])
        client.log_artifact(pid, str(path))
    return pid


def _log_cell(client, exp_id: str, run_id: str, pid: str, store, rec: dict) -> bool:
    """One finished cell as a child run: params, metrics, its record and ONNX file.
    Returns False for an ok cell whose ONNX file was not kept."""
    key, start, end = rec.get("key"), rec.get("started"), rec.get("finished")
    run = client.create_run(exp_id, run_name=_cell_name(rec),
                            start_time=int(start * 1000) if _num(start) else None,
                            tags={"mlflow.parentRunId": pid, RUN_TAG: run_id, CELL_TAG: key,
                                  FINISHED_TAG: str(rec.get("finished", ""))})
    tags = {"status": rec.get("status", "?")}
    if rec.get("error"):
        tags["error"] = rec["error"]
    _log(client, run.info.run_id, _params(rec.get("config") or {}), cell_metrics(rec), tags)
    client.log_artifact(run.info.run_id, str(store.cell_path(key)))
    onnx = (rec.get("onnx") or {}).get("kept")
    has_onnx = bool(onnx and Path(onnx).exists())
    if has_onnx:
        client.log_artifact(run.info.run_id, onnx, "onnx")
    client.set_terminated(run.info.run_id,
                          "FINISHED" if rec.get("status") == "ok" else "FAILED",
                          end_time=int(end * 1000) if _num(end) else None)
    return has_onnx or rec.get("status") != "ok"

