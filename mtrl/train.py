"""Train one BRC agent on many tasks at once: ``python -m mtrl.train`` (brc-spec §6, §14).

With no arguments it runs the ``laptop`` preset (4 cheap DMC tasks, 256-wide critic, ~15-25 min on
2 CPU cores); ``--preset paper`` is the released configuration. ``--help`` lists every field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import select
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mtrl import _core, _startup
from mtrl import checkpoint as ckpt
from mtrl._atomic import replace_file
from mtrl.agent import METRIC_NAMES, Batch, BRCAgent
from mtrl.config import PRESETS, AgentConfig, TrainConfig, group_tasks, resolve_tasks
from mtrl.logger import Logger
from mtrl.networks import critic_forward_flops
from mtrl.normalizer import RewardNormalizer
from mtrl.precision import check_tf32_device

if TYPE_CHECKING:  # (train() imports it when it runs)
    from mtrl.replay import ReplayBuffer


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r} is not a torch device ({e})") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: mtrl runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and (
            device.index >= torch.cuda.device_count()):
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s)")
    return device


def check_feasible(cfg: TrainConfig, num_tasks: int) -> int:
    """Reject configurations that cannot run; returns the batch size (§2.1)."""
    batch_size = cfg.buffer.resolved_batch_size(num_tasks)
    first_update_size = min(cfg.random_iterations + 1, cfg.buffer.capacity_per_task) * num_tasks
    if cfg.random_iterations < cfg.iterations and batch_size > first_update_size:
        raise ValueError(
            f"impossible config: batch_size {batch_size} is larger than the {first_update_size} "
            f"transitions stored when updates start (random_iterations={cfg.random_iterations}, "
            f"{num_tasks} task(s)); raise random_iterations or lower buffer.batch_size")
    return batch_size


def check_networks_fit(agent: AgentConfig, obs_dim: int, action_dim: int,
                       device: torch.device) -> None:
    """Refuse network sizes whose parameters cannot fit the device's free memory, before torch
    tries to allocate them (a width of 10^8 grew past 5 GB while ignoring SIGTERM; a larger one
    failed inside torch with an allocator traceback). A lower bound: each network's weight
    matrices, float32, with the gradient and AdamW's two moments (and the critic's target copy);
    biases, norms, embeddings and activations are left out, so only sizes that cannot run are
    refused."""
    def weights(inputs: int, width: int, depth: int, outputs: int, members: int) -> int:
        return members * (inputs * width + depth * 2 * width * width + width * outputs)

    critic = weights(obs_dim + action_dim + agent.embedding_dim, agent.critic_width,
                     agent.critic_depth, agent.num_atoms, agent.ensemble_size)
    actor = weights(obs_dim + agent.embedding_dim, agent.actor_width, agent.actor_depth,
                    2 * action_dim, 1)
    need = 4 * (5 * critic + 4 * actor)
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        available = _core._available_memory_bytes()
    if need > available:
        raise ValueError(
            f"the networks need at least {need / 2**30:.3g} GiB (critic_width="
            f"{agent.critic_width}, critic_depth={agent.critic_depth}, ensemble_size="
            f"{agent.ensemble_size}, actor_width={agent.actor_width}, actor_depth="
            f"{agent.actor_depth}), more than the {available / 2**30:.3g} GiB free on {device}")


def to_batch(host: Any, device: torch.device) -> Batch:
    """ReplayBatch (NumPy, pinned on GPU runs) -> Batch on ``device`` (non-blocking copies)."""
    def t(x):
        return torch.from_numpy(x).to(device, non_blocking=True)
    return Batch(obs=t(host.obs), action=t(host.action), reward=t(host.reward),
                 next_obs=t(host.next_obs), mask=t(host.mask), discount=t(host.discount),
                 task_id=t(host.task_id))


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    By default glibc serves blocks over 128 KB with fresh mappings and trims the heap top above
    256 KB, so the 0.25-1 MB activations of every update are mapped, zero-filled and faulted in
    again each time (measured at width 512, one thread: ~200 page faults and ~0.5 ms of kernel
    time per update). Raising both thresholds (64 MB / 256 MB) keeps them in the heap. Affects
    this process's allocator only; returns False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc malloc.h
    return bool(mallopt(m_trim_threshold, 256 << 20)) and bool(mallopt(m_mmap_threshold, 64 << 20))


EVAL_STEP_LIMIT = 10_000
"""Eval episode cap for tasks that have no time limit of their own."""


def evaluate(agent: BRCAgent, pool, tasks: list[str], device: torch.device, seed: int) -> dict:
    """Deterministic episodes (tanh(mean)) on the eval pool, one per env, ``envs_per_task`` per
    task; per-task mean return and success at any step (§6.2; no over-counting of finished envs)."""
    pool.seed(seed)
    obs = pool.reset()
    n = pool.num_envs
    task_ids = torch.from_numpy(pool.task_ids).to(device)
    returns, success, done = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
    # Tasks without a time limit (max_episode_steps 0, e.g. some gym ids) are cut off at
    # EVAL_STEP_LIMIT steps so that an evaluation always ends.
    limits = np.asarray(pool.max_episode_steps)
    limit = EVAL_STEP_LIMIT if (limits <= 0).any() else int(limits.max())
    for _ in range(limit):
        if done.all():
            break
        action = agent.act(torch.from_numpy(obs).to(device), task_ids, deterministic=True)
        out = pool.step(action.cpu().numpy())
        live = ~done
        returns[live] += out.reward[live]
        success[live] |= out.success[live]
        done |= out.terminated | out.truncated
        obs = out.obs
    result = {}
    for t, name in enumerate(tasks):
        rows = pool.task_ids == t
        result[f"{name}/return"] = float(returns[rows].mean())
        result[f"{name}/success"] = float(success[rows].mean())
    for name in tasks:  # §9.3: DMC reported as return / 1000, MetaWorld as success rate
        if name.startswith("dmc:"):
            result[f"{name}/score"] = result[f"{name}/return"] / 1000.0
        elif name.startswith("metaworld:"):
            result[f"{name}/score"] = result[f"{name}/success"]
    result["return_mean"] = float(np.mean([result[f"{t}/return"] for t in tasks]))
    result["success_mean"] = float(np.mean([result[f"{t}/success"] for t in tasks]))
    scores = [result[f"{t}/score"] for t in tasks if f"{t}/score" in result]
    if scores:
        result["score_mean"] = float(np.mean(scores))
    return result


class _Progress:
    """tqdm bar on a TTY (or when asked), plain periodic lines otherwise."""

    def __init__(self, mode: str, total: int, start: int, every: int):
        self.bar = None
        self.every = every
        if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True)

    def update(self, iteration: int, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if iteration % 50 == 0:
                self.bar.set_postfix(info, refresh=False)
        elif iteration % self.every == 0:
            print(f"[mtrl] iteration {iteration} " + " ".join(f"{k}={v}" for k, v in info.items()),
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _count(n: int) -> str:
    """137.6M, 24.1k, 512."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def startup_summary(cfg: TrainConfig, tasks: list[str], task_groups: dict[str, list[str]],
                    device: torch.device, agent: BRCAgent, buffer: ReplayBuffer, batch_size: int,
                    resumed_from: Path | None, iteration: int) -> list[str]:
    """What a run is about to do, printed once before the first iteration: run dir and device,
    tasks, network and replay sizes, schedule; and a note when a wide critic runs on a CPU."""
    a = cfg.agent
    precision = "bf16 critic" if a.bf16 else "float32"
    precision += " + TF32 matmuls" if a.tf32 else ""
    precision += ", torch.compile" if a.compile else ""
    where = f"{device}" + (f", {torch.get_num_threads()} torch thread(s)"
                           if device.type == "cpu" else "")
    start = (f"resuming {resumed_from.name} at iteration {iteration:,}" if resumed_from
             else "new run")
    shown = ", ".join(tasks) if len(tasks) <= 8 else (
        ", ".join(tasks[:6]) + f", ... ({len(tasks) - 6} more)")
    sets = "" if set(task_groups) == {"other"} else f" from {', '.join(task_groups)}"
    critic = sum(p.numel() for p in agent.critic.parameters())
    actor = sum(p.numel() for p in agent.actor.parameters())
    every = (f"checkpoint every {cfg.checkpoint_interval:,} (last {cfg.keep_checkpoints} kept)"
             if cfg.checkpoint_interval else "checkpoint at the end")
    lines = [
        f"[mtrl] run dir {cfg.run_dir}: {start}; device {where}; {precision}",
        f"[mtrl] {len(tasks)} task(s){sets}: {shown}",
        f"[mtrl] critic: {a.ensemble_size} x BroNet, width {a.critic_width}, "
        f"{a.critic_depth} blocks, {a.num_atoms} atoms, {_count(critic)} parameters; "
        f"actor: width {a.actor_width}, {_count(actor)} parameters",
        f"[mtrl] replay: {len(tasks)} x {cfg.buffer.capacity_per_task:,} transitions "
        f"({buffer.nbytes / 2**30:.2f} GiB); batch {batch_size}, "
        f"{cfg.updates_per_iteration} update(s) per iteration",
        f"[mtrl] {cfg.iterations:,} iterations: random actions for the first "
        f"{cfg.random_iterations:,}, eval every {cfg.eval_interval:,} ({cfg.eval_episodes} "
        f"episode(s) per task), {every}",
    ]
    if device.type == "cpu" and a.critic_width >= 2048:
        # 6 critic forwards' worth of matmuls per update (target, online forward + backward,
        # the actor step's forward + input gradient), on every sample of the batch
        d_in = agent.obs_dim + agent.action_dim + agent.critic.embedding_dim
        flops = 6 * batch_size * critic_forward_flops(d_in, a.critic_width, a.critic_depth,
                                                      a.num_atoms, a.ensemble_size)
        lines.append(f"[mtrl] note: a {a.critic_width}-wide critic on the CPU is ~{flops / 1e12:.1f} TFLOP "
                     f"per update (seconds to minutes each); the paper's width is meant for a "
                     f"GPU")
    return lines


