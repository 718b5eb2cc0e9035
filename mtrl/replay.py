"""Prioritized multi-task replay buffer (issue 2 §3; BRC's buffer is brc-spec §5.3).

The storage, sampling and priority trees are C++ (``csrc/replay/``); this module checks and
converts inputs, owns the output arrays and does the directory format.

Storage: one FIFO ring of ``capacity_per_task`` transitions per task. A transition keeps its
padded obs, padded action, raw reward, terminated/truncated flags and task id; its next
observation is not stored again when it equals the following transition's obs of the same env
(the common case): only episode ends (or any break in an env's stream) keep a separate copy in
a final-observation pool that grows on demand and frees rows when their transitions are
overwritten. Memory: ``estimate_nbytes`` is what the constructor allocates (refused with
MemoryError when it exceeds MemAvailable); the pool adds ``obs_dim * 4`` bytes per live episode
end (``nbytes`` reports the current total).

Sampling (with replacement, so ``batch_size`` in [1, 2**20] may exceed the stored count;
reproducible from ``seed``): uniform over all stored (task, slot)
pairs (BRC's default) or stratified (``batch_size // T`` rows per task, in task order; the
``batch_size % T`` remaining rows go to distinct tasks drawn at random), each optionally
proportional to ``priority ** alpha`` (PER) with importance weights
``w = (n * P(i)) ** -beta / max_batch(w)`` (``n``/``P`` over the whole buffer, or within the
task when stratified), drawn from one 8-ary sum tree per task plus a task-level tree. New
transitions get the running maximum priority (initially 1); priorities must be finite, >= 0 and
small enough that ``priority ** alpha`` summed over the buffer stays finite.
n-step returns follow the env's stream and stop at an episode end (terminal or truncation), at
the newest transition of the stream, or at ``n``; the mask is brc-spec §5.4's
``1 - terminated * (1 - truncated)`` of the last step used and ``discount = gamma ** k``.

Threads: every call takes one mutex inside the core with the GIL released, so ``add`` and
``sample``/``update_priorities`` may run on different threads (they serialise). The internal
batch returned by ``sample(out=None)`` is shared: with several sampling threads pass ``out``.

Directory format (``save``/``load``), version 2: ``meta.json`` (config, per-task
``size``/``position``, ``max_priority``, the xoshiro256** ``rng_state``, ``final_rows``) and
NumPy ``.npy`` files holding the stored transitions only. A task's live slots are always its
slots ``0 .. size - 1`` (a ring fills slot 0, 1, ... before it wraps; ``position`` is the next
slot to write, so when ``size == capacity_per_task`` the oldest transition is at ``position``).
The per-transition arrays hold task 0's live slots in slot order, then task 1's, and so on:
``S = sum(size)`` rows, row ``offset[t] + slot`` (``offset[t]`` = the sizes of the tasks
before ``t``) for slot ``slot`` of task ``t``. They are ``obs`` (S, O) f4, ``action`` (S, A) f4,
``reward`` f4, ``terminated``/``truncated`` bool, ``env`` i4, ``next`` i8 and ``priority`` f8
(the tree leaves, ``priority ** alpha``). Links and ``last_slot`` name global slots
``g = task * capacity_per_task + slot`` (not rows): ``next >= 0``, the next obs is slot
``next``'s obs; ``-1``, it is ``pending_obs[env]``; ``<= -2``, it is ``final_obs[-2 - next]``.
Beside them: ``pending_obs`` (N, O) f4, ``last_slot`` (N,) i8 and ``final_obs``
(final_rows, O) f4, the episode-end observations that stored transitions link to, one row each,
in the order of their rows in the in-memory pool (renumbered from 0; the pool's free rows are
not saved). So a save's size grows with the stored transitions, not with the capacity. Loading
puts every row back in its slot, so the rings, their FIFO order, the priorities and sum trees
and the sampler state are restored exactly (only the pool's row numbers and spare rows differ:
``nbytes`` may be smaller after a load).
Version 1 (mtrl before this layout) had the same files with ``num_tasks * capacity_per_task``
rows each, indexed by global slot, unused slots included, and the whole pool (chunks of 1024
rows, free rows included): ``load`` still reads it, and ``save(..., version=1)`` writes it (for
an older mtrl to read). Loading validates every header
(dtype, shape, data length), link and value before replacing anything.
``save`` replaces the directory as a whole (written beside it, then swapped in), and refuses a
directory that holds anything but a previous save.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtrl import _core
from mtrl._atomic import recover_dir, replace_dir

__all__ = ["ReplayBatch", "ReplayBuffer", "ReplayMemoryError"]

ReplayMemoryError = _core.ReplayMemoryError
_FORMAT = "mtrl-replay"
_VERSION = 2  # what ``save`` writes; ``load`` also reads ...
_VERSIONS = (1, 2)  # ... every version here (1: every slot at full capacity)
_SHAPE_FIELDS = ("num_tasks", "capacity_per_task", "obs_dim", "action_dim", "num_envs")
# Upper bounds of the shape fields (ReplayConfig::Validate checks them; here only values beyond
# int64, which cannot reach the core, are refused with the same message).
_SHAPE_LIMITS = (2**20, 2**36, 2**24, 2**24, 2**24 - 1)
_INT64 = (-2**63, 2**63 - 1)
# Every file a save holds: a directory with anything else is not replaced by ``save``.
_FILES = frozenset({"meta.json", *(f"{n}.npy" for n in (
    "obs", "action", "reward", "terminated", "truncated", "env", "next", "priority",
    "pending_obs", "last_slot", "final_obs"))})


@dataclass(frozen=True)
class ReplayBatch:
    """One sampled batch; every field is a contiguous NumPy array (``torch.from_numpy`` shares it).

    Attributes:
        obs: (B, obs_dim) float32.
        action: (B, action_dim) float32.
        reward: (B,) float32 raw reward, or the discounted sum of the k <= n raw rewards used.
        next_obs: (B, obs_dim) float32, the observation k steps later (final obs at an episode end).
        mask: (B,) float32 bootstrap mask of the last step used, brc-spec §5.4.
        discount: (B,) float32 ``gamma ** k``.
        task_id: (B,) int64.
        index: (B,) int64 global ids for ``update_priorities``.
        weight: (B,) float32 importance weights (1 when not prioritized).
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    mask: np.ndarray
    discount: np.ndarray
    task_id: np.ndarray
    index: np.ndarray
    weight: np.ndarray

    @property
    def batch_size(self) -> int:
        """Rows in the batch (B)."""
        return int(self.reward.shape[0])


