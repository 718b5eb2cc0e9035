"""C++ engine backend: every env of every task in one `mtrl._core.EnginePool`, stepped on its own
thread pool with the GIL released (csrc/envs/). DeepMind Control tasks only."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from mtrl import _core
from mtrl.envs.pool import StepOutput, TaskPool, check_seed, env_seed_list, serialized, wrap_seed
from mtrl.envs.registry import TaskSpec


def engine_tasks() -> list[str]:
    """Canonical names ("dmc:cheetah-run") of the tasks the C++ engine implements."""
    return [f"dmc:{n}" for n in _core.engine_tasks()]


def dm_control_suite_dir() -> Path:
    """The installed dm_control's suite directory (XMLs are read from there at run time).

    Raises:
      RuntimeError: dm_control is not installed.
    """
    spec = importlib.util.find_spec("dm_control")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the C++ engine reads its models from dm_control, which is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "suite"


class EngineTaskPool(TaskPool):
    """``envs_per_task`` envs of each DMC task in one C++ pool.

    Env k is seeded with ``seed + k``; results do not depend on ``num_threads``. Actions in
    [-1, 1] are mapped affinely onto each actuator's ctrlrange where that is not [-1, 1].
    ``get_state``/``set_state`` capture physics (MuJoCo integration state), RNGs, step counters
    and per-episode task edits, so a restored pool continues identically.
    """

    def __init__(self, specs: list[TaskSpec], *, envs_per_task: int = 1, seed: int = 0,
                 num_threads: int | None = None, max_episode_steps: int | None = None,
                 suite_dir: str | os.PathLike[str] | None = None,
                 env_seeds: list[int] | None = None) -> None:
        known = set(_core.engine_tasks())
        missing = [s.name for s in specs if s.suite != "dmc" or s.short not in known]
        if missing:
            raise ValueError(f"the C++ engine does not implement {missing}; it has "
                             f"{engine_tasks()} (use backend='envpool' for the others)")
        env_tasks = [s.short for s in specs for _ in range(envs_per_task)]
        threads = num_threads or os.cpu_count() or 1
        n = len(env_tasks)
        self._env_seeds = np.asarray(env_seed_list(seed, env_seeds, n), dtype=np.int64)
        self._pool = _core.EnginePool(
            env_tasks, self._seed_words(self._env_seeds), str(suite_dir or dm_control_suite_dir()),
            int(threads), int(max_episode_steps or 0))
        info = [self._pool.env_info(t * envs_per_task) for t in range(len(specs))]
        super().__init__(specs, envs_per_task, [i[0] for i in info], [i[1] for i in info],
                         [int(np.ceil(i[3])) for i in info])
        self.n_sub_steps = np.asarray([i[2] for i in info], dtype=np.int64)

    @staticmethod
    def _seed_words(seeds: np.ndarray) -> list[int]:
        return [wrap_seed(s, 64) for s in seeds]  # negative seeds wrap like uint64

    @serialized
    def reset(self) -> np.ndarray:
        """Reset every env; returns (N, obs_dim) float32 zero-padded observations."""
        self._check_open()
        obs = np.empty((self.num_envs, self.obs_dim), np.float32)
        self._pool._reset(obs)
        self._has_reset = True
        return obs

    def _step(self, actions: np.ndarray) -> StepOutput:
        n = self.num_envs
        out = StepOutput(obs=np.empty((n, self.obs_dim), np.float32),
                         final_obs=np.empty((n, self.obs_dim), np.float32),
                         reward=np.empty(n, np.float32), terminated=np.empty(n, bool),
                         truncated=np.empty(n, bool), success=np.zeros(n, bool),
                         diverged=np.empty(n, bool))
        self._pool._step(actions, out.obs, out.final_obs, out.reward, out.terminated,
                         out.truncated, out.diverged)
        return out

    @serialized
    def seed(self, seed: int, env_seeds: list[int] | None = None) -> None:
        """Reseed env k with ``seed + k`` (or ``env_seeds[k]``); call `reset` afterwards."""
        self._check_open()
        seed = check_seed(seed, self.num_envs)
        seeds = np.asarray(env_seed_list(seed, env_seeds, self.num_envs), dtype=np.int64)
        self._pool.seed(self._seed_words(seeds))
        self._has_reset = False

    @serialized
    def get_state(self) -> dict[str, Any]:
        """Picklable snapshot: per env (physics state, RNG words, step count, task state)."""
        self._check_open()
        return {"backend": "engine", "tasks": self.task_names,
                "envs_per_task": self.envs_per_task, "envs": self._pool._get_state()}

    @serialized
    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a `get_state` snapshot taken from a pool with the same tasks.

        Raises:
          ValueError: the snapshot belongs to another backend or task layout.
        """
        self._check_state(state, "engine", "an engine pool")
        self._pool._set_state(list(state["envs"]))
        self._has_reset = True

    @serialized
    def close(self) -> None:
        """Join the worker threads and free the MuJoCo models (idempotent)."""
        if not self._closed:
            del self._pool
        super().close()
