"""Run-directory logging: CSV + JSONL always, TensorBoard by default, W&B on request, curve PNG."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from mtrl._atomic import fsync_dir, fsync_file, replace_file


def _row_iteration(path: Path, number: int, line: str, jsonl: bool) -> int:
    try:
        return int(json.loads(line)["iteration"]) if jsonl else int(line.split(",", 1)[0])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} line {number} is not a log row ({line.strip()[:80]!r}); "
                         f"repair or remove it to resume") from e


def _rewrite_until(path: Path, iteration: int, jsonl: bool) -> None:
    """Drop rows logged after ``iteration`` (a resumed run re-logs them), and a last line
    without its newline (a write cut short by a crash)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    first = 0 if jsonl else 1  # the CSV header
    keep = lines[:first] + [ln for k, ln in enumerate(lines[first:], first + 1) if ln.strip()
                            and _row_iteration(path, k, ln, jsonl) <= iteration]
    replace_file(path, "".join(keep))  # the run's whole history: never left half-written


def _import_wandb():
    """The wandb module, imported only for runs that ask for it (nothing else depends on W&B).

    Raises:
      ValueError: wandb is not installed (a clear message instead of an ImportError traceback).
    """
    try:
        import wandb
    except ImportError as e:
        raise ValueError("--wandb needs the wandb package, which is not installed (pip install "
                         "wandb); without --wandb the metrics still go to the CSV/JSONL files "
                         "and TensorBoard") from e
    return wandb


class Logger:
    """Writes ``train/*`` and ``eval/*`` metrics of one run.

    Files in ``run_dir``: ``train.csv``, ``eval.csv``, ``metrics.jsonl`` (every row with its kind),
    ``tb/`` (TensorBoard, when enabled), ``curves.png`` (eval return per task, updated each eval).
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool, wandb: bool, wandb_project: str,
                 config: dict[str, Any], resume_iteration: int | None = None):
        wandb_module = _import_wandb() if wandb else None  # before any file is touched
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = self.run_dir / "metrics.jsonl"
        if resume_iteration is not None:
            _rewrite_until(self._jsonl, resume_iteration, jsonl=True)
            for name in ("train.csv", "eval.csv"):
                _rewrite_until(self.run_dir / name, resume_iteration, jsonl=False)
        else:
            for name in ("train.csv", "eval.csv", "metrics.jsonl"):
                (self.run_dir / name).unlink(missing_ok=True)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_iteration)
        self._wandb = None
        if wandb_module is not None:
            self._wandb = wandb_module.init(project=wandb_project, config=config,
                                            dir=str(self.run_dir), resume="allow")
        self.eval_history: list[dict[str, Any]] = self._read_eval_history()

    def _read_eval_history(self) -> list[dict[str, Any]]:
        if not self._jsonl.exists():
            return []
        rows = [json.loads(ln) for ln in self._jsonl.read_text().splitlines() if ln.strip()]
        return [r for r in rows if r["kind"] == "eval"]

    def log(self, kind: str, iteration: int, values: dict[str, float]) -> None:
        """Append one row of ``kind`` ("train" or "eval") at ``iteration``."""
        row = {"iteration": iteration, **{f"{kind}/{k}": float(v) for k, v in values.items()}}
        path = self.run_dir / f"{kind}.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        with self._jsonl.open("a") as f:
            f.write(json.dumps({"kind": kind, **row}) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "iteration" and math.isfinite(v):
                    self._tb.add_scalar(k, v, iteration)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(row, step=iteration)
        if kind == "eval":
            self.eval_history.append({"kind": kind, **row})
            self.plot()

    def sync(self) -> None:
        """fsyncs ``train.csv``, ``eval.csv``, ``metrics.jsonl`` and ``run_dir``: called before
        each checkpoint, so that the rows up to a checkpoint survive a power loss with it (rows
        after the checkpoint a resume drops anyway). Not per row: that would cost a disk flush
        per log line. ``curves.png`` is not synced: it is redrawn from ``metrics.jsonl``."""
        for name in ("train.csv", "eval.csv", "metrics.jsonl"):
            if (self.run_dir / name).exists():
                fsync_file(self.run_dir / name)
        fsync_dir(self.run_dir)

    def plot(self) -> None:
        """Redraw ``curves.png``: eval return per task and the aggregate mean vs iteration."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        hist = self.eval_history
        tasks = sorted({k[len("eval/"):-len("/return")] for k in hist[-1]
                        if k.startswith("eval/") and k.endswith("/return")})
        cols = min(4, len(tasks) + 1)
        rows = math.ceil((len(tasks) + 1) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        its = [h["iteration"] for h in hist]
        panels = [("mean return", "eval/return_mean")] + [(t, f"eval/{t}/return") for t in tasks]
        for ax, (title, key) in zip(axes.flat, panels):
            ax.plot(its, [h.get(key, math.nan) for h in hist], marker="o", ms=3)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("iteration", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.tight_layout()
        tmp = self.run_dir / "curves.tmp.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, self.run_dir / "curves.png")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
