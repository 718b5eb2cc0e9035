"""mtrl.logger: resumed runs cut their logs back to the checkpoint, including after a crash."""

import json
import os

import pytest

from mtrl.logger import Logger


def _logger(run_dir, resume_iteration):
    return Logger(run_dir, tensorboard=False, wandb=False, wandb_project="mtrl", config={},
                  resume_iteration=resume_iteration)


def test_resume_drops_a_line_cut_by_a_crash(tmp_path):
    # A process killed mid-write (OOM killer, power loss) leaves a last line without its newline:
    # "12" of "1200,...", or half a JSON object. The resume kept the first (the next row then
    # continued it) and failed on the second with a bare JSONDecodeError.
    (tmp_path / "train.csv").write_text("iteration,train/x\n10,1.0\n20,2.0\n12")
    (tmp_path / "eval.csv").write_text("iteration,eval/return_mean\n20,5.0\n")
    rows = [{"kind": "train", "iteration": 10, "train/x": 1.0},
            {"kind": "eval", "iteration": 20, "eval/return_mean": 5.0},
            {"kind": "train", "iteration": 20, "train/x": 2.0}]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "train", "itera')
    log = _logger(tmp_path, 20)
    log.log("train", 30, {"x": 3.0})
    log.close()
    assert (tmp_path / "train.csv").read_text() == "iteration,train/x\n10,1.0\n20,2.0\n30,3.0\n"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["iteration"] for ln in lines] == [10, 20, 20, 30]
    assert [h["iteration"] for h in log.eval_history] == [20]


def test_csv_rows_stay_under_their_header(tmp_path):
    import csv

    # A CSV cut inside its header line (killed at its first write after the checkpoint): the
    # resume drops the partial line, and the next rows were then written with no header at all.
    log = _logger(tmp_path, None)
    log.log("train", 10, {"a": 1.0, "b": 2.0})
    log.close()
    (tmp_path / "eval.csv").write_text("iteration,eval/ret")
    # Rows whose keys come in another order, or include new ones (a resumed run's newer code),
    # were written by position: values under the wrong columns, or under none.
    log = _logger(tmp_path, 10)
    log.log("eval", 20, {"ret": 5.0})
    log.log("train", 20, {"b": 20.0, "a": 10.0})
    log.log("train", 30, {"a": 100.0, "b": 200.0, "c": 300.0})
    log.log("train", 40, {"a": 1000.0})
    log.close()
    def read(name):
        with open(tmp_path / name, newline="") as f:
            return list(csv.DictReader(f))

    assert read("eval.csv") == [{"iteration": "20", "eval/ret": "5.0"}]
    rows = read("train.csv")
    assert [(r["iteration"], r["train/a"], r["train/b"], r["train/c"]) for r in rows] == [
        ("10", "1.0", "2.0", ""), ("20", "10.0", "20.0", ""), ("30", "100.0", "200.0", "300.0"),
        ("40", "1000.0", "", "")]
    # A metrics.jsonl row without "kind" (edited by hand) is not an eval row (was a KeyError).
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 40, "x": 1.0}) + "\n")
    log = _logger(tmp_path, 40)
    log.close()
    assert [h["iteration"] for h in log.eval_history] == [20]


