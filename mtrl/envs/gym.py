"""A gymnasium ``VectorEnv`` view of a `TaskPool` (same-step autoreset: the reset observation is
returned where an episode ended and the final observation is in ``info["final_obs"]``)."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from mtrl.envs.pool import TaskPool


class GymVectorEnv(gymnasium.vector.VectorEnv):
    """Wraps a pool as a gymnasium vector env over padded observations and actions.

    Spaces: observations ``Box(-inf, inf, (obs_dim,))``, actions ``Box(-1, 1, (action_dim,))``,
    also for discrete-action tasks: ``discrete`` ((T,) bool, the pool's ``discrete``) says which
    tasks take the argmax of their env's row instead (ties to the lowest index; see README).
    ``info`` holds ``task_id`` (N,), ``final_obs`` (N, obs_dim), ``success`` (N,) and
    ``diverged`` (N,). ``final_obs`` is dense (every row, equal to the observation where no episode
    ended), with gymnasium's ``_final_obs`` mask (N,) bool of the envs whose episode ended, so the
    usual ``info["final_obs"][info["_final_obs"]]`` works. Seeding: ``reset(seed=s)`` reseeds env k
    with ``s + k``.
    """

    metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP}

    def __init__(self, pool: TaskPool) -> None:
        self.pool = pool
        self.num_envs = pool.num_envs
        self.single_observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (pool.obs_dim,),
                                                             np.float32)
        self.single_action_space = gymnasium.spaces.Box(-1.0, 1.0, (pool.action_dim,), np.float32)
        self.observation_space = gymnasium.vector.utils.batch_space(
            self.single_observation_space, self.num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(
            self.single_action_space, self.num_envs)

    @property
    def discrete(self) -> np.ndarray:
        """(T,) bool: task t's actions are discrete (a copy of ``pool.discrete``)."""
        return self.pool.discrete.copy()

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env (reseeding first when ``seed`` is given)."""
        if options:
            raise ValueError(f"reset options are not supported, got {sorted(options)}")
        if seed is not None:
            self.pool.seed(seed)  # (refuses a non-integral seed)
        # New arrays in every info: a caller may edit what it gets (gymnasium's contract), and
        # the pool's own task_ids decide where step_into files transitions.
        return self.pool.reset(), {"task_id": self.pool.task_ids.copy()}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, Any]]:
        """Step every env; (N, action_dim) float32 actions in [-1, 1]."""
        out = self.pool.step(actions)
        info = {"task_id": self.pool.task_ids.copy(), "final_obs": out.final_obs,
                "_final_obs": out.terminated | out.truncated, "success": out.success,
                "diverged": out.diverged}
        return out.obs, out.reward, out.terminated, out.truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        """Close the pool (gymnasium's ``VectorEnv.close`` calls this and sets ``closed``)."""
        self.pool.close()
