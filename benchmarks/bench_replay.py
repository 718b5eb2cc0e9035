"""Replay buffer benchmark: mtrl.replay vs cpprb PER vs a NumPy ring buffer (issue 2 §5).

Workload: capacity 1,000,000 transitions, obs 64 float32, action 8 float32, reward, done, task id.
Rows: insert 16 and 1 transitions per call; sample 256 / 1024 (uniform and PER); update
priorities; the PER sample+update cycle; and the multi-task case (8 tasks x 125,000, stratified
PER; cpprb: one buffer per task with Python routing). Ours stores each observation once (the
next observation is a link, see mtrl/replay.py); cpprb and the NumPy ring store obs and next_obs.
(cpprb's ``next_of="obs"`` stores it once too, but only for a single env stream, which the
16-env inserts and the multi-task routing are not, so it is not used.) The NumPy ring samples
into arrays kept between calls, as ours fills its batch (before 2026-11-27 it allocated new ones).
TorchRL is tried and reported as unavailable when it does not import.

Prints one line per configuration (median over interleaved repeats, wall clock and this thread's
CPU time) and ends with ``RESULT {json}``: each ratio is ours-speed / theirs-speed (> 1: mtrl
faster) from wall-clock medians; ``cpu_time_ratios`` repeats them from CPU time, which excludes
time spent descheduled and so is steadier on a shared machine (both sides run on this thread).

    python benchmarks/bench_replay.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mtrl.replay import ReplayBuffer

CAP, OBS, ACT = 1_000_000, 64, 8
ALPHA, BETA = 0.6, 0.4


@dataclass(frozen=True)
class Timing:
    """Seconds per call: wall clock, and this thread's CPU time (excludes time descheduled)."""

    wall: float
    cpu: float

    def __truediv__(self, n: float) -> Timing:
        return Timing(self.wall / n, self.cpu / n)


def compare(fns: list[Callable[[], object]], iters: int, repeats: int) -> list[Timing]:
    """Median over `repeats` of the mean time per call over `iters` calls, for each function;
    their repeats are interleaved so that load drift on a shared machine hits all of them."""
    for fn in fns:
        fn()
    walls: list[list[float]] = [[] for _ in fns]
    cpus: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, wall, cpu in zip(fns, walls, cpus):
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(iters):
                fn()
            wall.append((time.perf_counter() - t0) / iters)
            cpu.append((time.thread_time() - c0) / iters)
    return [Timing(statistics.median(w), statistics.median(c)) for w, c in zip(walls, cpus)]


class Stream:
    """Observation streams of `n` envs: step t of env k sees pool row (t * n + k) % P."""

    def __init__(self, n: int, rng: np.random.Generator, pool: int = 4096) -> None:
        self.n = n
        self.pool = rng.standard_normal((pool + n, OBS)).astype(np.float32)
        self.act = rng.uniform(-1, 1, (pool + n, ACT)).astype(np.float32)
        self.rew = rng.standard_normal(pool + n).astype(np.float32)
        self.P = pool
        self.t = 0
        self.task = np.arange(n, dtype=np.int64) % 8
        self.false = np.zeros(n, bool)

    def step(self) -> tuple[np.ndarray, ...]:
        a = (self.t * self.n) % self.P
        b = ((self.t + 1) * self.n) % self.P
        self.t += 1
        return (self.task, self.pool[a:a + self.n], self.act[a:a + self.n], self.rew[a:a + self.n],
                self.false, self.false, self.pool[b:b + self.n])


