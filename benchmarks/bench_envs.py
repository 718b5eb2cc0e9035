"""Environment-engine benchmark: mtrl's C++ pool vs envpool vs dm_control's Python loop.

Same run, same tasks, uniform random actions. Configurations (issue 5):
  mt30      30 DMC tasks, 1 env each (the BRC regime: every task stepped once per iteration)
  dmc-hard  dog stand/walk/trot/run + humanoid stand/walk/run, 1 env each
  cheetah16 16 envs of cheetah-run;  humanoid16 16 envs of humanoid-run
Contenders: ours (`mtrl.envs.make(backend="engine")`, one call per iteration, `--threads`
threads); envpool (one `make_gymnasium` pool per task with min(envs, `--threads`) threads, stepped
through envpool's async API, `--threads` threads' worth of pools at once: send to each, then recv);
"envpool-b", the same pools stepped one after another (send and recv per pool, i.e. a blocking
step), the baseline issue 5 describes and the only one before 2026-11-27: with one env per task it
runs on one thread while ours has two, so its ratios overstate ours; dm_control (`suite.load` envs stepped in a
Python loop; mt30/dmc-hard only). Every contender cycles through 8 random action arrays. The floor is the summed cost of the raw
`mj_step` substeps of the same mix (timed in C loops of many control steps through
`mujoco.mj_step(m, d, nstep)`), divided by the thread count. The floor runs MuJoCo without the
process-wide `mjcb_time` stage-timer callback that the mujoco Python package installs (~15% of a
DMC step here; the engine's threads skip it too, see csrc/envs/physics.h), so it is the cost of
raw `mj_step`. "floor2" is the same substeps actually run on `--threads` Python threads at once
(cost-balanced split, `mj_step` releases the GIL): what the threads of this machine deliver, as
opposed to the single-thread floor times the thread count.
Numbers are env-steps per second; ratios are medians of per-round ratios, the contenders being
timed back to back in each round (the machine's load drifts).
Last line: `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import glob
import json
import os
import platform
import statistics
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

import mtrl.envs as envs

# 30 standard DMC tasks of the covered domains, without the DMC-hard locomotion tasks (dog, and
# humanoid walk/run), plus humanoid-stand to make 30.
MT30 = ["acrobot-swingup", "acrobot-swingup_sparse", "ball_in_cup-catch", "cartpole-balance",
        "cartpole-balance_sparse", "cartpole-swingup", "cartpole-swingup_sparse",
        "cartpole-two_poles", "cartpole-three_poles", "cheetah-run", "finger-spin",
        "finger-turn_easy", "finger-turn_hard", "fish-upright", "fish-swim", "hopper-stand",
        "hopper-hop", "pendulum-swingup", "point_mass-easy", "point_mass-hard", "quadruped-walk",
        "quadruped-run", "reacher-easy", "reacher-hard", "swimmer-swimmer6", "swimmer-swimmer15",
        "walker-stand", "walker-walk", "walker-run", "humanoid-stand"]
DMC_HARD = ["dog-stand", "dog-walk", "dog-trot", "dog-run", "humanoid-stand", "humanoid-walk",
            "humanoid-run"]


def _timed(step, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return time.perf_counter() - start


def make_ours(tasks: list[str], epts: int, threads: int):
    pool = envs.make(tasks, envs_per_task=epts, backend="engine", num_threads=threads, seed=0)
    pool.reset()
    rng = np.random.default_rng(0)
    acts = [rng.uniform(-1, 1, (pool.num_envs, pool.action_dim)).astype(np.float32)
            for _ in range(8)]
    k = [0]

    def step():
        pool.step(acts[k[0] % 8])
        k[0] += 1

    return step, pool.close


def make_envpool(tasks: list[str], epts: int, threads: int, concurrent: bool = True):
    import envpool

    pools = []
    rng = np.random.default_rng(0)
    for t in tasks:
        spec = envs.resolve(t)
        p = envpool.make_gymnasium(spec.envpool_id, num_envs=epts, batch_size=epts, seed=0,
                                   num_threads=min(epts, threads))
        p.reset()
        acts = [rng.uniform(-1, 1, (epts,) + p.action_space.shape) for _ in range(8)]
        pools.append((p, acts))
    # One pool per task has its own worker threads: with a blocking step() per pool they run one
    # at a time (a task of one env uses one thread). envpool's async API (send, then recv) steps
    # `threads` pools at once, the thread budget ours gets. concurrent=False: the blocking steps
    # (issue 5's wording, "stepped from Python"), one pool per wave.
    per_wave = max(1, threads // min(epts, threads)) if concurrent else 1
    waves = [pools[i:i + per_wave] for i in range(0, len(pools), per_wave)]
    k = [0]

    def step():
        for wave in waves:
            for p, acts in wave:
                p.send(acts[k[0] % 8])
            for p, _ in wave:
                p.recv()
        k[0] += 1

    def close():
        for p, _ in pools:
            p.close()

    return step, close


def make_dm_envs(tasks: list[str]):
    from dm_control import suite

    out = []
    for t in tasks:
        domain, name = t.split("-", 1)
        env = suite.load(domain, name, task_kwargs={"random": 0})
        env.reset()
        out.append(env)
    return out


def make_dm_control(dm_envs):
    rng = np.random.default_rng(0)
    acts = [[rng.uniform(-1, 1, e.action_spec().shape) for _ in range(8)] for e in dm_envs]
    k = [0]

    def step():  # 8 random actions per env in turn, as ours and envpool get
        for e, a in zip(dm_envs, acts, strict=True):
            if e.step(a[k[0] % 8]).last():
                e.reset()
        k[0] += 1

    return step


@functools.cache
def _mjcb_time_slot():
    import ctypes

    import mujoco

    libs = glob.glob(os.path.join(os.path.dirname(mujoco.__file__), "libmujoco.so.*"))
    return ctypes.c_void_p.in_dll(ctypes.CDLL(libs[0]), "mjcb_time") if libs else None


@contextlib.contextmanager
def raw_mujoco():
    """Run MuJoCo without the mujoco Python package's `mjcb_time` callback (restored on exit).

    The package sets this process-wide callback on import so that `mjData.timer` is filled; it
    reads the clock ~20 times per `mj_step`. Left alone when the library symbol cannot be found.
    """
    slot = _mjcb_time_slot()
    if slot is None:
        yield
        return
    saved = slot.value
    slot.value = None
    try:
        yield
    finally:
        slot.value = saved


def make_floor(dm_envs, threads: int = 1):
    """One call = 25 control steps of one env per task in raw mj_step substeps (C loops); the
    per-env-step cost is the same however many envs a task has. ``threads`` > 1 splits the tasks
    over that many Python threads by measured cost (largest first to the least-loaded thread)
    and runs them at once."""
    import mujoco

    chunk = 25
    rngs = [np.random.default_rng(i) for i in range(threads)]

    def run(envs_, rng):
        for env in envs_:
            m, d = env.physics.model.ptr, env.physics.data.ptr
            d.ctrl[:] = rng.uniform(-1, 1, m.nu)
            mujoco.mj_step(m, d, env._n_sub_steps * chunk)
            if not np.all(np.isfinite(d.qvel)):
                env.reset()

    if threads == 1:
        def step():
            with raw_mujoco():
                run(dm_envs, rngs[0])

        return step, chunk
    cost = []
    with raw_mujoco():
        for env in dm_envs:
            start = time.perf_counter()
            run([env], rngs[0])
            cost.append(time.perf_counter() - start)
    shares: list[list] = [[] for _ in range(threads)]
    load = [0.0] * threads
    for i in np.argsort(cost)[::-1]:
        t = int(np.argmin(load))
        shares[t].append(dm_envs[i])
        load[t] += cost[i]
    pool = concurrent.futures.ThreadPoolExecutor(threads - 1)

    def step():
        with raw_mujoco():
            futures = [pool.submit(run, shares[t], rngs[t]) for t in range(1, threads)]
            run(shares[0], rngs[0])
            for f in futures:
                f.result()

    step.close = pool.shutdown  # type: ignore[attr-defined]
    return step, chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (well under 60 s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    q = args.quick
    iters, repeats = (25, 5) if q else (100, 9)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"threads={args.threads}; quick={q}")
    configs = [("mt30", MT30, 1), ("dmc-hard", DMC_HARD, 1), ("cheetah16", ["cheetah-run"], 16),
               ("humanoid16", ["humanoid-run"], 16)]
    results = {}
    print(f"{'config':11s} {'envs':>4s} {'ours':>9s} {'envpool':>9s} {'envpool-b':>9s} "
          f"{'dm_ctrl':>9s} {'floor':>9s} {'floor2':>9s} {'vs envpool':>10s} {'vs ep-b':>8s} "
          f"{'vs dm_c':>8s} {'floor frac':>10s} {'floor2 frac':>11s}")
    for name, tasks, epts in configs:
        n = len(tasks) * epts
        dm = make_dm_envs(tasks)
        ours, close_ours = make_ours(tasks, epts, args.threads)
        ep, close_ep = make_envpool(tasks, epts, args.threads)
        epb, close_epb = make_envpool(tasks, epts, args.threads, concurrent=False)
        dmc = make_dm_control(dm) if epts == 1 else None
        # (the floors get envs of their own: sharing dm_control's moved its envs between steps)
        floor, floor_steps = make_floor(make_dm_envs(tasks))
        dm2 = make_dm_envs(tasks * (1 if len(tasks) >= args.threads else args.threads))
        floor2, _ = make_floor(dm2, args.threads)
        for fn in (ours, ep, epb, floor, floor2) + ((dmc,) if dmc else ()):
            fn()  # warm-up
        # Interleaved rounds: each ratio compares timings taken back to back, which matters on a
        # shared machine whose load drifts; rates and ratios are medians over rounds.
        rounds = {"ours": [], "envpool": [], "envpool_b": [], "dm_control": [], "floor": [],
                  "floor2": []}
        for _ in range(repeats):
            rounds["ours"].append(n * iters / _timed(ours, iters))
            rounds["envpool"].append(n * iters / _timed(ep, iters))
            rounds["envpool_b"].append(n * iters / _timed(epb, iters))
            if dmc:
                k = max(3, iters // 5)
                rounds["dm_control"].append(n * k / _timed(dmc, k))
            k = max(1, iters // 25)
            rounds["floor"].append(
                len(tasks) * floor_steps * k / _timed(floor, k) * args.threads)
            rounds["floor2"].append(len(dm2) * floor_steps * k / _timed(floor2, k))
        getattr(floor2, "close", lambda: None)()
        close_ours()
        close_ep()
        close_epb()
        med = {k: (statistics.median(v) if v else float("nan")) for k, v in rounds.items()}
        ratio = {
            "envpool": statistics.median(
                o / e for o, e in zip(rounds["ours"], rounds["envpool"], strict=True)),
            "envpool_b": statistics.median(
                o / e for o, e in zip(rounds["ours"], rounds["envpool_b"], strict=True)),
            "dm_control": statistics.median(
                o / e for o, e in zip(rounds["ours"], rounds["dm_control"], strict=True))
            if dmc else float("nan"),
            "floor": statistics.median(
                o / e for o, e in zip(rounds["ours"], rounds["floor"], strict=True)),
            "floor2": statistics.median(
                o / e for o, e in zip(rounds["ours"], rounds["floor2"], strict=True)),
        }
        results[name] = ratio
        print(f"{name:11s} {n:4d} {med['ours']:9.0f} {med['envpool']:9.0f} "
              f"{med['envpool_b']:9.0f} {med['dm_control']:9.0f} {med['floor']:9.0f} "
              f"{med['floor2']:9.0f} {ratio['envpool']:9.2f}x {ratio['envpool_b']:7.2f}x "
              f"{ratio['dm_control']:7.2f}x {ratio['floor']:10.2f} {ratio['floor2']:11.2f}",
              flush=True)
    print("env-steps/s, medians over interleaved rounds; 'vs' columns and floor frac are "
          "medians of per-round ratios (ours / theirs)")
    print("RESULT " + json.dumps({
        "mt30_vs_envpool": round(results["mt30"]["envpool"], 3),
        "dmchard_vs_envpool": round(results["dmc-hard"]["envpool"], 3),
        "cheetah16_vs_envpool": round(results["cheetah16"]["envpool"], 3),
        "humanoid16_vs_envpool": round(results["humanoid16"]["envpool"], 3),
        "blocking_envpool": {k: round(v["envpool_b"], 3) for k, v in results.items()},
        "mt30_floor_fraction": round(results["mt30"]["floor"], 3),
        "mt30_floor2_fraction": round(results["mt30"]["floor2"], 3),
        "mt30_vs_dm_control": round(results["mt30"]["dm_control"], 3),
        "dmchard_vs_dm_control": round(results["dmc-hard"]["dm_control"], 3),
        "threads": args.threads, "quick": q,
        "mt30_tasks": len(MT30)}))


if __name__ == "__main__":
    main()
