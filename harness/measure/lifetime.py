"""Worker processes that die with their parent, and temporary folders that never outlive
their process.

A ``bench run`` killed with ``kill -9`` cannot clean up after itself, so the clean-up is
arranged beforehand:

* :func:`die_with_parent` - called first thing in every worker (cell workers of the
  ``processes`` executor, ``harness.isolate`` latency workers): on Linux the kernel sends the
  worker ``SIGTERM`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``, through ``ctypes``);
  everywhere, a watchdog thread also notices the parent pid change (re-parenting to init)
  within a second and does the same, so no worker runs on as an orphan.
* :func:`exit_on_signals` - turns ``SIGTERM`` (``timeout``, ``kill``, the death signal above)
  into ``SystemExit``, so ``finally`` blocks run as they do for ``SIGINT`` (Ctrl-C).
* :func:`temp_folder` - a ``tb-cell-PID-*`` folder removed on any exit that runs ``finally``;
  its owner holds an ``flock`` on ``.owner.lock`` inside, which the kernel releases even on
  ``SIGKILL``, and :func:`sweep_temp_folders` (at the start and the end of every run) removes
  the folders whose lock nobody holds any more. Folders without that lock file (made by
  another program, or by this one between ``mkdtemp`` and the lock) are never touched.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_ENV = "TRANSFER_BENCH_PARENT_PID"
TEMP_PREFIX = "tb-cell-"
OWNER_LOCK = ".owner.lock"
_ARMED: dict = {}  # parent pid -> how this process is bound to it


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError, TypeError):  # no libc or no prctl: the watchdog is left
        return False


def die_with_parent(parent_pid: Optional[int] = None, poll_s: float = 1.0,
                    grace_s: float = 3.0) -> str:
    """Make this process end when its parent does; returns how (for tests and logs).

    Args:
        parent_pid: the parent to outlive no longer (default ``$TRANSFER_BENCH_PARENT_PID``,
            else ``os.getppid()`` now). When it is already gone, this process exits at once.
        poll_s: how often the watchdog thread looks at the parent pid.
        grace_s: after sending itself ``SIGTERM`` (so ``finally`` blocks run), the watchdog
            waits this long, then ends the process with ``os._exit``.
    """
    if parent_pid is None and _ARMED:  # already bound (arm_from_env at import)
        return next(iter(_ARMED.values()))
    parent = parent_pid or int(os.environ.get(PARENT_ENV) or 0) or os.getppid()
    if parent in _ARMED:
        return _ARMED[parent]
    how = ["pdeathsig"] if _set_pdeathsig(signal.SIGTERM) else []
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="tb-parent-watchdog", daemon=True).start()
    _ARMED[parent] = "+".join(how + ["watchdog"])
    return _ARMED[parent]


def arm_from_env() -> Optional[str]:
    """Run :func:`die_with_parent` at once when ``$TRANSFER_BENCH_PARENT_PID`` names this
    process's parent (a worker that bench started, see :func:`worker_env`).

    Called from ``harness/__init__.py``, so a worker is bound to its parent from its first
    import of ``harness`` on, before the seconds (under load, tens of seconds) of importing
    torch and the plugins. The variable is removed, so the worker's own children do not
    inherit it. When it names a process that is gone, the parent died before this worker got
    here: it exits at once. When it names another live process (a grandchild started through
    a shell) this does nothing.
    """
    value = os.environ.pop(PARENT_ENV, "")
    if not value.isdigit():
        return None
    if int(value) != os.getppid():
        try:
            os.kill(int(value), 0)
        except ProcessLookupError:
            os._exit(1)  # orphaned before the first import: never start work
        except OSError:
            pass
        return None
    return die_with_parent(int(value))


def _raise_exit(signum, frame):  # noqa: ARG001 - signal handler signature
    raise SystemExit(128 + signum)


def exit_on_signals() -> None:
    """``SIGTERM`` raises ``SystemExit`` in the main thread, so clean-up code runs (``SIGINT``
    already raises ``KeyboardInterrupt``). Only from the main thread; elsewhere a no-op."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_exit)


def worker_env() -> dict:
    """Environment for a child process: ``PARENT_ENV`` names this process."""
    return {**os.environ, PARENT_ENV: str(os.getpid())}


@contextlib.contextmanager
def children_die_with_me() -> Iterator[None]:
    """Processes started inside (``multiprocessing`` spawn copies ``os.environ``) get
    ``PARENT_ENV`` naming this process, so :func:`arm_from_env` binds them at import."""
    old = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = old


@contextlib.contextmanager
def temp_folder(prefix: str = TEMP_PREFIX) -> Iterator[Path]:
    """A fresh folder under the system temporary folder, removed when the block ends,
    whatever ends it; swept by :func:`sweep_temp_folders` if ``SIGKILL`` ends it."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    fd = os.open(path / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def sweep_temp_folders(prefix: str = TEMP_PREFIX, root: Optional[Path] = None) -> list[Path]:
    """Remove the ``prefix*`` folders whose owner died without removing them; return them."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for path in root.glob(f"{prefix}*"):
        try:
            fd = os.open(path / OWNER_LOCK, os.O_RDWR)
        except OSError:  # no lock file (not ours, or not yet locked) or not our user's
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    continue  # its owner is alive
                raise
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


__all__ = ["die_with_parent", "arm_from_env", "children_die_with_me", "exit_on_signals", "temp_folder", "sweep_temp_folders",
           "worker_env", "PARENT_ENV", "TEMP_PREFIX"]
