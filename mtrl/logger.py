"""Run-directory logging: CSV + JSONL always, TensorBoard by default, W&B on request, curve PNGs."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

from mtrl._atomic import fsync_dir, fsync_file, replace_file


def _row_iteration(path: Path, number: int, line: str, jsonl: bool) -> int:
    try:
        return int(json.loads(line)["iteration"]) if jsonl else int(line.split(",", 1)[0])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} line {number} is not a log row ({line.strip()[:80]!r}); "
                         f"repair or remove it to resume") from e


def _jsonl_line(row: dict[str, Any]) -> str:
    """One metrics.jsonl line: strict JSON, a NaN or infinite value written as null."""
    strict = {k: None if isinstance(v, float) and not math.isfinite(v) else v
              for k, v in row.items()}
    return json.dumps(strict, allow_nan=False) + "\n"


def _rewrite_until(path: Path, iteration: int, jsonl: bool) -> None:
    """Drop rows logged after ``iteration`` (a resumed run re-logs them), and a last line
    without its newline (a write cut short by a crash). JSONL rows kept are rewritten as strict
    JSON (a run logged before the nulls has bare NaN/Infinity tokens)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    first = 0 if jsonl else 1  # the CSV header
    keep = lines[:first] + [ln for k, ln in enumerate(lines[first:], first + 1) if ln.strip()
                            and _row_iteration(path, k, ln, jsonl) <= iteration]
    if jsonl:
        keep = [_jsonl_line(json.loads(ln)) for ln in keep]
    replace_file(path, "".join(keep))  # the run's whole history: never left half-written


