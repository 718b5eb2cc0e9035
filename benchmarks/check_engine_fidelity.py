"""Full alignment check of the C++ engine against dm_control, for every engine task.

For each task: (1) dm_control's reset state is copied into the engine and the same random actions
are applied for --steps steps; the largest relative differences of observations and rewards are
reported (tolerance 1e-5 relative with a 1e-5 floor); (2) --resets first observations from each
side are compared (mean gap in pooled standard deviations; two-sample Kolmogorov-Smirnov).
Prints one line per task and a final `RESULT {json}` line.

Usage: python benchmarks/check_engine_fidelity.py [--steps 200] [--resets 200] [tasks ...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mtrl.envs.engine import engine_tasks
from mtrl.envs.fidelity import compare_rollout, distribution_gap, initial_obs_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--resets", type=int, default=200)
    parser.add_argument("tasks", nargs="*", default=None)
    args = parser.parse_args()
    tasks = args.tasks or engine_tasks()
    mean_limit = 4 * np.sqrt(2 / args.resets)
    ks_limit = 2.2 * np.sqrt(2 / args.resets)
    rows, failed = {}, []
    print(f"{'task':30s} {'obs rel':>9s} {'rew rel':>9s} {'mean gap':>9s} {'KS':>6s}  ok")
    for task in tasks:
        start = time.perf_counter()
        diff = compare_rollout(task, args.steps, seed=0)
        ours, ref = initial_obs_samples(task, args.resets, seed=0)
        mean_gap, ks = distribution_gap(ours, ref)
        ok = (diff.obs < 1e-5 and diff.reward < 1e-5 and diff.steps == args.steps
              and mean_gap < mean_limit and ks < ks_limit)
        if not ok:
            failed.append(task)
        rows[task] = {"obs_rel": diff.obs, "reward_rel": diff.reward, "mean_gap": mean_gap,
                      "ks": ks, "ok": ok}
        print(f"{task:30s} {diff.obs:9.2e} {diff.reward:9.2e} {mean_gap:9.3f} {ks:6.3f}  "
              f"{'yes' if ok else 'NO'}  ({time.perf_counter() - start:.1f}s)", flush=True)
    print(f"limits: rel 1e-5; mean gap < {mean_limit:.3f}; KS < {ks_limit:.3f}")
    print("RESULT " + json.dumps({"tasks": len(tasks), "failed": failed,
                                  "max_obs_rel": max(r["obs_rel"] for r in rows.values()),
                                  "max_reward_rel": max(r["reward_rel"] for r in rows.values())}))


if __name__ == "__main__":
    main()
