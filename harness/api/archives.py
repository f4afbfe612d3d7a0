"""Extracting tar archives safely on every Python the project supports.

``TarFile.extractall(filter="data")`` (PEP 706) exists from Python 3.12, 3.11.4 and 3.10.12;
Debian 12's stock python3 is 3.11.2 and has no ``filter``. :func:`safe_extractall` is the one
way the project extracts a tar: where the Python has ``tarfile.data_filter`` it extracts with
it, otherwise it applies the same rules itself, member by member, just before each member is
written (so a link extracted earlier cannot carry a later member outside). Either way:

* a member with an absolute path, or whose path (``..``, or through a link already
  extracted) leads outside the folder, is refused (the data filter strips a leading ``/``;
  here such a member refuses the whole archive, as the project did before);
* a symbolic or hard link whose target is absolute or outside the folder is refused;
* device files, FIFOs and other special members are refused;
* modes are sanitised as the data filter does: only ``0o755`` bits are kept (no setuid,
  setgid, sticky or group/other write), a file not executable by its owner loses every
  exec bit, files are always owner-readable and -writable, directory and link modes are
  ignored; ownership is not restored (files belong to whoever extracts).

A refused member raises :class:`UnsafeArchive` naming the archive and the member, with the
same sentence on both paths.
"""
from __future__ import annotations

import copy
import os
import tarfile
from pathlib import Path
from typing import Iterable, Optional, Union

from .errors import BenchError

PathLike = Union[str, "os.PathLike[str]"]


class UnsafeArchive(BenchError):
    """An archive member that would land outside the extraction folder, or is not data."""


def has_data_filter() -> bool:
    """Whether this Python's ``tarfile`` has PEP 706's extraction filters."""
    return hasattr(tarfile, "data_filter")


def _refuse(archive: str, what: str) -> UnsafeArchive:
    return UnsafeArchive(f"{archive}: {what}; refusing to extract this archive (use an intact "
                         f"copy of the published one)")


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def check_name(name: str, root: PathLike, archive: PathLike,
               member: Optional[str] = None) -> None:
    """Refuse ``name`` (a member, or with ``member`` the target of that link member) when it is
    absolute or leads outside ``root``; links already on disk are followed.

    Raises:
        UnsafeArchive: naming the member.
    """
    root_s = os.path.realpath(root)
    what = (f"member {name!r} would be written" if member is None else
            f"link member {member!r} points to {name!r},")
    if name.startswith(("/", os.sep)) or os.path.isabs(name):
        raise _refuse(str(archive), f"{what} at an absolute path, outside the extraction folder")
    if not _inside(os.path.realpath(os.path.join(root_s, name)), root_s):
        raise _refuse(str(archive), f"{what} outside the extraction folder")


def check_member(m: tarfile.TarInfo, root: PathLike, archive: PathLike) -> None:
    """The data filter's refusals for one tar member, checked against the folder as it is now.

    Raises:
        UnsafeArchive: an absolute or escaping path or link, or a special file.
    """
    check_name(m.name, root, archive)
    if m.issym() or m.islnk():
        # a symlink is relative to its own folder, a hard link to the archive's root
        link = m.linkname if m.islnk() else os.path.join(os.path.dirname(m.name), m.linkname)
        if os.path.isabs(m.linkname):
            link = m.linkname
        check_name(link, root, archive, member=m.name)
    elif not (m.isreg() or m.isdir()):
        kind = ("a device file" if m.isdev() and not m.isfifo() else
                "a FIFO" if m.isfifo() else f"of tar type {m.type!r}")
        raise _refuse(str(archive), f"member {m.name!r} is {kind}, not a file, folder or link")


def sanitised(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """A copy of ``m`` with the data filter's attributes: mode limited, ownership dropped.

    ``mode`` is None for folders and links (the mode they get is the default one). Ownership
    is set to the extracting user's, so that ``tarfile``'s chown (done only as root) is a no-op
    rather than restoring the archive's owner.
    """
    m = copy.copy(m)
    if m.isreg() or m.islnk():
        mode = m.mode & 0o755
        if not mode & 0o100:
            mode &= ~0o111
        m.mode = mode | 0o600
    else:
        m.mode = None
    getuid, getgid = getattr(os, "getuid", None), getattr(os, "getgid", None)
    m.uid = getuid() if getuid else 0
    m.gid = getgid() if getgid else 0
    m.uname = m.gname = ""
    return m


def safe_extractall(tf: tarfile.TarFile, dest: PathLike,
                    members: Optional[Iterable[tarfile.TarInfo]] = None,
                    archive: Optional[PathLike] = None) -> None:
    """``tf.extractall(dest, members, filter="data")``, also on a Python without ``filter``.

    Every member is checked before anything is written (absolute paths, ``..``, links, special
    files), then again, against the folder as extracted so far, just before it is written.

    Args:
        tf: an open tar archive.
        dest: the folder to extract into (created if missing).
        members: a subset of ``tf.getmembers()``; default: all.
        archive: how messages name the archive; default: ``tf.name``.

    Raises:
        UnsafeArchive: a member refused by the rules in this module's docstring.
    """
    label = str(archive if archive is not None else (tf.name or "<tar archive>"))
    Path(dest).mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    members = tf.getmembers() if members is None else list(members)
    for m in members:  # refuse the archive before writing anything
        check_member(m, root, label)
    if has_data_filter():
        def data(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
            check_member(member, root, label)  # the same sentence as without the filter
            return tarfile.data_filter(member, path)

        try:
            tf.extractall(root, members=members, filter=data)
        except tarfile.FilterError as exc:  # a rule of a newer data filter than this module's
            raise _refuse(label, str(exc)) from None
    else:
        _extract_filtered(tf, root, members, label)


def _extract_filtered(tf: tarfile.TarFile, root: str, members: list[tarfile.TarInfo],
                      label: str) -> None:
    """The data filter done by hand: check each member as the folder stands, then extract a
    sanitised copy of it."""
    umask = os.umask(0)
    os.umask(umask)
    # where extract() takes a filter (a test hiding data_filter on a new Python), the member
    # is already sanitised: say so, rather than have extract() warn or filter twice
    kw = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    folders = []
    for m in members:
        check_member(m, root, label)
        s = sanitised(m)
        tf.extract(s, root, set_attrs=s.mode is not None, numeric_owner=True, **kw)
        if s.isdir():
            folders.append(os.path.join(root, s.name))
    for path in folders:  # tarfile makes folders 0700; the data filter leaves them default
        os.chmod(path, 0o777 & ~umask)


__all__ = ["UnsafeArchive", "check_member", "check_name", "has_data_filter", "safe_extractall",
           "sanitised"]
