"""CPU training throughput of the class-conditioned UNet, as ratios against a baseline in the same run.

Two questions behind the quick profile and `import difflab`:
1. batch 64 vs the course's 128: optimizer steps per second (what a time-boxed run buys);
2. OpenMP's wait policy, idle and with the cores shared (a busy-loop process per core):
   torch's default, a bounded spin (GOMP_SPINCOUNT), and passive waiting (what `import difflab` sets).
   Contention results vary a lot from run to run: run it more than once.

Each case runs in a fresh interpreter, because OpenMP reads its environment when torch loads it.

    python bench/cpu_training.py [--hidden 16] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

CASE = r"""
import json, sys, time, torch
hidden, batch, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
from difflab.ddpm import DDPMSchedule, ddpm_loss
from difflab.unet import build_model
torch.manual_seed(0)
s = DDPMSchedule()
m = build_model("class", hidden=hidden)
opt = torch.optim.Adam(m.parameters(), 2e-3)
x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
for i in range(steps + 4):
    if i == 4:
        t0 = time.perf_counter()
    loss = ddpm_loss(m, s, x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
dt = (time.perf_counter() - t0) / steps
print(json.dumps({"steps_per_s": 1 / dt, "img_per_s": batch / dt}))
"""

POLICIES = {"default": {}, "bounded spin": {"GOMP_SPINCOUNT": "100000"},
            "passive (difflab)": {"OMP_WAIT_POLICY": "PASSIVE"}}
DIFFLAB = POLICIES["passive (difflab)"]


def run_case(hidden: int, batch: int, steps: int, env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", CASE, str(hidden), str(batch), str(steps)],
                         env={**clean, **env}, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def busy() -> None:
    end = time.monotonic() + 600
    while time.monotonic() < end:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    rows = []
    base = run_case(args.hidden, 128, args.steps, DIFFLAB)
    small = run_case(args.hidden, 64, args.steps, DIFFLAB)
    rows.append(("batch 128 (baseline)", base, 1.0))
    rows.append(("batch 64", small, small["steps_per_s"] / base["steps_per_s"]))
    print(f"D={args.hidden}, {os.cpu_count()} cores; ratio = optimizer steps/s against batch 128")
    for name, r, ratio in rows:
        print(f"  {name:28s} {r['steps_per_s']:6.1f} steps/s {r['img_per_s']:7.0f} img/s  x{ratio:.2f}")

    print("OpenMP wait policy, batch 64; ratio = img/s against torch's default on an idle machine")
    idle = {name: run_case(args.hidden, 64, args.steps, env) for name, env in POLICIES.items()}
    hogs = [multiprocessing.Process(target=busy, daemon=True) for _ in range(os.cpu_count() or 1)]
    for h in hogs:
        h.start()
    try:
        shared = {name: run_case(args.hidden, 64, args.steps, env) for name, env in POLICIES.items()}
    finally:
        for h in hogs:
            h.terminate()
    ref = idle["default"]["img_per_s"]
    for name in POLICIES:
        print(f"  {name:24s} idle {idle[name]['img_per_s']:6.0f} img/s (x{idle[name]['img_per_s'] / ref:.2f})"
              f"   shared {shared[name]['img_per_s']:6.0f} img/s (x{shared[name]['img_per_s'] / ref:.2f})")


if __name__ == "__main__":
    main()
