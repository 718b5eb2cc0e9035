"""Per-task reward normalisation of BRC (brc-spec §4.2), float64 statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def discounted_returns(rewards: np.ndarray, gamma: float, truncated: bool) -> np.ndarray:
    """Return-to-go G_t = r_t + gamma * G_{t+1} of one episode, float64 (L,) -> (L,) (§4.2).

    The value after the last step is 0 for a terminated episode and mean(rewards) / (1 - gamma)
    for a truncated one (the average reward assumed to continue forever).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    tail = float(rewards.mean()) / (1.0 - gamma) if (truncated and rewards.size) else 0.0
    out = np.empty_like(rewards)
    g = tail
    for t in range(rewards.size - 1, -1, -1):
        g = float(rewards[t]) + gamma * g
        out[t] = g
    return out


def reward_denominator(return_scale, alpha, action_dim: int, gamma: float, v_max: float):
    """D = (G_bar - alpha / (1 - gamma) * H_target / 2) / V_max with H_target = -|A| / 2 (§4.2).

    Works elementwise on NumPy arrays or torch tensors: ``return_scale`` (T,), ``alpha`` scalar.
    Since G_bar >= 0 and alpha > 0, D > 0 always.
    """
    target_entropy = -action_dim / 2.0
    return (return_scale - alpha * (1.0 / (1.0 - gamma)) * target_entropy / 2.0) / v_max