def _csv_columns(path: Path) -> list[str]:
    """The header of a CSV log, [] when the file is missing or empty (e.g. cut short by a crash
    before its header line ended: a resume drops that partial line)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return next(csv.reader(f), [])


def _widen_csv(path: Path, columns: list[str], new: list[str]) -> list[str]:
    """Rewrites a CSV log with ``new`` columns added at the end (earlier rows leave them empty):
    a resumed run whose code logs more metrics than the run's first part."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = columns + new
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    replace_file(path, text.getvalue())
    return columns


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

    Files in ``run_dir``: ``train.csv``, ``eval.csv``, ``metrics.jsonl`` (every row with its kind;
    strict JSON: a NaN or infinite value, e.g. a metric before the first update or a task's
    return before its first episode ends, is ``null`` there (read back as NaN), while the CSV
    files write ``nan``/``inf`` and TensorBoard skips it),
    ``tb/`` (TensorBoard, when enabled), ``curves.png`` (eval return per task, updated each eval),
    and ``curves-<group>.png`` per group of ``task_groups`` when it has several (``curves``).

    ``task_groups``: the run's tasks by task set (``mtrl.config.group_tasks``); None: one group.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool, wandb: bool, wandb_project: str,
                 config: dict[str, Any], resume_iteration: int | None = None,
                 task_groups: dict[str, list[str]] | None = None):
        wandb_module = _import_wandb() if wandb else None  # before any file is touched
        self.run_dir = Path(run_dir)
        # a run of one task set (or of task names only) has its curves in curves.png alone
        self._task_groups = dict(task_groups) if task_groups and len(task_groups) > 1 else {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = self.run_dir / "metrics.jsonl"
        self._csv_columns: dict[str, list[str]] = {}  # header of each CSV file, once read
        if resume_iteration is not None:
            _rewrite_until(self._jsonl, resume_iteration, jsonl=True)
            for name in ("train.csv", "eval.csv"):
                _rewrite_until(self.run_dir / name, resume_iteration, jsonl=False)
        else:
            for name in ("train.csv", "eval.csv", "metrics.jsonl"):
                (self.run_dir / name).unlink(missing_ok=True)
        # W&B first: when its init fails (not logged in, no network), no tb/ files are left
        # behind for a fresh run's retry to refuse.
        self._wandb = None
        if wandb_module is not None:
            self._wandb = wandb_module.init(project=wandb_project, config=config,
                                            dir=str(self.run_dir), resume="allow",
                                            id=self._wandb_run_id(resume_iteration is not None))
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard hides the events at and after purge_step: those logged after the
            # checkpoint, which the resumed run logs again (the rows at its iteration stay, as in
            # the CSV and JSONL files).
            self._tb = SummaryWriter(
                str(self.run_dir / "tb"),
                purge_step=None if resume_iteration is None else resume_iteration + 1)
        self.eval_history: list[dict[str, Any]] = self._read_eval_history()

    def _wandb_run_id(self, resuming: bool) -> str:
        """The W&B run id of this run dir, kept in ``wandb_run_id``: W&B continues a run only
        when given its id (without one, every resume started a new W&B run). A fresh run, or a
        resumed one that has no id yet, writes a new one."""
        path = self.run_dir / "wandb_run_id"
        if resuming and path.is_file():
            run_id = path.read_text().strip()
            if run_id:
                return run_id
        run_id = uuid.uuid4().hex[:16]
        replace_file(path, run_id + "\n")
        return run_id

    def _read_eval_history(self) -> list[dict[str, Any]]:
        if not self._jsonl.exists():
            return []
        rows = [json.loads(ln) for ln in self._jsonl.read_text().splitlines() if ln.strip()]
        # null is a value that was not finite (NaN in memory, as log() keeps it); files written
        # before nulls hold bare NaN/Infinity tokens, which json.loads reads as floats too
        return [{k: math.nan if v is None else v for k, v in r.items()}
                for r in rows if r.get("kind") == "eval"]

    def log(self, kind: str, iteration: int, values: dict[str, float]) -> None:
        """Append one row of ``kind`` ("train" or "eval") at ``iteration``."""
        row = {"iteration": iteration, **{f"{kind}/{k}": float(v) for k, v in values.items()}}
        self._append_csv(self.run_dir / f"{kind}.csv", row)
        with self._jsonl.open("a") as f:
            f.write(_jsonl_line({"kind": kind, **row}))
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

    def _append_csv(self, path: Path, row: dict[str, float]) -> None:
        """One row under the file's own header (written first when the file has none): by
        column name, so a row whose keys come in another order, or lack some, stays aligned;
        keys the header lacks widen the file (_widen_csv)."""
        columns = self._csv_columns.get(path.name)
        if columns is None:
            columns = _csv_columns(path)
        new = [k for k in row if k not in columns]
        if columns and new:
            columns = _widen_csv(path, columns, new)
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns or list(row), restval="")
            if not columns:
                writer.writeheader()
                columns = list(row)
            writer.writerow(row)
        self._csv_columns[path.name] = columns

    def sync(self) -> None:
        """fsyncs ``train.csv``, ``eval.csv``, ``metrics.jsonl`` and ``run_dir``: called before
        each checkpoint, so that the rows up to a checkpoint survive a power loss with it (rows
        after the checkpoint a resume drops anyway). Not per row: that would cost a disk flush
        per log line. ``curves.png`` is not synced: it is redrawn from ``metrics.jsonl``."""
        for name in ("train.csv", "eval.csv", "metrics.jsonl"):
            if (self.run_dir / name).exists():
                fsync_file(self.run_dir / name)
        fsync_dir(self.run_dir)

    def curves(self) -> dict[str, list[tuple[str, list[float]]]]:
        """The panels of each curve PNG: file name -> [(title, eval return per evaluation)].

        ``curves.png``: the run's mean return and every task. When the run's tasks came from
        several groups (``task_groups``: task sets, and task names given one by one as
        ``other``), also ``curves-<group>.png``: the group's mean return (unnormalised, as the
        run's) and its tasks.
        """
        hist = self.eval_history

        def series(key: str) -> list[float]:
            return [h.get(key, math.nan) for h in hist]

        tasks = sorted({k[len("eval/"):-len("/return")] for k in hist[-1]
                        if k.startswith("eval/") and k.endswith("/return")})
        out = {"curves.png": [("mean return", series("eval/return_mean"))]
               + [(t, series(f"eval/{t}/return")) for t in tasks]}
        for name, group in self._task_groups.items():
            returns = [series(f"eval/{t}/return") for t in group]
            mean = [sum(r) / len(r) for r in zip(*returns)]
            out[f"curves-{name}.png"] = [(f"{name}: mean return", mean), *zip(group, returns)]
        return out

    def plot(self) -> None:
        """Redraw every curve PNG (``curves``): eval return vs iteration."""
        iterations = [h["iteration"] for h in self.eval_history]
        for name, panels in self.curves().items():
            _draw(self.run_dir / name, iterations, panels)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _draw(path: Path, iterations: list[int], panels: list[tuple[str, list[float]]]) -> None:
    """One PNG with a panel per (title, values); written as a temp file then os.replace'd in,
    so a reader never sees a half-written picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (title, values) in zip(axes.flat, panels):
        ax.plot(iterations, values, marker="o", ms=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
