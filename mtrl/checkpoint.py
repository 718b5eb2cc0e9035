"""Atomic run checkpoints: ``<run_dir>/checkpoints/iter_<N>/`` with ``state.pt`` and ``replay/``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from mtrl._atomic import recover_dir, remove_leftovers, replace_dir

PREFIX = "iter_"
# Fields that may differ between a checkpoint and the run resuming it (schedule, output, device;
# and numerics that change no shape or state: compile, bf16, tf32, fused ops). A checkpoint written
# before a field existed lacks it: listed here, it resumes.
RESUMABLE_CHANGES = {
    "iterations", "eval_interval", "eval_episodes", "log_interval", "checkpoint_interval",
    "keep_checkpoints", "run_dir", "resume", "device", "tensorboard", "wandb", "wandb_project",
    "progress", "torch_threads", "agent.compile", "agent.bf16", "agent.fused_ops", "env.num_threads",
    "agent.tf32",
}


DERIVED_FIELDS = frozenset({"batch_size", "resolved_tasks"})


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories, oldest first. Temp dirs are never listed (the rename is the
    commit), so a listed one without its ``state.pt`` was damaged afterwards (a copy of the run
    dir cut short): it is listed all the same, and loading it names it, instead of a resume
    quietly going back to the checkpoint before."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    _recover_checkpoints(root)
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def save_checkpoint(run_dir: Path, iteration: int, state: dict[str, Any],
                    save_replay: Callable[[Path], None], keep: int) -> Path:
    """Write state + replay into a temp dir, swap it into place, keep the last ``keep``."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the checkpoint just written is kept), got {keep}")
    final = checkpoint_dir(run_dir) / f"{PREFIX}{iteration:09d}"

    def write(tmp: Path) -> None:
        save_replay(tmp / "replay")
        torch.save(state, tmp / "state.pt")

    replace_dir(final, write)  # a checkpoint of the same iteration is swapped, never lost
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    # replace_dir removed this iteration's leftovers; other iterations' crashed saves go too
    # (only this run writes here: a fresh run refuses a run_dir holding another's checkpoints)
    remove_leftovers(final.parent, f"{PREFIX}*")
    return final


def _recover_checkpoints(root: Path) -> None:
    """Renames back a checkpoint that a kill while it was replaced by one of the same iteration
    left only as ``.iter_N.old-*`` (``mtrl._atomic.recover_dir``: a warning; a ValueError if
    several complete copies)."""
    names = {m[1] for p in root.iterdir()
             if (m := re.fullmatch(rf"\.({PREFIX}\d+)\.old-[0-9a-f]{{8}}", p.name))}
    for name in sorted(names):
        recover_dir(root / name, lambda p: (p / "state.pt").is_file(), "checkpoint", stacklevel=4)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state dict of checkpoint ``path``.

    Raises:
      ValueError: no ``state.pt`` there, or it cannot be read (truncated, corrupted) or is not a
      run checkpoint, naming the checkpoint.
    """
    file = Path(path) / "state.pt"
    if not file.is_file():
        raise ValueError(f"checkpoint {path} is unreadable (it has no state.pt)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # torch/pickle/zip errors of a damaged file
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: "
                         f"{str(e)[:200]})") from e
    if not isinstance(state, dict) or "config" not in state or "iteration" not in state:
        raise ValueError(f"checkpoint {path} is unreadable (state.pt is not a run checkpoint)")
    return state


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ValueError naming the first config field that differs and may not change on resume."""
    a, b = flatten(saved), flatten(current)
    # Fields the run derives from others ("batch_size" from buffer.batch_size and the task count,
    # "resolved_tasks" from env.tasks) last: the field a user changed is the one named.
    for key in sorted(set(a) | set(b), key=lambda k: (k in DERIVED_FIELDS, k)):
        if key in RESUMABLE_CHANGES:
            continue
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, list):
            va = tuple(va)
        if isinstance(vb, list):
            vb = tuple(vb)
        if va != vb:
            raise ValueError(
                f"incompatible checkpoint: config field '{key}' is {va!r} in the checkpoint but "
                f"{vb!r} in this run (start a new run_dir, or pass the checkpoint's value)")
