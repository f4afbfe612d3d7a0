"""Executors run the cells of a matrix; the in-process one is the default.

An executor receives the cells still to run and a function that runs one cell and
returns its record; it calls ``on_done(record)`` for every finished cell, in any order.
"""
from __future__ import annotations

from typing import Callable, Iterable


class Executor:
    """Base class. ``run`` must call ``on_done`` once per job, failed cells included."""

    name = "executor"

    def run(self, jobs: Iterable, run_one: Callable, on_done: Callable) -> None:  # pragma: no cover
        raise NotImplementedError


class InProcessExecutor(Executor):
    """Runs cells one after the other in this process."""

    name = "inprocess"

    def __init__(self, **options):
        if options:
            raise TypeError(f"the in-process executor takes no options {sorted(options)}")

    def run(self, jobs, run_one, on_done):
        for job in jobs:
            on_done(run_one(job))
