"""Executors run the cells of a matrix; the in-process one is the default.

An executor receives the cells still to run (:class:`CellJob`, plain picklable data), a
function that runs one cell in this process and returns its record, and ``on_done``; it
calls ``on_done(record)`` exactly once for every job, in any order, failed cells included.

Executors that run a cell elsewhere (another process, a Ray worker) call
:func:`execute_job` there: it rebuilds the plugin system from the job's
:class:`PluginRecipe`, writes the cell's ``running`` record into the run folder, runs the
cell and writes the final record. When the worker dies instead (a segfault, the
out-of-memory killer, ``kill -9``) the executor builds the record with
:func:`failure_record` and the reason (:func:`describe_exit`), so the cell shows as failed
and the next run of the same matrix runs it again.
"""
from __future__ import annotations

import importlib
import os
import pickle
import signal
import socket
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from .config import CellConfig


class Executor:
    """Base class. ``run`` must call ``on_done`` once per job, failed cells included.

    ``remote``: cells may run on other machines (a cluster), so the driver does not resolve
    ``--device``/``--amp`` against its own hardware: it checks their spelling and each
    worker resolves them where the cell runs (:func:`execute_job`)."""

    name = "executor"
    remote = False

    def run(self, jobs: Iterable["CellJob"], run_one: Callable, on_done: Callable
            ) -> None:  # pragma: no cover
        raise NotImplementedError


class InProcessExecutor(Executor):
    """Runs cells one after the other in this process."""

    name = "inprocess"

    def __init__(self, jobs: Optional[int] = None, **options):
        if jobs not in (None, 1):
            options["jobs"] = jobs
        if options:
            raise TypeError(f"the in-process executor takes no options {sorted(options)}; "
                            f"use --executor processes for --jobs or a timeout")

    def run(self, jobs, run_one, on_done):
        for job in jobs:
            on_done(run_one(job))


# -- what travels to a worker ----------------------------------------------------------------
@dataclass(frozen=True)
class PluginRecipe:
    """How a worker rebuilds the driver's plugin system.

    The worker calls the same constructor as :func:`harness.api.manager.get_plugins` (built-ins,
    entry points, ``TRANSFER_BENCH_DISABLE_PLUGINS``), leaves out the plugins disabled in the
    driver, then registers the plugins the driver registered at run time (a module by its
    import name, any other object by pickle).

    Attributes:
        disabled: plugin names disabled in the driver.
        extras: ``(name, "module" | "pickle", module name | pickled bytes)`` per plugin the
            driver registered beyond the built-ins and entry points.
        sys_path: folders to put on ``sys.path`` so the extras import in the worker.
    """

    disabled: tuple = ()
    extras: tuple = ()
    sys_path: tuple = ()


def recipe_for(plugins) -> PluginRecipe:
    """The :class:`PluginRecipe` of a :class:`harness.api.manager.PluginSystem`."""
    from ..api.manager import BUILTIN_PLUGINS

    extras, paths = [], []
    for name, plugin in plugins.pm.list_name_plugin():
        info = plugins.infos.get(name)
        if name in BUILTIN_PLUGINS or plugin is None or (info and info.error):
            continue
        if isinstance(plugin, types.ModuleType):
            modname = plugin.__name__
            extras.append((name, "module", modname))
        else:
            try:
                extras.append((name, "pickle", pickle.dumps(plugin)))
            except Exception:  # unpicklable objects stay behind; the worker says what is missing
                continue
            modname = getattr(plugin, "__module__", None) or type(plugin).__module__
        root = _import_root(modname)
        if root and root not in paths:
            paths.append(root)
    return PluginRecipe(disabled=tuple(sorted(getattr(plugins, "_disabled", ()))),
                        extras=tuple(extras), sys_path=tuple(paths))


def _import_root(modname: str) -> Optional[str]:
    """The folder that must be on ``sys.path`` for ``import modname`` to work."""
    mod = sys.modules.get(modname)
    f = getattr(mod, "__file__", None)
    if not f or modname == "__main__":
        return None
    p = Path(f).resolve()
    depth = modname.count(".") + (1 if p.name == "__init__.py" else 0)
    return str(p.parents[depth])


_BUILT: dict = {}