class NumpyRing:
    """Uniform ring buffer, one NumPy array per field (the simple baseline)."""

    def __init__(self, cap: int) -> None:
        self.cap, self.ptr, self.size = cap, 0, 0
        self.obs = np.zeros((cap, OBS), np.float32)
        self.next_obs = np.zeros((cap, OBS), np.float32)
        self.act = np.zeros((cap, ACT), np.float32)
        self.rew = np.zeros(cap, np.float32)
        self.done = np.zeros(cap, np.float32)
        self.task = np.zeros(cap, np.int64)
        self.rng = np.random.default_rng(0)
        self._out: tuple[np.ndarray, ...] | None = None

    def add(self, task, obs, act, rew, term, trunc, next_obs) -> None:
        n = len(rew)
        if self.ptr + n <= self.cap:
            s = slice(self.ptr, self.ptr + n)
        else:
            s = (self.ptr + np.arange(n)) % self.cap
        self.obs[s] = obs
        self.act[s] = act
        self.rew[s] = rew
        self.done[s] = term
        self.next_obs[s] = next_obs
        self.task[s] = task
        self.ptr = (self.ptr + n) % self.cap
        self.size = min(self.size + n, self.cap)

    def sample(self, b: int) -> tuple[np.ndarray, ...]:
        # Into arrays kept between calls (as ours fills its batch): fancy indexing would
        # allocate six new arrays per call, work ours is spared.
        i = self.rng.integers(0, self.size, b)
        arrays = (self.obs, self.act, self.rew, self.next_obs, self.done, self.task)
        if self._out is None or len(self._out[0]) != b:
            self._out = tuple(np.empty((b,) + a.shape[1:], a.dtype) for a in arrays)
        for a, out in zip(arrays, self._out):
            np.take(a, i, axis=0, out=out, mode="clip")  # ("raise" buffers the whole result)
        return self._out


def cpprb_buffer(cap: int):
    from cpprb import PrioritizedReplayBuffer

    return PrioritizedReplayBuffer(cap, {"obs": {"shape": OBS}, "act": {"shape": ACT},
                                         "rew": {}, "next_obs": {"shape": OBS}, "done": {},
                                         "task": {"dtype": np.int64}}, alpha=ALPHA)


def cpprb_add(rb, step) -> None:
    task, obs, act, rew, term, _, next_obs = step
    rb.add(obs=obs, act=act, rew=rew, next_obs=next_obs, done=term, task=task)


def fill_ours(buf: ReplayBuffer, n_steps: int, stream: Stream) -> None:
    for _ in range(n_steps):
        buf.add(*stream.step())


