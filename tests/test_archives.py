"""Safe tar extraction on every Python: PEP 706's data filter where ``tarfile`` has it, the same
rules by hand where it does not (Debian 12's python3 3.11.2). Every test runs the hand-made path
with ``filter`` made unavailable, and the stdlib's path where this Python has it."""
from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile

import pytest

from harness.api import archives
from harness.api.archives import UnsafeArchive, safe_extractall
from harness.run.download import MARKER, extract


def _no_filter(monkeypatch):
    """This Python as 3.11.2 sees it: no data_filter, and extractall() refusing ``filter``."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    plain = tarfile.TarFile.extractall

    def extractall(self, path=".", members=None, *, numeric_owner=False, **kw):
        if kw:
            raise TypeError(f"extractall() got an unexpected keyword argument {next(iter(kw))!r}")
        return plain(self, path, members, numeric_owner=numeric_owner)

    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)


@pytest.fixture(params=["without-filter", "with-filter"])
def path(request, monkeypatch):
    """Which extraction path runs: the hand-made one, or the stdlib's data filter."""
    if request.param == "without-filter":
        _no_filter(monkeypatch)
        assert not archives.has_data_filter()
    elif not archives.has_data_filter():
        pytest.skip("this Python's tarfile has no data filter (PEP 706): the hand-made path "
                    "is the one in use, tested by the without-filter case")
    return request.param


def _tar(path, *members):
    """A tar of ``(TarInfo fields, data)`` pairs."""
    with tarfile.open(path, "w") as tf:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for k, v in fields.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x", **kw):
    return dict(name=name, **kw), data


def _link(name, target, kind=tarfile.SYMTYPE):
    return dict(name=name, type=kind, linkname=target), None


def _extract(arc, dest):
    with tarfile.open(arc) as tf:
        safe_extractall(tf, dest)


