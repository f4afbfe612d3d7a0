"""Measuring a runtime in its own worker process.

ONNX Runtime's worker threads spin after a run and can slow PyTorch in the same process
by up to 50x (onnxruntime issue 13808; see MEASUREMENT.md), and one runtime's allocator
keeps memory another would be charged for. So each (runtime, profile) pair of a cell is
measured by a fresh ``python -m harness.measure.isolate JOB_DIR`` process:

1. the parent writes the job folder once per cell: ``model.pt`` (``torch.save`` of the
   whole trained model, loaded in the worker only if a runtime asks for ``art.model``),
   ``calibration.npy`` and ``test_images.npy``, and per job ``job.json`` naming the
   runtime's ``measure`` function by module and qualified name, the profile and settings;
2. the worker imports that function (not the whole plugin system: an ONNX Runtime worker
   never imports torch and starts in about 0.4 s), runs it and writes ``result.json``;
   arrays a runtime returns (``test_outputs``) go beside it as ``.npy`` files;
3. the parent reads the result; a worker that fails sends its traceback back, and one that
   does not answer within ``settings.worker_timeout_s`` is killed.

Records carry ``isolation: "process"``, or ``"in-process"`` with the reason when the
user turned isolation off or the runtime's ``measure`` cannot be imported by name.

A cell that trained on a GPU passes its physical id (``art.extra["cuda_visible_devices"]``):
the worker starts with ``CUDA_VISIBLE_DEVICES`` naming that GPU alone, so its runtimes
measure there (as ``cuda:0``), not on GPU 0 beside another cell's training.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..api.files import atomic_write_text
from ..api.lazy import LazyCallable
from .latency import MeasureSettings
from .lifetime import die_with_parent, worker_env
from ..api.specs import ProfileSpec


class WorkerError(RuntimeError):
    """The worker process failed; the message carries its error and traceback tail."""


def _qualified_name(fn: Callable) -> Optional[str]:
    """``module:qualname`` when ``fn`` can be imported back by that name, else None."""
    mod, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not mod or "<" in qual or mod == "__main__":
        return None
    try:
        obj = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return f"{mod}:{qual}" if obj is fn else None


def _resolve(name: str) -> Callable:
    return LazyCallable(name).resolve()


def _as_numpy(x) -> Optional[np.ndarray]:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _cell_files(art) -> dict:
    """Write the model and sample images of a cell once; reuse them for every job."""
    files = art.extra.get("isolate_files")
    if files:
        return files
    folder = Path(art.workdir) / "worker"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    if getattr(art, "model", None) is not None:
        import torch
        files["model"] = str(folder / "model.pt")
        torch.save(art.model, files["model"])
        # what unpickling it imports: a warm zygote imports these before it forks the jobs
        files["modules"] = sorted({type(m).__module__ for m in art.model.modules()}
                                  - {"__main__"})
    for key in ("calibration", "test_images"):
        arr = _as_numpy(getattr(art, key, None))
        if arr is not None:
            files[key] = str(folder / f"{key}.npy")
            np.save(files[key], arr)
    art.extra["isolate_files"] = files
    return files


@dataclass
class WorkerArtifacts:
    """What a runtime's ``measure`` sees inside the worker (duck-types ``cell.Artifacts``).

    ``model`` is loaded from ``model.pt`` on first use, so runtimes that only read the
    ONNX file never import torch. ``calibration`` and ``test_images`` are float32 numpy
    arrays in [0, 1] of shape ``(N, 3, S, S)``. ``workdir`` is this job's own folder;
    ``cell_dir`` the cell's, shared by its jobs (one per profile) for conversions that do
    not depend on the profile.
    """

    image_size: int
    workdir: Path
    cell_dir: Optional[Path] = None
    onnx_path: Optional[Path] = None
    model_path: Optional[str] = None
    calibration: Optional[np.ndarray] = None
    test_images: Optional[np.ndarray] = None
    evaluate_outputs: Optional[Callable] = None  # evaluated by the parent, not here
    extra: dict = field(default_factory=dict)
    _model: Any = None

    @property
    def model(self):
        if self._model is None and self.model_path:
            import torch
            self._model = torch.load(self.model_path, weights_only=False).eval()
        return self._model


def _write_job(folder: Path, measure_name: str, art, profile: ProfileSpec,
               settings: MeasureSettings) -> None:
    files = _cell_files(art)
    job = {"measure": measure_name, "profile": asdict(profile), "settings": asdict(settings),
           "image_size": art.image_size, "workdir": str(folder), "cell_dir": str(art.workdir),
           "onnx_path": str(art.onnx_path) if art.onnx_path else None,
           "model_path": files.get("model"), "calibration": files.get("calibration"),
           "test_images": files.get("test_images")}
    (folder / "job.json").write_text(json.dumps(job))


def _read_result(folder: Path) -> list[dict]:
    data = json.loads((folder / "result.json").read_text())
    if "error" in data:
        raise WorkerError(f"{data['error']}\n--- worker traceback ---\n"
                          f"{data.get('traceback', '')[-2000:]}")
    out = []
    for rec in data["results"]:
        for k, v in list(rec.items()):
            if isinstance(v, dict) and set(v) == {"__npy__"}:
                rec[k] = np.load(folder / v["__npy__"])
        out.append(rec)
    return out


def measure_in_worker(measure_fn: Callable, art, profile: ProfileSpec,
                      settings: MeasureSettings, label: str = "job") -> list[dict]:
    """Run ``measure_fn(art, profile, settings)`` in a fresh process; return its results.

    Each result gets ``isolation: "process"``. Falls back to this process, saying why in
    ``isolation``, only when ``settings.isolate`` is off or ``measure_fn`` cannot be
    imported by name (a lambda or a function defined inside another).

    Raises:
        WorkerError: the worker raised, crashed or timed out.
    """
    name = _qualified_name(measure_fn)
    if not settings.isolate or name is None:
        why = ("in-process (isolation turned off in [latency] isolate)" if not settings.isolate
               else "in-process (the runtime's measure function cannot be imported by name)")
        return [{**r, "isolation": why} for r in (measure_fn(art, profile, settings) or [])]
    folder = Path(art.workdir) / f"job-{label}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").unlink(missing_ok=True)
    _write_job(folder, name, art, profile, settings)
    env = worker_env()  # the worker dies with this process (harness.measure.lifetime)
    gpu = (getattr(art, "extra", None) or {}).get("cuda_visible_devices")
    if gpu is not None:  # the cell's own GPU alone, set before the worker starts CUDA
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    # The worker must import what the parent imported (plugins from tests, editable paths).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    started = time.time()
    launch = _launch(folder, env, art, settings, label)
    if not (folder / "result.json").exists():
        raise WorkerError(f"the {label} worker exited with code {launch.pop('rc')} and no result"
                          f"; its stderr ends:\n{launch.pop('log')[-2000:]}")
    rows, spent = _read_result(folder), _spent(folder, started, time.time(), label)
    spent.update((k, v) for k, v in launch.items() if k not in ("rc", "log"))
    return [{**r, "isolation": "process", "worker": spent} for r in rows]


def _launch(folder: Path, env: dict, art, settings: MeasureSettings, label: str) -> dict:
    """Run the job in ``folder`` in a new process: forked from this process's warm zygote
    (:mod:`harness.measure.zygote`; ``[latency] warm_workers``), else started from scratch
    (``python -m harness.measure.isolate``). ``{"launch", "rc", "log"}``, with
    ``launch_note`` when the zygote failed and the worker was started from scratch instead.

    Raises:
        WorkerError: the worker did not finish within ``settings.worker_timeout_s``.
    """
    timeout = (f"timeout: the {label} worker did not finish within "
               f"{settings.worker_timeout_s:.0f} s ([latency] worker_timeout_s)")
    note = None
    if settings.warm_workers:
        from .zygote import ZygoteError, zygote_for
        try:
            z = zygote_for(env, sys.path)
            z.preload([__name__, *_cell_files(art).get("modules", ())])
            res = z.run(f"{__name__}:_worker", folder, env, sys.path,
                        settings.worker_timeout_s)
        except ZygoteError as exc:
            note = f"started from scratch: the warm process failed ({exc})"
        else:
            if res["timed_out"]:
                raise WorkerError(timeout)
            return {"launch": "fork", "rc": res["rc"], "log": res["log"]}
    try:
        proc = subprocess.run([sys.executable, "-m", "harness.measure.isolate", str(folder)],
                              env=env, capture_output=True, text=True,
                              timeout=settings.worker_timeout_s)
    except subprocess.TimeoutExpired:
        raise WorkerError(timeout) from None
    out = {"launch": "spawn", "rc": proc.returncode, "log": proc.stderr}
    if note:
        out["launch_note"] = note
    return out


def _spent(folder: Path, started: float, ended: float, label: str) -> dict:
    """Where a worker's wall time went (seconds): ``start_s`` from its launch to the
    runtime's measure (interpreter, harness import), ``measure_s`` in it (the runtime's own
    imports, conversions, compilation, timing, test outputs), ``end_s`` the rest (writing
    arrays, exit, reading them back). The same for every row of one worker run."""
    out = {"job": label, "wall_s": round(ended - started, 3)}
    try:
        t = json.loads((folder / "timing.json").read_text())
        out.update(start_s=round(t["begin"] - started, 3),
                   measure_s=round(t["end"] - t["begin"], 3),
                   end_s=round(ended - t["end"], 3))
    except (OSError, ValueError, KeyError):
        pass
    return out


def _worker(folder: Path) -> int:
    job = json.loads((folder / "job.json").read_text())
    try:
        measure_fn = _resolve(job["measure"])
        # mapped, not read: the whole test set can be large (every test image is scored so
        # that an accuracy after conversion is comparable with the fp32 test metric); the
        # runtimes read it a batch at a time
        load = (lambda p: np.load(p, mmap_mode="r") if p else None)
        art = WorkerArtifacts(image_size=job["image_size"], workdir=folder,
                              cell_dir=Path(job["cell_dir"]) if job.get("cell_dir") else None,
                              onnx_path=Path(job["onnx_path"]) if job["onnx_path"] else None,
                              model_path=job["model_path"],
                              calibration=load(job["calibration"]),
                              test_images=load(job["test_images"]))
        pdict = dict(job["profile"])
        pdict["precisions"] = tuple(pdict["precisions"])
        profile = ProfileSpec(**pdict)
        known = {f.name for f in fields(MeasureSettings)}
        settings = MeasureSettings(**{k: v for k, v in job["settings"].items() if k in known})
        begin = time.time()
        results = measure_fn(art, profile, settings) or []
        atomic_write_text(folder / "timing.json", json.dumps({"begin": begin,
                                                               "end": time.time()}))
        clean = []
        for i, rec in enumerate(results):
            rec = dict(rec)
            for k, v in list(rec.items()):
                if isinstance(v, np.ndarray) or hasattr(v, "detach"):
                    fname = f"{k}-{i}.npy"
                    np.save(folder / fname, _as_numpy(v))
                    rec[k] = {"__npy__": fname}
            clean.append(rec)
        payload: dict = {"results": clean}
    except Exception as exc:  # sent back to the parent, which records it in the cell
        payload = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    atomic_write_text(folder / "result.json", json.dumps(payload, default=str))
    return 0 if "results" in payload else 1


if __name__ == "__main__":  # python -m harness.measure.isolate JOB_DIR
    if len(sys.argv) != 2 or not Path(sys.argv[1], "job.json").exists():
        sys.exit("usage: python -m harness.measure.isolate JOB_DIR (a folder holding job.json)")
    die_with_parent()  # never measure on as an orphan of a killed bench run
    from harness.measure.allocator import tune
    tune()  # the same allocator settings as the parent `bench` process
    rc = _worker(Path(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # the result is on disk; skip torch's slow interpreter teardown
