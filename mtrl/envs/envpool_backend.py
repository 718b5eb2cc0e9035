"""envpool backend: one envpool per task behind the `TaskPool` face, with envpool's
next-step auto-reset hidden (an ended env is reset explicitly within the same `step`)."""

from __future__ import annotations

import ctypes
import os
import warnings
from typing import Any

import numpy as np

from mtrl.envs.pool import StepOutput, TaskPool, check_seed, env_seed_list, serialized, wrap_seed
from mtrl.envs.registry import TaskSpec


# Tasks whose envpool port departs from dm_control, measured against it (300 resets each):
# envpool starts the extra poles of the multi-pole cartpoles about 7 times closer to their initial
# angle (sd of pole 2's xz 0.0145 against dm_control's 0.0968). The engine matches dm_control.
ENVPOOL_DEVIATIONS = {
    "dmc:cartpole-two_poles": "starts its extra poles about 7x closer to their initial angle "
                              "than dm_control (reset spread)",
    "dmc:cartpole-three_poles": "starts its extra poles about 7x closer to their initial angle "
                                "than dm_control (reset spread)",
}


# MetaWorld as BRC builds it (brc-spec §7: ALL_V2_ENVIRONMENTS_GOAL_OBSERVABLE in a 200-step
# TimeLimit). envpool's defaults hide the goal (partially_observable: obs[36:39] zero although the
# goal moves every episode, so reach, push, pick-place... cannot be solved by a memoryless policy)
# and run 500 steps.
METAWORLD_OPTIONS = {"partially_observable": False, "max_episode_steps": 200}


def _obs_size(space: Any, keys: tuple[str, ...]) -> int:
    if keys:
        return int(sum(np.prod(space[k].shape, dtype=np.int64) for k in keys))
    return int(np.prod(space.shape, dtype=np.int64))