HOSTILE = {
    "parent": ([_file("ok.txt"), _file("../evil.txt")], "would be written outside"),
    "nested-parent": ([_file("a/../../evil.txt")], "would be written outside"),
    "absolute": ([_file("/tmp/evil-abs.txt")], "absolute path"),
    "symlink-out": ([_link("pics/innocent.jpg", "../../evil.txt")],
                    "link member 'pics/innocent.jpg' points to"),
    "symlink-absolute": ([_link("passwd", "/etc/passwd")], "absolute path"),
    "hardlink-out": ([_link("h", "../evil.txt", tarfile.LNKTYPE)], "link member 'h' points to"),
    # each member alone stays inside; together, once "a" exists on disk, "a/b" is the parent
    # of the folder, and "b/evil.txt" would be written there
    "symlink-chain": ([_link("a", "."), _link("a/b", ".."), _file("b/evil.txt")],
                      "link member 'a/b' points to"),
    "device": ([(dict(name="dev/sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0), None)],
               "is a device file"),
    "char-device": ([(dict(name="null", type=tarfile.CHRTYPE, devmajor=1, devminor=3), None)],
                    "is a device file"),
    "fifo": ([(dict(name="pipe", type=tarfile.FIFOTYPE), None)], "is a FIFO"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_writes_nothing_outside(tmp_path, path, case):
    members, message = HOSTILE[case]
    arc = _tar(tmp_path / "hostile.tar", *[(dict(f), d) for f, d in members])
    dest = tmp_path / "box" / "out"
    with pytest.raises(UnsafeArchive) as err:
        _extract(arc, dest)
    assert message in str(err.value) and "hostile.tar" in str(err.value)
    assert "refusing to extract" in str(err.value)
    # nothing beside the archive and the extraction folder was created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "hostile.tar"]
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) in ([], ["out"])


def test_modes_are_sanitised_as_the_data_filter_does(tmp_path, path):
    arc = _tar(tmp_path / "m.tar",
               _file("setuid-tool", mode=0o4777, uid=0, gid=0, uname="root", gname="root"),
               _file("world-writable", mode=0o666),
               _file("group-exec-only", mode=0o070),
               _file("unreadable", mode=0o000),
               (dict(name="d", type=tarfile.DIRTYPE, mode=0o7777), None),
               _file("d/inner", mode=0o2755))
    dest = tmp_path / "out"
    _extract(arc, dest)
    mode = {p: stat.S_IMODE(os.stat(dest / p).st_mode) for p in
            ("setuid-tool", "world-writable", "group-exec-only", "unreadable", "d", "d/inner")}
    umask = os.umask(0)
    os.umask(umask)
    assert mode == {"setuid-tool": 0o755, "world-writable": 0o644, "group-exec-only": 0o640,
                    "unreadable": 0o600, "d": 0o777 & ~umask, "d/inner": 0o755}
    assert os.stat(dest / "setuid-tool").st_uid == os.getuid()


def test_an_ordinary_archive_extracts_completely(tmp_path, path):
    arc = _tar(tmp_path / "ok.tar",
               (dict(name="jpg", type=tarfile.DIRTYPE, mode=0o755), None),
               _file("jpg/a.jpg", b"A"), _file("jpg/sub/b.jpg", b"B"),
               _link("jpg/latest.jpg", "sub/b.jpg"),
               _link("jpg/copy.jpg", "jpg/a.jpg", tarfile.LNKTYPE))
    dest = tmp_path / "out"
    _extract(arc, dest)
    assert (dest / "jpg/a.jpg").read_bytes() == b"A"
    assert (dest / "jpg/latest.jpg").read_bytes() == b"B"
    assert os.readlink(dest / "jpg/latest.jpg") == "sub/b.jpg"
    assert (dest / "jpg/copy.jpg").read_bytes() == b"A"
    assert os.stat(dest / "jpg/copy.jpg").st_ino == os.stat(dest / "jpg/a.jpg").st_ino


@pytest.mark.skipif(not archives.has_data_filter(), reason="this Python's tarfile has no data "
                    "filter to compare the hand-made path with")
def test_hand_made_path_matches_the_stdlib_data_filter(tmp_path, monkeypatch):
    arc = _tar(tmp_path / "a.tar", _file("x", mode=0o4771), _file("y", mode=0o606),
               (dict(name="d", type=tarfile.DIRTYPE, mode=0o700), None), _link("d/l", "../x"))

    def tree(root):
        return sorted((str(p.relative_to(root)), stat.S_IMODE(os.lstat(p).st_mode),
                       p.is_symlink()) for p in root.rglob("*"))

    _extract(arc, tmp_path / "stdlib")
    _no_filter(monkeypatch)
    _extract(arc, tmp_path / "by-hand")
    assert tree(tmp_path / "by-hand") == tree(tmp_path / "stdlib")


def test_dataset_extraction_works_without_filter(tmp_path, monkeypatch):
    """The loaders' path (fetch, then :func:`extract`) on a Python like Debian 12's."""
    _no_filter(monkeypatch)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name in ("jpg/image_0001.jpg", "jpg/image_0002.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"jpg"))
    (tmp_path / "17flowers.tgz").write_bytes(buf.getvalue())
    out = extract(tmp_path / "17flowers.tgz", tmp_path / "data")
    assert sorted(p.name for p in (out / "jpg").iterdir()) == ["image_0001.jpg",
                                                               "image_0002.jpg"]
    assert (out / MARKER).exists()


def test_against_rev_extracts_git_archive_without_filter(tmp_path, monkeypatch):
    """``bench check --against REV`` extracts ``git archive REV``: on a Python without
    ``filter`` too."""
    from harness.regression.paired import WORKER, base_tree, repo_root

    try:
        root = repo_root()
    except Exception as exc:  # noqa: BLE001 - a source tree that is no git work tree
        pytest.skip(f"not a git work tree: {exc}")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode != 0:
        pytest.skip(f"git cannot read {root}: {head.stderr.strip()}")
    _no_filter(monkeypatch)
    tree = base_tree(head.stdout.strip(), tmp_path)
    assert (tree / WORKER).is_file()
    listed = subprocess.run(["git", "-C", str(root), "ls-tree", "-r", "--name-only", "HEAD",
                             "harness/api"], capture_output=True, text=True, check=True)
    assert sorted(listed.stdout.split()) == sorted(
        str(p.relative_to(tree)) for p in (tree / "harness/api").rglob("*") if p.is_file())
