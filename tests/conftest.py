"""Shared fixtures: a fresh plugin system, throwaway plugins, tiny data."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRANSFER_BENCH_CACHE", os.path.join(os.path.dirname(__file__), "..",
                                                           ".cache", "test-cache"))
torch.set_num_threads(2)


@pytest.fixture
def plugin_system():
    """A fresh plugin system (built-ins only), installed as the process-wide one."""
    from harness.manager import PluginSystem, set_plugins
    system = PluginSystem(entry_points=False)
    set_plugins(system)
    yield system
    set_plugins(None)


@pytest.fixture
def register_plugin(plugin_system):
    """Register a throwaway plugin object; it is gone after the test."""
    names = []

    def _register(plugin, name="test-plugin"):
        plugin_system.register(plugin, name=name, origin="test")
        plugin_system._build_registries()
        names.append(name)
        return plugin_system

    yield _register
    for n in names:
        plugin_system.unregister(n)


@pytest.fixture
def tiny_splits():
    """A learnable 4-class problem of 16x16 images: a bright quadrant gives the class."""
    from harness.data import DataInfo, DataSplits, TensorSplit

    def make(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (n,), generator=g)
        x = (torch.rand(n, 3, 16, 16, generator=g) * 60).to(torch.uint8)
        for i, c in enumerate(y.tolist()):
            r, col = divmod(c, 2)
            x[i, :, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += 150
        return TensorSplit(x, y)

    info = DataInfo("quadrants", num_classes=4, class_names=list("abcd"), synthetic=True)
    return DataSplits(make(160, 0), make(64, 1), make(64, 2), info)


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
