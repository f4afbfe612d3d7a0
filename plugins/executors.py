"""Built-in executors: in-process (default), local worker processes, and Ray."""
from __future__ import annotations

import importlib.util

from harness import ExecutorSpec, LazyCallable, hookimpl

INSTALL_HINT = "pip install 'transfer-bench[ray]'"


def ray_available() -> tuple[bool, str]:
    """Whether Ray can be imported here, and if not how to get it (looks it up only)."""
    if importlib.util.find_spec("ray") is None:
        return False, f"Ray is not installed; install it with: {INSTALL_HINT}"
    return True, ""


def _ray_description() -> str:
    ok, why = ray_available()
    text = "every cell a Ray task on a local or remote cluster (--address); the run folder " \
           "must be on a shared filesystem"
    return text if ok else f"{text} (unavailable here: {why})"


@hookimpl
def register_executors():
    # named by import path, imported when a run starts: bench list imports no torch
    return [
        ExecutorSpec("inprocess", factory=LazyCallable("harness.run.executor:InProcessExecutor"),
                     default=True, description="run cells one after the other in this process"),
        ExecutorSpec("processes", parallel=True,
                     factory=LazyCallable(".executors_processes:ProcessExecutor", __package__),
                     description="each cell in its own worker process, --jobs N at a time; "
                                 "a crashed cell is recorded and the others go on"),
        ExecutorSpec("ray", factory=LazyCallable(".executors_ray:RayExecutor", __package__),
                     description=_ray_description()),
    ]