class _Signals:
    """SIGINT/SIGTERM set a flag; the loop writes a checkpoint and returns cleanly.

    ``previous``: the handlers to put back when done, when the ones replaced now are the
    startup handler's (mtrl/_startup.py)."""

    def __init__(self, previous: dict[int, Any] | None = None):
        self.received: str | None = None
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.signal(sig, self._handle)
            self._old[sig] = old if previous is None else previous[sig]

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        self.restore()  # a second signal acts as usual (e.g. Ctrl-C twice kills at once)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _rng_state(np_rng: np.random.Generator, device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np_rng.bit_generator.state,
             "torch": torch.get_rng_state()}
    if device.type == "cuda":  # only the generator of the run's own GPU draws anything
        index = _cuda_index(device)
        state["cuda"] = {"device": index, "state": torch.cuda.get_rng_state(index)}
    return state


def _set_rng_state(state: dict[str, Any], np_rng: np.random.Generator,
                   device: torch.device) -> None:
    random.setstate(state["python"])
    np_rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if device.type != "cuda" or saved is None:
        return  # a CPU run, or a CPU run's checkpoint resumed on a GPU: seeded as a fresh run
    if isinstance(saved, dict):
        torch.cuda.set_rng_state(saved["state"], _cuda_index(device))
        return
    # Checkpoints before 2026-11-28 hold one state per visible GPU (get_rng_state_all), which
    # set_rng_state_all could not restore on a machine with fewer GPUs: take the run's own.
    index = _cuda_index(device)
    if index < len(saved):
        torch.cuda.set_rng_state(saved[index], index)


