"""The results store: one folder per run, one JSON file per cell, written atomically.

Layout of a run folder::

    RUN/
      config.json        the resolved matrix
      environment.json   package versions, CPU, threads, GPU
      cells/KEY.json     one record per cell (status, metrics, curves, latency, error)
      results.json       every cell record, aggregated (rewritten after each cell)
      results.csv        one row per cell x runtime x profile x precision

Every file is written to a temporary file and ``os.replace``d, so a killed process
leaves either the old file or the new one, never half of one. Cells are keyed by a
hash of their configuration and the versions; a cell whose file says ``ok`` is not
run again.

Several ``bench run`` processes may share one run folder (a second terminal, a resumed
run while the first still goes, Ray and process workers). Three rules keep it consistent:

* **claims** - a run claims a cell (an exclusive ``flock`` on ``claims/KEY.lock``, held
  for as long as the cell runs and released by the kernel if the holder dies) before it
  runs it, so no cell runs twice at once; a run that finds a cell claimed waits for it;
* **write rule** - under the folder's write lock, a cell record is only replaced by a
  newer *finished* one: ``running`` never replaces a finished record, and an ``ok``
  record is never replaced (``--fresh`` starts a new folder instead) unless it lists
  ``failed_measurements`` (then the next run measures the cell again);
* **one source** - ``results.json`` / ``results.csv`` are rebuilt from ``cells/`` under the
  same lock, and a ``running`` record whose claim nobody holds (its run was killed) is
  rewritten as ``interrupted`` first, so the files never disagree and a report never shows
  a dead run's cell as running.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

from ..api.files import atomic_write_text
from ..measure.env import cpu_slug

from .locks import LockTimeout, cache_lock


def _clean(obj: Any) -> Any:
    """JSON cannot hold NaN/inf: store them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def atomic_write_json(path: Path, data: Any) -> None:
    """``data`` as the run store's JSON (sorted keys, NaN as null), written atomically."""
    atomic_write_text(path, json.dumps(_clean(data), indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def new_run_dir(root: Path, name: str = "run") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{name}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    path.mkdir(parents=True)
    return path


# -- flattening a cell record into table rows -----------------------------------------------
ROW_FIELDS = [
    "status", "backbone", "device_class", "task", "dataset", "synthetic", "strategy", "weights",
    "pretrained", "tuning_trials", "tuned_params", "seed", "metric", "test_metric", "best_val_metric", "start_metric",
    "start_is_chance",
    "train_s", "budget", "epochs", "steps", "images", "train_flops", "params",
    "trainable_params", "gmacs", "runtime", "profile", "precision",
    "batch_size", "threads", "p50_ms", "p90_ms", "mean_ms", "cv", "throughput_per_s",
    "latency_noisy", "latency_noise", "metric_after", "evaluated_on", "test_images",
    "latency_note", "error", "key",
]


def _curve_summary(rec: dict) -> dict:
    """The cell's own validation curve: first and best value (run folders written before
    0.1.0's rename stored them as ``benefits.start``/``benefits.asymptote``)."""
    if rec.get("curve_summary"):
        return rec["curve_summary"]
    old = rec.get("benefits") or {}
    return {"start": old.get("start"), "best": old.get("asymptote")}


def cell_rows(rec: dict) -> list[dict]:
    """One row per runtime x profile x precision measurement of a cell (at least one row)."""
    cfg = rec.get("config", {})
    curve = _curve_summary(rec)
    base = {
        "status": rec.get("status"), "key": rec.get("key"),
        "backbone": cfg.get("backbone"), "task": cfg.get("task"), "dataset": cfg.get("dataset"),
        "strategy": cfg.get("strategy"), "seed": cfg.get("seed"),
        # --tune N: the trials this cell's strategy had (the same N for every cell) and the
        # configuration its test metric comes from; 0 and empty for an untuned cell
        "tuning_trials": len((rec.get("tuning") or {}).get("trials") or []),
        "tuned_params": json.dumps(((rec.get("tuning") or {}).get("best") or {}).get("params")
                                   or {}, sort_keys=True) if rec.get("tuning") else "",
        "device_class": rec.get("backbone_facts", {}).get("device_class"),
        "weights": rec.get("weights", {}).get("description"),
        "pretrained": rec.get("weights", {}).get("pretrained"),
        "synthetic": rec.get("data", {}).get("synthetic"),
        "metric": rec.get("metric_name"),
        "test_metric": rec.get("test_metrics", {}).get(rec.get("metric_name", ""), None),
        "best_val_metric": curve.get("best"),
        "start_metric": curve.get("start"),
        # a new head starts at chance by construction (records that predate the flag all did)
        "start_is_chance": (curve.get("start_is_chance", True)
                            if curve.get("start") is not None else None),
        "train_s": rec.get("train_seconds"),
        **{k: (rec.get("budget") or {}).get(k)
           for k in ("epochs", "steps", "images", "train_flops")},
        "budget": (rec.get("budget") or {}).get("unit"),
        "params": rec.get("backbone_facts", {}).get("params_total"),
        "trainable_params": rec.get("trainable_params"),
        "gmacs": rec.get("backbone_facts", {}).get("gmacs"),
        # the fp32 test metric's images; a row's metric_after is comparable with it only
        # when its evaluated_on is the same number (harness.report.scoring)
        "test_images": ((rec.get("data") or {}).get("sizes") or {}).get("test"),
        "error": rec.get("error"),
    }
    rows = []
    for lat in rec.get("latency", []):
        row = dict(base)
        row.update({k: lat.get(k) for k in ("runtime", "profile", "precision", "batch_size",
                                            "threads")})
        stats = lat.get("stats") or {}
        row.update({k: stats.get(k) for k in ("p50_ms", "p90_ms", "mean_ms", "cv",
                                              "throughput_per_s")})
        noise = stats.get("noise") or {}  # harness.measure.latency.stability; absent: older
        row["latency_noisy"] = noise.get("noisy")
        row["latency_noise"] = "; ".join(noise.get("reasons") or []) or None
        row["metric_after"] = lat.get("accuracy_after")
        row["evaluated_on"] = lat.get("evaluated_on")
        row["latency_note"] = lat.get("unavailable") or lat.get("error") or lat.get("note")
        rows.append(row)
    return rows or [base]


#: statuses of a cell that is done (a record with one of them is not replaced by ``running``)
FINISHED = ("ok", "failed", "oom", "timeout", "interrupted", "stopped (halving)")

INTERRUPTED = ("the bench run that ran this cell stopped before the cell finished (killed, "
               "or its machine went down); run the same command again to run it")


class CellClaim:
    """A held claim on one cell (see the module docstring); release it when the cell's
    final record is written. Releasing twice is harmless."""

    def __init__(self, key: str, stack: contextlib.ExitStack):
        self.key, self._stack = key, stack

    def release(self) -> None:
        self._stack.close()


class RunStore:
    """Reads and writes one run folder (several processes may share it; see above); what a
    reporter plugin receives.

    Attributes:
        path: the run folder (``config.json``, ``environment.json``, ``cells/KEY.json``,
            ``results.json``, ``results.csv``).
        cells_dir: ``path / "cells"``.

    Reading a run: :meth:`records` gives the cell records (dicts) in matrix order. Every
    record has ``key``, ``status`` (``"ok"``, ``"failed"``, ``"oom"``, ``"running"``, or
    ``"corrupt"`` for an unreadable file) and ``config`` (the cell's ``backbone``,
    ``task``, ``dataset``, ``strategy``, ``weights``, ``seed``, ``image_size``, ``train``,
    ``runtimes``, ``profiles``, ``latency``); a failed one has ``error`` (and
    ``traceback``); a finished one has ``metric_name``, ``higher_is_better``,
    ``test_metrics``, ``test_loss``, ``history`` (per-epoch curves and phases),
    ``weights``, ``data``, ``backbone_facts``, ``trainable_params`` (parameters training
    changed), ``train_seconds``, ``curve_summary``, ``contracts`` (what the cell checked its
    plugins against, :mod:`harness.run.contracts`) and ``latency`` (one dict per runtime x
    profile x precision with ``stats``, or ``unavailable``/``error``; a measured one has
    ``outputs_check``, its outputs on the test images against PyTorch's, and
    ``disagrees`` when they differ). An ok record may list ``failed_measurements``
    (rows that raised or disagree): the next run measures that cell again.
    :func:`cell_rows` flattens a record into table rows; :meth:`config` and
    :meth:`environment` give the matrix and the machine.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.cells_dir = self.path / "cells"
        self.claims_dir = self.path / "claims"
        self._holding = 0

    @classmethod
    def create(cls, root: Path, name: str, config: dict, environment: dict) -> "RunStore":
        store = cls(new_run_dir(root, name))
        store.write_meta(config, environment)
        return store

    def write_meta(self, config: dict, environment: dict) -> None:
        atomic_write_json(self.path / "config.json", config)
        atomic_write_json(self.path / "environment.json", environment)

    def note_load_at_end(self) -> None:
        """Add the load average at the end of the run to ``environment.json``."""
        from ..measure.latency import load_average
        env = self.environment()
        env.setdefault("load_average", {})["at_end"] = load_average()
        atomic_write_json(self.path / "environment.json", env)

    def cell_path(self, key: str) -> Path:
        return self.cells_dir / f"{key}.json"

    # -- locks ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write_lock(self):
        """The folder's short write lock: every change to cells/ and results.* holds it
        (re-entrant within this store object: a second ``flock`` would wait on itself)."""
        if self._holding:
            self._holding += 1
            try:
                yield
            finally:
                self._holding -= 1
            return
        with cache_lock(self.path / ".write"):
            self._holding = 1
            try:
                yield
            finally:
                self._holding = 0

    def claim(self, key: str, wait: bool = False) -> Optional[CellClaim]:
        """Claim cell ``key`` for this process; None when another process holds it and
        ``wait`` is False. With ``wait`` it blocks until the holder finishes or dies."""
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(cache_lock(self.claims_dir / key, timeout=None if wait else 0))
        except LockTimeout:
            stack.close()
            return None
        return CellClaim(key, stack)

    def claimed(self, key: str) -> Optional[bool]:
        """Whether some process (this one included) holds the claim on ``key``; None when
        the folder is not writable, so nobody can tell."""
        try:
            c = self.claim(key)
        except OSError:
            return None
        if c is None:
            return True
        c.release()
        return False

    # -- cell records -----------------------------------------------------------------------
    def _read_cell(self, key: str) -> Optional[dict]:
        try:
            return read_json(self.cell_path(key))
        except (OSError, json.JSONDecodeError):
            return None

    def finished(self, key: str) -> Optional[dict]:
        """The cell's record if it finished ok (or was stopped by ``--halving``), else None:
        failed cells run again, and so
        do ok cells with failed measurements (``failed_measurements``: a runtime that
        raised or whose outputs disagreed with PyTorch's), so a fixed plugin is measured
        again without ``--fresh``."""
        rec = self._read_cell(key)
        return rec if _complete(rec) else None

    def write_cell(self, rec: dict) -> bool:
        """Write a cell's record under the write rule; False when the rule kept the old one.

        A ``running`` record never replaces a finished one, nothing replaces ``ok``, and a
        finished record replaces another finished one only when it finished later.
        """
        with self._write_lock():
            old = self._read_cell(rec["key"])
            if not _may_replace(old, rec):
                return False
            atomic_write_json(self.cell_path(rec["key"]), rec)
            return True

    def _settle_stale(self, rec: dict) -> dict:
        """``rec`` itself, or the ``interrupted`` record that replaces a dead run's
        ``running`` one (written to cells/ when the folder is writable)."""
        if rec.get("status") != "running" or not rec.get("key"):
            return rec
        try:
            claim = self.claim(rec["key"])
        except OSError:  # read-only folder: nobody can claim or settle it; show it as it is
            return rec
        if claim is None:  # really running, in some process
            return rec
        try:
            now = self._read_cell(rec["key"])  # re-read while holding the claim
            if now is None or now.get("status") != "running":
                return now or rec
            settled = {**now, "status": "interrupted", "error": INTERRUPTED,
                       "finished": time.time()}
            try:
                with self._write_lock():
                    atomic_write_json(self.cell_path(rec["key"]), settled)
            except OSError:
                pass  # shown as interrupted anyway; a writable run settles it for good
            return settled
        finally:
            claim.release()

    def records(self) -> list[dict]:
        """Every cell record of the run, in the matrix's order (see the class docstring)."""
        out = []
        for p in sorted(self.cells_dir.glob("*.json")):
            try:
                rec = read_json(p)
            except (OSError, json.JSONDecodeError) as exc:
                rec = {"key": p.stem, "status": "corrupt", "error": f"{p}: {exc}"}
            out.append(self._settle_stale(rec) if isinstance(rec, dict) else
                       {"key": p.stem, "status": "corrupt", "error": f"{p}: not a record"})
        order = {k: i for i, k in enumerate(self.order())}
        out.sort(key=lambda r: order.get(r.get("key"), len(order)))
        return out

    def order(self) -> list[str]:
        try:
            return read_json(self.path / "config.json").get("cell_keys", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            return []

    def config(self) -> dict:
        return read_json(self.path / "config.json")

    def environment(self) -> dict:
        return read_json(self.path / "environment.json")

    def aggregate(self) -> list[dict]:
        """Rewrite results.json and results.csv from the cell files; return the rows.

        Held under the write lock, so the last aggregation always reads the newest cells and
        two processes never interleave an old view over a new one.
        """
        with self._write_lock():
            recs = self.records()
            rows = [r for rec in recs for r in cell_rows(rec)]
            atomic_write_json(self.path / "results.json", recs)
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(r)
            atomic_write_text(self.path / "results.csv", buf.getvalue())
        return rows


def _complete(rec: Optional[dict]) -> bool:
    """An ok record with no failed measurement, or a cell successive halving stopped
    (``--halving``: the decision stands): never run again, never replaced."""
    if rec and rec.get("status") == "stopped (halving)":
        return True
    return bool(rec) and rec.get("status") == "ok" and not rec.get("failed_measurements")


def _may_replace(old: Optional[dict], new: dict) -> bool:
    """The write rule of :meth:`RunStore.write_cell`."""
    if old is None or old.get("status") not in FINISHED:
        return True  # absent, corrupt, or running
    if _complete(old) or new.get("status") not in FINISHED:
        return False
    return float(new.get("finished") or 0) >= float(old.get("finished") or 0)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in str(text)).strip("_")


def condition_stem(config: dict, env: dict) -> str:
    """A file name stem that states a run's conditions, in the style of timm's results/
    (``default-fashion_mnist-64px-cpu2-amd_epyc-torch2.14.1-ort1.32.0``)."""
    m = config.get("matrix", config)
    v = env.get("versions", {})
    gpu = env.get("gpu") or {}
    device = (_slug(gpu.get("name", "gpu")).lower() if gpu.get("cuda")
              else f"cpu{env.get('affinity') or env.get('cpu_count')}-{cpu_slug(env.get('cpu', ''))}")
    parts = [m.get("name", "run"), "+".join(_slug(d) for d in m.get("datasets", [])),
             f"{m.get('image_size')}px", device, f"torch{v.get('torch', '?')}",
             f"ort{v.get('onnxruntime', 'none')}"]
    if m.get("seeds", 1) > 1:
        parts.append(f"{m['seeds']}seeds")
    return "-".join(p for p in parts if p)


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a run of ``bench run``: its ``config.json`` (written when the
    run starts, with the matrix) or at least one cell record in ``cells/``. Commands that
    write into a run (``bench report`` rebuilds results.json) check this first, so that a
    folder that is not a run is never written to."""
    path = Path(path)
    try:
        if isinstance(read_json(path / "config.json").get("matrix"), dict):
            return True
    except (OSError, ValueError, AttributeError):
        pass
    for p in (path / "cells").glob("*.json") if (path / "cells").is_dir() else ():
        try:
            rec = read_json(p)
        except (OSError, ValueError):
            return True  # a corrupt record is still a run's (bench report shows it)
        if isinstance(rec, dict) and "key" in rec and "status" in rec:
            return True
    return False
