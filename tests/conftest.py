"""Shared fixtures: a fresh plugin system with built-ins only, a loopback HTTP server.

Every test session gets its own cache folder (downloads, decoded images, features) in the
system's temporary folder, removed when the session ends: no test sees what an earlier
session (or the user's ``bench``) left in a cache, and nothing is left in the repository.
Worker processes inherit it through ``TRANSFER_BENCH_CACHE``.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile

import pytest
import torch

_SESSION_CACHE = tempfile.mkdtemp(prefix="transfer-bench-test-cache-")
os.environ["TRANSFER_BENCH_CACHE"] = _SESSION_CACHE
torch.set_num_threads(2)

# Hermetic: whatever else is installed in this environment (other transfer-bench plugins,
# broken ones included) is not loaded, here or in the bench subprocesses and workers the
# tests start. Built-ins always load; the plugins under test are the repository's example
# (examples/transfer-bench-efficientnet) and those a test installs itself (make_dist in
# test_plugins.py adds their names).
os.environ["TRANSFER_BENCH_ONLY_PLUGINS"] = "efficientnet"

# Hermetic about signals too: a suite started in the background by a non-interactive shell
# (`make test &`, nohup, some CI runners) inherits SIGINT ignored, and so would every child
# it starts, so the tests that press Ctrl-C on a run would wait for an exit that never comes
# (an ignored signal stays ignored across exec; a handler is reset to the default). With a
# handler here, children start with Python's own KeyboardInterrupt, as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture
def plugin_system():
    """A fresh plugin system (built-ins only), installed as the process-wide one.

    Overrides the test kit's fixture (which also loads installed entry-point plugins) so
    that an installed third-party plugin cannot change what these tests see. The test
    kit's ``register_plugin`` and ``tiny_splits`` fixtures (harness/testkit.py, a pytest11
    plugin) are used as they are."""
    from harness.api.manager import PluginSystem, set_plugins
    system = PluginSystem(entry_points=False)
    set_plugins(system)
    yield system
    set_plugins(None)


@pytest.fixture
def http_server(tmp_path):
    """A loopback HTTP server (127.0.0.1, free port) serving ``root`` in a thread.

    Yields ``(base_url, root)``. A file named ``NAME.truncate`` next to ``NAME`` makes the
    server announce the full length of NAME but close the connection after half of it.
    """
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):  # keep test output clean
            pass

        def do_GET(self):
            path = root / self.path.lstrip("/")
            if path.with_name(path.name + ".truncate").exists():
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