def fill_cpprb(rb, total: int, rng: np.random.Generator, chunk: int = 10_000) -> None:
    for _ in range(total // chunk):
        rb.add(obs=rng.standard_normal((chunk, OBS), np.float32),
               act=rng.standard_normal((chunk, ACT), np.float32),
               rew=rng.standard_normal(chunk, np.float32),
               next_obs=rng.standard_normal((chunk, OBS), np.float32),
               done=np.zeros(chunk, np.float32), task=np.zeros(chunk, np.int64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (< 60 s)")
    args = ap.parse_args()
    reps = 5 if args.quick else 11
    scale = 1 if args.quick else 2
    rng = np.random.default_rng(0)

    result: dict[str, float] = {}
    cpu_ratio: dict[str, float] = {}

    def row(key: str, name: str, ours: Timing, other_name: str, other: Timing) -> None:
        result[key] = other.wall / ours.wall
        cpu_ratio[key] = round(other.cpu / ours.cpu, 3)
        print(f"{name:<34} ours {ours.wall * 1e6:9.1f} us (cpu {ours.cpu * 1e6:8.1f})   "
              f"{other_name:<9} {other.wall * 1e6:9.1f} us (cpu {other.cpu * 1e6:8.1f})   "
              f"ratio {result[key]:6.2f}x (cpu {cpu_ratio[key]:5.2f}x)", flush=True)

    print(f"machine: {platform.machine()} {platform.processor() or ''}, python "
          f"{platform.python_version()}, capacity {CAP}, obs {OBS}, act {ACT}")
    try:
        import torchrl  # noqa: F401

        print("torchrl: imports (not benchmarked here)")
    except Exception as e:  # noqa: BLE001 - report why the optional comparison is missing
        print(f"torchrl: unavailable ({type(e).__name__}: {str(e)[:80]})")

    # ---------------------------------------------------------------- inserts
    for n, key in ((16, "insert16"), (1, "insert1")):
        stream = Stream(n, rng)
        ours = ReplayBuffer(8, CAP // 8, OBS, ACT, n, alpha=ALPHA)
        ring = NumpyRing(CAP)
        rb = cpprb_buffer(CAP)
        iters = (2000 if n == 16 else 5000) * scale
        t_ours, t_np, t_cp = (t / n for t in compare(
            [lambda: ours.add(*stream.step()), lambda: ring.add(*stream.step()),
             lambda: cpprb_add(rb, stream.step())], iters, reps))
        name = f"insert {n}/call (per transition)"
        row(f"{key}_vs_numpy", name, t_ours, "numpy", t_np)
        row(f"{key}_vs_cpprb", name, t_ours, "cpprb", t_cp)
        del ours, ring, rb

    # ---------------------------------------------------------------- single task, 1M
    stream = Stream(16, rng)
    ours = ReplayBuffer(1, CAP, OBS, ACT, 16, alpha=ALPHA)
    stream.task = np.zeros(16, np.int64)
    fill_ours(ours, CAP // 16, stream)
    ring = NumpyRing(CAP)
    for _ in range(CAP // 10_000):
        ring.add(np.zeros(10_000, np.int64), rng.standard_normal((10_000, OBS), np.float32),
                 rng.standard_normal((10_000, ACT), np.float32),
                 rng.standard_normal(10_000, np.float32), np.zeros(10_000, bool), None,
                 rng.standard_normal((10_000, OBS), np.float32))
    rb = cpprb_buffer(CAP)
    fill_cpprb(rb, CAP, rng)
    # Random priorities everywhere, so PER trees are not trivially uniform.
    ours.update_priorities(np.arange(CAP), rng.exponential(1.0, CAP))
    rb.update_priorities(np.arange(CAP), rng.exponential(1.0, CAP))
    it = 100 * scale
    for b in (256, 1024):
        out = ours.allocate_batch(b)
        t_o, t_n = compare([lambda: ours.sample(b, out=out), lambda: ring.sample(b)], it, reps)
        row(f"uniform_{b}_vs_numpy", f"uniform sample {b}", t_o, "numpy", t_n)
        t_o, t_c = compare([lambda: ours.sample(b, prioritized=True, beta=BETA, out=out),
                            lambda: rb.sample(b, beta=BETA)], it, reps)
        row(f"per_{b}_vs_cpprb", f"PER sample {b}", t_o, "cpprb", t_c)
        idx_o = ours.sample(b, prioritized=True, out=out).index.copy()
        idx_c = rb.sample(b)["indexes"]
        pri = rng.exponential(1.0, b)
        t_o, t_c = compare([lambda: ours.update_priorities(idx_o, pri),
                            lambda: rb.update_priorities(idx_c, pri)], it, reps)
        row(f"update_{b}_vs_cpprb", f"update priorities {b}", t_o, "cpprb", t_c)

        def cycle_ours() -> None:
            s = ours.sample(b, prioritized=True, beta=BETA, out=out)
            ours.update_priorities(s.index, pri)

        def cycle_cpprb() -> None:
            s = rb.sample(b, beta=BETA)
            rb.update_priorities(s["indexes"], pri)

        t_o, t_c = compare([cycle_ours, cycle_cpprb], it, reps)
        row(f"cycle_{b}_vs_cpprb", f"PER sample+update {b}", t_o, "cpprb", t_c)
    del ours, ring, rb

    # ---------------------------------------------------------------- multi-task, 8 x 125k
    T, cap_t, B = 8, CAP // 8, 1024
    stream = Stream(16, rng)
    ours = ReplayBuffer(T, cap_t, OBS, ACT, 16, alpha=ALPHA)
    fill_ours(ours, CAP // 16, stream)
    ours.update_priorities(np.arange(CAP), rng.exponential(1.0, CAP))
    rbs = [cpprb_buffer(cap_t) for _ in range(T)]
    for r in rbs:
        fill_cpprb(r, cap_t, rng, chunk=cap_t // 5)
        r.update_priorities(np.arange(cap_t), rng.exponential(1.0, cap_t))
    pri = rng.exponential(1.0, B)
    out = ours.allocate_batch(B)

    def mt_ours() -> None:
        s = ours.sample(B, stratified=True, prioritized=True, beta=BETA, out=out)
        ours.update_priorities(s.index, pri)

    def mt_cpprb() -> None:
        per = B // T
        samples = [r.sample(per, beta=BETA) for r in rbs]
        batch = {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}
        for t, r in enumerate(rbs):  # route the new priorities back to each task's buffer
            r.update_priorities(batch["indexes"][t * per:(t + 1) * per],
                                pri[t * per:(t + 1) * per])

    t_o, t_c = compare([mt_ours, mt_cpprb], it, reps)
    row("mt_cycle_1024_vs_cpprb", "8-task stratified PER cycle 1024", t_o, "cpprb x8", t_c)
    out = {k: round(v, 3) for k, v in result.items()}
    out["cpu_time_ratios"] = cpu_ratio
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
