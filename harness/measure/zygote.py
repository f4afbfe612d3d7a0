"""A warm process that forks the latency workers, so each one starts without re-importing.

A latency worker is a fresh process per (cell, runtime, profile) (:mod:`harness.measure.isolate`),
and most of its life used to be imports: torch (about 2-3 s on 2 cores) and the modules of
the pickled model (timm, about 2 s more) before it measured anything; a default ``bench
run`` starts 37 of them (issue 29). Here a *zygote* - started once per ``bench`` process
with ``python -m harness.measure.zygote`` - imports numpy, torch and (with the first job)
the caller's worker module once, then ``fork()``\\ s one child per job. Each child is still
a fresh process that runs one job and exits (its own runtime sessions, thread pools and
allocator arenas, none left from another job), as before; only the imports are inherited.

Why forking there is safe: the zygote runs no torch operation, so no OpenMP pool or CUDA
context exists to be copied half-alive (the reason ``fork`` is unsafe after parallel
work); it only imports. The child replaces its environment, ``sys.path`` and working folder
with the job's, redirects its stdout/stderr into the job folder (``worker.log``, whose
tail a crash reports) and binds itself to the zygote
(:func:`harness.measure.lifetime.die_with_parent`), which is bound to ``bench`` (the kernel's
parent-death signal, and end of input on its pipe).

Libraries read some variables when they load (``OMP_*``, ``MKL_*``, allocator settings...),
so a zygote serves only jobs whose environment is the one it started with, apart from the
per-job variables in :data:`PER_JOB`; another environment or ``sys.path`` starts a new
zygote. Modules the pickled model needs (its classes' modules, named by the parent) are
imported into the zygote before the job's fork, so the next cells fork with them loaded.

Protocol (one JSON object per line): the parent sends ``{"import": [modules]}`` (answer
``{"imported": [...], "failed": {module: error}}``) or ``{"job": folder, "entry":
"module:function", "env": {...}, "path": [...], "cwd": dir}`` (answers ``{"pid": N}`` at
the fork, then ``{"exit": N, "rc": code}``). The zygote ends at end of input or when ``bench`` dies.
"""
from __future__ import annotations

import atexit
import hashlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Optional

from ..api.lazy import LazyCallable
from . import lifetime

#: what every zygote imports before its first fork (the core's own dependencies)
PRELOAD = ("numpy", "torch")
#: variables set per job (they are read after the fork, or only name processes)
PER_JOB = ("CUDA_VISIBLE_DEVICES", "PYTHONPATH", lifetime.PARENT_ENV)
#: seconds to wait for a zygote's imports before giving up on it
START_TIMEOUT_S = 300.0
LOG = "worker.log"


class ZygoteError(RuntimeError):
    """The warm process could not start or stopped answering (the caller spawns instead)."""


