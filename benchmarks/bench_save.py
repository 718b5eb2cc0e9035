"""Cost of saves: ReplayBuffer.save and a laptop-preset checkpoint with and without the fsyncs
of ``mtrl._atomic.replace_dir``, and replay save size/time against the fill fraction, format
version 1 (every slot at full capacity) against version 2 (the stored transitions only).

fsync cases: "without" is the behaviour before the fsyncs (the fsync helpers replaced by no-ops
in this process): the save returns once the data is in the page cache and the kernel writes it
back later. Before each timed save ``os.sync()`` (untimed) writes back what earlier saves left
dirty, so every save starts from a clean page cache and "with" does not pay for the write-back of
a "without" run. Runs alternate (with, without, with, ...); the median of ``--repeats`` runs
each is printed.

fill cases: one buffer of a paper-like shape (``--capacity`` x 1 task, obs 223, action 38: the
padded dims of dmc-hard), filled in steps to each ``--fills`` fraction (16 envs, an episode end
every 1,000 steps per env, as DMC's time limit); at each fill it is saved (durably, as a
checkpoint does) into a new directory in version 1 and version 2, alternating, ``--repeats``
times each, then each save is loaded back (``ReplayBuffer.load``; the files are then in the page
cache: a warm read) and checked to sample like the original. Bytes on disk, median save and load
seconds, and the ratios v1 / v2 are printed.

paper case (``--cases paper``, not in the default run): a ``--preset paper`` checkpoint for
dmc-hard at iteration 5,000 (the 4096-wide agent's full state, 7 x 1M replay holding 5,000
transitions per task), saved once with each replay format.

    python benchmarks/bench_save.py [--dir DIR] [--repeats 3] [--replay-mb 200]
        [--cases fsync fill paper] [--capacity 1000000] [--fills 0.005 0.1 1.0]

Ends with ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import mtrl._atomic
from mtrl import checkpoint as ckpt
from mtrl.replay import ReplayBuffer


def filled_buffer(num_tasks: int, capacity_per_task: int, obs_dim: int, action_dim: int,
                  envs_per_task: int, seed: int = 0, stored_per_task: int | None = None
                  ) -> ReplayBuffer:
    """A buffer whose every slot (or ``stored_per_task`` slots, rounded up to whole calls)
    holds random transitions (no episode ends)."""
    num_envs = num_tasks * envs_per_task
    buf = ReplayBuffer(num_tasks, capacity_per_task, obs_dim, action_dim, num_envs, seed=seed)
    rng = np.random.default_rng(seed)
    task = np.repeat(np.arange(num_tasks), envs_per_task)
    blocks = [(rng.standard_normal((num_envs, obs_dim), np.float32),
               rng.uniform(-1, 1, (num_envs, action_dim)).astype(np.float32),
               rng.standard_normal(num_envs).astype(np.float32)) for _ in range(16)]
    no = np.zeros(num_envs, bool)
    stored = capacity_per_task if stored_per_task is None else stored_per_task
    for k in range(-(-stored // envs_per_task) if stored < capacity_per_task
                   else capacity_per_task // envs_per_task + 1):
        obs, action, reward = blocks[k % len(blocks)]
        next_obs = blocks[(k + 1) % len(blocks)][0]  # the next call's obs: stored once
        buf.add(task, obs, action, reward, no, no, next_obs)
    return buf


def timed(save, fsyncs: bool) -> float:
    os.sync()  # untimed: start from a clean page cache
    real = mtrl._atomic._fsync_tree, mtrl._atomic.fsync_dir
    if not fsyncs:
        mtrl._atomic._fsync_tree = mtrl._atomic.fsync_dir = lambda path: None
    try:
        t0 = time.perf_counter()
        save()
        return time.perf_counter() - t0
    finally:
        mtrl._atomic._fsync_tree, mtrl._atomic.fsync_dir = real


def laptop_checkpoint(root: Path, stored_per_task: int | None = None, version: int = 2):
    """A save function writing a checkpoint as the laptop preset's run does: its agent's full
    state and its replay shape (4 tasks x 100,000, padded obs/action dims of its tasks), full or
    holding ``stored_per_task`` transitions per task, saved in replay format ``version``."""
    import mtrl.envs
    from mtrl.agent import BRCAgent
    from mtrl.config import laptop_preset, resolve_tasks

    cfg = laptop_preset()
    tasks = resolve_tasks(cfg.env.tasks, mtrl.envs.available_tasks())
    pool = mtrl.envs.make(tasks, seed=0)
    obs_dim, action_dim, num_envs = pool.obs_dim, pool.action_dim, pool.num_envs
    pool.close()
    agent = BRCAgent(cfg.agent, obs_dim, action_dim, len(tasks))
    buf = filled_buffer(len(tasks), cfg.buffer.capacity_per_task, obs_dim, action_dim,
                        num_envs // len(tasks), stored_per_task=stored_per_task)
    iteration = [0]

    def save():
        iteration[0] += 1
        payload = {"config": {}, "iteration": iteration[0], "agent": agent.full_state_dict()}
        ckpt.save_checkpoint(root, iteration[0], payload,
                             lambda p: buf.save(str(p), version=version), cfg.keep_checkpoints)

    return save, buf.nbytes


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Filler:
    """Adds transitions of a paper-like single-task stream to ``buf``, ``num_envs`` per call:
    random obs/actions (reused blocks), next obs = the following call's obs, and each env's
    episode truncated every ``episode`` steps (its final obs goes to the final-obs pool)."""

    def __init__(self, buf: ReplayBuffer, episode: int = 1000, seed: int = 0) -> None:
        self.buf, self.episode, self.steps = buf, episode, 0
        n, o, a = buf.num_envs, buf.obs_dim, buf.action_dim
        rng = np.random.default_rng(seed)
        self.task = np.zeros(n, np.int64)
        self.blocks = [(rng.standard_normal((n, o), np.float32),
                        rng.uniform(-1, 1, (n, a)).astype(np.float32),
                        rng.standard_normal(n).astype(np.float32)) for _ in range(16)]
        self.no = np.zeros(n, bool)
        self.ends = (np.arange(n) * 37 % episode)  # envs end their episodes at different steps

    def fill_to(self, stored: int) -> None:
        buf = self.buf
        while len(buf) < stored:
            k = self.steps
            obs, action, reward = self.blocks[k % len(self.blocks)]
            next_obs = self.blocks[(k + 1) % len(self.blocks)][0]
            trunc = (k % self.episode) == self.ends
            buf.add(self.task, obs, action, reward, self.no, trunc, next_obs)
            self.steps += 1


def fill_cases(root: Path, capacity: int, fills: list[float], repeats: int,
               result: dict[str, float]) -> None:
    num_envs = 16
    print(f"\nreplay save/load against fill: 1 task x {capacity:,} slots, obs 223, action 38, "
          f"{num_envs} envs; median of {repeats} (save: durable, into a new directory; "
          f"load: warm page cache)")
    print(f"{'fill':>6} {'stored':>9} | {'v1 MB':>8} {'v2 MB':>8} {'ratio':>6} | "
          f"{'v1 save s':>9} {'v2 save s':>9} {'ratio':>6} | {'v1 load s':>9} {'v2 load s':>9} "
          f"{'ratio':>6}")
    buf = ReplayBuffer(1, capacity, 223, 38, num_envs, seed=0)
    filler = Filler(buf)
    for fill in sorted(fills):
        filler.fill_to(min(capacity, max(1, round(fill * capacity))))
        times: dict[tuple[str, int], list[float]] = {}
        size: dict[int, int] = {}
        for rep in range(repeats):
            for version in (1, 2):
                where = root / f"fill-v{version}-{rep}"
                os.sync()  # untimed: start from a clean page cache
                t0 = time.perf_counter()
                buf.save(str(where), version=version)
                times.setdefault(("save", version), []).append(time.perf_counter() - t0)
                size[version] = du(where)
        for rep in range(repeats):
            for version in (1, 2):
                where = root / f"fill-v{version}-{rep}"
                t0 = time.perf_counter()
                loaded = ReplayBuffer.load(str(where))
                times.setdefault(("load", version), []).append(time.perf_counter() - t0)
                if rep == 0:  # the load restored the buffer: same samples from the same state
                    a, b = buf.sample(256, prioritized=True), loaded.sample(256, prioritized=True)
                    assert np.array_equal(a.index, b.index) and np.array_equal(a.obs, b.obs)
                    buf.load_into(str(where))  # undo the draw above: back to the saved state
                loaded.close()
                shutil.rmtree(where)
        med = {k: statistics.median(v) for k, v in times.items()}
        key = f"fill_{fill:g}"
        result.update({
            f"{key}_stored": len(buf),
            f"{key}_v1_mb": round(size[1] / 1e6, 2), f"{key}_v2_mb": round(size[2] / 1e6, 2),
            f"{key}_v1_save_s": round(med["save", 1], 3), f"{key}_v2_save_s": round(med["save", 2], 3),
            f"{key}_v1_load_s": round(med["load", 1], 3), f"{key}_v2_load_s": round(med["load", 2], 3),
        })
        print(f"{fill:6.1%} {len(buf):9,} | {size[1] / 1e6:8.1f} {size[2] / 1e6:8.1f} "
              f"{size[1] / size[2]:6.1f} | {med['save', 1]:9.3f} {med['save', 2]:9.3f} "
              f"{med['save', 1] / med['save', 2]:6.1f} | {med['load', 1]:9.3f} "
              f"{med['load', 2]:9.3f} {med['load', 1] / med['load', 2]:6.1f}   runs: "
              + "  ".join(f"{op} v{v} {[round(t, 3) for t in times[op, v]]}"
                          for op in ("save", "load") for v in (1, 2)), flush=True)
    buf.close()
    # The laptop preset's run checkpoints at iterations 5,000, 10,000 and 15,000, one env step
    # per task per iteration: 5,000, 10,000 and 15,000 of its 100,000 slots per task.
    print(f"\nlaptop-preset checkpoint (agent state + 4 x 100,000 replay) at its run's checkpoint "
          f"iterations; median of {repeats} durable saves")
    for stored in (5_000, 10_000, 15_000):
        line = f"{stored:6,} per task |"
        for version in (1, 2):
            save, _ = laptop_checkpoint(root / f"run-v{version}", stored, version)
            secs = []
            for _ in range(repeats):
                os.sync()
                t0 = time.perf_counter()
                save()
                secs.append(time.perf_counter() - t0)
            last = sorted((root / f"run-v{version}" / "checkpoints").iterdir())[-1]
            mb, med = du(last) / 1e6, statistics.median(secs)
            result[f"laptop_ckpt_{stored}_v{version}_mb"] = round(mb, 2)
            result[f"laptop_ckpt_{stored}_v{version}_save_s"] = round(med, 3)
            line += f" v{version} {mb:6.1f} MB {med:6.3f} s |"
            shutil.rmtree(root / f"run-v{version}")
        print(line, flush=True)


def paper_case(root: Path, result: dict[str, float]) -> None:
    """A --preset paper checkpoint for dmc-hard (the agent's full state: width 4096, 7 tasks,
    optimiser moments allocated) at iteration 5,000, the first updates (7 x 1,000,000 replay
    slots, 5,000 transitions per task), saved once in replay format version 2 and once in
    version 1, durably."""
    import torch

    import mtrl.envs
    from mtrl.agent import BRCAgent
    from mtrl.config import paper_preset, resolve_tasks

    cfg = paper_preset()
    tasks = resolve_tasks(("dmc-hard",), mtrl.envs.available_tasks())
    pool = mtrl.envs.make(tasks, seed=0)
    obs_dim, action_dim, num_envs = pool.obs_dim, pool.action_dim, pool.num_envs
    pool.close()
    t0 = time.perf_counter()
    agent = BRCAgent(cfg.agent, obs_dim, action_dim, len(tasks))
    print(f"\npaper preset, dmc-hard ({len(tasks)} tasks, obs {obs_dim}, action {action_dim}): "
          f"agent built in {time.perf_counter() - t0:.0f} s", flush=True)
    # The optimisers' moments exist from the first update on (they are allocated by the first
    # step): one step with zero gradients gives them their size without a 4096-wide update.
    for opt in (agent.critic_optimizer, agent.actor_optimizer, agent.temperature_optimizer):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
    buf = filled_buffer(len(tasks), cfg.buffer.capacity_per_task, obs_dim, action_dim,
                        num_envs // len(tasks), stored_per_task=5_000)
    payload = {"config": {}, "iteration": 5_000, "agent": agent.full_state_dict()}
    for version in (2, 1):
        run = root / f"paper-v{version}"
        os.sync()
        t0 = time.perf_counter()
        ckpt.save_checkpoint(run, 5_000, payload, lambda p: buf.save(str(p), version=version), 1)
        secs = time.perf_counter() - t0
        where = ckpt.list_checkpoints(run)[-1]
        gb, replay_gb = du(where) / 1e9, du(where / "replay") / 1e9
        result[f"paper_ckpt_v{version}_gb"] = round(gb, 3)
        result[f"paper_ckpt_v{version}_replay_gb"] = round(replay_gb, 3)
        result[f"paper_ckpt_v{version}_save_s"] = round(secs, 2)
        print(f"  replay format v{version}: checkpoint {gb:6.3f} GB (replay {replay_gb:6.3f} GB), "
              f"saved in {secs:6.2f} s", flush=True)
        shutil.rmtree(run)
    buf.close()


def fsync_cases(root: Path, replay_mb: float, repeats: int, result: dict[str, float]) -> None:
    # ReplayBuffer.save: 4 tasks, obs 64, action 8; 314 bytes per slot on disk.
    per_task = int(replay_mb * 1e6 / 314 / 4)
    buf = filled_buffer(4, per_task, 64, 8, 16)
    replay_dir = root / "replay"
    buf.save(str(replay_dir))
    cases = [("replay_save", lambda: buf.save(str(replay_dir)), replay_dir)]
    save_ckpt, _ = laptop_checkpoint(root / "run")
    save_ckpt()
    cases.append(("laptop_checkpoint", save_ckpt, root / "run" / "checkpoints"))
    for key, save, where in cases:
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeats):
            for fsyncs in (True, False):
                times[fsyncs].append(timed(save, fsyncs))
        with_s, without_s = (statistics.median(times[f]) for f in (True, False))
        size = du(where) / 1e6 if key == "replay_save" else du(sorted(where.iterdir())[-1]) / 1e6
        result[f"{key}_with_fsync_s"] = round(with_s, 3)
        result[f"{key}_without_fsync_s"] = round(without_s, 3)
        result[f"{key}_ratio"] = round(with_s / without_s, 2)
        result[f"{key}_mb"] = round(size, 1)
        print(f"{key:<18} {size:7.1f} MB   with fsync {with_s:6.3f} s "
              f"{[round(t, 3) for t in times[True]]}   without {without_s:6.3f} s "
              f"{[round(t, 3) for t in times[False]]}   ratio {with_s / without_s:5.2f}x",
              flush=True)
    buf.close()
    shutil.rmtree(replay_dir, ignore_errors=True)
    shutil.rmtree(root / "run", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to save (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--replay-mb", type=float, default=200.0)
    ap.add_argument("--cases", nargs="+", choices=("fsync", "fill", "paper"),
                    default=["fsync", "fill"], help="paper: a --preset paper checkpoint, v1 "
                    "against v2 (builds the 4096-wide agent: minutes, ~3 GB of memory)")
    ap.add_argument("--capacity", type=int, default=1_000_000, help="fill cases: slots")
    ap.add_argument("--fills", type=float, nargs="+", default=[0.005, 0.1, 1.0])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mtrl-bench-save-", dir=args.dir))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}; saving under {root}")
    result: dict[str, float] = {}
    try:
        if "fsync" in args.cases:
            fsync_cases(root, args.replay_mb, args.repeats, result)
        if "fill" in args.cases:
            fill_cases(root, args.capacity, args.fills, args.repeats, result)
        if "paper" in args.cases:
            paper_case(root, result)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
