"""The backend-independent face of a multi-task env pool: step outputs, sizes, action checks."""

from __future__ import annotations

import functools
import math
import numbers
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtrl import _core
from mtrl.envs.registry import TaskSpec


def is_int(value: object) -> bool:
    """An integer, or an integral float (2.0); not a bool, str or None."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and int(value) == value)


def check_seed(seed: object, num_envs: int) -> int:
    """``seed`` as an int, when env k's ``seed + k`` fits in int64; ValueError otherwise (a
    float such as 1.5 or a string is refused, not truncated or parsed)."""
    if not is_int(seed) or not -2**63 <= seed <= 2**63 - num_envs:
        raise ValueError(f"seed must be an int in [-2**63, 2**63 - num_envs] (env k gets "
                         f"seed + k), got {seed!r}")
    return int(seed)


def env_seed_list(seed: int, env_seeds: Any, num_envs: int) -> list[int]:
    """Each env's seed: ``env_seeds[k]`` where given (``num_envs`` ints in int64's range), else
    ``seed + k``. ValueError naming env_seeds otherwise (1.7 and True were truncated, 2**64
    overflowed without a name, a wrong count aborted inside envpool)."""
    if env_seeds is None:
        return [seed + k for k in range(num_envs)]
    try:
        seeds = list(env_seeds)
    except TypeError:
        raise ValueError(f"env_seeds must be a list of {num_envs} ints, got "
                         f"{type(env_seeds).__name__}") from None
    if len(seeds) != num_envs:
        raise ValueError(f"env_seeds must have {num_envs} entries, got {len(seeds)}")
    for s in seeds:
        if not is_int(s) or not -2**63 <= s < 2**63:
            raise ValueError(f"env_seeds must hold ints in [-2**63, 2**63), got {s!r}")
    return [int(s) for s in seeds]


def wrap_seed(seed: int, bits: int) -> int:
    """``seed`` (an int64 from `check_seed`) in a backend's unsigned range [0, 2**bits): the
    engine and gymnasium take 64 bits, envpool 31 (int32). Seeds already in range are unchanged;
    a pool's consecutive seeds stay distinct."""
    return int(seed) % (1 << bits)


@dataclass(frozen=True)
class StepOutput:
    """One batched step. All arrays are new (owned by the caller) and have N = num_envs rows.

    Attributes:
      obs: (N, obs_dim) float32, observation to act on next; the first observation of the new
        episode where an episode ended (zero-padded past the task's obs size).
      final_obs: (N, obs_dim) float32, observation that followed the action (the replay
        ``next_obs``); equals ``obs`` where no episode ended.
      reward: (N,) float32.
      terminated: (N,) bool, the episode ended in a terminal state (bootstrap with 0).
      truncated: (N,) bool, the episode hit its time limit (or diverged) and was cut.
      success: (N,) bool, the task reports success (False for tasks without that notion).
      diverged: (N,) bool, the physics diverged (NaN/warning) and the env was reset; such a
        step is also reported as truncated. Always False for the envpool backend.
    """

    obs: np.ndarray
    final_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    diverged: np.ndarray

    @classmethod
    def zeros(cls, num_envs: int, obs_dim: int) -> StepOutput:
        """A step output of zeros (False flags) for backends that fill it env by env."""
        return cls(obs=np.zeros((num_envs, obs_dim), np.float32),
                   final_obs=np.zeros((num_envs, obs_dim), np.float32),
                   reward=np.zeros(num_envs, np.float32), terminated=np.zeros(num_envs, bool),
                   truncated=np.zeros(num_envs, bool), success=np.zeros(num_envs, bool),
                   diverged=np.zeros(num_envs, bool))


def _storable_obs(obs: Any) -> np.ndarray:
    """``obs`` as the float32 array the replay buffer stores; TypeError / ValueError (naming the
    env row) for values it would refuse: not real numbers, or not finite in float32."""
    o = np.asarray(obs)
    if o.dtype.kind not in "fiu":
        raise TypeError(f"obs must hold real numbers, got dtype {o.dtype}")
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
        stored = np.ascontiguousarray(o, dtype=np.float32)
    if not np.isfinite(stored).all():  # (the row and column looked up only on the error path)
        row, col = (int(i) for i in np.argwhere(~np.isfinite(stored))[0])
        raise ValueError(f"obs[{row}, {col}] = {float(o[row, col])} is not a finite float32 "
                         f"(env {row})")
    return stored


