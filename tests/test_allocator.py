"""The allocator settings `bench` applies: applied on glibc, refused on request, recorded."""
import json
import os
import subprocess
import sys

import pytest

CODE = ("import json; from harness.measure.allocator import tune, state; tune(); "
        "print(json.dumps(state()))")


def _state(**env):
    e = {k: v for k, v in os.environ.items() if k != "TRANSFER_BENCH_MALLOC"}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", CODE], env=e, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return json.loads(out)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings: Linux only")
def test_settings_applied_on_glibc_and_left_alone_on_request():
    on = _state()
    if "not glibc" in on.get("reason", ""):
        pytest.skip(on["reason"])
    assert on["applied"] is True and all(on["accepted"].values())
    assert on["settings"]["mmap_threshold"] == 32 << 20
    off = _state(TRANSFER_BENCH_MALLOC="system")
    assert off == {"applied": False, "reason": "TRANSFER_BENCH_MALLOC=system"}


def test_environment_records_the_allocator():
    from harness.measure.env import environment
    assert "applied" in environment()["allocator"]
