"""Cache safety when several workers (processes, Ray tasks) fill one cache at once.

Two tools, meant to be used together by any code that writes under the cache folder
(downloads, extracted archives, decoded images, converted weights, feature caches):

* :func:`cache_lock` - an exclusive lock on ``PATH.lock`` (``filelock.FileLock``: ``flock``
  on Linux), so only one worker builds a given entry while the others wait, then find it built;
* :func:`harness.api.files.atomic_write_bytes` - write to a unique temporary name and
  ``os.replace`` it, so a reader never sees half an entry, even from a worker killed mid-write.

Typical use::

    with cache_lock(target):
        if not target.exists():
            atomic_write_bytes(target, build())
    return target.read_bytes()

``flock`` locks are released by the kernel when the holder dies (even by SIGKILL), so a
crashed worker never leaves a stale lock. They work between processes on one machine and,
on Linux, on NFS v4 shares (``flock`` is emulated with byte-range locks there); on a
filesystem without ``flock``, filelock falls back to a lock file of its own.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import filelock

from ..api.errors import BenchError

PathLike = Union[str, "os.PathLike[str]"]


class LockTimeout(BenchError):
    """Waited longer than the caller allowed for another worker's lock."""


def lock_path(path: PathLike) -> Path:
    """The lock file that guards cache entry ``path`` (``PATH.lock`` beside it)."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


@contextlib.contextmanager
def cache_lock(path: PathLike, timeout: Optional[float] = None,
               poll_s: float = 0.1) -> Iterator[Path]:
    """Hold an exclusive lock on cache entry ``path`` (a file or a folder) while inside.

    Args:
        path: the cache entry to guard; it need not exist. The lock file is ``PATH.lock``
            and the parent folder is created if needed.
        timeout: seconds to wait for another holder; ``None`` waits for as long as it takes.
        poll_s: how often to retry while waiting.

    Yields:
        The lock file's path.

    Raises:
        LockTimeout: ``timeout`` passed while another worker held the lock.
    """
    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(lp, timeout=-1 if timeout is None else timeout)
    try:
        lock.acquire(poll_interval=poll_s)
    except filelock.Timeout:
        raise LockTimeout(f"waited {timeout:.0f} s for the lock {lp}, which another worker "
                          f"holds; raise the timeout or remove the entry's builder") from None
    try:
        yield lp
    finally:
        lock.release()


__all__ = ["cache_lock", "lock_path", "LockTimeout"]
