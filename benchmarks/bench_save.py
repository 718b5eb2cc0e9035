"""Cost of durable saves: ReplayBuffer.save and a laptop-preset checkpoint, with and without
the fsyncs of ``mtrl._atomic.replace_dir`` (the files and directories of the new copy before
its renames, the parent after them).

"without" is the previous behaviour (the fsync helpers replaced by no-ops in this process): the
save returns once the data is in the page cache and the kernel writes it back later. Before each
timed save ``os.sync()`` (untimed) writes back what earlier saves left dirty, so every save
starts from a clean page cache and "with" does not pay for the write-back of a "without" run.
Runs alternate (with, without, with, ...); the median of ``--repeats`` runs each is printed.

    python benchmarks/bench_save.py [--dir DIR] [--repeats 3] [--replay-mb 200]

Ends with ``RESULT {json}``: seconds per save (median) and the ratio with / without.
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
                  envs_per_task: int, seed: int = 0) -> ReplayBuffer:
    """A buffer whose every slot holds random transitions (no episode ends)."""
    num_envs = num_tasks * envs_per_task
    buf = ReplayBuffer(num_tasks, capacity_per_task, obs_dim, action_dim, num_envs, seed=seed)
    rng = np.random.default_rng(seed)
    task = np.repeat(np.arange(num_tasks), envs_per_task)
    blocks = [(rng.standard_normal((num_envs, obs_dim), np.float32),
               rng.uniform(-1, 1, (num_envs, action_dim)).astype(np.float32),
               rng.standard_normal(num_envs).astype(np.float32)) for _ in range(16)]
    no = np.zeros(num_envs, bool)
    for k in range(capacity_per_task // envs_per_task + 1):
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


def laptop_checkpoint(root: Path):
    """A save function writing a checkpoint as the laptop preset's run does: its agent's full
    state and its replay shape (4 tasks x 100,000, padded obs/action dims of its tasks)."""
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
                        num_envs // len(tasks))
    iteration = [0]

    def save():
        iteration[0] += 1
        payload = {"config": {}, "iteration": iteration[0], "agent": agent.full_state_dict()}
        ckpt.save_checkpoint(root, iteration[0], payload, lambda p: buf.save(str(p)),
                             cfg.keep_checkpoints)

    return save, buf.nbytes


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to save (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--replay-mb", type=float, default=200.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mtrl-bench-save-", dir=args.dir))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}; saving under {root}")
    result: dict[str, float] = {}
    try:
        # ReplayBuffer.save: 4 tasks, obs 64, action 8; 314 bytes per slot on disk.
        per_task = int(args.replay_mb * 1e6 / 314 / 4)
        buf = filled_buffer(4, per_task, 64, 8, 16)
        replay_dir = root / "replay"
        buf.save(str(replay_dir))
        cases = [("replay_save", lambda: buf.save(str(replay_dir)), replay_dir)]
        save_ckpt, _ = laptop_checkpoint(root / "run")
        save_ckpt()
        cases.append(("laptop_checkpoint", save_ckpt, root / "run" / "checkpoints"))
        for key, save, where in cases:
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeats):
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
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
