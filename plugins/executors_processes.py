"""The ``processes`` executor: every cell in its own fresh worker process (``--jobs N``).

Each cell runs in a process started with ``spawn`` (no state inherited from the driver, no
fork of a process that holds threads), up to ``jobs`` at a time. A cell that crashes its
process (segfault, out-of-memory kill, ``kill -9``) is recorded as failed with the exit
code or signal, and the other cells go on. With ``cell_timeout`` a cell that runs longer
is killed and recorded with status ``timeout``.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Optional

from harness.measure.lifetime import children_die_with_me, die_with_parent, exit_on_signals
from harness.run.executor import (CellJob, Executor, GpuSlots, describe_exit, execute_job,
                                  failure_record, gpu_count)


def _child(job: CellJob, conn, threads: Optional[int], driver_pid: int,
           gpu: Optional[int] = None, visible: Optional[str] = None) -> None:
    """A cell worker's whole life. It always ends with ``os._exit``: once the record is sent
    (or a signal ended the cell and its ``finally`` blocks removed what it made) nothing is
    left to do, and the interpreter's own teardown (torch, ONNX Runtime, OpenVINO unloading,
    multiprocessing's exit hooks) took seconds under load: a worker told to stop by SIGTERM
    (the driver's death signal) was seen alive 15 s later in the kill -9 soak."""
    if visible is not None:
        # the driver started this process with it already (spawn_with_env); set it again in
        # case a start method did not pass the environment: CUDA reads it once, at init
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    exit_on_signals()  # SIGTERM from the driver or the death signal: clean up, then go
    die_with_parent(driver_pid)  # a kill -9 of the driver takes its workers with it
    code = 0
    try:
        rec = execute_job(job, threads, gpu)
    except (SystemExit, KeyboardInterrupt) as exc:  # told to stop: nobody waits for a record
        rec, code = None, exc.code if isinstance(exc, SystemExit) else 128 + 2
    except BaseException as exc:  # noqa: BLE001 - report anything rather than die silently
        rec = failure_record(job, "failed", f"worker: {type(exc).__name__}: {exc}")
    try:
        if rec is not None:
            conn.send(rec)
        conn.close()
    except OSError:  # the driver is gone (its end of the pipe closed)
        code = code or 1
    finally:
        _leave(code)


def _leave(code) -> None:
    """Flush and end the process now (``os._exit``: no interpreter teardown)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code if isinstance(code, int) else 1)


@dataclass
class _Running:
    proc: mp.Process
    conn: object
    job: CellJob
    started: float
    gpu: Optional[int] = None


class ProcessExecutor(Executor):
    """Runs each cell in its own spawned process, ``jobs`` at a time.

    On a machine with GPUs, a cell that trains on CUDA or measures a ``gpu`` profile holds
    one GPU while it runs (:class:`harness.run.executor.GpuSlots`): its process starts with
    ``CUDA_VISIBLE_DEVICES`` naming that GPU alone (so its latency subprocesses see it too),
    and GPU cells wait for a free GPU, so no more of them run at once than there are GPUs.

    Args:
        jobs: cells run at once (default: the CPU count).
        threads: torch threads per worker (default: CPUs / jobs, at least 1), so ``jobs``
            workers do not oversubscribe the cores.
        cell_timeout: seconds after which a cell's process is killed and the cell recorded
            with status ``timeout`` (default: no limit).
    """

    name = "processes"

    def __init__(self, jobs: Optional[int] = None, threads: Optional[int] = None,
                 cell_timeout: Optional[float] = None):
        cpus = os.cpu_count() or 1
        self.jobs = int(jobs or cpus)
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.threads = int(threads) if threads else max(1, cpus // self.jobs)
        if cell_timeout is not None and cell_timeout <= 0:
            raise ValueError(f"cell_timeout must be > 0 seconds, got {cell_timeout}")
        self.cell_timeout = cell_timeout

    def run(self, jobs, run_one, on_done):
        ctx = mp.get_context("spawn")
        pending = iter(jobs)  # drawn one at a time: the driver claims a cell as it starts it
        more = True
        running: list[_Running] = []
        slots = GpuSlots(gpu_count())  # one GPU cell per GPU, shown to it alone
        held = None  # a GPU cell waiting for a free GPU (the cells after it wait too)
        try:
            while more or running or held:
                while (more or held) and len(running) < self.jobs:
                    job = held or next(pending, None)
                    held = None
                    if job is None:
                        more = False
                        break
                    gpu = slots.take(job) if slots.needs(job) else None
                    if slots.needs(job) and gpu is None:
                        if not running:  # no running cell will free a GPU it may use
                            on_done(failure_record(
                                job, "failed", f"{job.cfg.train.get('device')}: no such GPU "
                                f"here; this machine shows {slots.count}"))
                            continue
                        held = job  # every GPU it may use is busy: wait for one
                        break
                    visible = slots.env_value(gpu) if gpu is not None else None
                    recv, send = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_child,
                                       args=(job, send, self.threads, os.getpid(), gpu,
                                             visible),
                                       name=f"tb-cell-{job.key}")
                    with children_die_with_me(), spawn_with_env(visible):
                        proc.start()
                    send.close()  # the child holds the only write end: EOF means it is gone
                    running.append(_Running(proc, recv, job, time.monotonic(), gpu))
                if not running:
                    break
                ready = set(wait([r.conn for r in running] + [r.proc.sentinel for r in running],
                                 timeout=self._wait_s(running)))
                for r in list(running):
                    rec = self._collect(r, ready)
                    if rec is not None:
                        running.remove(r)
                        slots.give_back(r.gpu)
                        on_done(rec)
        finally:
            stop_workers([r.proc for r in running])  # interrupted: leave no orphans behind

    def _wait_s(self, running: list[_Running]) -> Optional[float]:
        if self.cell_timeout is None:
            return None
        now = time.monotonic()
        return max(0.0, min(r.started + self.cell_timeout - now for r in running))

    def _collect(self, r: _Running, ready: set) -> Optional[dict]:
        """The finished cell's record, or None while it still runs."""
        if r.conn in ready or r.proc.sentinel in ready:
            rec = None
            try:
                if r.conn.poll():
                    rec = r.conn.recv()
            except (EOFError, OSError):
                rec = None
            if rec is None and r.proc.is_alive() and r.proc.sentinel not in ready:
                return None
            r.proc.join(timeout=60)
            if r.proc.is_alive():  # sent its record but hangs on exit
                r.proc.kill()
                r.proc.join()
            r.conn.close()
            if rec is None:
                rec = failure_record(r.job, "failed", describe_exit(r.proc.exitcode),
                                     exitcode=r.proc.exitcode)
            return rec
        if self.cell_timeout is not None and time.monotonic() - r.started >= self.cell_timeout:
            stop_workers([r.proc], grace_s=5.0)
            r.conn.close()
            return failure_record(r.job, "timeout",
                                  f"the cell ran longer than the per-cell timeout of "
                                  f"{self.cell_timeout:g} s; its worker was killed")
        return None


@contextlib.contextmanager
def spawn_with_env(visible: Optional[str]):
    """``CUDA_VISIBLE_DEVICES=visible`` in this process's environment while a worker is
    spawned, so the worker's interpreter has it from its first instruction (before any
    import could initialise CUDA); restored after. None leaves the environment alone."""
    if visible is None:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


def stop_workers(procs: list, grace_s: float = 10.0) -> None:
    """SIGTERM the workers (they remove their temporary folders), then SIGKILL the ones
    still there after ``grace_s``."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


__all__ = ["ProcessExecutor", "stop_workers", "spawn_with_env"]
