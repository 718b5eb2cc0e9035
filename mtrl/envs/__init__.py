"""mtrl.envs: one batched pool over a heterogeneous set of tasks (DMC, MetaWorld v3, MyoSuite,
Atari, any gymnasium id; see mtrl/envs/suites.py for the latter three).

The contract is /work/notes/ENVS_API.md: ``make(tasks)`` returns a pool whose ``step`` takes
(N, action_dim) float32 actions and returns padded (N, obs_dim) float32 observations plus
replay-friendly episode ends (``final_obs`` vs ``obs``).
"""

from __future__ import annotations

from mtrl import _core
from mtrl.envs.pool import StepOutput, TaskPool, check_seed, is_int
from mtrl.envs.registry import TaskSpec, available_tasks, resolve

EnvMemoryError = _core.EnvMemoryError
"""MemoryError raised when a pool's envs cannot fit in this machine's available memory (the C++
engine checks MemAvailable after building the first env of each task)."""

BACKENDS = ("auto", "engine", "envpool")
# Most envs (num_tasks * envs_per_task) in one pool: a bound far above any training setup that
# turns a mistyped size into an error instead of minutes of building envs or the OOM killer.
MAX_ENVS = 65536


def make(tasks: list[str], *, envs_per_task: int = 1, seed: int = 0,
         num_threads: int | None = None, backend: str = "auto",
         max_episode_steps: int | None = None) -> TaskPool:
    """Build a pool with ``envs_per_task`` envs of each task.

    Args:
      tasks: task names (see `available_tasks`); bare "cheetah-run" means "dmc:cheetah-run".
        Distinct tasks only, in the order given; env k runs task ``k // envs_per_task``.
      envs_per_task: instances of each task.
      seed: env k is seeded with ``seed + k`` (the engine and gymnasium tasks take it mod 2**64,
        envpool, whose seeds are int32, mod 2**31: seeds in [0, 2**31) as they are).
      num_threads: worker threads (None: all cores).
      backend: "engine" (the C++ engine, DMC tasks it implements), "envpool" (every task), or
        "auto": the engine for the DMC tasks it implements, envpool for the rest (one pool
        either way; env k keeps seed ``seed + k``). "gym:<id>" tasks run on the gymnasium
        backend (mtrl/envs/gym_backend.py) under "auto" and "envpool".
      max_episode_steps: override every task's time limit (None: the suite's, 1000 for DMC,
        200 for MetaWorld, as brc-spec §7).

    Returns:
      A `TaskPool`; call ``reset()`` before ``step()``; close it (or use ``with``).

    Raises:
      ValueError: unknown or repeated task, bad sizes (more than MAX_ENVS envs in all), seed
        outside [-2**63, 2**63 - num_envs], unknown backend.
      EnvMemoryError: the engine's envs would not fit in the available memory.
    """
    if isinstance(tasks, str):
        raise ValueError("tasks must be a list of task names, got a single str")
    try:
        tasks = list(tasks)
    except TypeError:
        raise TypeError(f"tasks must be a list of task names, got {type(tasks).__name__}") from None
    specs = [resolve(t) for t in tasks]
    if not specs:
        raise ValueError("tasks must name at least one task")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"tasks must be distinct (use envs_per_task for copies), repeated: {dup}")
    if not is_int(envs_per_task) or envs_per_task < 1:
        raise ValueError(f"envs_per_task must be an int >= 1, got {envs_per_task!r}")
    num_envs = len(specs) * int(envs_per_task)
    if num_envs > MAX_ENVS:
        raise ValueError(f"at most {MAX_ENVS} envs in one pool, got {len(specs)} tasks x "
                         f"{int(envs_per_task)} envs_per_task = {num_envs}")
    seed = check_seed(seed, num_envs)
    for name, value, top in (("num_threads", num_threads, 4096),
                             ("max_episode_steps", max_episode_steps, 2**62)):
        if value is not None and (not is_int(value) or not 1 <= value <= top):
            raise ValueError(f"{name} must be None or an int in [1, {top}], got {value!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _build(specs, int(envs_per_task), int(seed),
                  None if num_threads is None else int(num_threads), backend,
                  None if max_episode_steps is None else int(max_episode_steps))


def _build(specs: list[TaskSpec], envs_per_task: int, seed: int, num_threads: int | None,
           backend: str, max_episode_steps: int | None) -> TaskPool:
    from mtrl.envs.engine import EngineTaskPool, engine_tasks
    from mtrl.envs.envpool_backend import EnvpoolTaskPool
    from mtrl.envs.gym_backend import GymTaskPool
    from mtrl.envs.mixed import MixedTaskPool

    on_engine = set(engine_tasks())
    if backend == "engine":
        missing = [s.name for s in specs if s.name not in on_engine]
        if missing:
            raise ValueError(f"backend='engine' does not implement {missing}; it has "
                             f"{sorted(on_engine)} (use backend='auto' or 'envpool')")
    use_engine = backend != "envpool"
    groups = {"engine": [i for i, s in enumerate(specs) if use_engine and s.name in on_engine]}
    # "gym:<id>" tasks always run on the gymnasium backend (mtrl/envs/gym_backend.py).
    groups["gym"] = [i for i, s in enumerate(specs) if s.suite == "gym"]
    groups["envpool"] = [i for i in range(len(specs))
                         if i not in set(groups["engine"]) | set(groups["gym"])]
    kinds = {"engine": EngineTaskPool, "envpool": EnvpoolTaskPool, "gym": GymTaskPool}
    parts = []
    for kind, idx in groups.items():
        if not idx:
            continue
        seeds = [seed + i * envs_per_task + j for i in idx for j in range(envs_per_task)]
        pool = kinds[kind]([specs[i] for i in idx], envs_per_task=envs_per_task,
                           num_threads=num_threads, max_episode_steps=max_episode_steps,
                           env_seeds=seeds)
        parts.append((pool, idx))
    if len(parts) == 1:
        return parts[0][0]
    return MixedTaskPool(specs, envs_per_task, parts)


__all__ = ["EnvMemoryError", "StepOutput", "TaskPool", "TaskSpec", "available_tasks", "make",
           "resolve"]
