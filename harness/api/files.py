"""Writing files so that no reader ever sees half of one: the one atomic-write helper.

:func:`atomic_path` yields a unique temporary name beside the target; when the ``with`` block
ends without an error the file is fsynced and ``os.replace``d over the target, otherwise it
is removed. Readers see the old file or the new one, never a torn one, even when the writer is
killed mid-write; two writers of the same target never interleave their bytes (each has its
own temporary name; the last rename wins). The ``atomic_write_*`` functions are this helper
for bytes and text. Hand-written rather than a dependency: it is twenty lines over
``tempfile.mkstemp`` + ``os.replace``, and libraries that write by path (``np.savez``,
``safetensors.save_file``) need the temporary *path*, which the usual file-object helpers
(``atomicwrites``, ``boltons.atomic_save``) do not hand out.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: PathLike, mode: Optional[int] = None) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; it replaces ``path`` on success.

    Args:
        path: the file to (re)place; its folder is created if needed.
        mode: permission bits of the result; default: what ``open()`` would give
            (``0o666`` less the umask; ``mkstemp`` alone makes ``0o600``).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # the data must be on disk before the rename is
            os.fsync(f.fileno())
        os.chmod(tmp, (0o666 & ~_UMASK) if mode is None else mode)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def cache_dir() -> Path:
    """Dataset, weights and feature cache (``--cache-dir`` or ``TRANSFER_BENCH_CACHE``)."""
    return Path(os.environ.get("TRANSFER_BENCH_CACHE",
                               Path.home() / ".cache" / "transfer-bench")).expanduser()


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "cache_dir"]
