"""glibc malloc as it comes against harness/measure/allocator.py's settings, side by side.

The same workload (MobileNetV2 at 64 px, batch 64: 20 training steps, then 20 inference
batches, after 3 warm-up steps) runs in fresh interpreters, alternately with
``TRANSFER_BENCH_MALLOC=system`` (the allocator untouched) and with the settings ``bench``
applies. Each run reports wall time, user and system CPU time and minor page faults of
the timed part; the medians and their ratio are printed.

    python benchmarks/bench_allocator.py [--rounds 3] [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKLOAD = r"""
import json, resource, sys, time
import torch, timm
from harness.measure.allocator import tune
state = tune()
torch.set_num_threads(2)
torch.manual_seed(0)
m = timm.create_model("mobilenetv2_100", num_classes=10).train()
opt = torch.optim.AdamW(m.parameters())
x, y = torch.rand(64, 3, 64, 64), torch.randint(0, 10, (64,))
steps = int(sys.argv[1])
def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
for _ in range(3):
    step()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
m.eval()
with torch.inference_mode():
    for _ in range(steps):
        m(x)
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": wall, "user": r1.ru_utime - r0.ru_utime,
                  "sys": r1.ru_stime - r0.ru_stime, "minflt": r1.ru_minflt - r0.ru_minflt,
                  "applied": state["applied"]}))
"""


def run(mode: str, steps: int) -> dict:
    env = dict(os.environ)
    env.pop("TRANSFER_BENCH_MALLOC", None)
    if mode == "system":
        env["TRANSFER_BENCH_MALLOC"] = "system"
    out = subprocess.run([sys.executable, "-c", WORKLOAD, str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    print(f"CPUs: {os.cpu_count()}, load average before: {os.getloadavg()}")
    res: dict = {"system": [], "tuned": []}
    for r in range(a.rounds):
        for mode in ("system", "tuned"):
            m = run(mode, a.steps)
            if m["applied"] != (mode == "tuned"):
                raise SystemExit(f"{mode}: allocator settings applied={m['applied']}, unexpected")
            res[mode].append(m)
            print(f"round {r + 1} {mode:6s}: wall {m['wall']:6.2f} s  user {m['user']:6.2f} s  "
                  f"sys {m['sys']:5.2f} s  minor faults {m['minflt']:8d}", flush=True)
    med = {mode: {k: statistics.median(x[k] for x in runs) for k in ("wall", "sys", "minflt")}
           for mode, runs in res.items()}
    for mode, m in med.items():
        print(f"median {mode:6s}: wall {m['wall']:.2f} s, sys {m['sys']:.2f} s, "
              f"minor faults {m['minflt']:.0f}")
    print(f"wall-time ratio system / tuned (medians): {med['system']['wall'] / med['tuned']['wall']:.2f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
