"""How long `bench --help`, shell completion and `bench list` take, cold processes, median of
N runs each, side by side in one run (issue 30's targets on 2 idle cores: <= 0.3 s, <= 0.3 s,
<= 1.5 s). Also prints which heavy libraries each one imported, the cause of slowness.

    python benchmarks/bench_cli_startup.py [--repeats 5]

On a loaded machine the times grow with the load: read the load average printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "numpy", "onnxruntime", "openvino", "mlflow", "sklearn", "executorch")
PROBE = """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["bench"] + json.loads(sys.argv[1])
from harness.cli import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("HEAVY=" + json.dumps(sorted(m for m in heavy if m in sys.modules)) + "\\n")
"""
CASES = {
    "bench --help": ([ "--help"], {}),
    "completion (bench ru<TAB>)": ([], {"_BENCH_COMPLETE": "bash_complete",
                                         "COMP_WORDS": "bench ru", "COMP_CWORD": "1"}),
    "completion (bench run -b res<TAB>)": ([], {"_BENCH_COMPLETE": "bash_complete",
                                                "COMP_WORDS": "bench run -b res",
                                                "COMP_CWORD": "3"}),
    "bench list presets": (["list", "presets"], {}),
    "bench list": (["list"], {}),
}


def once(args: list, env_extra: dict) -> tuple[float, list]:
    env = {**os.environ, **env_extra,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "examples" /
                                                          "transfer-bench-efficientnet")])}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    heavy = [json.loads(ln[6:]) for ln in res.stderr.splitlines() if ln.startswith("HEAVY=")]
    return seconds, heavy[-1] if heavy else ["?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; "
          f"{a.repeats} runs each, interleaved")
    times: dict = {k: [] for k in CASES}
    heavy: dict = {}
    for _ in range(a.repeats):  # interleaved, so a burst of load hits every case alike
        for name, (args, env) in CASES.items():
            s, h = once(args, env)
            times[name].append(s)
            heavy[name] = h
    for name, ts in times.items():
        print(f"{name:38s} median {statistics.median(ts):6.3f} s  min {min(ts):6.3f} s  "
              f"heavy imports: {', '.join(heavy[name]) or 'none'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
