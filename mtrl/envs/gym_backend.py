"""gymnasium backend (the slow path): any registered gymnasium id as a task, "gym:<id>".

Every env is its own ``gymnasium.make(id)`` instance, stepped one after the other in a Python
loop on the calling thread (``num_threads`` is ignored). Expect gymnasium's own per-step cost plus
a few microseconds per env; use it for tasks no faster backend serves, not for throughput.

Episode ends follow the mtrl.envs contract, not gymnasium's vector autoreset (no vector env is
used): where ``env.step`` returns terminated or truncated, that observation goes to ``final_obs``,
the env is reset at once (unseeded, continuing its RNG) and the reset observation goes to ``obs``.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from mtrl.envs.pool import (StepOutput, TaskPool, check_seed, env_seed_list, is_int, serialized,
                            wrap_seed)
from mtrl.envs.registry import TaskSpec


class GymTaskPool(TaskPool):
    """``envs_per_task`` gymnasium env instances of each "gym:<id>" task.

    Env k is seeded ``seed + k`` (``env.reset(seed=...)`` at the first `reset` after construction
    or `seed`; later resets continue the env's RNG). Spaces:

    - Observations: any space ``gymnasium.spaces.flatten`` handles (Box flattened in C order,
      Discrete one-hot, Dict/Tuple concatenated in the space's key order), cast to float32 and
      zero-padded to ``obs_dim``.
    - Actions: a Box space gets the row's first ``prod(shape)`` entries mapped affinely from
      [-1, 1] onto [low, high] (entries whose bound is infinite are passed through as they are, in
      [-1, 1]); a Discrete(n, start) space is a discrete task (``pool.discrete[t]``): action_dim
      is n and the env takes ``start + argmax`` of the row's first n entries (ties: lowest index).
      Other action spaces raise ValueError.
    - ``max_episode_steps[t]``: the id's TimeLimit (the override when given), 0 when it has none.
    - ``success``: ``info["is_success"]`` or ``info["success"]`` where the env reports one.

    `get_state`/`set_state` pickle the env objects, which captures their full state for plain
    Python envs (classic control, toy text); envs built on ``gymnasium.utils.EzPickle`` (MuJoCo,
    Box2D) pickle as their constructor arguments only, so for those it raises NotImplementedError.
    """

    def __init__(self, specs: list[TaskSpec], *, envs_per_task: int = 1, seed: int = 0,
                 num_threads: int | None = None, max_episode_steps: int | None = None,
                 env_seeds: list[int] | None = None) -> None:
        import gymnasium

        self._gym = gymnasium
        bad = [s.name for s in specs if s.suite != "gym"]
        if bad:
            raise ValueError(f"the gymnasium backend only runs 'gym:<id>' tasks, got {bad}")
        n = len(specs) * envs_per_task
        seeds = env_seed_list(seed, env_seeds, n)
        self._envs: list[Any] = []
        try:
            for spec in specs:
                for _ in range(envs_per_task):
                    self._envs.append(self._make_env(spec.short, max_episode_steps))
        except BaseException:
            for e in self._envs:
                e.close()
            raise
        obs_dims, act_dims, steps, discrete = [], [], [], []
        self._obs_space, self._act_space, self._low, self._scale = [], [], [], []
        for t, spec in enumerate(specs):
            env = self._envs[t * envs_per_task]
            ospace, aspace = env.observation_space, env.action_space
            try:
                obs_dims.append(int(gymnasium.spaces.flatdim(ospace)))
            except (NotImplementedError, ValueError, TypeError) as err:
                self._close_envs()
                raise ValueError(f"{spec.name}: observation space {ospace} cannot be flattened "
                                 f"to a vector ({err})") from err
            if isinstance(aspace, gymnasium.spaces.Box):
                act_dims.append(int(np.prod(aspace.shape, dtype=np.int64)))
                low = np.asarray(aspace.low, np.float64).reshape(-1)
                high = np.asarray(aspace.high, np.float64).reshape(-1)
                finite = np.isfinite(low) & np.isfinite(high)
                self._low.append(np.where(finite, low, -1.0))
                self._scale.append(np.where(finite, (high - low) / 2.0, 1.0))
                discrete.append(False)
            elif isinstance(aspace, gymnasium.spaces.Discrete):
                act_dims.append(int(aspace.n))
                self._low.append(None)
                self._scale.append(None)
                discrete.append(True)
            else:
                self._close_envs()
                raise ValueError(f"{spec.name}: action space {aspace} is not supported (only Box "
                                 "and Discrete action spaces)")
            self._obs_space.append(ospace)
            self._act_space.append(aspace)
            limit = env.spec.max_episode_steps if env.spec is not None else None
            steps.append(int(limit or 0))
        super().__init__(specs, envs_per_task, obs_dims, act_dims, steps)
        self.discrete[:] = discrete
        self._box_obs = [isinstance(o, gymnasium.spaces.Box) for o in self._obs_space]
        self._pending_seeds: list[int] | None = [int(s) for s in seeds]

    def _make_env(self, gym_id: str, max_episode_steps: int | None) -> Any:
        kw = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
        try:
            return self._gym.make(gym_id, **kw)
        except self._gym.error.Error as err:  # missing optional dependency, bad id, ...
            raise ValueError(f"gymnasium cannot make {gym_id!r}: {err}") from err

    def _close_envs(self) -> None:
        for e in self._envs:
            e.close()
        self._envs = []

    def _write(self, t: int, o: Any, out: np.ndarray, k: int) -> None:
        if self._box_obs[t]:  # fast path: a Box observation is already an array
            out[k, : self.obs_dims[t]] = np.asarray(o).reshape(-1)
            return
        flat = self._gym.spaces.flatten(self._obs_space[t], o)
        out[k, : flat.shape[0]] = np.asarray(flat, dtype=np.float64).reshape(-1)

    @serialized
    def reset(self) -> np.ndarray:
        """Reset every env; returns (N, obs_dim) float32 zero-padded observations."""
        if self._closed:
            raise RuntimeError("the env pool is closed")
        obs = np.zeros((self.num_envs, self.obs_dim), np.float32)
        seeds = self._pending_seeds
        for k, env in enumerate(self._envs):
            # (gymnasium refuses negative seeds)
            o, _ = env.reset(seed=None if seeds is None else wrap_seed(seeds[k], 64))
            self._write(int(self.task_ids[k]), o, obs, k)
        self._pending_seeds = None
        self._has_reset = True
        return obs

    def _action(self, t: int, row: np.ndarray) -> Any:
        d = int(self.action_dims[t])
        space = self._act_space[t]
        if self.discrete[t]:
            return int(space.start) + int(np.argmax(row[:d]))
        a = self._low[t] + (row[:d].astype(np.float64) + 1.0) * self._scale[t]
        return a.reshape(space.shape).astype(space.dtype)

    def _step(self, actions: np.ndarray) -> StepOutput:
        out = StepOutput.zeros(self.num_envs, self.obs_dim)
        final, reward, term, trunc, success = (
            out.final_obs, out.reward, out.terminated, out.truncated, out.success)
        ended = []
        for k, env in enumerate(self._envs):
            t = int(self.task_ids[k])
            o, r, te, tr, info = env.step(self._action(t, actions[k]))
            self._write(t, o, final, k)
            reward[k], term[k], trunc[k] = r, te, tr
            success[k] = bool(info.get("is_success", info.get("success", False)))
            if te or tr:
                ended.append(k)
        obs = out.obs
        obs[:] = final
        for k in ended:  # reset now, so the next action is not spent on a reset
            o, _ = self._envs[k].reset()
            self._write(int(self.task_ids[k]), o, obs, k)
        return out

    @serialized
    def seed(self, seed: int, env_seeds: list[int] | None = None) -> None:
        """Seed env k with ``seed + k`` (or ``env_seeds[k]``) at the next `reset` (call it)."""
        self._check_open()
        seed = check_seed(seed, self.num_envs)
        self._pending_seeds = env_seed_list(seed, env_seeds, self.num_envs)
        self._has_reset = False

    def _check_picklable_state(self) -> None:
        ez = [self.task_names[int(self.task_ids[k])] for k, e in enumerate(self._envs)
              if isinstance(e.unwrapped, self._gym.utils.EzPickle)]
        if ez:
            raise NotImplementedError(
                f"get_state/set_state are not supported for {sorted(set(ez))}: these gymnasium "
                "envs pickle as their constructor arguments only (EzPickle), not their state")

    @serialized
    def get_state(self) -> dict[str, Any]:
        """Picklable snapshot of every env (physics/state, RNG, TimeLimit counters).

        Raises:
          NotImplementedError: an env pickles as its constructor arguments only (EzPickle).
        """
        if self._closed:
            raise RuntimeError("the env pool is closed")
        self._check_picklable_state()
        try:
            blob = pickle.dumps(self._envs)
        except Exception as err:  # an env holding an unpicklable handle
            raise NotImplementedError(f"these gymnasium envs cannot be pickled: {err}") from err
        return {"backend": "gym", "tasks": self.task_names, "envs_per_task": self.envs_per_task,
                "envs": blob, "pending_seeds": self._pending_seeds}

    @serialized
    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a `get_state` snapshot taken from a pool with the same tasks.

        Raises:
          ValueError: the snapshot belongs to another backend or task layout.
        """
        import gymnasium

        self._check_state(state, "gym", "a gymnasium pool")
        seeds = state.get("pending_seeds")
        if seeds is not None and (not isinstance(seeds, list) or len(seeds) != self.num_envs
                                  or not all(is_int(s) for s in seeds)):
            raise ValueError(f"state's pending_seeds must be None or {self.num_envs} ints")
        try:
            envs = pickle.loads(state["envs"])
        except Exception as err:  # a damaged or foreign blob
            raise ValueError(f"state's envs cannot be unpickled: {err}") from err
        # A snapshot whose envs are not this pool's envs (another count, other objects) once
        # loaded and then stepped zeros forever or failed even to close.
        if (not isinstance(envs, list) or len(envs) != self.num_envs
                or not all(isinstance(e, gymnasium.Env) for e in envs)):
            raise ValueError(f"state's envs must be the {self.num_envs} gymnasium envs of a "
                             f"get_state() snapshot of this pool's layout")
        self._close_envs()
        self._envs = envs
        self._pending_seeds = seeds
        self._has_reset = seeds is None

    @serialized
    def close(self) -> None:
        """Close every env (idempotent)."""
        if not self._closed:
            self._close_envs()
        super().close()