def serialized(method):
    """Runs a pool method holding the pool's lock, so that calls from several threads run one at
    a time. No backend is reentrant: two threads stepping one engine pool stepped the same MuJoCo
    data at once (the C++ step releases the GIL) and crashed; envpool's pools did the same.
    In a forked child, a pool that cannot be used there (`_after_fork_in_child`) refuses every
    call but ``close``, which then only marks it closed."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            if self._fork_error is not None:
                if method.__name__ == "close":
                    self._closed = True  # the backend's resources are the parent's: left alone
                    return None
                raise RuntimeError(self._fork_error)
            return method(self, *args, **kwargs)
    return run


_LIVE_POOLS: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child runs only the thread that forked. A pool whose lock another thread held at
    that moment would hang on every call (the lock is never released), and that thread may have
    left it half-stepped; a backend whose worker threads do not survive fork (envpool) would hang
    at its next step. Such pools refuse every call in the child; the others get a fresh lock and
    work as before (the engine re-creates its threads itself)."""
    for pool in list(_LIVE_POOLS):
        busy = not pool._lock.acquire(blocking=False)
        if not busy:
            pool._lock.release()
        pool._lock = threading.RLock()
        if not pool._survives_fork:  # closed too: a closed envpool pool still holds its pools
            pool._abandon_in_child()
        if pool._closed:
            continue
        if busy:
            pool._fork_error = ("this env pool was in use by another thread when the process "
                                "forked, so its state may be half-updated: make a new pool in "
                                "the child")
        elif not pool._survives_fork:
            pool._fork_error = (f"{type(pool).__name__} pools cannot run in a forked child (their "
                                f"worker threads stay in the parent): make a new pool in the "
                                f"child, or start the child with the 'spawn' method")


os.register_at_fork(after_in_child=_after_fork_in_child)


