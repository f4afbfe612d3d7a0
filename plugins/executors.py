"""Built-in executors: in-process (default), local worker processes, and Ray."""
from __future__ import annotations

from harness import ExecutorSpec, hookimpl


def _ray_description() -> str:
    from .executors_ray import ray_available
    ok, why = ray_available()
    text = "every cell a Ray task on a local or remote cluster (--address); the run folder " \
           "must be on a shared filesystem"
    return text if ok else f"{text} (unavailable here: {why})"


@hookimpl
def register_executors():
    # imported here, not at the top: importing the plugin (bench --help) stays cheap
    from harness.run.executor import InProcessExecutor

    from .executors_processes import ProcessExecutor
    from .executors_ray import RayExecutor
    return [
        ExecutorSpec("inprocess", factory=InProcessExecutor, default=True,
                     description="run cells one after the other in this process"),
        ExecutorSpec("processes", factory=ProcessExecutor, parallel=True,
                     description="each cell in its own worker process, --jobs N at a time; "
                                 "a crashed cell is recorded and the others go on"),
        ExecutorSpec("ray", factory=RayExecutor, description=_ray_description()),
    ]