def build_plugins(recipe: PluginRecipe):
    """The plugin system a worker uses for jobs with this recipe (built once per process)."""
    from ..api.manager import PluginSystem, set_plugins

    if recipe not in _BUILT:
        for p in reversed(recipe.sys_path):
            if p not in sys.path:
                sys.path.insert(0, p)
        system = PluginSystem(disable=recipe.disabled)
        for name, kind, payload in recipe.extras:
            if name in system.infos:
                continue
            obj = importlib.import_module(payload) if kind == "module" else pickle.loads(payload)
            system.register(obj, name=name, origin="shipped from the driver")
        system.rebuild()
        _BUILT.clear()
        _BUILT[recipe] = system
    set_plugins(_BUILT[recipe])
    return _BUILT[recipe]


@dataclass
class CellJob:
    """One cell to run, as plain data that pickles (for worker processes and Ray).

    Attributes:
        cfg: the cell's configuration.
        key: its key in the results store.
        run_dir: the run folder; workers write the cell's records there, so it must be
            on a filesystem every worker sees.
        custom_profiles: profiles defined in the matrix file.
        recipe: how a worker rebuilds the plugin system.
        needs_gpu: whether the cell trains or measures on a GPU (Ray asks for one).
        keep_onnx: keep the cell's ONNX file as ``RUN/onnx/KEY.onnx`` (``--keep-onnx``).
    """

    cfg: CellConfig
    key: str
    run_dir: str
    custom_profiles: dict = field(default_factory=dict)
    recipe: PluginRecipe = field(default_factory=PluginRecipe)
    needs_gpu: bool = False
    keep_onnx: bool = False

    def label(self) -> str:
        return self.cfg.label()


def cell_needs_gpu(cfg: CellConfig, profiles: list) -> bool:
    """Whether a cell needs a GPU: it trains on CUDA or measures a ``gpu`` profile."""
    device = str(cfg.train.get("device", "cpu"))
    return device.startswith("cuda") or any(getattr(p, "device", "cpu") == "gpu"
                                            for p in profiles)


def failure_record(job: CellJob, status: str, reason: str, **extra) -> dict:
    """The record of a cell whose worker never returned one (died, timed out, lost)."""
    return {"key": job.key, "config": job.cfg.to_dict(), "status": status, "error": reason,
            "finished": time.time(), **extra}


def describe_exit(exitcode: Optional[int]) -> str:
    """A worker process's exit status in words (``killed by signal SIGKILL (9)``)."""
    if exitcode is None:
        return "worker process still running"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode).name
        except ValueError:
            sig = "unknown signal"
        why = f"worker process killed by signal {sig} ({-exitcode}) before returning its record"
        if -exitcode == signal.SIGKILL:
            why += " (SIGKILL: the kernel's out-of-memory killer or a kill -9)"
        elif -exitcode == signal.SIGSEGV:
            why += " (segmentation fault in native code)"
        return why
    return f"worker process exited with code {exitcode} before returning its record"


def worker_info(threads: Optional[int] = None) -> dict:
    import torch
    return {"host": socket.gethostname(), "pid": os.getpid(), "torch_threads":
            threads or torch.get_num_threads()}


def gpu_count() -> int:
    """CUDA devices PyTorch sees in this process (0 without CUDA)."""
    import torch
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver: no GPU to hand out
        return 0


class GpuSlots:
    """One running GPU cell per GPU: each worker gets a GPU of its own, shown to it alone
    through ``CUDA_VISIBLE_DEVICES`` (:meth:`env_value`), so its training, its latency
    subprocesses and any library it loads see that one device, as ``cuda:0``.

    A job wants a GPU when it trains on ``cuda``/``cuda:N`` or measures a ``gpu`` profile
    (``CellJob.needs_gpu``); ``cuda:N`` waits for GPU N, the others take the least recently
    freed one. :meth:`take` returns None while every GPU it may use is busy: the executor
    then holds the job, so GPU cells never outnumber the GPUs whatever ``--jobs`` says.

    Args:
        count: GPUs this process sees.
        visible: this process's own ``CUDA_VISIBLE_DEVICES`` (default: from the
            environment), so a worker's value names the same physical GPU.
    """

    def __init__(self, count: int, visible: Optional[str] = None):
        self.count = int(count)
        self.busy = [False] * self.count
        if visible is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v.strip() for v in visible.split(",")] if visible else []
        self.ids = ids[:self.count] if len(ids) >= self.count else [str(i) for i in
                                                                    range(self.count)]

    def needs(self, job: "CellJob") -> bool:
        """Whether ``job`` must hold a GPU of this machine while it runs."""
        device = str(job.cfg.train.get("device", "cpu"))
        return self.count > 0 and (job.needs_gpu or device.startswith("cuda"))

    def take(self, job: "CellJob") -> Optional[int]:
        """A free GPU for ``job`` (marked busy), or None while none it may use is free."""
        device = str(job.cfg.train.get("device", "cpu"))
        if device.startswith("cuda:") and device[5:].isdigit():
            wanted = [int(device[5:])] if int(device[5:]) < self.count else []
        else:
            wanted = list(range(self.count))
        for gpu in wanted:
            if not self.busy[gpu]:
                self.busy[gpu] = True
                return gpu
        return None

    def give_back(self, gpu: Optional[int]) -> None:
        if gpu is not None:
            self.busy[gpu] = False

    def env_value(self, gpu: int) -> str:
        """The worker's ``CUDA_VISIBLE_DEVICES``: the physical id of GPU ``gpu``."""
        return self.ids[gpu]


