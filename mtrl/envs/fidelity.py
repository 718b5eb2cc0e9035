"""Alignment checks of the C++ engine against dm_control (used by tests/test_envs_engine.py and
benchmarks/check_engine_fidelity.py): same physics state + same actions -> same observations and
rewards; initial-state distributions with the same mean and spread."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mtrl.envs.engine import EngineTaskPool
from mtrl.envs.registry import resolve

os.environ.setdefault("MUJOCO_GL", "egl")  # dm_control must not open a window


def load_dm_control(task: str):
    """dm_control's own environment for "dmc:<domain>-<task>"."""
    from dm_control import suite

    domain, name = resolve(task).short.split("-", 1)
    return suite.load(domain, name, task_kwargs={"random": 0})


def flat_obs(time_step_obs: dict) -> np.ndarray:
    """dm_control's observation dict flattened in key order (float64)."""
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in time_step_obs.values()])


def _task_state(short: str, physics) -> list[float]:
    """Per-episode model edits of the tasks that make them (layout of Task::EpisodeState)."""
    m = physics.named.model
    if short.startswith("reacher-"):
        return [m.geom_pos["target", "x"], m.geom_pos["target", "y"]]
    if short.startswith("finger-"):
        return [m.site_pos["target", "x"], m.site_pos["target", "z"]]
    if short == "fish-swim":
        return list(m.geom_pos["target"])
    if short.startswith("swimmer-"):
        return [m.geom_pos["target", "x"], m.geom_pos["target", "y"]]
    if short == "quadruped-escape":
        model = physics.model
        adr, n = model.hfield_adr[0], model.hfield_nrow[0] * model.hfield_ncol[0]
        return list(physics.model.hfield_data[adr:adr + n])
    if short == "point_mass-hard":
        return list(physics.model.wrap_prm[:4])
    return []


def _ctrl(pool: EngineTaskPool, physics, action: np.ndarray) -> np.ndarray:
    """The control dm_control gets for an engine action in [-1, 1] (same affine map)."""
    lo, hi = physics.model.actuator_ctrlrange.T
    unit = np.all(lo == -1.0) and np.all(hi == 1.0)
    a = action.astype(np.float64)
    return a if unit else lo + (a + 1.0) * (hi - lo) / 2.0


@dataclass(frozen=True)
class RolloutDiff:
    """Largest relative differences (|a - b| / (|b| + atol)) over a rollout."""

    obs: float
    reward: float
    steps: int


def compare_rollout(task: str, steps: int, seed: int = 0, atol: float = 1e-5,
                    env=None) -> RolloutDiff:
    """Copy dm_control's reset state into the engine, apply the same random actions to both.

    ``env``: a dm_control environment of ``task`` to reuse (loaded when None).
    """
    import mujoco

    env = env if env is not None else load_dm_control(task)
    ts = env.reset()
    physics = env.physics
    spec = resolve(task)
    with EngineTaskPool([spec], seed=seed, num_threads=1) as pool:
        pool.reset()
        sig = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(physics.model.ptr, sig))
        mujoco.mj_getState(physics.model.ptr, physics.data.ptr, state, sig)
        rng = pool._pool._get_state()[0][1]
        pool._pool._set_state([(state, rng, 0, np.asarray(_task_state(spec.short, physics)))])
        rng_a = np.random.default_rng(seed)
        worst_obs = worst_rew = 0.0
        for t in range(steps):
            a = rng_a.uniform(-1, 1, (1, pool.action_dim)).astype(np.float32)
            ts = env.step(_ctrl(pool, physics, a[0]))
            out = pool.step(a)
            ref = flat_obs(ts.observation)
            ours = out.final_obs[0, : ref.size].astype(np.float64)
            worst_obs = max(worst_obs, float(np.max(np.abs(ours - ref) / (np.abs(ref) + atol))))
            rew_gap = abs(float(out.reward[0]) - ts.reward) / (abs(ts.reward) + atol)
            worst_rew = max(worst_rew, rew_gap)
            if ts.last() or out.truncated[0]:
                return RolloutDiff(worst_obs, worst_rew, t + 1)
    return RolloutDiff(worst_obs, worst_rew, steps)


def initial_obs_samples(task: str, n: int, seed: int = 0, *,
                        chunk: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """(n, obs_dim) first observations from n engine resets and n dm_control resets.

    The engine envs are built at most ``chunk`` at a time (env k seeded ``seed + k`` whatever
    the chunk, so the samples do not depend on it): 200 dog envs at once need ~13 GB resident
    (~22 GB by the pool's MemAvailable check), 25 need under 3 GB.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    env = load_dm_control(task)
    # Rounded to float32 like the engine's observations, so constant entries compare equal.
    ref = np.stack([flat_obs(env.reset().observation) for _ in range(n)])
    ref = ref.astype(np.float32).astype(np.float64)
    parts = []
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        with EngineTaskPool([resolve(task)], envs_per_task=count, seed=seed + start,
                            num_threads=2) as pool:
            parts.append(pool.reset()[:, : ref.shape[1]].astype(np.float64))
    return np.concatenate(parts), ref


def distribution_gap(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Compare two (n, obs_dim) samples entry by entry.

    Returns:
      (largest mean gap in pooled standard deviations, largest two-sample Kolmogorov-Smirnov
      statistic). The KS statistic covers spread and shape and tolerates rare events (a touch
      sensor firing in 1 reset of 200) that make raw std ratios meaningless.
    """
    pooled = np.sqrt((ours.var(0) + ref.var(0)) / 2)
    scale = pooled + 1e-6 * (1 + np.abs(ref.mean(0)))
    mean_gap = float(np.max(np.abs(ours.mean(0) - ref.mean(0)) / scale))
    ks = 0.0
    for j in range(ref.shape[1]):
        grid = np.concatenate([ours[:, j], ref[:, j]])
        cdf_o = np.searchsorted(np.sort(ours[:, j]), grid, side="right") / ours.shape[0]
        cdf_r = np.searchsorted(np.sort(ref[:, j]), grid, side="right") / ref.shape[0]
        ks = max(ks, float(np.max(np.abs(cdf_o - cdf_r))))
    return mean_gap, ks
