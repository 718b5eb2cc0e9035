"""OpenMP spin count: the agent's update time alone and with two trainings sharing the cores, with
libgomp's default spin count against the GOMP_SPINCOUNT that ``import mtrl`` sets (10,000).

libgomp reads GOMP_SPINCOUNT once, when torch loads it, so every measurement is a fresh process
(this script with ``--worker``): width 512, batch 256, single task, 2 torch threads, the update
alone (no environment). Alone: the two settings alternate round by round, and the ratio is the
median of the per-round ratios. Shared: two workers with the same setting start together. Prints a
table; the last line is ``RESULT {json}``.

    python benchmarks/bench_spincount.py [--rounds N] [--updates N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {"libgomp default": None, "mtrl (10000)": "10000"}


def worker(updates: int) -> None:
    import time

    import torch  # before mtrl: with no GOMP_SPINCOUNT exported, libgomp keeps its own default

    from bench_train import synthetic_agent
    from mtrl.train import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(2)
    agent, batch, denominator = synthetic_agent(17, 6, 1, 512, 256)
    times = []
    for _ in range(updates):
        start = time.perf_counter()
        agent.update(batch, denominator)
        times.append(time.perf_counter() - start)
    print("MEDIAN_MS", statistics.median(times) * 1e3, flush=True)


def launch(spin: str | None, updates: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if spin is not None:
        env["GOMP_SPINCOUNT"] = spin
    return subprocess.Popen([sys.executable, __file__, "--worker", "--updates", str(updates)],
                            env=env, stdout=subprocess.PIPE, text=True)


def median_ms(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed with exit status {proc.returncode}")
    return float(out.split("MEDIAN_MS")[1].split()[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--updates", type=int, default=30)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.updates)
        return 0
    alone = {name: [] for name in SETTINGS}
    shared = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, spin in SETTINGS.items():
            alone[name].append(median_ms(launch(spin, args.updates)))
    for _ in range(2):  # two at once, the settings alternating (the machine's load drifts)
        for name, spin in SETTINGS.items():
            pair = [launch(spin, args.updates) for _ in range(2)]
            shared[name].extend(median_ms(proc) for proc in pair)
    (base, ours) = SETTINGS
    alone_ratio = statistics.median(o / b for o, b in zip(alone[ours], alone[base]))
    shared_ratio = statistics.median(shared[base]) / statistics.median(shared[ours])
    print(f"{'setting':16} {'alone ms/update':>16} {'two sharing ms/update':>22}")
    for name in SETTINGS:
        print(f"{name:16} {statistics.median(alone[name]):16.1f} {statistics.median(shared[name]):22.1f}")
    print(f"alone: mtrl / default time ratio {alone_ratio:.3f} (per-round median); "
          f"shared: mtrl is {shared_ratio:.2f}x faster")
    print("RESULT " + json.dumps({
        "alone_ms_default": round(statistics.median(alone[base]), 2),
        "alone_ms_mtrl": round(statistics.median(alone[ours]), 2),
        "alone_time_ratio_mtrl_over_default": round(alone_ratio, 3),
        "shared_ms_default": round(statistics.median(shared[base]), 2),
        "shared_ms_mtrl": round(statistics.median(shared[ours]), 2),
        "shared_speedup": round(shared_ratio, 2), "load_avg_1min": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
