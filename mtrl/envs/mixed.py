"""A pool over tasks served by different backends (e.g. MT80: DMC tasks on the C++ engine,
MetaWorld tasks on envpool), presented as one `TaskPool` with the tasks in the order given."""

from __future__ import annotations

from typing import Any

import numpy as np

from mtrl.envs.pool import StepOutput, TaskPool, check_seed, serialized
from mtrl.envs.registry import TaskSpec


class MixedTaskPool(TaskPool):
    """Routes each task's rows to the backend pool that runs it.

    ``parts`` are (pool, task indices) pairs: ``pool`` runs those tasks (in that order) with the
    same ``envs_per_task``; env k still gets seed ``seed + k`` of the combined layout.
    """

    def __init__(self, specs: list[TaskSpec], envs_per_task: int,
                 parts: list[tuple[TaskPool, list[int]]]) -> None:
        t = len(specs)
        obs_dims, act_dims, steps = [0] * t, [0] * t, [0] * t
        self._parts = []
        for pool, task_idx in parts:
            rows = np.concatenate([np.arange(i * envs_per_task, (i + 1) * envs_per_task)
                                   for i in task_idx])
            for j, i in enumerate(task_idx):
                obs_dims[i] = int(pool.obs_dims[j])
                act_dims[i] = int(pool.action_dims[j])
                steps[i] = int(pool.max_episode_steps[j])
            self._parts.append((pool, rows))
        super().__init__(specs, envs_per_task, obs_dims, act_dims, steps)
        # (its steps call the parts' _step directly, past their own fork checks)
        self._survives_fork = all(pool._survives_fork for pool, _ in parts)
        for pool, task_idx in parts:
            self.discrete[task_idx] = pool.discrete

    @serialized
    def reset(self) -> np.ndarray:
        """Reset every env; returns (N, obs_dim) float32 zero-padded observations."""
        if self._closed:
            raise RuntimeError("the env pool is closed")
        obs = np.zeros((self.num_envs, self.obs_dim), np.float32)
        for pool, rows in self._parts:
            obs[rows, : pool.obs_dim] = pool.reset()
        self._has_reset = True
        return obs

    def _step(self, actions: np.ndarray) -> StepOutput:
        n = self.num_envs
        out = StepOutput(np.zeros((n, self.obs_dim), np.float32),
                         np.zeros((n, self.obs_dim), np.float32), np.zeros(n, np.float32),
                         np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool),
                         np.zeros(n, bool))
        for pool, rows in self._parts:
            o = pool._step(np.ascontiguousarray(actions[rows, : pool.action_dim]))
            out.obs[rows, : pool.obs_dim] = o.obs
            out.final_obs[rows, : pool.obs_dim] = o.final_obs
            for name in ("reward", "terminated", "truncated", "success", "diverged"):
                getattr(out, name)[rows] = getattr(o, name)
        return out

    @serialized
    def seed(self, seed: int) -> None:
        """Reseed env k with ``seed + k``; call `reset` afterwards."""
        self._check_open()
        seed = check_seed(seed, self.num_envs)
        for pool, rows in self._parts:
            pool.seed(seed, env_seeds=[seed + int(r) for r in rows])
        self._has_reset = False

    @serialized
    def get_state(self) -> Any:
        """Snapshot of every part (raises NotImplementedError if a part cannot)."""
        self._check_open()
        return {"backend": "mixed", "parts": [pool.get_state() for pool, _ in self._parts]}

    @serialized
    def set_state(self, state: Any) -> None:
        """Restore a `get_state` snapshot of a pool with the same layout."""
        self._check_open()
        if (not isinstance(state, dict) or state.get("backend") != "mixed"
                or not isinstance(state.get("parts"), list)):
            raise ValueError("state must come from get_state() of a mixed pool")
        parts = state["parts"]
        if len(parts) != len(self._parts):
            raise ValueError(f"state has {len(parts)} parts, this mixed pool {len(self._parts)}")
        # All or nothing: a part refusing its state (checked only when reached) once left the
        # parts before it restored and the rest as they were.
        before = [pool.get_state() for pool, _ in self._parts]
        done = 0
        try:
            for (pool, _), part in zip(self._parts, parts):
                pool.set_state(part)
                done += 1
        except BaseException:
            for (pool, _), part in zip(self._parts[:done], before):
                pool.set_state(part)
            raise
        self._has_reset = True

    @serialized
    def close(self) -> None:
        """Close every part (idempotent)."""
        if not self._closed:
            for pool, _ in self._parts:
                pool.close()
        super().close()
