"""Run the default configuration (``python -m mtrl.train`` with no arguments: the laptop preset)
and print its evaluation curve per task; not part of CI.

  python benchmarks/learn_default.py [--run-dir DIR] [extra mtrl.train args...]

Prints the command and date, the eval curve (one row per evaluation: return per task and the
mean) as a Markdown table for ``benchmarks/RESULTS.md``, the temperature/entropy trajectory from
``train.csv``, and ends with ``RESULT {json}``: first and last eval return per task, whether every
task ended above its first evaluation (``all_tasks_rose``), wall minutes and CPU minutes.

Wall time on a shared machine says little about a laptop, so the script also reports the
training process's CPU time (user + system, from ``getrusage`` of the child). The laptop preset
uses one torch thread and the engine's env stepping is a small share of an iteration, so the
run is close to single-threaded: on an otherwise idle machine its wall time is about its CPU time
(``idle_estimate_minutes``). That estimate assumes the core runs as fast when it is not shared;
on a loaded machine cache/SMT contention inflates CPU time, so it errs high.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import resource
import subprocess
import sys
import time


def _f(x: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def main(argv: list[str]) -> int:
    run_dir = "runs/learn_default"
    if "--run-dir" in argv:
        i = argv.index("--run-dir")
        run_dir = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    start = time.time()
    cmd = [sys.executable, "-m", "mtrl.train", "--run-dir", run_dir, "--progress", "lines", *argv]
    shown = " ".join(["python", *cmd[1:]])
    print("command:", shown, flush=True)
    print("date:", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    rc = subprocess.call(cmd)
    minutes = (time.time() - start) / 60
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_minutes = (usage.ru_utime + usage.ru_stime) / 60
    if rc != 0:
        print(f"mtrl.train exited with {rc}")
        return rc
    with open(os.path.join(run_dir, "eval.csv")) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(run_dir, "train.csv")) as f:
        train_rows = list(csv.DictReader(f))
    tasks = [k[len("eval/"):-len("/return")] for k in rows[0] if k.endswith("/return")]

    print("\n| iteration | " + " | ".join(t.split(":")[-1] for t in tasks) + " | mean |")
    print("|---" * (len(tasks) + 2) + "|")
    for r in rows:
        print(f"| {r['iteration']} | " + " | ".join(f"{_f(r[f'eval/{t}/return']):.1f}" for t in tasks)
              + f" | {_f(r['eval/return_mean']):.1f} |")

    print("\n| iteration | alpha | entropy | q_mean | reward_mean | it/s |")
    print("|---|---|---|---|---|---|")
    for r in train_rows:
        if int(r["iteration"]) % 1500 == 0 or r is train_rows[-1]:
            print(f"| {r['iteration']} | {_f(r['train/alpha']):.2g} | {_f(r['train/entropy']):.2f} | "
                  f"{_f(r['train/q_mean']):.2f} | {_f(r['train/reward_mean']):.3f} | "
                  f"{_f(r['train/it_per_s']):.1f} |")

    first = {t: round(_f(rows[0][f"eval/{t}/return"]), 1) for t in tasks}
    last = {t: round(_f(rows[-1][f"eval/{t}/return"]), 1) for t in tasks}
    best = {t: round(max(_f(r[f"eval/{t}/return"]) for r in rows), 1) for t in tasks}
    result = {"wall_minutes": round(minutes, 1), "cpu_minutes": round(cpu_minutes, 1),
              "idle_estimate_minutes": round(cpu_minutes, 1),
              "load_avg_end": round(os.getloadavg()[0], 1),
              "first_eval": first, "last_eval": last, "best_eval": best,
              "all_tasks_rose": all(last[t] > first[t] for t in tasks),
              "first_mean": round(_f(rows[0]["eval/return_mean"]), 1),
              "last_mean": round(_f(rows[-1]["eval/return_mean"]), 1)}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
