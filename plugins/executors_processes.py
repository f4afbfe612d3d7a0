"""The ``processes`` executor: every cell in its own fresh worker process (``--jobs N``).

Each cell runs in a process started with ``spawn`` (no state inherited from the driver, no
fork of a process that holds threads), up to ``jobs`` at a time. A cell that crashes its
process (segfault, out-of-memory kill, ``kill -9``) is recorded as failed with the exit
code or signal, and the other cells go on. With ``cell_timeout`` a cell that runs longer
is killed and recorded with status ``timeout``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Optional

from harness.run.executor import (CellJob, Executor, describe_exit, execute_job,
                              failure_record)


def _child(job: CellJob, conn, threads: Optional[int]) -> None:
    try:
        rec = execute_job(job, threads)
    except BaseException as exc:  # noqa: BLE001 - report anything rather than die silently
        rec = failure_record(job, "failed", f"worker: {type(exc).__name__}: {exc}")
    conn.send(rec)
    conn.close()


@dataclass
class _Running:
    proc: mp.Process
    conn: object
    job: CellJob
    started: float


class ProcessExecutor(Executor):
    """Runs each cell in its own spawned process, ``jobs`` at a time.

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
        pending = list(jobs)
        running: list[_Running] = []
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    job = pending.pop(0)
                    recv, send = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_child, args=(job, send, self.threads),
                                       name=f"tb-cell-{job.key}")
                    proc.start()
                    send.close()  # the child holds the only write end: EOF means it is gone
                    running.append(_Running(proc, recv, job, time.monotonic()))
                ready = set(wait([r.conn for r in running] + [r.proc.sentinel for r in running],
                                 timeout=self._wait_s(running)))
                for r in list(running):
                    rec = self._collect(r, ready)
                    if rec is not None:
                        running.remove(r)
                        on_done(rec)
        finally:
            for r in running:  # interrupted: leave no orphan workers behind
                r.proc.kill()
                r.proc.join()

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
            r.proc.kill()
            r.proc.join()
            r.conn.close()
            return failure_record(r.job, "timeout",
                                  f"the cell ran longer than the per-cell timeout of "
                                  f"{self.cell_timeout:g} s; its worker was killed")
        return None


__all__ = ["ProcessExecutor"]
