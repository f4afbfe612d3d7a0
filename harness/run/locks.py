"""Cache safety when several workers (processes, Ray tasks) fill one cache at once.

Two tools, meant to be used together by any code that writes under the cache folder
(downloads, extracted archives, decoded images, converted weights, feature caches):

* :func:`cache_lock` - an exclusive ``fcntl.flock`` on ``PATH.lock``, so only one worker
  builds a given entry while the others wait, then find it built;
* :func:`atomic_write_bytes` - write to a unique temporary name and ``os.replace`` it, so a
  reader never sees half an entry, even from a worker killed mid-write.

Typical use::

    with cache_lock(target):
        if not target.exists():
            atomic_write_bytes(target, build())
    return target.read_bytes()

``flock`` locks are released by the kernel when the holder dies (even by SIGKILL), so a
crashed worker never leaves a stale lock. They work between processes on one machine and,
on Linux, on NFS v4 shares (``flock`` is emulated with byte-range locks there); on a
filesystem without locking, :func:`cache_lock` raises an error that says so.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Union

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
        poll_s: how often to retry while waiting with a timeout.

    Yields:
        The lock file's path.

    Raises:
        LockTimeout: ``timeout`` passed while another worker held the lock.
        BenchError: the filesystem does not support locks (names the folder).
    """
    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, lp, timeout, poll_s)
        try:
            yield lp
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, lp: Path, timeout: Optional[float], poll_s: float) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
            return
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise BenchError(f"cannot lock {lp}: the filesystem of {lp.parent} does not "
                                 f"support file locks ({exc.strerror}); put the cache on a "
                                 f"local disk or an NFSv4 share (--cache-dir / "
                                 f"TRANSFER_BENCH_CACHE)") from None
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
        if time.monotonic() >= deadline:
            raise LockTimeout(f"waited {timeout:.0f} s for the lock {lp}, which another worker "
                              f"holds; raise the timeout or remove the entry's builder")
        time.sleep(poll_s)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a unique temporary file and ``os.replace``.

    Unlike a fixed ``PATH.part`` name, the temporary name is unique per writer, so two
    workers writing the same entry never interleave their bytes; the last rename wins
    and each reader sees one complete version.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


__all__ = ["cache_lock", "atomic_write_bytes", "lock_path", "LockTimeout"]