class EnvpoolTaskPool(TaskPool):
    """``envs_per_task`` envs of each task, one synchronous envpool per task.

    Env k is seeded with ``seed + k`` (envpool's per-env seed). Actions in [-1, 1] are mapped
    affinely onto the task's action bounds when those are not [-1, 1]. ``get_state`` /
    ``set_state`` are not available: envpool does not expose its physics or RNG state.

    Discrete-action tasks (Atari, ``pool.discrete[t]``): action_dim is the number of actions
    (Pong: 6, full action set 18 for some games) and the env takes the argmax of the first
    action_dim entries of its (clipped) row, ties to the lowest index, so a continuous agent
    can drive it. Atari observations (envpool defaults, listed in mtrl/envs/suites.py) are the
    (4, 84, 84) uint8 frame stack, oldest frame first, flattened in C order (index
    ``frame * 7056 + row * 84 + col``, obs_dim 28224) to float32 with pixel values 0..255
    unscaled (divide by 255 in the agent if wanted). MyoSuite observations are flat already;
    ``success`` is ``info["success"]`` (MetaWorld) or ``info["solved"]`` (MyoSuite).
    """

    _survives_fork = False  # envpool's worker threads stay in the parent: a child's step hung

    def __init__(self, specs: list[TaskSpec], *, envs_per_task: int = 1, seed: int = 0,
                 num_threads: int | None = None, max_episode_steps: int | None = None,
                 env_seeds: list[int] | None = None) -> None:
        import envpool  # imported here: importing envpool is slow and only this backend needs it

        for spec in specs:
            if spec.name in ENVPOOL_DEVIATIONS:
                warnings.warn(f"envpool's {spec.name} {ENVPOOL_DEVIATIONS[spec.name]}; "
                              "backend='engine' (or 'auto') matches dm_control",
                              stacklevel=4)  # make -> _build -> __init__ -> the caller

        self._envpool = envpool
        self._threads = max(1, min(envs_per_task, num_threads or os.cpu_count() or 1))
        self._max_steps_override = max_episode_steps
        self._pool_specs = list(specs)
        self._epts = envs_per_task
        n = len(specs) * envs_per_task
        if max_episode_steps is not None and max_episode_steps > 2**31 - 1:
            raise ValueError(f"the envpool backend takes max_episode_steps up to 2**31 - 1 "
                             f"(int32), got {max_episode_steps}")
        self._pools = self._make_pools(env_seed_list(seed, env_seeds, n))
        obs_dims, act_dims, max_steps = [], [], []
        self._act_low, self._act_scale = [], []
        for spec, p in zip(specs, self._pools, strict=True):
            obs_dims.append(_obs_size(p.observation_space, spec.obs_keys))
            space = p.action_space
            if hasattr(space, "n"):  # Discrete (Atari): argmax of the row, see the class doc
                act_dims.append(int(space.n))
                self._act_low.append(None)
                self._act_scale.append(None)
            else:
                act_dims.append(int(np.prod(space.shape)))
                low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
                unit = np.all(low == -1.0) and np.all(high == 1.0)
                self._act_low.append(None if unit else low)
                self._act_scale.append(None if unit else (high - low) / 2.0)
            max_steps.append(int(p.config["max_episode_steps"]))
        super().__init__(specs, envs_per_task, obs_dims, act_dims, max_steps)
        self.discrete[:] = [hasattr(p.action_space, "n") for p in self._pools]

    def _make_pools(self, env_seeds: list[int]) -> list[Any]:
        pools = []
        for t, spec in enumerate(self._pool_specs):
            first = t * self._epts
            kw = dict(METAWORLD_OPTIONS) if spec.suite == "metaworld" else {}
            if self._max_steps_override is not None:
                kw["max_episode_steps"] = int(self._max_steps_override)
            pools.append(self._envpool.make_gymnasium(
                spec.envpool_id, num_envs=self._epts, batch_size=self._epts,
                num_threads=self._threads,
                env_seed=[wrap_seed(s, 31) for s in env_seeds[first:first + self._epts]],  # int32
                **kw))
        return pools

    def _flat(self, t: int, obs: Any, out: np.ndarray, rows: np.ndarray) -> None:
        """Write task t's observations (envpool batch) flattened into out[rows, :obs_dim_t]."""
        keys = self._specs[t].obs_keys
        n = len(rows)
        if keys:
            parts = [np.asarray(obs[k]).reshape(n, -1) for k in keys]
            flat = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        else:
            flat = np.asarray(obs).reshape(n, -1)
        out[rows, : flat.shape[1]] = flat

    @serialized
    def reset(self) -> np.ndarray:
        """Reset every env; returns (N, obs_dim) float32 zero-padded observations."""
        if self._closed:
            raise RuntimeError("the env pool is closed")
        obs = np.zeros((self.num_envs, self.obs_dim), np.float32)
        for t, p in enumerate(self._pools):
            o, info = p.reset()
            self._flat(t, o, obs, self._task_rows(t).start + np.asarray(info["env_id"]))
        self._has_reset = True
        return obs

    def _step(self, actions: np.ndarray) -> StepOutput:
        out = StepOutput.zeros(self.num_envs, self.obs_dim)
        final, reward, term, trunc, success = (
            out.final_obs, out.reward, out.terminated, out.truncated, out.success)
        # Send to every task's pool first so the pools step concurrently, then collect.
        for t, p in enumerate(self._pools):
            a = actions[self._task_rows(t), : self.action_dims[t]].astype(np.float64)
            if self._act_low[t] is not None:
                a = self._act_low[t] + (a + 1.0) * self._act_scale[t]
            if self.discrete[t]:
                a = a.argmax(axis=1).astype(np.int32)  # ties: the lowest index
            p.send(a)
        for t, p in enumerate(self._pools):
            o, r, te, tr, info = p.recv()
            rows = self._task_rows(t).start + np.asarray(info["env_id"])
            self._flat(t, o, final, rows)
            reward[rows], term[rows], trunc[rows] = r, te, tr
            if "success" in info:
                success[rows] = np.asarray(info["success"]) > 0
            elif "solved" in info:  # MyoSuite's success flag
                success[rows] = np.asarray(info["solved"]) > 0
        obs = out.obs
        obs[:] = final
        ended = term | trunc
        if ended.any():
            for t, p in enumerate(self._pools):
                local = np.flatnonzero(ended[self._task_rows(t)])
                if local.size:
                    # Explicit reset now: envpool would otherwise ignore the next action.
                    o, info = p.reset(local.astype(np.int32))
                    self._flat(t, o, obs, self._task_rows(t).start + np.asarray(info["env_id"]))
        return out

    @serialized
    def seed(self, seed: int, env_seeds: list[int] | None = None) -> None:
        """Re-create the pools with env k seeded ``seed + k`` (or ``env_seeds[k]``); call
        `reset` afterwards."""
        self._check_open()
        seed = check_seed(seed, self.num_envs)
        pools = self._make_pools(env_seed_list(seed, env_seeds, self.num_envs))
        for p in self._pools:  # (only once the new ones exist: a failure keeps the old ones)
            p.close()
        self._pools = pools
        self._has_reset = False

    @serialized
    def get_state(self) -> Any:
        """Not available for envpool (it exposes no physics/RNG state)."""
        raise NotImplementedError(
            "get_state is not supported by the envpool backend: envpool exposes neither its "
            "physics state nor its RNG state; use backend='engine' (DMC tasks) for exact resume")

    @serialized
    def set_state(self, state: Any) -> None:
        """Not available for envpool (see `get_state`)."""
        raise NotImplementedError(
            "set_state is not supported by the envpool backend: envpool exposes neither its "
            "physics state nor its RNG state; use backend='engine' (DMC tasks) for exact resume")

    def _abandon_in_child(self) -> None:
        # An envpool destroyed in a forked child joins worker threads that exist only in the
        # parent: the child crashed at exit (SIGSEGV) even when it never used the pool. One
        # extra reference each keeps them alive, unused, for the child's lifetime.
        for pool in self._pools:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(pool))

    @serialized
    def close(self) -> None:
        """Close every envpool (idempotent)."""
        if not self._closed:
            for p in self._pools:
                p.close()
        super().close()
