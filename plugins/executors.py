"""Built-in executors."""
from __future__ import annotations

from harness import ExecutorSpec, hookimpl
from harness.executor import InProcessExecutor


@hookimpl
def register_executors():
    return [ExecutorSpec("inprocess", factory=InProcessExecutor,
                         description="run cells one after the other in this process")]