def test_resume_names_a_damaged_line(tmp_path):
    (tmp_path / "train.csv").write_text("iteration,train/x\n10,1.0\nabc,2.0\n20,2.0\n")
    with pytest.raises(ValueError, match=r"train.csv line 3 is not a log row"):
        _logger(tmp_path, 20)
    (tmp_path / "train.csv").unlink()
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "iteration": 10}\n{bad\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a log row"):
        _logger(tmp_path, 20)


def test_wandb_is_imported_only_when_asked(tmp_path, monkeypatch):
    # Issue 4: W&B only when asked, nothing depends on it. With the module unimportable a run
    # without --wandb logs as usual; --wandb gives a clear error, not an ImportError traceback.
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    logger = _logger(tmp_path / "a", None)
    logger.log("eval", 1, {"return_mean": 1.0, "t/return": 1.0})
    logger.close()
    with pytest.raises(ValueError, match=r"--wandb needs the wandb package"):
        Logger(tmp_path / "b", tensorboard=False, wandb=True, wandb_project="mtrl", config={})
    assert not (tmp_path / "b").exists()  # refused before anything is written


def test_curves_png_is_redrawn_at_each_evaluation(tmp_path):
    logger = _logger(tmp_path, None)
    png = tmp_path / "curves.png"
    logger.log("train", 1, {"critic_loss": 1.0})
    assert not png.exists()  # train rows do not draw
    drawn = []
    for it, ret in ((10, 1.0), (20, 5.0), (30, 2.0)):
        logger.log("eval", it, {"return_mean": ret, "dmc:a/return": ret, "dmc:b/return": -ret})
        drawn.append(png.read_bytes())
    logger.close()
    assert len(set(drawn)) == 3  # a new picture after every evaluation
    assert [h["iteration"] for h in logger.eval_history] == [10, 20, 30]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                    reason="names a descriptor's path through /proc/self/fd")
def test_sync_fsyncs_the_metrics_files_and_the_run_dir(tmp_path, monkeypatch):
    # Called before each checkpoint (mtrl/train.py): the rows up to it survive a power loss.
    logger = _logger(tmp_path, None)
    logger.log("train", 1, {"x": 1.0})
    logger.log("eval", 1, {"return_mean": 1.0, "dmc:a/return": 1.0})
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        real_fsync(fd)
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(os, "fsync", fsync)
    logger.log("train", 2, {"x": 2.0})
    assert synced == []  # not per row
    logger.sync()
    logger.close()
    assert sorted(synced) == sorted(["train.csv", "eval.csv", "metrics.jsonl", tmp_path.name])


def _eval_rows(logger, returns_at):
    """Logs eval rows: ``returns_at`` maps iteration -> {task: return}; the run's mean too."""
    for it, returns in returns_at.items():
        row = {"return_mean": sum(returns.values()) / len(returns)}
        row.update({f"{t}/return": r for t, r in returns.items()})
        logger.log("eval", it, row)


def test_a_curve_png_per_task_set_when_the_run_combines_sets(tmp_path):
    # Issue 4: a learning-curve PNG per task set. Tasks from two sets plus an explicit name:
    # curves.png (every task) and one file per set, explicit names in curves-other.png.
    import matplotlib.image

    groups = {"laptop": ["dmc:a", "dmc:b"], "dmc-hard": ["dmc:c"], "other": ["dmc:d"]}
    logger = Logger(tmp_path, tensorboard=False, wandb=False, wandb_project="mtrl", config={},
                    task_groups=groups)
    drawn = []
    for it in (10, 20):
        _eval_rows(logger, {it: {"dmc:a": it, "dmc:b": 3.0 * it, "dmc:c": -it, "dmc:d": 1.0}})
        drawn.append({p.name: p.read_bytes() for p in tmp_path.glob("*.png")})
    logger.close()
    names = ["curves-dmc-hard.png", "curves-laptop.png", "curves-other.png", "curves.png"]
    assert sorted(drawn[-1]) == names  # no temp files left
    for name in names:
        assert (tmp_path / name).stat().st_size > 0
        assert matplotlib.image.imread(tmp_path / name).ndim == 3  # a valid PNG
        assert drawn[0][name] != drawn[1][name]  # redrawn at each evaluation
    panels = {name: [(title, values) for title, values in p] for name, p in logger.curves().items()}
    assert panels["curves-laptop.png"] == [
        ("laptop: mean return", [20.0, 40.0]), ("dmc:a", [10.0, 20.0]), ("dmc:b", [30.0, 60.0])]
    assert panels["curves-dmc-hard.png"] == [("dmc-hard: mean return", [-10.0, -20.0]),
                                             ("dmc:c", [-10.0, -20.0])]
    assert panels["curves-other.png"] == [("other: mean return", [1.0, 1.0]), ("dmc:d", [1.0, 1.0])]
    assert [t for t, _ in panels["curves.png"]] == ["mean return", "dmc:a", "dmc:b", "dmc:c", "dmc:d"]
    assert panels["curves.png"][0][1] == [(10 + 30 - 10 + 1) / 4, (20 + 60 - 20 + 1) / 4]


