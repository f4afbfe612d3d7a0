"""Downloads: checksums, interrupted transfers, offline messages, safe extraction."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import time
import zipfile

import pytest

from harness.run.download import (MARKER, ChecksumMismatch, Resource, UnsafeArchive, extract,
                              fetch)
from harness.api.errors import DataUnavailable


def _resource(root, name, data, **kw):
    (root / name).write_bytes(data)
    return Resource(name, f"https://official.example/{name}",
                    sha256=kw.get("sha256", hashlib.sha256(data).hexdigest()))


def test_fetch_verifies_and_caches(http_server, tmp_path):
    url, root = http_server
    res = _resource(root, "a.bin", b"x" * 5000)
    cache = tmp_path / "cache"
    path = fetch(res, cache, base_url=url, progress=False)
    assert path.read_bytes() == b"x" * 5000
    (root / "a.bin").unlink()  # second call must not need the server
    assert fetch(res, cache, base_url=url, progress=False) == path


def test_md5_checksum_accepted(http_server, tmp_path):
    url, root = http_server
    (root / "m.bin").write_bytes(b"abc")
    res = Resource("m.bin", "https://x/m.bin", md5=hashlib.md5(b"abc").hexdigest())
    assert fetch(res, tmp_path / "c", base_url=url, progress=False).read_bytes() == b"abc"


def test_wrong_checksum_is_named_and_nothing_cached(http_server, tmp_path):
    url, root = http_server
    res = _resource(root, "b.tgz", b"payload", sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatch, match=r"b\.tgz.*expected 0000"):
        fetch(res, cache, base_url=url, progress=False)
    assert [p.name for p in cache.iterdir()] == ["b.tgz.lock"]  # only the (free) lock


def test_interrupted_download_not_taken_as_complete(http_server, tmp_path):
    url, root = http_server
    res = _resource(root, "c.bin", bytes(range(256)) * 400)
    (root / "c.bin.truncate").write_text("")
    cache = tmp_path / "cache"
    with pytest.raises(DataUnavailable, match="interrupted"):
        fetch(res, cache, base_url=url, progress=False)
    assert not (cache / "c.bin").exists() and not list(cache.glob("*.part"))
    (root / "c.bin.truncate").unlink()  # the next try succeeds
    assert fetch(res, cache, base_url=url, progress=False).stat().st_size == 256 * 400


def test_unreachable_host_fails_fast_and_says_where_to_put_the_file(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    res = Resource("17flowers.tgz", "https://www.robots.ox.ac.uk/x/17flowers.tgz", sha256="0" * 64)
    t0 = time.perf_counter()
    with pytest.raises(DataUnavailable) as err:
        fetch(res, tmp_path / "cache", base_url=f"http://127.0.0.1:{port}",
              connect_timeout=3, progress=False)
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "17flowers.tgz" in msg and str(tmp_path / "cache" / "17flowers.tgz") in msg


def test_user_supplied_file_is_verified(tmp_path):
    (tmp_path / "d.bin").write_bytes(b"wrong")
    res = Resource("d.bin", "https://x/d.bin", sha256=hashlib.sha256(b"right").hexdigest())
    with pytest.raises(ChecksumMismatch, match="d.bin"):
        fetch(res, tmp_path, progress=False)


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("bad", ["../evil.txt", "/tmp/evil-abs.txt", "ok/../../evil.txt"])
def test_tar_with_path_outside_is_refused(tmp_path, bad):
    arc = tmp_path / "x.tar.gz"
    _tar(arc, [("jpg/fine.txt", b"1"), (bad, b"2")])
    with pytest.raises(UnsafeArchive, match="outside"):
        extract(arc, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_tar_symlink_outside_is_refused(tmp_path):
    arc = tmp_path / "l.tar"
    with tarfile.open(arc, "w") as tf:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchive):
        extract(arc, tmp_path / "out")


def test_zip_with_path_outside_is_refused(tmp_path):
    arc = tmp_path / "x.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(UnsafeArchive):
        extract(arc, tmp_path / "out")


def test_interrupted_extraction_is_redone(tmp_path):
    arc = tmp_path / "a.tar.gz"
    _tar(arc, [("jpg/a.txt", b"A"), ("jpg/b.txt", b"B")])
    out = tmp_path / "out"
    (out / "jpg").mkdir(parents=True)  # a folder left by an interrupted run: no marker
    (out / "jpg" / "a.txt").write_bytes(b"half")
    extract(arc, out)
    assert (out / MARKER).exists() and (out / "jpg" / "a.txt").read_bytes() == b"A"
    assert (out / "jpg" / "b.txt").read_bytes() == b"B"


def test_truncated_archive_leaves_nothing_marked(tmp_path):
    arc = tmp_path / "t.tar.gz"
    _tar(arc, [("jpg/a.bin", bytes(range(256)) * 400), ("jpg/b.bin", b"x" * 10)])
    arc.write_bytes(arc.read_bytes()[:300])
    with pytest.raises(DataUnavailable, match="t.tar.gz"):
        extract(arc, tmp_path / "out")
    assert not (tmp_path / "out" / MARKER).exists()
