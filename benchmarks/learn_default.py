"""Run the default configuration (``python -m mtrl.train`` with no arguments: the laptop preset)
and print its evaluation curve per task; not part of CI.

  python benchmarks/learn_default.py [--run-dir DIR] [extra mtrl.train args...]

Prints one line per evaluation (iteration, return per task, mean) and ends with
``RESULT {json}`` holding the first and last eval returns per task and whether every task rose.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    run_dir = "runs/learn_default"
    if "--run-dir" in argv:
        i = argv.index("--run-dir")
        run_dir = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    start = time.time()
    cmd = [sys.executable, "-m", "mtrl.train", "--run-dir", run_dir, "--progress", "lines", *argv]
    print("command:", " ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd)
    minutes = (time.time() - start) / 60
    if rc != 0:
        print(f"mtrl.train exited with {rc}")
        return rc
    with open(f"{run_dir}/eval.csv") as f:
        rows = list(csv.DictReader(f))
    tasks = [k[len("eval/"):-len("/return")] for k in rows[0] if k.endswith("/return")]
    print(f"{'iteration':>9} " + " ".join(f"{t.split(':')[-1]:>17}" for t in tasks) + f" {'mean':>7}")
    for r in rows:
        print(f"{r['iteration']:>9} " + " ".join(f"{float(r[f'eval/{t}/return']):17.1f}" for t in tasks)
              + f" {float(r['eval/return_mean']):7.1f}")
    first = {t: round(float(rows[0][f"eval/{t}/return"]), 1) for t in tasks}
    last = {t: round(float(rows[-1][f"eval/{t}/return"]), 1) for t in tasks}
    result = {"wall_minutes": round(minutes, 1), "first_eval": first, "last_eval": last,
              "all_tasks_rose": all(last[t] > first[t] for t in tasks),
              "last_mean": round(float(rows[-1]["eval/return_mean"]), 1)}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