def execute_job(job: CellJob, threads: Optional[int] = None, gpu: Optional[int] = None,
                one_gpu: Optional[bool] = None, halving=None) -> dict:
    """Run one cell in a worker and write its records into the run folder.

    Args:
        job: the cell.
        threads: torch intra-op threads for this worker (``None`` keeps torch's default).
        gpu: the GPU the executor gave this worker (:class:`GpuSlots`, recorded), which it
            made the only visible one (``CUDA_VISIBLE_DEVICES``, set before CUDA started).
        one_gpu: the executor made exactly one GPU visible to this worker (default: when
            ``gpu`` is given; Ray's GPU tasks pass True): a cell asked for ``cuda:N`` runs
            on it as ``cuda``, and the record keeps what was asked.
        halving: the cell's side of the matrix's successive halving, handed to
            :func:`harness.run.cell.run_cell` (``--halving`` on Ray: Ray Tune's ASHA,
            ``plugins/ray_asha.py``).

    The device is resolved here, where the cell runs (``auto`` becomes what this worker
    sees), and recorded with this worker's GPU name in the cell's ``hardware``.

    Returns:
        The cell's final record (also written to ``RUN/cells/KEY.json``; the driver's
        ``on_done`` writes it again, so a worker that cannot write loses nothing).
    """
    import dataclasses

    import torch

    from ..measure.allocator import tune
    from .cell import run_cell
    from .results import RunStore

    tune()  # workers allocate like the in-process run (harness/measure/allocator.py)

    if threads:
        torch.set_num_threads(int(threads))
    info = worker_info()
    one_gpu = (gpu is not None) if one_gpu is None else one_gpu
    if gpu is not None:
        info["gpu"] = int(gpu)
    if one_gpu:
        info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not Path(job.run_dir, "config.json").exists():
        return failure_record(job, "failed", (
            f"the run folder {job.run_dir} is not visible on worker host {info['host']}; put "
            f"--out on a filesystem every worker mounts at the same path (NFS, Lustre...)"),
            worker=info)
    cfg = job.cfg
    asked = str(cfg.train.get("device", ""))
    if one_gpu and asked.startswith("cuda:"):  # the one GPU this worker sees is its cuda:0
        cfg = dataclasses.replace(cfg, train={**cfg.train, "device": "cuda"})
    store = RunStore(Path(job.run_dir))
    try:
        plugins = build_plugins(job.recipe)
        store.write_cell({"key": job.key, "config": job.cfg.to_dict(), "status": "running",
                          "started": time.time(), "worker": info})
        rec = run_cell(plugins, cfg, job.key, custom_profiles=job.custom_profiles,
                       onnx_dir=Path(job.run_dir) / "onnx" if job.keep_onnx else None,
                       halving=halving)
        if cfg is not job.cfg:
            rec["config"] = job.cfg.to_dict()
            rec.setdefault("hardware", {})["asked_device"] = asked
    except Exception as exc:  # the worker's own set-up failed; record it like a cell failure
        rec = failure_record(job, "failed", f"worker set-up: {type(exc).__name__}: {exc}",
                             traceback=traceback.format_exc())
    rec["worker"] = info
    try:
        store.write_cell(rec)
    except OSError:  # the driver writes it too, retrying, and stops the run naming the path
        pass
    return rec


__all__ = ["Executor", "InProcessExecutor", "CellJob", "PluginRecipe", "recipe_for",
           "build_plugins", "execute_job", "failure_record", "describe_exit", "cell_needs_gpu",
           "GpuSlots", "gpu_count"]
