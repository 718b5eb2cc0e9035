"""Cost of the mtrl.envs front for the MyoSuite / Atari / gymnasium suites against using the
underlying library directly, same run, same envs, random actions.

Rows (env steps per second, median of repeats; ratio = ours / theirs, > 1 means mtrl faster):
- gym:Pendulum-v1 x8: our gymnasium backend vs a plain Python loop over 8 ``gymnasium.make``
  envs (step, reset where an episode ended) — the price of padding, the [-1, 1] mapping and
  the final/reset observation split.
- atari:pong x4 and myo:myoElbowPose1D6MRandom-v0 x4: our envpool backend vs one raw
  ``envpool.make_gymnasium`` pool stepped from Python with its next-step auto-reset left in
  (the raw loop does less: it neither hides the auto-reset nor flattens to float32).

Usage: python benchmarks/bench_envs_suites.py [--quick]; last line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np


def _time(fns, steps: int, repeats: int) -> list[float]:
    """Median seconds of each ``fn(steps)`` over ``repeats`` runs (after one warm-up each); the
    functions are interleaved repeat by repeat so machine load hits them alike."""
    for fn in fns:
        fn(max(1, steps // 10))
    ts: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t_list in zip(fns, ts):
            t = time.perf_counter()
            fn(steps)
            t_list.append(time.perf_counter() - t)
    return [float(np.median(t_list)) for t_list in ts]


def bench_gym(n: int, steps: int, repeats: int) -> tuple[float, float]:
    import gymnasium

    import mtrl.envs

    rng = np.random.default_rng(0)
    pool = mtrl.envs.make(["gym:Pendulum-v1"], envs_per_task=n, seed=0)
    pool.reset()
    acts = rng.uniform(-1, 1, (64, n, pool.action_dim)).astype(np.float32)

    def ours(k: int) -> None:
        for i in range(k):
            pool.step(acts[i % 64])

    envs = [gymnasium.make("Pendulum-v1") for _ in range(n)]
    for j, e in enumerate(envs):
        e.reset(seed=j)
    raw_acts = 2.0 * acts.astype(np.float32)

    def theirs(k: int) -> None:
        for i in range(k):
            for j, e in enumerate(envs):
                _, _, te, tr, _ = e.step(raw_acts[i % 64, j])
                if te or tr:
                    e.reset()

    t_ours, t_theirs = _time([ours, theirs], steps, repeats)
    pool.close()
    return n * steps / t_ours, n * steps / t_theirs


def bench_envpool(name: str, envpool_id: str, n: int, steps: int,
                  repeats: int) -> tuple[float, float]:
    import envpool

    import mtrl.envs

    rng = np.random.default_rng(0)
    pool = mtrl.envs.make([name], envs_per_task=n, seed=0)
    pool.reset()
    acts = rng.uniform(-1, 1, (64, n, pool.action_dim)).astype(np.float32)

    def ours(k: int) -> None:
        for i in range(k):
            pool.step(acts[i % 64])

    raw = envpool.make_gymnasium(envpool_id, num_envs=n, batch_size=n,
                                 num_threads=int(pool._threads), env_seed=list(range(n)))
    raw.reset()
    if pool.discrete[0]:
        raw_acts = acts.argmax(axis=2).astype(np.int32)
    else:
        raw_acts = acts.astype(np.float64)

    def theirs(k: int) -> None:
        for i in range(k):
            raw.step(raw_acts[i % 64])

    t_ours, t_theirs = _time([ours, theirs], steps, repeats)
    pool.close()
    raw.close()
    return n * steps / t_ours, n * steps / t_theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (< 60 s)")
    args = ap.parse_args()
    steps, repeats = (100, 3) if args.quick else (400, 7)
    rows = {
        "gym_pendulum8": ("gym:Pendulum-v1 x8", "gymnasium loop", *bench_gym(8, steps, repeats)),
        "atari_pong4": ("atari:pong x4", "raw envpool",
                        *bench_envpool("atari:pong", "Pong-v5", 4, steps, repeats)),
        "myo_elbow4": ("myo:myoElbowPose1D6MRandom-v0 x4", "raw envpool",
                       *bench_envpool("myo:myoElbowPose1D6MRandom-v0",
                                      "myoElbowPose1D6MRandom-v0", 4, steps, repeats)),
    }
    print(f"{'row':36s} {'ours steps/s':>13s} {'other':>16s} {'steps/s':>10s} {'ratio':>7s}")
    result = {}
    for key, (label, other, ours, theirs) in rows.items():
        print(f"{label:36s} {ours:13.0f} {other:>16s} {theirs:10.0f} {ours / theirs:7.2f}")
        result[f"{key}_vs_raw"] = round(ours / theirs, 3)
        result[f"{key}_steps_per_s"] = round(ours, 1)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