def _check_replaceable(path: str) -> None:
    """Refuses (ValueError) to replace ``path`` unless it is absent, empty or a replay save."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path):
        raise ValueError(f"cannot save the replay buffer to {path}: it exists and is not a "
                         f"directory")
    names = sorted(os.listdir(path))
    if not names:
        return
    foreign = [n for n in names if n not in _FILES]
    why = f"it holds {', '.join(foreign[:5])}" + (" ..." if len(foreign) > 5 else "")
    if not foreign:
        try:
            ReplayBuffer._read_meta(path)
            return
        except (OSError, ValueError) as e:
            why = f"its meta.json: {e}"
    raise ValueError(f"cannot save the replay buffer to {path}: it is not an mtrl replay save "
                     f"({why}); choose a new or empty directory")


def _is_complete_save(path: Path) -> bool:
    try:
        ReplayBuffer._read_meta(path)
    except (OSError, ValueError):
        return False
    return all((path / name).is_file() for name in _FILES)


def _recover(directory: str | os.PathLike[str]) -> None:
    """``mtrl._atomic.recover_dir`` for a replay save (the warning points at the caller of
    ``load``/``load_into``)."""
    recover_dir(directory, _is_complete_save, "replay save", stacklevel=4)


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    return int(value)


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__}")
    return float(value)


def _shape_ints(values: tuple[Any, ...]) -> list[int]:
    """The shape fields as ints (TypeError otherwise); a value beyond int64 is a ValueError."""
    dims = [_check_int(n, v) for n, v in zip(_SHAPE_FIELDS, values)]
    for name, value, top in zip(_SHAPE_FIELDS, dims, _SHAPE_LIMITS):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"`{name}` must be in [1, {top}], got {value}")
    return dims


def _check_n_step(value: Any) -> int:
    n_step = _check_int("n_step", value)
    if not 1 <= n_step <= _core._ReplayBuffer.max_n_step:
        raise ValueError(f"`n_step` must be in [1, {_core._ReplayBuffer.max_n_step}], got "
                         f"{n_step}")
    return n_step


def _coerce(value: Any, name: str, dtype: type, kinds: str) -> np.ndarray:
    """Converts ``value`` to a C-contiguous array of ``dtype`` if its kind allows it."""
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        raise TypeError(f"`{name}` must be an array of {np.dtype(dtype).name}, got {array.dtype}")
    if dtype is np.bool_ and array.dtype.kind != "b":
        if np.any((array != 0) & (array != 1)):
            raise ValueError(f"`{name}` must hold only 0/1 (or be a bool array)")
    if dtype is np.float32 and array.dtype.kind == "f" and array.dtype.itemsize > 4:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
            out = np.require(array, dtype=dtype, requirements=("C", "A"))
        overflow = np.isfinite(array) & ~np.isfinite(out)
        if overflow.any():
            pos = tuple(int(i) for i in np.argwhere(overflow)[0])
            where = f"[{', '.join(map(str, pos))}]" if pos else ""
            limit = float(np.finfo(np.float32).max)
            raise ValueError(f"{name}{where} = {float(array[pos])!r} is outside the float32 "
                             f"range (|x| <= {limit:.8g}); {array.dtype} input is cast to "
                             f"float32")
        return out
    # require() also copies a C-contiguous array that is not aligned (the core reads it as T*).
    return np.require(array, dtype=dtype, requirements=("C", "A"))


class _Closed:
    """Stands in for the core of a closed buffer: every use raises."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("this ReplayBuffer is closed")