def environment_key(env: dict, path: list) -> str:
    """What a zygote must share with a job: the environment (less :data:`PER_JOB`), the
    module search path and the interpreter."""
    kept = {k: v for k, v in env.items() if k not in PER_JOB}
    blob = json.dumps([sys.executable, kept, list(path)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Zygote:
    """A running zygote process and the pipe to it; one job at a time (a lock)."""

    def __init__(self, env: dict, path: list):
        self.key = environment_key(env, path)
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.modules: set = set()
        self._buf = b""
        self.errors = tempfile.TemporaryFile()  # its stderr: a pipe nobody reads could fill
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.measure.zygote", str(os.getpid())],
            env={**{k: v for k, v in env.items() if k not in PER_JOB},
                 "PYTHONPATH": os.pathsep.join(p for p in path if p)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors)
        ready = self._read(START_TIMEOUT_S)
        if ready is None or "ready" not in ready:
            err = self._stderr_tail()
            self.close()
            raise ZygoteError(f"the warm worker process did not start: {ready or err}")
        self.modules.update(ready["ready"])

    # -- the pipe ------------------------------------------------------------------------------
    def _send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise ZygoteError(f"the warm worker process is gone ({exc}); "
                              f"{self._stderr_tail()}") from None

    def _read(self, timeout: Optional[float]) -> Optional[dict]:
        """The next message, or None at end of output or after ``timeout`` seconds."""
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None  # timed out
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # the zygote exited
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _stderr_tail(self) -> str:
        try:
            self.errors.seek(0)
            text = self.errors.read().decode(errors="replace")[-2000:]
        except (OSError, ValueError):
            return ""
        return f"its stderr ends:\n{text}" if text else "it wrote nothing to stderr"

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    # -- requests ------------------------------------------------------------------------------
    def preload(self, modules) -> dict:
        """Import ``modules`` into the zygote (those not yet there); ``{module: error}`` for
        the ones that failed (the job's child then imports them itself, and fails there if
        it must)."""
        new = sorted(set(modules) - self.modules)
        if not new:
            return {}
        with self.lock:
            self._send({"import": new})
            reply = self._read(START_TIMEOUT_S)
        if reply is None:
            raise ZygoteError(f"the warm worker process stopped while importing {new}; "
                              f"{self._stderr_tail()}")
        self.modules.update(new)  # a failed one is not tried again
        return reply.get("failed", {})

    def run(self, entry: str, folder: Path, env: dict, path: list, timeout: float) -> dict:
        """Fork a child that runs ``entry`` (``module:function``, called with the job
        ``folder``, returning the exit code); wait for it at most ``timeout`` seconds
        (then kill it). ``{"pid", "rc", "timed_out", "log"}``: ``log`` is the tail of what it
        printed."""
        with self.lock:
            self._send({"job": str(folder), "entry": entry, "env": env, "path": list(path),
                        "cwd": os.getcwd()})
            forked = self._read(60.0)
            if not forked or "pid" not in forked:
                raise ZygoteError(f"the warm worker process did not fork the job "
                                  f"({forked}); {self._stderr_tail()}")
            pid, timed_out = forked["pid"], False
            done = self._read(timeout)
            if done is None and self.proc.poll() is None:  # the job ran out of time
                timed_out = True
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                done = self._read(60.0)
            if done is None or "exit" not in done:
                raise ZygoteError(f"the warm worker process stopped while job {pid} ran; "
                                  f"{self._stderr_tail()}")
        log = Path(folder) / LOG
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        return {"pid": pid, "rc": done["rc"], "timed_out": timed_out, "log": tail}

    def close(self) -> None:
        if self.owner != os.getpid():
            return  # a forked copy of the owner: the zygote is not ours to stop
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        try:
            self.proc.wait(timeout=10)  # end of input: it exits
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.errors.close()


_CURRENT: dict = {}  # "zygote" -> this process's Zygote
_GUARD = threading.Lock()


def zygote_for(env: dict, path: list) -> Zygote:
    """This process's zygote for ``env`` and ``path``, started (or restarted, after another
    environment or a crash) as needed.

    Raises:
        ZygoteError: it could not start.
    """
    with _GUARD:
        z = _CURRENT.get("zygote")
        if z is not None and z.alive() and z.key == environment_key(env, path):
            return z
        if z is not None:
            z.close()
        _CURRENT["zygote"] = z = Zygote(env, path)
        return z


def stop() -> None:
    """Stop this process's zygote (at exit; tests)."""
    with _GUARD:
        z = _CURRENT.pop("zygote", None)
    if z is not None:
        z.close()


atexit.register(stop)


# -- inside the zygote -----------------------------------------------------------------------
_PROTOCOL: dict = {}  # "fd": the zygote's answers (its real stdout; fd 1 goes to stderr)


def _write(msg: dict) -> None:
    os.write(_PROTOCOL["fd"], (json.dumps(msg) + "\n").encode())


def _import(modules) -> dict:
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - reported, the child tries again
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed


def _child(msg: dict) -> None:
    """In the forked child: become the job's worker process, run it, exit."""
    rc = 70
    try:
        folder = Path(msg["job"])
        fd = os.open(folder / LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        os.close(_PROTOCOL["fd"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(msg["env"])
        os.environ.pop(lifetime.PARENT_ENV, None)
        sys.path[:] = msg["path"]
        os.chdir(msg["cwd"])
        lifetime._ARMED.clear()  # the zygote's binding is not this process's
        lifetime.die_with_parent(os.getppid())
        rc = LazyCallable(msg["entry"])(folder)  # the caller's worker function, by name
    except BaseException:  # noqa: BLE001 - into worker.log, read by the parent
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)


def main(parent: int) -> int:
    lifetime._set_pdeathsig(signal.SIGKILL)  # bench died: so do we (a running child follows us)
    if os.getppid() != parent:
        return 1
    _PROTOCOL["fd"] = os.dup(1)
    os.dup2(2, 1)  # what imports print must not mix with the answers
    from .allocator import tune
    tune()  # the allocator settings of every worker, before the imports allocate
    failed = _import(PRELOAD)
    _write({"ready": [m for m in PRELOAD if m not in failed], "failed": failed})
    for line in sys.stdin.buffer:  # end of input: bench closed the pipe or died
        msg = json.loads(line)
        if "import" in msg:
            _write({"imported": msg["import"], "failed": _import(msg["import"])})
            continue
        pid = os.fork()
        if pid == 0:
            _child(msg)
        _write({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _write({"exit": pid, "rc": os.waitstatus_to_exitcode(status)})
    return 0


if __name__ == "__main__":  # python -m harness.measure.zygote PARENT_PID
    sys.exit(main(int(sys.argv[1])))
