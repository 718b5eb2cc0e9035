"""Frozen, validated configuration dataclasses for ``python -m mtrl.train`` (brc-spec §2.1, §6)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Literal

# §9.1 DMC hard.
DMC_HARD = (
    "dmc:dog-stand", "dmc:dog-walk", "dmc:dog-trot", "dmc:dog-run",
    "dmc:humanoid-stand", "dmc:humanoid-walk", "dmc:humanoid-run",
)
# dmc-mt30: standard tasks (dm_control suite.BENCHMARKING, plus dog and quadruped from
# suite.EXTRA) of cartpole, pendulum, acrobot, reacher, point_mass, ball_in_cup, finger, cheetah,
# walker, hopper, humanoid, dog, quadruped, fish, swimmer: exactly 30 tasks, the _sparse variants
# left out (finger, ball_in_cup and reacher still reward sparsely). Not TD-MPC2's MT30 nor the DMC
# half of BRC's MT80 (brc-spec §9.1), which use custom tasks.
DMC_MT30 = tuple(f"dmc:{t}" for t in (
    "acrobot-swingup", "ball_in_cup-catch", "cartpole-balance", "cartpole-swingup", "cheetah-run",
    "finger-spin", "finger-turn_easy", "finger-turn_hard", "fish-upright", "fish-swim",
    "hopper-stand", "hopper-hop", "humanoid-stand", "humanoid-walk", "humanoid-run",
    "pendulum-swingup", "point_mass-easy", "reacher-easy", "reacher-hard", "swimmer-swimmer6",
    "swimmer-swimmer15", "walker-stand", "walker-walk", "walker-run", "dog-stand", "dog-walk",
    "dog-trot", "dog-run", "quadruped-walk", "quadruped-run",
))
# Standard MetaWorld MT10 (Yu et al. 2019).
METAWORLD_MT10 = (
    "reach", "push", "pick-place", "door-open", "drawer-open", "drawer-close",
    "button-press-topdown", "peg-insert-side", "window-open", "window-close",
)
# The laptop default (README "Quick start"): cheap DMC tasks with dense rewards that SAC-style
# agents start to learn within ~10k steps; two bodies with two tasks each, so tasks that share
# observation and action spaces are told apart only by the task embedding (§5.1). finger-spin was
# here first: its reward is sparse (spinner faster than 15 rad/s), random actions never hit it and
# it did not learn within this budget (benchmarks/RESULTS.md "Default run").
LAPTOP_TASKS = ("dmc:cartpole-balance", "dmc:cartpole-swingup", "dmc:walker-stand", "dmc:walker-walk")
TASK_SETS = ("dmc-hard", "dmc-mt30", "metaworld-mt10", "metaworld-mt50", "laptop")


# Largest |v_min|, |v_max|: the atoms and their spacing stay finite in float32. Smallest atom
# spacing (v_max - v_min) / (K - 1) relative to max(|v_min|, |v_max|): eight float32 ulps. mtrl.ops
# uses both (its checks and the kernels' csrc/kernels/td_target.h hold the same bounds).
SUPPORT_LIMIT = 1e38
MIN_ATOM_SPACING = 2.0**-20
# Most atoms the fused TD kernels take (mtrl.ops.MAX_ATOMS).
FUSED_MAX_ATOMS = 4096


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{type(obj).__name__}.{name} must be finite and > 0, got {value}")
        if value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be > 0, got {value}")


@dataclass(frozen=True)
class EnvConfig:
    """Which tasks to train on and how to build their environments."""

    tasks: tuple[str, ...] = DMC_HARD
    """Task names (e.g. dmc:cheetah-run or cheetah-run) and/or task sets: dmc-hard, dmc-mt30, metaworld-mt10, metaworld-mt50, laptop."""
    backend: str = "auto"
    """Environment backend passed to mtrl.envs.make (auto picks the best available)."""
    num_threads: int | None = None
    """Env worker threads (None: the backend's default)."""
    max_episode_steps: int | None = None
    """Override every task's time limit (None: the suite's; 1000 for DMC)."""

    def __post_init__(self):
        if len(self.tasks) == 0:
            raise ValueError("EnvConfig.tasks must name at least one task or task set")
        if self.max_episode_steps is not None and self.max_episode_steps <= 0:
            raise ValueError(f"EnvConfig.max_episode_steps must be > 0, got {self.max_episode_steps}")


@dataclass(frozen=True)
class AgentConfig:
    """BRC networks and optimisation (defaults: the released configuration, spec §2.1)."""

    critic_width: int = 4096
    """Critic BroNet width W (§3.1)."""
    critic_depth: int = 2
    """Number of critic residual blocks (§3.1)."""
    ensemble_size: int = 2
    """Critic ensemble members, computed as batched weights (§3.1)."""
    num_atoms: int = 101
    """Categorical support size (§3.2)."""
    v_min: float = -10.0
    """Lowest support atom (§3.2)."""
    v_max: float = 10.0
    """Highest support atom; also the reward-normalisation V_max (§4.2)."""
    embedding_dim: int = 32
    """Task-embedding size in multi-task mode (§5.1)."""
    actor_width: int = 256
    """Actor BroNet width (§2.3)."""
    actor_depth: int = 1
    """Actor residual blocks (§2.3)."""
    gamma: float = 0.99
    """Discount factor (§2.1)."""
    tau: float = 0.005
    """Polyak coefficient of the target critic (§2.2)."""
    lr: float = 3e-4
    """AdamW learning rate of actor and critic (§2.1)."""
    weight_decay: float = 1e-4
    """AdamW weight decay on all actor/critic parameters (§11.1)."""
    temperature_lr: float = 3e-4
    """Adam learning rate of log alpha (§2.1)."""
    temperature_beta1: float = 0.5
    """Adam beta1 of log alpha (§2.1)."""
    init_temperature: float = 0.1
    """Initial alpha (§2.4)."""
    fused_ops: bool = True
    """Use mtrl.ops fused TD target / cross-entropy when available (else mtrl.math, same result)."""
    bf16: bool = False
    """bf16 matmuls in the critic (online, target, and its forward in the actor loss; the actor stays float32), as torch.autocast: on CUDA autocast itself; on the CPU only with AMX-BF16 or AVX512-BF16 (else ValueError), via mtrl.fused_bronet: matmul inputs (activations, weights cast once per forward) and outputs rounded to bf16 (nearest even), float32 accumulation, LayerNorm, residual stream, master weights and .grad; the categorical head (its logits feed the cross-entropy, TD target and actor's Q) stays float32, outside autocast, on CUDA and CPU alike."""
    compile: bool = False
    """torch.compile the online and target critic forwards (where the FLOPs are, §11.13); the actor stays eager."""
    tf32: bool = False
    """CUDA only (ValueError on a CPU device): run the agent's float32 matmuls (updates, acting, evaluation, compiled forwards) on TF32 tensor cores, JAX's default matmul precision on recent NVIDIA GPUs, i.e. what the paper's "float32" code ran there. Set around the agent's calls only; torch's process-wide setting is restored after each (mtrl.precision). Off: IEEE float32, even if the process enabled TF32. With bf16 the critic's bf16 matmuls are unchanged and the float32 ones (actor, critic head) use TF32. Off by default: its effect on learning is not measured yet."""

    def __post_init__(self):
        _positive(self, "critic_width", "critic_depth", "ensemble_size", "embedding_dim",
                  "actor_width", "actor_depth", "lr", "temperature_lr", "init_temperature")
        if self.num_atoms < 2:
            raise ValueError(f"AgentConfig.num_atoms must be >= 2, got {self.num_atoms}")
        if self.fused_ops and self.num_atoms > FUSED_MAX_ATOMS:
            raise ValueError(f"AgentConfig.num_atoms must be <= {FUSED_MAX_ATOMS} with the fused "
                             f"ops (num_atoms <= {FUSED_MAX_ATOMS}), got {self.num_atoms}; pass "
                             f"--agent.no-fused-ops for more")
        if not all(math.isfinite(v) and abs(v) <= SUPPORT_LIMIT for v in (self.v_min, self.v_max)):
            raise ValueError(f"AgentConfig.v_min and v_max must be finite with |v| <= "
                             f"{SUPPORT_LIMIT:g}, got {self.v_min}, {self.v_max}")
        if not self.v_min < self.v_max:
            raise ValueError(f"AgentConfig.v_min ({self.v_min}) must be < v_max ({self.v_max})")
        if not self.v_max > 0:  # (0 made every reward 0; below it, each one changed sign)
            raise ValueError(f"AgentConfig.v_max must be > 0: it is also the V_max that the "
                             f"reward normalisation scales returns to (brc-spec §4.2), got "
                             f"{self.v_max}")
        if not 1e-30 <= self.init_temperature <= 1e30:
            raise ValueError(f"AgentConfig.init_temperature must be in [1e-30, 1e30] (the "
                             f"temperature is kept as a float32 log), got {self.init_temperature}")
        spacing = (self.v_max - self.v_min) / (self.num_atoms - 1)
        if not spacing >= MIN_ATOM_SPACING * max(abs(self.v_min), abs(self.v_max)):
            raise ValueError(f"AgentConfig support [{self.v_min}, {self.v_max}] is too narrow for "
                             f"{self.num_atoms} float32 atoms: (v_max - v_min) / (num_atoms - 1) "
                             f"must be >= 2^-20 max(|v_min|, |v_max|)")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"AgentConfig.gamma must be in [0, 1), got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"AgentConfig.tau must be in (0, 1], got {self.tau}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"AgentConfig.weight_decay must be finite and >= 0, got "
                             f"{self.weight_decay}")
        if not 0.0 <= self.temperature_beta1 < 1.0:
            raise ValueError(f"AgentConfig.temperature_beta1 must be in [0, 1), got {self.temperature_beta1}")


