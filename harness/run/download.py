"""Verified, cached downloads and safe extraction for dataset plugins.

Reliability rules (see ``shared/MEASUREMENT.md``):

* like every cache entry (:mod:`harness.run.locks`), a download and an extraction hold
  the entry's lock (``NAME.lock``, ``FOLDER.lock``), so two workers fetching one archive at
  once download it once: the second waits, then finds it verified in place;
* a file is downloaded to a unique temporary name (``.NAME.*.part``) and renamed into place
  only after its checksum (SHA-256 or MD5) matched, so an interrupted or corrupt download is
  never taken as the file;
* an archive is extracted into a unique temporary folder and renamed, then a marker file is
  written; a folder without the marker is an interrupted extraction and is extracted again;
* extraction refuses members whose path leaves the folder (``../``, absolute paths, links),
  and special files, on every Python (:func:`harness.api.archives.safe_extractall`: the
  ``data`` filter where ``tarfile`` has it, the same rules by hand on 3.11.2 and older);
* the host is given ``connect_timeout`` seconds: offline, the error says which file to
  download from where and where to put it, so the next run finds it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..api.archives import UnsafeArchive  # noqa: F401 - re-exported: callers import it here
from ..api.archives import check_name, safe_extractall
from ..api.errors import BenchError, DataUnavailable
from ..api.files import atomic_path
from .locks import cache_lock

MARKER = ".extracted-ok"
CHUNK = 1 << 20


class ChecksumMismatch(BenchError):
    """A downloaded or user-supplied file whose checksum is not the published one."""


@dataclass(frozen=True)
class Resource:
    """One published file.

    Attributes:
        filename: the published file name (what the user puts in the cache folder).
        url: the official address.
        sha256, md5: expected checksum (one is enough; SHA-256 is preferred).
    """

    filename: str
    url: str
    sha256: Optional[str] = None
    md5: Optional[str] = None


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, res: Resource) -> None:
    """Raise :class:`ChecksumMismatch` naming the file when its checksum is wrong."""
    for algo in ("sha256", "md5"):
        want = getattr(res, algo)
        if want:
            got = file_digest(path, algo)
            if got.lower() != want.lower():
                raise ChecksumMismatch(
                    f"{path}: {algo} is {got}, expected {want} (the published {res.filename} "
                    f"from {res.url}). The file is corrupt, truncated or a different version; "
                    f"put the published file in its place, or move this one away and run "
                    f"again to download it.")
            return


def _offline_message(res: Resource, dest: Path, reason: str) -> str:
    return (f"cannot download {res.filename} from {res.url} ({reason}). Download it on a "
            f"machine with internet access and put it at {dest} (the cache folder is set by "
            f"--cache-dir or TRANSFER_BENCH_CACHE); it is verified on the next run.")


def fetch(res: Resource, folder: Path, base_url: Optional[str] = None,
          connect_timeout: float = 10.0, progress: bool = True) -> Path:
    """The verified file ``folder/res.filename``, downloaded only when absent.

    Args:
        res: what to get.
        folder: the cache folder for this dataset.
        base_url: replaces everything before the file name in ``res.url`` (tests serve
            archives from a loopback server; mirrors work the same way).
        connect_timeout: seconds to wait for the host (and for each read).
        progress: show a tqdm progress bar on stderr.

    Raises:
        DataUnavailable: the host cannot be reached; says which file to put where.
        ChecksumMismatch: the download (or a file already there) is not the published one;
            nothing is left in the cache.
    """
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / res.filename
    if dest.exists():
        verify(dest, res)  # a user-supplied file is checked too; it is not deleted
        return dest
    with cache_lock(dest):
        if dest.exists():  # another worker downloaded it while this one waited
            verify(dest, res)
            return dest
        return _download(res, dest, base_url, connect_timeout, progress)


def _download(res: Resource, dest: Path, base_url: Optional[str], connect_timeout: float,
              progress: bool) -> Path:
    url = res.url if base_url is None else base_url.rstrip("/") + "/" + res.filename
    try:
        with atomic_path(dest) as part:  # removed on any error: nothing half-done is kept
            with urllib.request.urlopen(url, timeout=connect_timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                bar = _bar(total, res.filename, progress)
                got = 0
                with open(part, "wb") as out:
                    while True:
                        block = resp.read(CHUNK)
                        if not block:
                            break
                        out.write(block)
                        got += len(block)
                        bar.update(len(block))
                bar.close()
            if total is not None and got != total:
                raise DataUnavailable(f"download of {url} was interrupted: {got} of {total} "
                                      f"bytes; run again to retry")
            verify(part, res)
    except http.client.IncompleteRead as exc:
        raise DataUnavailable(f"download of {url} was interrupted after {len(exc.partial)} "
                              f"bytes; nothing was kept, run again to retry") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataUnavailable(_offline_message(res, dest, str(reason))) from None
    return dest


def _bar(total, desc, enabled):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled,
                leave=False)


def extract(archive: Path, folder: Path) -> Path:
    """Extract ``archive`` (tar, tar.gz, tgz, zip) into ``folder``, once.

    ``folder`` counts as extracted only when it holds the marker written after the last
    member; otherwise it is removed and extracted again. Members with absolute paths,
    ``..``, links pointing outside, or special files are refused before anything is written
    (:mod:`harness.api.archives`).
    """
    if (folder / MARKER).exists():
        return folder
    with cache_lock(folder):
        if (folder / MARKER).exists():  # another worker extracted it while this one waited
            return folder
        return _extract(archive, folder)


def _extract(archive: Path, folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".part"))
    root = tmp.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    check_name(name, root, archive)
                zf.extractall(tmp)
        else:
            try:
                with tarfile.open(archive) as tf:
                    safe_extractall(tf, tmp, archive=archive)
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                raise DataUnavailable(f"{archive} is not a complete tar/zip archive ({exc}); "
                                      f"put the published file in its place, or move this "
                                      f"one away and run again to download it") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / MARKER).write_text(f"extracted from {archive.name}\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the cache is meant to be shared
    os.replace(tmp, folder)  # the folder appears complete, marker included, or not at all
    return folder
