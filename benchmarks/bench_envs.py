"""Environment-engine benchmark: mtrl's C++ pool vs envpool vs dm_control's Python loop.

Same run, same tasks, uniform random actions. Configurations (issue 5):
  mt30      30 DMC tasks, 1 env each (the BRC regime: every task stepped once per iteration)
  dmc-hard  dog stand/walk/trot/run + humanoid stand/walk/run, 1 env each
  cheetah16 16 envs of cheetah-run;  humanoid16 16 envs of humanoid-run
Contenders: ours (`mtrl.envs.make(backend="engine")`, one call per iteration, `--threads`
threads); envpool (one `make_gymnasium` pool per task, stepped one after another from Python, as
a user of envpool would); dm_control (`suite.load` envs stepped in a Python loop, mt30/dmc-hard
only). The floor is the summed cost of the raw `mj_step` substeps of the same mix (timed in C
loops of many control steps through `mujoco.mj_step(m, d, nstep)`), divided by the thread count.
Numbers are env-steps per second (median of repeats); ratios are time ratios.
Last line: `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

import mtrl.envs as envs
from mtrl.envs.engine import engine_tasks

_ENGINE = {t.split(":", 1)[1] for t in engine_tasks()}
# 30 DMC tasks of the covered domains without dog/humanoid locomotion (those are dmc-hard):
# every engine task but dog-* and humanoid-*, plus humanoid-stand to make 30.
MT30 = sorted(t for t in _ENGINE if not t.startswith(("dog-", "humanoid-"))) + ["humanoid-stand"]
DMC_HARD = ["dog-stand", "dog-walk", "dog-trot", "dog-run", "humanoid-stand", "humanoid-walk",
            "humanoid-run"]


def _median_rate(step_fn, iters: int, repeats: int, envs_per_iter: int) -> float:
    step_fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            step_fn()
        times.append(time.perf_counter() - start)
    return envs_per_iter * iters / statistics.median(times)


def bench_ours(tasks: list[str], epts: int, threads: int, iters: int, repeats: int) -> float:
    pool = envs.make(tasks, envs_per_task=epts, backend="engine", num_threads=threads, seed=0)
    pool.reset()
    rng = np.random.default_rng(0)
    acts = [rng.uniform(-1, 1, (pool.num_envs, pool.action_dim)).astype(np.float32)
            for _ in range(8)]
    k = [0]

    def step():
        pool.step(acts[k[0] % 8])
        k[0] += 1

    rate = _median_rate(step, iters, repeats, pool.num_envs)
    pool.close()
    return rate


def bench_envpool(tasks: list[str], epts: int, iters: int, repeats: int) -> float:
    import envpool

    pools = []
    for t in tasks:
        spec = envs.resolve(t)
        p = envpool.make_gymnasium(spec.envpool_id, num_envs=epts, batch_size=epts, seed=0)
        p.reset()
        a = np.random.default_rng(0).uniform(-1, 1, (epts,) + p.action_space.shape)
        pools.append((p, a.astype(np.float64)))

    def step():
        for p, a in pools:
            p.step(a)

    rate = _median_rate(step, iters, repeats, epts * len(tasks))
    for p, _ in pools:
        p.close()
    return rate


def _dm_envs(tasks: list[str]):
    from dm_control import suite

    out = []
    for t in tasks:
        domain, name = t.split("-", 1)
        env = suite.load(domain, name, task_kwargs={"random": 0})
        env.reset()
        out.append(env)
    return out


def bench_dm_control(dm_envs, iters: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    acts = [rng.uniform(-1, 1, e.action_spec().shape) for e in dm_envs]

    def step():
        for e, a in zip(dm_envs, acts):
            if e.step(a).last():
                e.reset()

    return _median_rate(step, iters, repeats, len(dm_envs))


def mj_step_floor(dm_envs, epts: int, threads: int, control_steps: int) -> float:
    """Env-steps/s if every substep cost only raw mj_step and the threads were perfectly busy."""
    import mujoco

    total = 0.0
    rng = np.random.default_rng(0)
    for env in dm_envs:
        m, d = env.physics.model.ptr, env.physics.data.ptr
        n_sub = env._n_sub_steps
        env.reset()
        chunk = 25
        start = time.perf_counter()
        for _ in range(max(1, control_steps // chunk)):
            d.ctrl[:] = rng.uniform(-1, 1, m.nu)
            mujoco.mj_step(m, d, n_sub * chunk)
        per_step = (time.perf_counter() - start) / (max(1, control_steps // chunk) * chunk)
        total += per_step * epts
    return len(dm_envs) * epts / (total / threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (well under 60 s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    q = args.quick
    iters, repeats = (30, 3) if q else (200, 5)
    floor_steps = 50 if q else 400
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"threads={args.threads}; quick={q}")
    configs = [("mt30", MT30, 1), ("dmc-hard", DMC_HARD, 1), ("cheetah16", ["cheetah-run"], 16),
               ("humanoid16", ["humanoid-run"], 16)]
    results = {}
    print(f"{'config':11s} {'envs':>4s} {'ours':>9s} {'envpool':>9s} {'dm_ctrl':>9s} "
          f"{'floor':>9s} {'vs envpool':>10s} {'vs dm_c':>8s} {'floor frac':>10s}")
    for name, tasks, epts in configs:
        dm = _dm_envs(tasks)
        ours = bench_ours(tasks, epts, args.threads, iters, repeats)
        ep = bench_envpool(tasks, epts, iters, repeats)
        dmc = bench_dm_control(dm, max(5, iters // 4), repeats) if epts == 1 else float("nan")
        floor = mj_step_floor(dm, epts, args.threads, floor_steps)
        results[name] = {"ours": ours, "envpool": ep, "dm_control": dmc, "floor": floor}
        print(f"{name:11s} {len(tasks) * epts:4d} {ours:9.0f} {ep:9.0f} {dmc:9.0f} {floor:9.0f} "
              f"{ours / ep:9.2f}x {ours / dmc:7.2f}x {ours / floor:10.2f}", flush=True)
    print("env-steps/s, median of repeats; 'vs' columns are speedups of ours; floor frac = ours/floor")
    print("RESULT " + json.dumps({
        "mt30_vs_envpool": round(results["mt30"]["ours"] / results["mt30"]["envpool"], 3),
        "dmchard_vs_envpool": round(results["dmc-hard"]["ours"] / results["dmc-hard"]["envpool"], 3),
        "cheetah16_vs_envpool": round(results["cheetah16"]["ours"] / results["cheetah16"]["envpool"], 3),
        "humanoid16_vs_envpool": round(results["humanoid16"]["ours"] / results["humanoid16"]["envpool"], 3),
        "mt30_floor_fraction": round(results["mt30"]["ours"] / results["mt30"]["floor"], 3),
        "mt30_vs_dm_control": round(results["mt30"]["ours"] / results["mt30"]["dm_control"], 3),
        "threads": args.threads, "quick": q,
        "mt30_tasks": len(MT30)}))


if __name__ == "__main__":
    main()
