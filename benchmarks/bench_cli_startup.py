"""How long `bench --help`, shell completion, `bench list` and `bench list KIND` (every kind)
take, cold processes, median of N runs each, side by side in one run (issue 30's targets on 2 idle cores: <= 0.3 s, <= 0.3 s,
<= 1.5 s). Also prints which heavy libraries each one imported, the cause of slowness.

    python benchmarks/bench_cli_startup.py [--repeats 5] [--only list] [--compare ../main]

``--compare CHECKOUT`` times another checkout of the repository (say, main before a change)
in the same interleaved rounds and prints the ratio of the medians.

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
HEAVY = ("torch", "timm", "numpy", "onnxruntime", "openvino", "mlflow", "sklearn",
         "executorch.exir", "tabulate")
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
    "bench list": (["list"], {}),
}


def _list_cases() -> dict:
    """``bench list KIND`` for every kind the plugin system knows (read before timing)."""
    sys.path.insert(0, str(ROOT))
    from harness.api.manager import KINDS
    return {f"bench list {k}": (["list", k], {}) for k in sorted(KINDS)}


def once(args: list, env_extra: dict, root: Path = ROOT) -> tuple[float, list]:
    env = {**os.environ, **env_extra,
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "examples" /
                                                          "transfer-bench-efficientnet")])}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)],
                         capture_output=True, text=True, env=env, cwd=root)
    seconds = time.perf_counter() - t0
    heavy = [json.loads(ln[6:]) for ln in res.stderr.splitlines() if ln.startswith("HEAVY=")]
    return seconds, heavy[-1] if heavy else ["?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="", help="only the cases whose name contains this")
    ap.add_argument("--compare", type=Path, default=None, metavar="CHECKOUT",
                    help="another checkout timed in the same rounds (e.g. main before a change)")
    a = ap.parse_args()
    cases = {k: v for k, v in {**CASES, **_list_cases()}.items() if a.only in k}
    roots = [ROOT] + ([a.compare.resolve()] if a.compare else [])
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; "
          f"{a.repeats} runs each, interleaved" + (f"; this checkout vs {roots[1]}"
                                                   if a.compare else ""))
    times: dict = {(k, r): [] for k in cases for r in roots}
    heavy: dict = {}
    for _ in range(a.repeats):  # interleaved, so a burst of load hits every case alike
        for name, (args, env) in cases.items():
            for root in roots:
                s, h = once(args, env, root)
                times[name, root].append(s)
                heavy[name, root] = h
    for name in cases:
        line = []
        for root in roots:
            ts = times[name, root]
            line.append(f"median {statistics.median(ts):6.3f} s min {min(ts):6.3f} s "
                        f"(heavy: {', '.join(heavy[name, root]) or 'none'})")
        if a.compare:
            ratio = statistics.median(times[name, roots[1]]) / statistics.median(
                times[name, ROOT])
            line.append(f"{ratio:.1f}x faster than the other checkout")
        print(f"{name:36s} " + "  |  ".join(line))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