@pytest.mark.parametrize("groups", [None, {"laptop": ["dmc:a", "dmc:b"]},
                                    {"other": ["dmc:a", "dmc:b"]}],
                         ids=["not-given", "one-set", "explicit-names-only"])
def test_a_run_of_one_task_set_draws_only_curves_png(tmp_path, groups):
    logger = Logger(tmp_path, tensorboard=False, wandb=False, wandb_project="mtrl", config={},
                    task_groups=groups)
    _eval_rows(logger, {10: {"dmc:a": 1.0, "dmc:b": 2.0}})
    logger.close()
    assert [p.name for p in tmp_path.glob("*.png")] == ["curves.png"]
    assert list(logger.curves()) == ["curves.png"]


def _strict_json(line):
    """json.loads that refuses NaN/Infinity tokens, as JSON itself (and jq, JSON.parse) does."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def test_metrics_jsonl_is_valid_json_with_null_for_non_finite_values(tmp_path):
    # metrics.jsonl held bare NaN / Infinity (Python's json default), which is not JSON: a
    # train row before the first update or before a task's first episode end has NaN metrics.
    import math

    nan, inf = float("nan"), float("inf")
    logger = _logger(tmp_path, None)
    logger.log("train", 1, {"critic_loss": nan, "dmc:a/online_return": inf, "x": 2.5})
    logger.log("eval", 2, {"return_mean": -inf, "dmc:a/return": 1.0, "dmc:b/return": nan})
    logger.log("eval", 3, {"return_mean": 4.0, "dmc:a/return": 3.0, "dmc:b/return": 5.0})
    logger.close()
    rows = [_strict_json(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"kind": "train", "iteration": 1, "train/critic_loss": None,
                       "train/dmc:a/online_return": None, "train/x": 2.5}
    assert rows[1] == {"kind": "eval", "iteration": 2, "eval/return_mean": None,
                       "eval/dmc:a/return": 1.0, "eval/dmc:b/return": None}
    # The CSV files keep writing nan/inf (Python's csv and float parsing read them back).
    assert (tmp_path / "train.csv").read_text().splitlines()[1] == "1,nan,inf,2.5"
    assert (tmp_path / "eval.csv").read_text().splitlines()[1] == "2,-inf,1.0,nan"
    # In memory (and so in the curves) a non-finite value stays NaN/inf as it was logged.
    assert math.isinf(logger.eval_history[0]["eval/return_mean"])
    # A resumed run reads the nulls back as NaN: its curves and group means still work.
    groups = {"laptop": ["dmc:a", "dmc:b"], "other": ["dmc:c"]}
    resumed = Logger(tmp_path, tensorboard=False, wandb=False, wandb_project="mtrl", config={},
                     resume_iteration=3, task_groups=groups)
    hist = resumed.eval_history
    assert [h["iteration"] for h in hist] == [2, 3]
    assert math.isnan(hist[0]["eval/return_mean"]) and math.isnan(hist[0]["eval/dmc:b/return"])
    resumed.log("eval", 4, {"return_mean": 1.0, "dmc:a/return": 1.0, "dmc:b/return": nan,
                            "dmc:c/return": 2.0})
    resumed.close()
    panels = dict(resumed.curves()["curves-laptop.png"])
    assert panels["dmc:a"] == [1.0, 3.0, 1.0]
    mean = panels["laptop: mean return"]
    assert math.isnan(mean[0]) and mean[1] == 4.0 and math.isnan(mean[2])
    assert (tmp_path / "curves-laptop.png").stat().st_size > 0
    for ln in (tmp_path / "metrics.jsonl").read_text().splitlines():
        _strict_json(ln)


def test_resume_reads_metrics_jsonl_written_with_bare_nan(tmp_path):
    # Runs logged before the nulls hold NaN/Infinity tokens: they still resume, and the rows
    # kept are rewritten as strict JSON.
    import math

    (tmp_path / "metrics.jsonl").write_text(
        '{"kind": "eval", "iteration": 10, "eval/return_mean": NaN, "eval/dmc:a/return": '
        'Infinity}\n{"kind": "train", "iteration": 20, "train/x": -Infinity}\n')
    logger = _logger(tmp_path, 15)
    # (null does not tell NaN from inf: read back, both are NaN; train.csv/eval.csv keep which)
    assert math.isnan(logger.eval_history[0]["eval/return_mean"])
    assert math.isnan(logger.eval_history[0]["eval/dmc:a/return"])
    logger.log("eval", 20, {"return_mean": math.nan, "dmc:a/return": 1.0})
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [_strict_json(ln) for ln in lines] == [
        {"kind": "eval", "iteration": 10, "eval/return_mean": None, "eval/dmc:a/return": None},
        {"kind": "eval", "iteration": 20, "eval/return_mean": None, "eval/dmc:a/return": 1.0}]


def _tensorboard_steps(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_resume_keeps_the_tensorboard_rows_of_the_checkpoint_iteration(tmp_path):
    # purge_step was the checkpoint's iteration: TensorBoard hid the rows logged at it (which the
    # resumed run does not log again), while the CSV and JSONL files kept them.
    def logger(resume_iteration):
        return Logger(tmp_path, tensorboard=True, wandb=False, wandb_project="mtrl", config={},
                      resume_iteration=resume_iteration)

    log = logger(None)
    for it in (10, 20, 30):  # 30: logged after the checkpoint at 20, then the process died
        log.log("train", it, {"x": float(it)})
    log.close()
    log = logger(20)
    for it in (30, 40):
        log.log("train", it, {"x": float(it) + 0.5})
    log.close()
    assert _tensorboard_steps(tmp_path, "train/x") == [10, 20, 30, 40]
    lines = (tmp_path / "train.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines[1:]] == ["10", "20", "30", "40"]


def test_wandb_resume_continues_the_same_wandb_run(tmp_path, monkeypatch):
    # W&B continues a run only when given its id: with resume="allow" alone every --resume
    # started a new W&B run.
    import sys
    import types

    calls = []

    class Run:
        def log(self, row, step):
            pass

        def finish(self):
            pass

    def init(**kwargs):
        calls.append(kwargs)
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))

    def logger(run_dir, resume_iteration):
        return Logger(run_dir, tensorboard=False, wandb=True, wandb_project="mtrl", config={},
                      resume_iteration=resume_iteration)

    logger(tmp_path / "a", None).close()
    logger(tmp_path / "a", 10).close()
    logger(tmp_path / "b", None).close()
    first, resumed, other = (c["id"] for c in calls)
    assert first == resumed and first != other
    assert all(c["resume"] == "allow" for c in calls)
    assert (tmp_path / "a" / "wandb_run_id").read_text().strip() == first


def test_a_failing_wandb_init_leaves_no_tensorboard_files(tmp_path, monkeypatch):
    # TensorBoard's writer once came first: a W&B init that failed (not logged in, no network)
    # left tb/ behind, and a fresh run's retry was refused as a run dir holding a run.
    import sys
    import types

    def init(**kwargs):
        raise RuntimeError("wandb: not logged in")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with pytest.raises(RuntimeError, match="not logged in"):
        Logger(tmp_path, tensorboard=True, wandb=True, wandb_project="mtrl", config={})
    assert not (tmp_path / "tb").exists()