class ReplayBuffer:
    """Per-task FIFO replay with uniform/stratified, optionally prioritized, n-step sampling.

    Args:
        num_tasks: T, number of task rings.
        capacity_per_task: C, transitions kept per task (FIFO overwrite).
        obs_dim: O, padded observation size.
        action_dim: A, padded action size.
        num_envs: N, rows of every ``add`` call; row k is always the same env stream.
        alpha: PER priority exponent (>= 0).
        seed: sampler seed (0 <= seed < 2**64).
        pin_memory: allocate sample outputs in page-locked memory (needs CUDA through torch).

    Raises:
        ValueError: a size or option out of range. MemoryError: the buffer cannot fit in
        this machine's available memory.
    """

    def __init__(
        self,
        num_tasks: int,
        capacity_per_task: int,
        obs_dim: int,
        action_dim: int,
        num_envs: int,
        *,
        alpha: float = 0.6,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        dims = _shape_ints((num_tasks, capacity_per_task, obs_dim, action_dim, num_envs))
        seed = _check_int("seed", seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"`seed` must be in [0, 2**64), got {seed}")
        if pin_memory:
            import torch  # lazily: the core and the default path stay torch-free

            if not torch.cuda.is_available():
                raise ValueError("pin_memory=True needs a usable CUDA device "
                                 "(torch.cuda.is_available() is False)")
        self.num_tasks, self.capacity_per_task, self.obs_dim, self.action_dim, self.num_envs = dims
        self.alpha = _check_real("alpha", alpha)
        self.seed = seed
        self.pin_memory = bool(pin_memory)
        self._core = _core._ReplayBuffer(
            num_tasks=dims[0], capacity_per_task=dims[1], obs_dim=dims[2], action_dim=dims[3],
            num_envs=dims[4], alpha=self.alpha, seed=seed)
        self._batch: ReplayBatch | None = None

    def close(self) -> None:
        """Frees the storage now (idempotent); any later use raises RuntimeError."""
        self._core = _Closed()
        self._batch = None

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return isinstance(self._core, _Closed)

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"size={len(self)}"
        return (f"ReplayBuffer(num_tasks={self.num_tasks}, capacity_per_task="
                f"{self.capacity_per_task}, obs_dim={self.obs_dim}, action_dim={self.action_dim}, "
                f"num_envs={self.num_envs}, alpha={self.alpha}, {state})")

    # ----------------------------------------------------------------- sizes
    @staticmethod
    def estimate_nbytes(*, num_tasks: int, capacity_per_task: int, obs_dim: int,
                        action_dim: int, num_envs: int) -> int:
        """Bytes the constructor allocates for this shape (before any episode end is stored)."""
        t, c, o, a, n = _shape_ints((num_tasks, capacity_per_task, obs_dim, action_dim, num_envs))
        return int(_core._ReplayBuffer.estimate_nbytes(
            num_tasks=t, capacity_per_task=c, obs_dim=o, action_dim=a, num_envs=n))

    @property
    def nbytes(self) -> int:
        """Bytes held now, including the final-observation pool."""
        return int(self._core.nbytes())

    @property
    def max_batch_size(self) -> int:
        """Largest allowed ``batch_size`` (sampling is with replacement)."""
        return int(_core._ReplayBuffer.max_batch_size)

    @property
    def max_priority(self) -> float:
        """Running maximum priority, given to new transitions."""
        return float(self._core.max_priority())

    @property
    def final_obs_in_use(self) -> int:
        """Rows of the final-observation pool referenced by stored transitions."""
        return int(self._core.final_rows_in_use())

    def tree_levels(self, task: int) -> list[np.ndarray]:
        """Levels of ``task``'s 8-ary sum tree (diagnostics), float64, leaves first.

        Level 0 holds ``priority ** alpha`` per slot; node i of level j + 1 is the sequential
        sum of nodes 8i..8i+7 of level j; each level is zero-padded to a multiple of 8; the
        last level's node 0 is the root.
        """
        return list(self._core.tree_levels(self._task(task)))

    def top_levels(self) -> list[np.ndarray]:
        """Levels of the task-level tree (diagnostics); leaf t holds task t's tree total."""
        return list(self._core.top_levels())

    def _task(self, task: Any) -> int:
        t = _check_int("task", task)
        if not 0 <= t < self.num_tasks:
            raise IndexError(f"task {t} is out of range [0, {self.num_tasks})")
        return t

    def size(self, task: int) -> int:
        """Transitions stored for ``task``."""
        return int(self._core.size(self._task(task)))

    @property
    def sizes(self) -> np.ndarray:
        """(T,) int64 transitions stored per task."""
        return np.asarray(self._core.sizes(), dtype=np.int64)

    def __len__(self) -> int:
        return int(self._core.total_size())

    # ----------------------------------------------------------------- insert
    def add(self, task_id: Any, obs: Any, action: Any, reward: Any, terminated: Any,
            truncated: Any, next_obs: Any) -> None:
        """Inserts one vector-env step (one transition per env) in one call.

        Storage is float32. float32 C-contiguous arrays are used as they are; float64 (or other
        float/integer) arrays and lists are cast to float32 first (rounding to nearest, like
        ``np.asarray(x, np.float32)``); a finite float64 value beyond the float32 range
        (``|x| > 3.4028235e38``) is rejected with ValueError rather than stored as inf.
        Every value of obs, action, reward and next_obs must be finite: a NaN or +/-inf raises
        ValueError naming the field, the env row and the value (e.g. ``reward[3] = nan is not
        finite``). A rejected call changes nothing (all checks run before any write).

        Args:
            task_id: (N,) int64 task of each env (any integer dtype is accepted).
            obs: (N, O) float32 observation the action was taken in.
            action: (N, A) float32 padded action.
            reward: (N,) float32 raw reward.
            terminated: (N,) bool. truncated: (N,) bool (0/1 integers are accepted).
            next_obs: (N, O) float32 observation after the action (the final observation when
                the episode ended, not the reset one).

        Raises:
            TypeError: an argument of an unusable dtype (e.g. strings, complex, float task ids).
            ValueError: a wrong shape, a NaN/inf value, or a float64 value that overflows float32.
            IndexError: a task id outside [0, num_tasks).
        """
        args = (task_id, obs, action, reward, terminated, truncated, next_obs)
        try:
            self._core.add(*args)
        except TypeError:  # not already exact dtype/layout: convert what can be, then retry
            self._core.add(
                _coerce(task_id, "task_id", np.int64, "iu"),
                _coerce(obs, "obs", np.float32, "fiu"),
                _coerce(action, "action", np.float32, "fiu"),
                _coerce(reward, "reward", np.float32, "fiu"),
                _coerce(terminated, "terminated", np.bool_, "biu"),
                _coerce(truncated, "truncated", np.bool_, "biu"),
                _coerce(next_obs, "next_obs", np.float32, "fiu"))

    # ----------------------------------------------------------------- sample
    def allocate_batch(self, batch_size: int) -> ReplayBatch:
        """Allocates output arrays for ``batch_size`` rows (pinned when ``pin_memory``)."""
        b = _check_int("batch_size", batch_size)
        if not 1 <= b <= self.max_batch_size:
            raise ValueError(f"`batch_size` must be in [1, {self.max_batch_size}], got {b}")
        if self.pin_memory:
            import torch

            def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
                t = torch.float32 if dtype is np.float32 else torch.int64
                return torch.empty(shape, dtype=t, pin_memory=True).numpy()
        else:
            empty = np.empty  # type: ignore[assignment]
        f32, i64 = np.float32, np.int64
        return ReplayBatch(
            obs=empty((b, self.obs_dim), f32), action=empty((b, self.action_dim), f32),
            reward=empty((b,), f32), next_obs=empty((b, self.obs_dim), f32),
            mask=empty((b,), f32), discount=empty((b,), f32), task_id=empty((b,), i64),
            index=empty((b,), i64), weight=empty((b,), f32))

    def sample(self, batch_size: int, *, stratified: bool = False, prioritized: bool = False,
               beta: float = 0.4, n_step: int = 1, gamma: float = 0.99,
               out: ReplayBatch | None = None) -> ReplayBatch:
        """Samples ``batch_size`` transitions with replacement (see the module docstring).

        Args:
            batch_size: B in [1, max_batch_size].
            stratified: equal rows per task instead of uniform over all stored transitions.
            prioritized: proportional to priority ** alpha, with importance weights.
            beta: IS-weight exponent in [0, 1]. n_step: in [1, 1000]. gamma: in [0, 1].
            out: arrays to fill; None uses the buffer's internal batch (overwritten next call).

        Returns:
            The filled ReplayBatch (``out`` itself when given).

        Raises:
            ValueError: bad option or ``out`` of another size. RuntimeError: nothing to sample
            (empty buffer, an empty task when stratified, all priorities 0 with alpha > 0; at
            alpha = 0 every leaf is priority ** 0 = 1, so prioritized sampling is uniform).
        """
        b = _check_int("batch_size", batch_size)
        n_step = _check_n_step(n_step)
        if not 1 <= b <= self.max_batch_size:
            raise ValueError(f"`batch_size` must be in [1, {self.max_batch_size}], got {b}")
        if out is None:
            if self._batch is None or self._batch.batch_size != b:
                self._batch = self.allocate_batch(b)
            out = self._batch
        elif not isinstance(out, ReplayBatch):
            raise TypeError(f"`out` must be a ReplayBatch, got {type(out).__name__}")
        beta, gamma = _check_real("beta", beta), _check_real("gamma", gamma)
        self._core.sample(b, bool(stratified), bool(prioritized), beta, n_step, gamma, out.obs,
                          out.action, out.reward, out.next_obs, out.mask, out.discount,
                          out.task_id, out.index, out.weight)
        return out

    def fetch(self, index: Any, *, n_step: int = 1, gamma: float = 0.99) -> ReplayBatch:
        """Reads the given transitions exactly as ``sample`` would return them (weights 1).

        Args:
            index: (K,) int64 global ids (``task * capacity_per_task + slot``), each stored.

        Returns:
            A new ReplayBatch of K rows. Raises IndexError for an id that holds no transition.
        """
        if np.shape(index) == (0,):  # an empty list is float64 to NumPy
            raise ValueError("`index` must be 1-D and non-empty, got shape (0,)")
        idx = _coerce(index, "index", np.int64, "iu")
        if idx.ndim != 1 or idx.shape[0] == 0:
            raise ValueError(f"`index` must be 1-D and non-empty, got shape {idx.shape}")
        out = self.allocate_batch(idx.shape[0])
        self._core.fetch(idx, _check_n_step(n_step), _check_real("gamma", gamma), out.obs,
                         out.action, out.reward, out.next_obs, out.mask, out.discount, out.task_id,
                         out.index, out.weight)
        return out

    def update_priorities(self, index: Any, priority: Any) -> None:
        """Sets the priorities of sampled transitions.

        Args:
            index: (K,) int64 global ids from ``ReplayBatch.index``.
            priority: (K,) float, finite and >= 0 (e.g. |TD error|).

        Raises:
            IndexError: an index that holds no transition. ValueError: NaN, inf or negative
            priority, or mismatched lengths.
        """
        if (type(index) is np.ndarray and type(priority) is np.ndarray  # fast path: no copies
                and index.ndim == 1 and priority.shape == index.shape):
            try:
                self._core.update_priorities(index, priority)
                return
            except TypeError:  # not int64/float64 C-contiguous: convert below
                pass
        idx = _coerce(index, "index", np.int64, "iu")
        pri = _coerce(priority, "priority", np.float64, "fiu")
        if idx.ndim != 1 or pri.shape != idx.shape:
            raise ValueError(f"`index` and `priority` must be 1-D of equal length, got "
                             f"{idx.shape} and {pri.shape}")
        self._core.update_priorities(idx, pri)

    # ----------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike[str], *, version: int = _VERSION) -> None:
        """Writes the whole state to ``directory``, atomically.

        The save is written to a hidden sibling directory and then swapped in (``mtrl._atomic``):
        a crash or error mid-save leaves the previous save at ``directory`` complete, and the new
        save is fsynced before it replaces it (a power loss just after ``save`` keeps it).

        Args:
            directory: where the save goes (created, or replacing a previous save).
            version: directory format (module docstring). 2 (the default) writes the stored
                transitions only; 1 writes every slot at full capacity, the format an mtrl
                older than version 2 reads.

        Raises:
            ValueError: ``directory`` exists but is not a replay save (a file, or a directory
            holding anything other than the files of a save): it is left untouched. Or a
            ``version`` that is not 1 or 2.
        """
        version = _check_int("version", version)
        if version not in _VERSIONS:
            raise ValueError(f"`version` must be one of {_VERSIONS}, got {version}")
        _check_replaceable(os.path.realpath(os.fspath(directory)))

        def write(tmp: Path) -> None:
            scalars = self._core.save(os.fspath(tmp), version)
            meta = {"format": _FORMAT, "version": version, "alpha": self.alpha,
                    "seed": self.seed, **{f: getattr(self, f) for f in _SHAPE_FIELDS}, **scalars}
            with open(tmp / "meta.json", "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)

        replace_dir(directory, write)

    @staticmethod
    def _read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
        path = os.path.join(os.fspath(directory), "meta.json")
        with open(path, encoding="utf-8") as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an mtrl replay buffer directory")
        version = meta.get("version")
        if isinstance(version, bool) or version not in _VERSIONS:
            raise ValueError(f"{path} has format version {version!r}; this mtrl reads versions "
                             f"{', '.join(map(str, _VERSIONS))} (a newer mtrl wrote it?)")
        return meta

    def load_into(self, directory: str | os.PathLike[str]) -> None:
        """Replaces this buffer's contents with a saved one of the same configuration.

        Raises:
            ValueError: naming the first field (shape, task count, alpha, array) that differs.
            FileNotFoundError: no such directory / file.
        """
        _recover(directory)
        meta = self._read_meta(directory)
        for field in (*_SHAPE_FIELDS, "alpha"):
            if meta.get(field) != getattr(self, field):
                raise ValueError(f"cannot load {os.fspath(directory)}: `{field}` is "
                                 f"{meta.get(field)} there but {getattr(self, field)} here")
        try:
            self._core.load(os.fspath(directory), meta["size"], meta["position"],
                            meta["max_priority"], meta["rng_state"], meta["final_rows"],
                            meta["version"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{os.fspath(directory)}/meta.json is malformed: {e}") from e

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, pin_memory: bool = False
             ) -> ReplayBuffer:
        """Creates a buffer from a directory written by ``save``.

        ``load`` and ``load_into`` recover a save left aside by a kill mid-save: if
        ``directory`` does not exist but one complete ``.<name>.old-*`` sibling does, it is
        renamed back (a ``RuntimeWarning`` says so); several are refused (``ValueError``).
        """
        _recover(directory)
        meta = cls._read_meta(directory)
        try:
            buf = cls(*(meta[f] for f in _SHAPE_FIELDS), alpha=meta["alpha"],
                      seed=meta["seed"], pin_memory=pin_memory)
        except KeyError as e:
            raise ValueError(f"{os.fspath(directory)}/meta.json lacks {e}") from e
        buf.load_into(directory)
        return buf