@dataclass(frozen=True)
class BufferConfig:
    """Replay storage and sampling (§5.3)."""

    capacity_per_task: int = 1_000_000
    """Transitions kept per task (FIFO)."""
    batch_size: int | None = None
    """Transitions per gradient step; None: 1024 multi-task, 256 single-task (§2.1)."""

    def __post_init__(self):
        _positive(self, "capacity_per_task")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ValueError(f"BufferConfig.batch_size must be > 0, got {self.batch_size}")

    def resolved_batch_size(self, num_tasks: int) -> int:
        """The batch size actually used for ``num_tasks`` tasks."""
        if self.batch_size is not None:
            return self.batch_size
        return 1024 if num_tasks > 1 else 256


@dataclass(frozen=True)
class TrainConfig:
    """A full training run: ``python -m mtrl.train``."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    seed: int = 0
    """Seed of python, numpy, torch and the environments (eval envs use seed + 42, §6.1)."""
    iterations: int = 1_000_000
    """Env iterations (one step of every task each) (§2.1)."""
    random_iterations: int = 5_000
    """Uniform-random warm-up iterations; updates start after them (§2.1)."""
    updates_per_iteration: int = 2
    """Gradient steps per iteration, each on its own batch (§2.1)."""
    eval_interval: int = 50_000
    """Evaluate every this many iterations (and at the end) (§6.1)."""
    eval_episodes: int = 10
    """Deterministic eval episodes per task, on separate env instances (§6.2)."""
    log_interval: int = 1_000
    """Write training metrics every this many iterations."""
    checkpoint_interval: int = 50_000
    """Write a checkpoint every this many iterations (and at the end); 0 disables periodic ones."""
    keep_checkpoints: int = 2
    """How many most recent checkpoints to keep."""
    run_dir: str = "runs/default"
    """Run directory (config, metrics, TensorBoard, plots, checkpoints)."""
    resume: bool = False
    """Continue from the latest complete checkpoint in run_dir; fields not given on the command line then come from the run's config.json, not the preset."""
    device: str = "auto"
    """torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ..."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    wandb: bool = False
    """Log to Weights & Biases (imported only when set)."""
    wandb_project: str = "mtrl"
    """W&B project name."""
    progress: Literal["auto", "bar", "lines"] = "auto"
    """Progress display: tqdm bar on a TTY (auto), always bar, or plain periodic lines."""
    torch_threads: int = 0
    """CPU threads for torch, 0 to 4096 (0: torch's default); 1 avoids spin-waiting on a busy machine."""

    def __post_init__(self):
        _positive(self, "iterations", "updates_per_iteration", "eval_interval", "eval_episodes",
                  "log_interval", "keep_checkpoints")
        if not 0 <= self.seed <= 2**62:  # env k gets seed + k; torch/numpy take < 2**63
            raise ValueError(f"TrainConfig.seed must be in [0, 2**62], got {self.seed}")
        if self.random_iterations < 0:
            raise ValueError(f"TrainConfig.random_iterations must be >= 0, got {self.random_iterations}")
        # The bound of EnvConfig.num_threads: a count libgomp cannot create aborts the process
        # at the first parallel op, not at torch.set_num_threads.
        if not 0 <= self.torch_threads <= 4096:
            raise ValueError(f"TrainConfig.torch_threads must be in [0, 4096], got {self.torch_threads}")
        if self.checkpoint_interval < 0:
            raise ValueError(f"TrainConfig.checkpoint_interval must be >= 0, got {self.checkpoint_interval}")
        if not self.run_dir.strip():  # "" is the current directory: its files mixed with the run's
            raise ValueError("TrainConfig.run_dir must name a directory, got an empty string")

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` (configs are never mutated)."""
        return dataclasses.replace(self, **changes)


def paper_preset() -> TrainConfig:
    """The released configuration (§2.1): width 4096, batch 1024 MT / 256 ST, 2 updates/iteration,
    5,000 random iterations, 1M replay per task, eval every 50k with 10 episodes per task."""
    return TrainConfig()


def laptop_preset() -> TrainConfig:
    """Default with no arguments: 4 cheap DMC tasks (``LAPTOP_TASKS``), a 256-wide critic,
    batch 256, 15k iterations (60k env steps), ~15-25 minutes on 2 idle CPU cores (README).

    Only size and schedule differ from the released configuration, plus one optimiser knob:
    the temperature's Adam learning rate is 3e-3 instead of 3e-4. The method is unchanged
    (alpha0 0.1, beta1 0.5, target entropy -|A|/2, §2.4), but with 3e-4 log(alpha) moves ~3e-4
    per update, so alpha needed ~20k updates to fall from 0.1 to the ~1e-3 where the entropy
    bonus stops dominating the normalised rewards (~0.03 per step): most of this short run was
    spent near maximum entropy (measured, benchmarks/RESULTS.md). With 3e-3 alpha reached ~1e-3
    after ~6k updates (iteration 5,000). One torch thread: torch's OpenMP threads spin-wait and then fight the
    env engine's threads (and anything else running) for the cores."""
    return TrainConfig(
        env=EnvConfig(tasks=("laptop",)),
        agent=AgentConfig(critic_width=256, temperature_lr=3e-3),
        buffer=BufferConfig(capacity_per_task=100_000, batch_size=256),
        iterations=15_000,
        random_iterations=2_000,
        eval_interval=1_500,
        eval_episodes=5,
        log_interval=500,
        checkpoint_interval=5_000,
        run_dir="runs/laptop",
        torch_threads=1,
    )


PRESETS = {"laptop": laptop_preset, "paper": paper_preset}


def resolve_tasks(names: tuple[str, ...], available: list[str]) -> list[str]:
    """Expand task-set names and canonicalise task names against ``available`` (mtrl.envs names),
    in the order listed (the run's task order: task ids, engine, checkpoints).

    Raises ValueError naming an unknown task with the closest available names, or a task listed
    more than once (also through a set).
    """
    out = [t for _, tasks in _expand(names, available) for t in tasks]
    if len(set(out)) != len(out):
        dup = sorted({t for t in out if out.count(t) > 1})
        raise ValueError(f"task(s) listed more than once: {', '.join(dup)}")
    return out


def group_tasks(names: tuple[str, ...], available: list[str]) -> dict[str, list[str]]:
    """The tasks of ``resolve_tasks(names, available)`` by where they came from: each task set's
    under its name, task names given one by one under ``"other"`` (groups in order of first
    appearance). The logger draws a curve PNG per group when there are several.

    Raises: as ``resolve_tasks``.
    """
    resolve_tasks(names, available)  # its checks (unknown or repeated tasks)
    groups: dict[str, list[str]] = {}
    for task_set, tasks in _expand(names, available):
        groups.setdefault(task_set or "other", []).extend(tasks)
    return groups


def _expand(names: tuple[str, ...], available: list[str]) -> list[tuple[str | None, list[str]]]:
    """Per entry of ``names``: (its task-set name, or None for a task name; its tasks)."""
    def canon(name: str) -> str:
        if name in available:
            return name
        if ":" not in name and f"dmc:{name}" in available:
            return f"dmc:{name}"
        # A misspelled task set (dmc-hardd) is named first, then close task names.
        close = [f"{c} (task set)" for c in difflib.get_close_matches(name, TASK_SETS, n=2,
                                                                        cutoff=0.6)]
        close += difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        if ":" not in name:
            bare = {a.split(":", 1)[1]: a for a in available}
            close += [bare[c] for c in difflib.get_close_matches(name, list(bare), n=5, cutoff=0.5)]
        hint = ", ".join(dict.fromkeys(close)) or (
            f"none; see mtrl.envs.available_tasks() and the task sets {', '.join(TASK_SETS)}")
        raise ValueError(f"unknown task {name!r}; close names: {hint}")

    out: list[tuple[str | None, list[str]]] = []
    for name in names:
        if name == "dmc-hard":
            out.append((name, [canon(t) for t in DMC_HARD]))
        elif name == "laptop":
            out.append((name, [canon(t) for t in LAPTOP_TASKS]))
        elif name == "dmc-mt30":
            out.append((name, [canon(t) for t in DMC_MT30]))
        elif name == "metaworld-mt10":
            out.append((name, [_metaworld(t, available) for t in METAWORLD_MT10]))
        elif name == "metaworld-mt50":
            mw = [t for t in available if t.startswith("metaworld:")]
            if not mw:
                raise ValueError("task set 'metaworld-mt50' needs MetaWorld tasks, none are available in mtrl.envs")
            out.append((name, mw))
        else:
            out.append((None, [canon(name)]))
    return out


def _metaworld(name: str, available: list[str]) -> str:
    for cand in (f"metaworld:{name}", f"metaworld:{name}-v3", f"metaworld:{name}-v2"):
        if cand in available:
            return cand
    raise ValueError(f"MetaWorld task {name!r} (task set metaworld-mt10) is not available in mtrl.envs")