def _cuda_index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


def _earlier_checkpoint_hint(found: list[Path]) -> str:
    """How to resume past the latest checkpoint ``found[-1]`` when it cannot be read."""
    readable = [p for p in found[:-1] if (p / "state.pt").is_file()]  # (damaged ones listed too)
    older = f"; the one before it is {readable[-1].name}" if readable else ""
    return f": move it out of {found[-1].parent} to resume from an earlier checkpoint{older}"


def train(cfg: TrainConfig, *, startup: _startup.StartupSignals | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the last eval metrics and counters.

    Setup only reads (config, checkpoint) and builds (envs, agent, buffer): nothing is written
    to run_dir before the loop's signal handler (checkpoint, then return) is installed.
    ``startup``: the CLI's startup signal handler (mtrl/_startup.py), which covers setup and is
    handed over to the loop's there.
    """
    import mtrl.envs
    from mtrl.replay import ReplayBuffer

    # ------------------------------------------------------------------ setup (§6.1.1)
    available = mtrl.envs.available_tasks()
    tasks = resolve_tasks(cfg.env.tasks, available)
    # a curve PNG per task set (the logger); on --resume cfg.env.tasks is the run's config.json's
    task_groups = group_tasks(cfg.env.tasks, available)
    num_tasks = len(tasks)
    batch_size = check_feasible(cfg, num_tasks)
    device = resolve_device(cfg.device)
    # before the envs start (the agent checks too)
    check_tf32_device(cfg.agent.tf32, device,
                      f"this run's device is {device} (--device {cfg.device})")
    run_dir = Path(cfg.run_dir)
    resolved = {**dataclasses.asdict(cfg), "resolved_tasks": tasks, "batch_size": batch_size}
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir {run_dir} exists and is not a directory")
    found = ckpt.list_checkpoints(run_dir)
    latest = found[-1] if cfg.resume and found else None
    if cfg.resume and latest is None:
        raise ValueError(f"--resume given but {run_dir} holds no complete checkpoint")
    if not cfg.resume:  # never overwrite another run's logs or mix its checkpoints with ours
        held = ["checkpoints"] if found else []
        held += [n for n in ("train.csv", "eval.csv", "metrics.jsonl") if (run_dir / n).exists()]
        if (run_dir / "tb").is_dir() and any((run_dir / "tb").iterdir()):
            held.append("tb")  # TensorBoard would show both runs as one
        if held:
            how = ("pass --resume to continue it" if found else
                   "it has no checkpoint to resume from: delete them")
            raise ValueError(f"run_dir {run_dir} already holds a run ({', '.join(held)}); {how}, "
                             f"or choose another --run-dir")
    state = None
    if latest is not None:
        try:
            state = ckpt.load_checkpoint(latest)
        except ValueError as e:
            raise ValueError(f"{e}{_earlier_checkpoint_hint(found)}") from e
        ckpt.check_compatible(state["config"], resolved)
        if cfg.iterations < state["iteration"]:  # it would end at once, config.json saying less
            raise ValueError(f"--iterations {cfg.iterations} is below the iteration of the "
                             f"checkpoint to resume ({latest.name}, iteration "
                             f"{state['iteration']}): pass --iterations {state['iteration']} or "
                             f"more")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    keep_freed_memory()
    random.seed(cfg.seed)
    np_rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    env_kw = {"backend": cfg.env.backend, "num_threads": cfg.env.num_threads,
              "max_episode_steps": cfg.env.max_episode_steps}
    pool = mtrl.envs.make(tasks, seed=cfg.seed, **env_kw)
    eval_pool = None
    try:  # the pools run threads and hold models: close them if setup fails
        eval_pool = mtrl.envs.make(tasks, envs_per_task=cfg.eval_episodes,
                                   seed=cfg.seed + 42, **env_kw)
        obs_dim, action_dim = pool.obs_dim, pool.action_dim  # padded (§5.2)
        check_networks_fit(cfg.agent, obs_dim, action_dim, device)
        # Built on its device: at the paper's width the orthogonal init's QR factorisations
        # take ~100 s on a 2-core CPU (11 s per 4096 x 4096 matrix), far less on a GPU. (On
        # CUDA the init then draws from the CUDA generator, seeded like the CPU one.)
        with device:
            agent = BRCAgent(cfg.agent, obs_dim, action_dim, num_tasks)
        pin = device.type == "cuda"
        buffer = ReplayBuffer(num_tasks=num_tasks, capacity_per_task=cfg.buffer.capacity_per_task,
                              obs_dim=obs_dim, action_dim=action_dim, num_envs=pool.num_envs,
                              seed=cfg.seed, pin_memory=pin)
        normalizer = RewardNormalizer(pool.task_ids, num_tasks, cfg.agent.gamma, task_names=tasks)
        host_batches = [buffer.allocate_batch(batch_size) for _ in range(cfg.updates_per_iteration)]
        env_task_ids = pool.task_ids.astype(np.int64)
        env_task_ids_t = torch.from_numpy(env_task_ids).to(device)
        obs = pool.reset()
        iteration, updates = 0, 0
        episode_return = np.zeros(pool.num_envs)
        last_eval: dict[str, Any] = {}
        if state is not None:  # restore everything the checkpoint holds
            agent.load_full_state_dict(state["agent"])
            normalizer.load_state_dict(state["normalizer"])
            try:
                buffer.load_into(str(latest / "replay"))
            except (OSError, ValueError, RuntimeError) as e:
                raise ValueError(f"cannot resume from {latest}: replay buffer: {e}"
                                 f"{_earlier_checkpoint_hint(found)}") from e
            _set_rng_state(state["rng"], np_rng, device)
            iteration, updates = state["iteration"], state["updates"]
            episode_return = state["episode_return"]
            last_eval = state["last_eval"]
            if state["env_state"] is not None:
                pool.set_state(state["env_state"])
                obs = state["obs"]
            else:  # backend without state (envpool): continue with fresh episodes, documented
                pool.seed(cfg.seed + 7919 * iteration)
                obs = pool.reset()
                normalizer.load_state_dict({**state["normalizer"],
                                            "episode": [[] for _ in range(pool.num_envs)]})
                episode_return = np.zeros(pool.num_envs)
    except BaseException:
        pool.close()
        if eval_pool is not None:
            eval_pool.close()
        raise

    def save(it: int) -> Path:
        try:
            env_state = pool.get_state()
        except NotImplementedError:
            env_state = None
        payload = {
            "config": resolved, "iteration": it, "updates": updates,
            "agent": agent.full_state_dict(), "normalizer": normalizer.state_dict(),
            "rng": _rng_state(np_rng, device), "env_state": env_state, "obs": obs.copy(),
            "episode_return": episode_return.copy(), "last_eval": last_eval,
            "metric_sum": metric_sum.cpu(), "metric_count": metric_count, "online": online,
        }
        logger.sync()  # the metrics up to this checkpoint are on disk before it is
        return ckpt.save_checkpoint(run_dir, it, payload, lambda p: buffer.save(str(p)),
                                    cfg.keep_checkpoints)

    # ------------------------------------------------------------------ loop (§6.1.2)
    metric_sum = torch.zeros(len(METRIC_NAMES), device=device)
    metric_count = 0
    online: dict[int, list[float]] = {t: [] for t in range(num_tasks)}
    if state is not None:  # partial log window, so resumed logs match an uninterrupted run
        metric_sum.copy_(state["metric_sum"])
        metric_count, online = state["metric_count"], state["online"]
    t_start, it_start, up_start = time.perf_counter(), iteration, updates
    exit_reason = "finished"
    it_per_s = updates_per_s = 0.0
    # Nothing above wrote to run_dir: a signal up to here ends a CLI run with nothing saved
    # (mtrl/_startup.py). From here on a signal sets a flag and the loop checkpoints.
    if startup is not None:
        startup.reached("ready")
    signals = _Signals(None if startup is None else startup.hand_over())
    logger = progress = None
    try:
        # The Logger first: with --wandb and no wandb package it refuses before writing
        # anything (it creates run_dir).
        logger = Logger(run_dir, tensorboard=cfg.tensorboard, wandb=cfg.wandb,
                        wandb_project=cfg.wandb_project, config=resolved,
                        resume_iteration=iteration if state is not None else None,
                        task_groups=task_groups)
        # whole and fsynced: --resume reads it (never a truncated one after a crash)
        replace_file(run_dir / "config.json", json.dumps(resolved, indent=2, default=str))
        print("\n".join(startup_summary(cfg, tasks, task_groups, device, agent, buffer,
                                        batch_size, latest, iteration)), flush=True)
        progress = _Progress(cfg.progress, cfg.iterations, iteration, cfg.log_interval)
        while iteration < cfg.iterations:
            # -- act: uniform warm-up (§2.1), then the stochastic policy (std x 1.0)
            if iteration < cfg.random_iterations:
                actions = np_rng.uniform(-1.0, 1.0, (pool.num_envs, action_dim)).astype(np.float32)
            else:
                obs_t = torch.from_numpy(obs).to(device)
                actions = agent.act(obs_t, env_task_ids_t).cpu().numpy()
            # -- step every task, feed raw rewards to the normaliser, store (§5.3, §5.4)
            out = pool.step(actions)
            normalizer.update(out.reward, out.terminated, out.truncated)
            buffer.add(env_task_ids, obs, actions, out.reward, out.terminated, out.truncated,
                       out.final_obs)
            episode_return += out.reward
            for k in np.flatnonzero(out.terminated | out.truncated).tolist():
                online[int(env_task_ids[k])].append(float(episode_return[k]))
                episode_return[k] = 0.0
            obs = out.obs
            # -- updates: all batches sampled up front, rewards normalised with the current
            #    alpha (§4.2, §6.1), one §2.2 step per batch
            if iteration >= cfg.random_iterations:
                scale = torch.from_numpy(normalizer.return_scale()).to(device, torch.float32)
                denominator = agent.reward_denominator(scale)
                for host in host_batches:
                    buffer.sample(batch_size, out=host, gamma=cfg.agent.gamma)  # discount (§2.1)
                for u, host in enumerate(host_batches):
                    metrics = agent.update(to_batch(host, device), denominator)
                    losses = torch.stack([metrics[k] for k in METRIC_NAMES])
                    # (This read waits for the device, and so for to_batch's non-blocking copies
                    # out of `host`, before the next iteration samples into it again: without a
                    # sync here, those copies would need an event to wait on.)
                    if not bool(torch.isfinite(losses[:3]).all()):
                        _raise_nonfinite(metrics, tasks, iteration, u, host)
                    metric_sum += losses
                    metric_count += 1
                    updates += 1
            iteration += 1
            # -- log / eval / checkpoint
            if iteration % cfg.log_interval == 0:
                now = time.perf_counter()
                elapsed = max(now - t_start, 1e-9)  # speed over this log window
                row = {"env_steps": iteration * num_tasks, "updates": updates,
                       "it_per_s": (iteration - it_start) / elapsed,
                       "updates_per_s": (updates - up_start) / elapsed}
                t_start, it_start, up_start = now, iteration, updates
                it_per_s, updates_per_s = row["it_per_s"], row["updates_per_s"]
                means = (metric_sum / max(metric_count, 1)).tolist()
                row.update((k, v if metric_count else float("nan")) for k, v in zip(METRIC_NAMES, means))
                for t, name in enumerate(tasks):  # fixed columns: NaN when no episode ended
                    row[f"{name}/online_return"] = float(np.mean(online[t])) if online[t] else float("nan")
                logger.log("train", iteration, row)
                metric_sum.zero_()
                metric_count = 0
                online = {t: [] for t in range(num_tasks)}
            pause = time.perf_counter()  # eval/checkpoint time is left out of it_per_s
            if iteration % cfg.eval_interval == 0 or iteration == cfg.iterations:
                last_eval = evaluate(agent, eval_pool, tasks, device, cfg.seed + 42 + iteration)
                logger.log("eval", iteration, last_eval)
            saved = None
            if iteration == cfg.iterations or (
                    cfg.checkpoint_interval and iteration % cfg.checkpoint_interval == 0):
                saved = save(iteration)
            t_start += time.perf_counter() - pause
            progress.update(iteration, {
                "env_steps": iteration * num_tasks, "updates": updates,
                "it/s": round(it_per_s, 1), "upd/s": round(updates_per_s, 1),
                "eval": round(last_eval.get("return_mean", float("nan")), 1)})
            if signals.received is not None:
                path = saved or save(iteration)  # this iteration's checkpoint is written once
                exit_reason = f"{signals.received}: checkpoint {path}"
                break
    finally:
        signals.restore()
        if progress is not None:
            progress.close()
        if logger is not None:
            logger.close()
        pool.close()
        eval_pool.close()
    print(f"[mtrl] {exit_reason} at iteration {iteration}; run dir {run_dir}", flush=True)
    return {"iteration": iteration, "updates": updates, "eval": last_eval, "exit": exit_reason}


def _raise_nonfinite(metrics, tasks, iteration, update, host) -> None:
    per_task = metrics["nonfinite_per_task"].cpu().numpy()
    bad = [tasks[t] for t in np.flatnonzero(per_task)]
    inputs = [tasks[t] for t in sorted(set(host.task_id[
        ~(np.isfinite(host.reward) & np.isfinite(host.obs).all(1) & np.isfinite(host.next_obs).all(1))
    ].tolist()))]
    values = {k: float(metrics[k]) for k in ("critic_loss", "actor_loss", "temperature_loss")}
    raise FloatingPointError(
        f"non-finite loss at iteration {iteration}, update {update}: {values}; samples with "
        f"non-finite critic targets/logits or actor terms come from task(s) {bad or 'none'}; "
        f"non-finite reward/obs inputs from task(s) {inputs or 'none'}")


def parse_args(argv: list[str]) -> TrainConfig:
    """``--preset NAME`` picks the defaults (laptop when absent); tyro parses the rest."""
    import tyro

    argv = list(argv)
    preset = "laptop"
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
            del argv[i:i + 2]
            break
        if arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
            del argv[i]
            break
    if preset not in PRESETS:
        raise SystemExit(f"unknown --preset {preset!r}; choose from {sorted(PRESETS)}")
    description = (
        f"{__doc__}\n--preset NAME: {', '.join(PRESETS)} (now: {preset}); the defaults shown "
        "below are that preset's.")
    # The usage line names the command typed (argparse's default is sys.argv[0], which under
    # `python -m` is the path of this file).
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    prog = script if script == "mtrl-train" else "python -m mtrl.train"
    cfg = tyro.cli(TrainConfig, default=PRESETS[preset](), args=argv, description=description,
                   prog=prog)
    if cfg.resume:  # continue the run as it was configured; flags given here still apply
        saved = _saved_config(Path(cfg.run_dir))
        if saved is not None:
            cfg = tyro.cli(TrainConfig, default=saved.replace(run_dir=cfg.run_dir, resume=True),
                           args=argv, description=description, prog=prog)
    return cfg


def _saved_config(run_dir: Path) -> TrainConfig | None:
    """The TrainConfig that ``run_dir/config.json`` records (written by every start of the run),
    or None when there is none or it cannot be read: then the preset's defaults stand, and
    train() names any field that differs from the checkpoint's."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        parts = {}
        for f in dataclasses.fields(TrainConfig):
            if f.name not in saved:
                continue
            value = saved[f.name]
            if dataclasses.is_dataclass(f.default_factory):
                names = {g.name for g in dataclasses.fields(f.default_factory)}
                value = f.default_factory(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in value.items() if k in names})
            parts[f.name] = value
        return TrainConfig(**parts)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader is gone (poll reports an error on its write end);
    if so, stdout is pointed at /dev/null so that the interpreter's flush at exit does not
    report it again."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # no file descriptor behind sys.stdout
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poller.poll(0)):
        return False
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return True


def main(argv: list[str] | None = None) -> int:
    # Until training takes over, a signal ends the run with one line (mtrl/_startup.py; under
    # `python -m mtrl.train` the package import installed it already, before torch).
    startup = _startup.install()
    try:
        train(parse_args(sys.argv[1:] if argv is None else argv), startup=startup)
    except BrokenPipeError as err:
        if not _stdout_closed():  # another pipe (an env's, W&B's): an error like any other
            print(f"mtrl.train: error: {err}", file=sys.stderr)
            return 2
        return 1  # stdout closed early (`--help | head`): nothing left to say there
    except (ValueError, FloatingPointError, OSError) as err:
        print(f"mtrl.train: error: {err}", file=sys.stderr)
        return 2
    finally:
        startup.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