class RewardNormalizer:
    """Running min/max discounted return per task (§4.2), fed raw rewards every env iteration.

    ``num_envs`` env streams (env k belongs to task ``task_ids[k]``) each keep the raw rewards of
    their current episode; when an episode ends its returns-to-go update the task's G_min/G_max.
    A step that is both terminated and truncated is treated as truncated, as the bootstrap mask
    does (§5.4).

    Rule for a task whose first episode has not ended (the released code divides by +inf there,
    i.e. silently zeroes its rewards; §13): its provisional statistics are those its current,
    unfinished episode(s) would give if truncated now (the §4.2 truncation tail), so the scale is
    always finite and becomes the exact §4.2 value as soon as an episode ends. With no reward seen
    at all, G_bar = 0 and D is the entropy correction alone (finite and positive).
    """

    def __init__(self, task_ids: np.ndarray, num_tasks: int, gamma: float = 0.99, *,
                 task_names: Sequence[str] | None = None):
        """``task_names`` (num_tasks names, optional) only label errors."""
        task_ids = np.asarray(task_ids, dtype=np.int64)
        if task_ids.ndim != 1 or task_ids.size == 0:
            raise ValueError(f"task_ids must be a non-empty 1-d array, got shape {task_ids.shape}")
        if task_ids.min() < 0 or task_ids.max() >= num_tasks:
            raise ValueError(f"task_ids must lie in [0, {num_tasks}), got {task_ids.min()}..{task_ids.max()}")
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {gamma}")
        if task_names is not None and len(task_names) != num_tasks:
            raise ValueError(f"task_names must hold {num_tasks} names, got {len(task_names)}")
        self.task_names = None if task_names is None else list(task_names)
        self.task_ids = task_ids
        self.num_tasks = num_tasks
        self.gamma = gamma
        self.g_min = np.full(num_tasks, math.inf, dtype=np.float64)
        self.g_max = np.full(num_tasks, -math.inf, dtype=np.float64)
        self.episodes_done = np.zeros(num_tasks, dtype=np.int64)
        self._episode: list[list[float]] = [[] for _ in range(task_ids.size)]

    def update(self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> None:
        """Record one env iteration: raw reward, terminated, truncated, each (num_envs,).

        Raises:
          ValueError: an argument of another shape, or a NaN/inf reward (nothing is recorded).
        """
        reward = np.asarray(reward, dtype=np.float64)
        terminated, truncated = np.asarray(terminated), np.asarray(truncated)
        n = self.task_ids.size
        for name, value in (("reward", reward), ("terminated", terminated),
                            ("truncated", truncated)):
            if value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) (one entry per env), got "
                                 f"{value.shape}")
        if not np.isfinite(reward).all():
            k = int(np.flatnonzero(~np.isfinite(reward))[0])
            raise ValueError(f"reward[{k}] = {reward[k]} is not finite (env {k}, "
                             f"{self._task_name(k)})")
        done = np.logical_or(terminated, truncated)
        ended = {k: discounted_returns(np.asarray(self._episode[k] + [reward[k]]), self.gamma,
                                       bool(truncated[k]))
                 for k in np.flatnonzero(done).tolist()}
        for k, returns in ended.items():  # (finite rewards, but returns beyond float64)
            if not np.isfinite(returns).all():
                raise ValueError(f"the discounted returns of env {k} ({self._task_name(k)}) "
                                 f"overflow float64: its rewards are too large to normalise")
        for k, r in enumerate(reward.tolist()):
            self._episode[k].append(r)
        for k, returns in ended.items():
            task = self.task_ids[k]
            self.g_min[task] = min(self.g_min[task], returns.min())
            self.g_max[task] = max(self.g_max[task], returns.max())
            self.episodes_done[task] += 1
            self._episode[k] = []

    def _task_name(self, env: int) -> str:
        task = int(self.task_ids[env])
        return f"task {self.task_names[task]!r}" if self.task_names else f"task {task}"

    @property
    def ready(self) -> np.ndarray:
        """(T,) bool: whether each task has finished at least one episode."""
        return self.episodes_done > 0

    def return_scale(self) -> np.ndarray:
        """G_bar per task (T,) float64: max(G_max, |G_min|), the max absolute return so far (§4.2)."""
        g_min, g_max = self.g_min.copy(), self.g_max.copy()
        for task in np.flatnonzero(~self.ready).tolist():  # provisional rule (class docstring)
            for k in np.flatnonzero(self.task_ids == task).tolist():
                if self._episode[k]:
                    returns = discounted_returns(np.asarray(self._episode[k]), self.gamma, True)
                    g_min[task] = min(g_min[task], returns.min())
                    g_max[task] = max(g_max[task], returns.max())
        scale = np.where(g_max > np.abs(g_min), g_max, np.abs(g_min))
        return np.where(np.isfinite(scale), scale, 0.0)

    def denominator(self, alpha: float, action_dim: int, v_max: float = 10.0) -> np.ndarray:
        """(T,) float64 reward divisors D with the current temperature ``alpha`` (§4.2)."""
        return reward_denominator(self.return_scale(), alpha, action_dim, self.gamma, v_max)

    def state_dict(self) -> dict[str, Any]:
        return {
            "task_ids": self.task_ids.copy(), "num_tasks": self.num_tasks, "gamma": self.gamma,
            "g_min": self.g_min.copy(), "g_max": self.g_max.copy(),
            "episodes_done": self.episodes_done.copy(),
            "episode": [list(e) for e in self._episode],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`; ValueError (nothing changed) for another layout or a bad entry."""
        missing = [k for k in ("task_ids", "num_tasks", "gamma", "g_min", "g_max", "episodes_done",
                               "episode") if k not in state]
        if missing:
            raise ValueError(f"normaliser checkpoint lacks {', '.join(missing)}")
        for key in ("num_tasks", "gamma"):
            if state[key] != getattr(self, key):
                raise ValueError(f"normaliser checkpoint has {key}={state[key]}, run has {getattr(self, key)}")
        if not np.array_equal(state["task_ids"], self.task_ids):
            raise ValueError("normaliser checkpoint has a different env-to-task layout (task_ids)")
        arrays = {"g_min": np.asarray(state["g_min"], dtype=np.float64).copy(),
                  "g_max": np.asarray(state["g_max"], dtype=np.float64).copy(),
                  "episodes_done": np.asarray(state["episodes_done"], dtype=np.int64).copy()}
        for key, value in arrays.items():
            if value.shape != (self.num_tasks,):
                raise ValueError(f"normaliser checkpoint: {key} must have shape "
                                 f"({self.num_tasks},), got {value.shape}")
        if len(state["episode"]) != self.task_ids.size:
            raise ValueError(f"normaliser checkpoint: episode must hold {self.task_ids.size} "
                             f"lists (one per env), got {len(state['episode'])}")
        # A damaged checkpoint: NaN statistics (only the no-data infinities are valid) or
        # episodes of non-numbers would silently zero or poison a task's scale.
        if np.isnan(arrays["g_min"]).any() or np.isnan(arrays["g_max"]).any():
            raise ValueError("normaliser checkpoint: g_min/g_max hold NaN")
        try:
            episodes = [np.asarray(e, dtype=np.float64).reshape(-1) for e in state["episode"]]
        except (TypeError, ValueError) as e:
            raise ValueError(f"normaliser checkpoint: episode holds a non-number ({e})") from None
        if not all(np.isfinite(e).all() for e in episodes):
            raise ValueError("normaliser checkpoint: episode holds a non-finite reward")
        self.g_min, self.g_max = arrays["g_min"], arrays["g_max"]
        self.episodes_done = arrays["episodes_done"]
        self._episode = [e.tolist() for e in episodes]