class TaskPool:
    """Shared layout and checks of a pool of ``envs_per_task`` envs for each of T tasks.

    Env k runs task ``task_ids[k]``; envs are grouped by task in the order the tasks were given.
    Subclasses implement ``reset``, ``seed``, ``get_state``, ``set_state`` and ``close``, each
    marked `serialized`, and ``_step`` (unmarked: ``step`` and ``step_into`` hold the lock around
    it). Thread-safety: a pool may be used from several threads; its calls run one at a time.
    """

    _survives_fork = True  # whether the backend runs in a forked child (`_after_fork_in_child`)

    def __init__(self, specs: list[TaskSpec], envs_per_task: int, obs_dims: list[int],
                 action_dims: list[int], max_episode_steps: list[int]) -> None:
        self._specs = list(specs)
        self._envs_per_task = envs_per_task
        self.obs_dims = np.asarray(obs_dims, dtype=np.int64)
        self.action_dims = np.asarray(action_dims, dtype=np.int64)
        self.max_episode_steps = np.asarray(max_episode_steps, dtype=np.int64)
        self.task_ids = np.repeat(np.arange(len(specs), dtype=np.int64), envs_per_task)
        # (T,) bool: the task's actions are discrete (Atari, gymnasium Discrete): the env takes
        # the argmax of the first action_dims[t] entries of its (clipped) row, ties to the lowest
        # index. Backends with discrete tasks set their entries after this constructor.
        self.discrete = np.zeros(len(specs), dtype=bool)
        self.obs_dim = int(self.obs_dims.max())
        self.action_dim = int(self.action_dims.max())
        # (N,) action entries each env actually uses.
        self._env_action_dims = np.ascontiguousarray(self.action_dims[self.task_ids])
        self._closed = False
        self._has_reset = False
        self._lock = threading.RLock()  # see serialized
        self._fork_error: str | None = None  # why the pool refuses calls in a forked child
        _LIVE_POOLS.add(self)

    @property
    def num_envs(self) -> int:
        """N, the number of environment instances."""
        return int(self.task_ids.shape[0])

    @property
    def num_tasks(self) -> int:
        """T, the number of distinct tasks (in the order given to `make`)."""
        return len(self._specs)

    @property
    def task_names(self) -> list[str]:
        """(T,) canonical task names."""
        return [s.name for s in self._specs]

    @property
    def envs_per_task(self) -> int:
        """Instances per task."""
        return self._envs_per_task

    def _task_rows(self, t: int) -> slice:
        return slice(t * self._envs_per_task, (t + 1) * self._envs_per_task)

    def check_actions(self, actions: Any) -> np.ndarray:
        """Validate actions and return a clipped float32 copy.

        Rule: entries must be finite; values outside [-1, 1] are clipped to [-1, 1]; padded
        entries past a task's action size are ignored.

        Raises:
          ValueError: wrong shape or dtype, or NaN/inf in an entry the env uses.
          RuntimeError: the pool is closed or was never reset.
        """
        self._check_open()
        if not self._has_reset:
            raise RuntimeError("call reset() before the first step()")
        a = np.asarray(actions)
        if a.dtype != np.float32:
            raise ValueError(f"actions must be float32, got {a.dtype}")
        if a.shape != (self.num_envs, self.action_dim):
            raise ValueError(
                f"actions must have shape (num_envs, action_dim) = "
                f"({self.num_envs}, {self.action_dim}), got {a.shape}")
        out = np.empty_like(a, order="C")
        # One C++ pass (csrc/envs/actions.h): clip, zero non-finite padding, and raise
        # ValueError("actions contain NaN or inf for envs [...]") for a non-finite used entry.
        _core._clip_actions(np.ascontiguousarray(a), self._env_action_dims, out)
        return out

    @serialized
    def step(self, actions: Any) -> StepOutput:
        """Step every env once with its row of ``actions`` ((N, action_dim) float32 in [-1, 1]).

        Where an episode ends, ``final_obs`` holds the observation that ended it and ``obs``
        the first observation of the next episode, so no transition crosses a reset and no
        action is ignored.
        """
        return self._step(self.check_actions(actions))

    @serialized
    def step_into(self, replay: Any, obs: np.ndarray, actions: Any) -> StepOutput:
        """`step`, then insert the N transitions into ``replay`` in one call.

        ``replay`` is a `mtrl.replay.ReplayBuffer` (anything with its ``add`` signature); ``obs``
        is the (N, obs_dim) observation the actions were taken in (the previous ``out.obs``).
        The stored action is the clipped one the envs used, and the stored next observation is
        ``final_obs``. The step's arrays already have the buffer's dtypes and layout, so they
        reach the C++ buffer without a Python-level copy. Before any env steps (a step whose
        transitions cannot be stored would be lost) it raises ValueError when ``obs`` or the
        buffer's sizes do not match the pool or ``obs`` holds a value that is not a finite
        float32, TypeError when ``obs`` is not real numbers or ``replay`` has no ``add``, and
        RuntimeError when the buffer is closed.
        """
        a = self.check_actions(actions)
        if not callable(getattr(replay, "add", None)):
            raise TypeError(f"replay must be a mtrl.replay.ReplayBuffer (anything with its add), "
                            f"got {type(replay).__name__}")
        if getattr(replay, "closed", False):
            raise RuntimeError("the replay buffer is closed")
        if np.shape(obs) != (self.num_envs, self.obs_dim):
            raise ValueError(f"obs must have shape (num_envs, obs_dim) = ({self.num_envs}, "
                             f"{self.obs_dim}), got {np.shape(obs)}")
        obs = _storable_obs(obs)
        for name, want in (("num_envs", self.num_envs), ("obs_dim", self.obs_dim),
                           ("action_dim", self.action_dim), ("num_tasks", len(self._specs))):
            have = getattr(replay, name, want)  # (a stand-in without the attribute: add checks)
            if have != want and not (name == "num_tasks" and have > want):
                raise ValueError(f"replay {name} is {have} but the pool's is {want}")
        out = self._step(a)
        replay.add(self.task_ids, obs, a, out.reward, out.terminated, out.truncated, out.final_obs)
        return out

    def _step(self, actions: np.ndarray) -> StepOutput:
        raise NotImplementedError

    def _abandon_in_child(self) -> None:
        """In a forked child, for backends that do not survive fork: keep whatever would touch
        the parent's threads when destroyed from ever being destroyed."""

    def _check_open(self) -> None:
        """RuntimeError when the pool is closed."""
        if self._closed:
            raise RuntimeError("the env pool is closed")

    def _check_state(self, state: Any, backend: str, label: str) -> None:
        """Raise ValueError unless ``state`` is a ``get_state`` snapshot of a ``backend`` pool with
        this pool's tasks and envs per task (``label`` names that kind of pool in the message);
        RuntimeError when the pool is closed."""
        self._check_open()
        if (not isinstance(state, dict) or state.get("backend") != backend
                or not {"tasks", "envs_per_task", "envs"} <= set(state)):
            raise ValueError(f"state must come from get_state() of {label}")
        if state["tasks"] != self.task_names or state["envs_per_task"] != self.envs_per_task:
            raise ValueError(f"state is for tasks {state['tasks']} x{state['envs_per_task']}, "
                             f"this pool runs {self.task_names} x{self.envs_per_task}")

    def close(self) -> None:
        """Release the backend's resources (idempotent)."""
        self._closed = True

    def __enter__(self) -> TaskPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_envs={self.num_envs}, tasks={self.task_names}, "
                f"obs_dim={self.obs_dim}, action_dim={self.action_dim})")
