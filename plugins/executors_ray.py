"""The ``ray`` executor: every cell a Ray task, on a local or remote Ray cluster.

Each cell becomes one task of :func:`harness.run.executor.execute_job` that asks Ray for
``cpus_per_cell`` CPUs and, when the cell trains on CUDA or measures a ``gpu`` profile
(or trains on ``auto`` and the cluster has GPUs), one GPU. Ray then shows the task that
GPU alone (``CUDA_VISIBLE_DEVICES``), and a GPU task runs in a fresh worker process
(``max_calls=1`` given to ``ray.remote`` for a function of its own: Ray fixes
``max_calls`` when it exports a function, drops it from ``.options()``, and applies its
one-call default for GPU workers only to ``num_gpus`` given in ``ray.remote``), so no
process keeps the GPU, CUDA context or cached memory of an earlier cell. The driver does not resolve ``--device`` (it
may have no GPU itself): each worker resolves it and records the GPU it trained on. The task writes the cell's records straight into the run folder, so the folder
(``bench run --out``) must be on a filesystem every node mounts at the same path; a
worker that cannot see it records the cell as failed and says so. transfer-bench (and any
third-party plugin the matrix uses) must be installed on every node.

Tasks are not retried (``max_retries=0``): a worker that dies (out-of-memory kill,
segfault, ``kill -9``, a lost node) marks its cell failed with Ray's reason, and the next
``bench run`` of the same matrix runs that cell again.
"""
from __future__ import annotations

import importlib.util
import socket
from typing import Optional

from harness.api.errors import ConfigError
from harness.run.executor import Executor, execute_job, failure_record

from .executors import INSTALL_HINT, ray_available  # noqa: F401 (cheap: bench list uses them)


def _import_ray():
    ok, why = ray_available()
    if not ok:
        raise ConfigError(f"--executor ray needs Ray. {why}")
    import ray
    return ray


class RayExecutor(Executor):
    """Runs every cell as a Ray task.

    Args:
        address: the cluster to join (``ray://HOST:10001``, ``HOST:6379`` or ``auto``);
            ``None`` joins the cluster Ray is already connected to in this process, or
            starts a local one.
        jobs: CPUs of the local cluster started when ``address`` is ``None``.
        cpus_per_cell: CPUs each cell's task asks for.
        threads: torch threads inside each task (default: ``cpus_per_cell``).
        cell_timeout: not supported by this executor (Ray queues tasks, so the driver
            cannot tell when a cell started); use the ``processes`` executor for it.
    """

    name = "ray"
    remote = True  # cells run on the cluster's nodes: the driver does not resolve --device
    halves = True  # --halving: Ray Tune's ASHA scheduler (plugins/ray_asha.py)
    halving = None  # the matrix's [tune] settings when it halves, set by the run

    def __init__(self, address: Optional[str] = None, jobs: Optional[int] = None,
                 cpus_per_cell: float = 1, threads: Optional[int] = None,
                 cell_timeout: Optional[float] = None):
        self.ray = _import_ray()
        if cell_timeout is not None:
            raise ConfigError("the ray executor has no per-cell timeout; use --executor "
                              "processes for --cell-timeout")
        if jobs is not None and address is not None:
            raise ConfigError("--jobs sizes a local Ray cluster; with --address the cluster's "
                              "own resources decide how many cells run at once")
        if cpus_per_cell <= 0:
            raise ConfigError(f"cpus_per_cell must be > 0, got {cpus_per_cell}")
        self.address, self.jobs = address, jobs
        self.cpus_per_cell = cpus_per_cell
        self.threads = threads or max(1, int(cpus_per_cell))

    def check_halving(self) -> None:
        """``--halving`` runs through Ray Tune (ray's ``tune`` extra): say so before any cell
        runs when it cannot be imported."""
        try:
            from ray.tune.schedulers import ASHAScheduler  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"--halving on the ray executor runs Ray Tune's ASHA scheduler, "
                              f"which cannot be imported here ({exc}); install it with: "
                              f"{INSTALL_HINT} (it includes ray[tune])") from None

    def run(self, jobs, run_one, on_done):
        ray = self.ray
        _check_reachable(self.address)  # even when this process is connected to some Ray
        started_here = not ray.is_initialized()
        if started_here:
            kw = {"include_dashboard": False, "log_to_driver": False}
            if self.jobs is not None:
                kw["num_cpus"] = self.jobs
            try:
                ray.init(address=self.address, **kw)
            except Exception as exc:  # noqa: BLE001 - any failure to join is the user's fix
                where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray"
                raise ConfigError(
                    f"could not start or join {where}: {type(exc).__name__}: {_first(exc)}. "
                    "Give ray://HOST:10001 (Ray Client: pip install 'ray[client]', included in "
                    f"{INSTALL_HINT}), HOST:6379 or auto on a cluster node, or leave --address "
                    "out to start Ray on this machine") from exc
        if self.halving is not None:
            try:
                from .ray_asha import run_halving
                run_halving(ray, list(jobs), on_done, self.halving, self.threads,
                            self.cpus_per_cell, gpus_for)
            finally:
                if started_here:
                    ray.shutdown()
            return
        # max_calls is fixed when Ray exports a remote function: .options() drops it (and
        # num_gpus given there leaves it unlimited), so GPU cells get a function of their own
        cpu_task = ray.remote(max_retries=0)(execute_job)
        gpu_task = ray.remote(max_retries=0, num_gpus=1, max_calls=1)(execute_job)
        cluster_gpus = float((ray.cluster_resources() or {}).get("GPU", 0))
        refs = {}
        try:
            for job in jobs:
                gpus = gpus_for(job, cluster_gpus)
                task = gpu_task if gpus else cpu_task
                ref = task.options(num_cpus=self.cpus_per_cell, num_gpus=gpus,
                                   name=f"cell-{job.key}").remote(job, self.threads, None,
                                                                  bool(gpus))
                refs[ref] = job
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    on_done(self._result(ref, refs.pop(ref)))
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()

    def _result(self, ref, job) -> dict:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.OutOfMemoryError as exc:
            return failure_record(job, "oom", f"Ray killed the worker for memory: {_first(exc)}")
        except ray.exceptions.RayError as exc:
            return failure_record(job, "failed",
                                  f"Ray worker died: {type(exc).__name__}: {_first(exc)}")


def gpus_for(job, cluster_gpus: float) -> int:
    """GPUs a cell's task asks for: 1 when it trains on CUDA or measures a ``gpu`` profile
    (``job.needs_gpu``), or trains on ``auto`` on a cluster that has GPUs; else 0."""
    device = str(job.cfg.train.get("device", "cpu"))
    return 1 if job.needs_gpu or (device == "auto" and cluster_gpus > 0) else 0


def _check_reachable(address: Optional[str], timeout_s: float = 5.0) -> None:
    """Fail within seconds when a ``HOST:PORT`` or ``ray://HOST:PORT`` address does not
    answer: Ray itself keeps retrying an unreachable GCS for minutes."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected ray://HOST:PORT, HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(
            f"--address {address!r}: nothing answers at {host}:{port} within {timeout_s:g} s "
            f"({exc}). Start the cluster (ray start --head) or fix the address; leave "
            "--address out to start Ray on this machine") from exc


def _first(exc: Exception, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text[:limit]


__all__ = ["RayExecutor", "ray_available", "gpus_for", "INSTALL_HINT"]
