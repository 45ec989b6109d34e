"""The Python API: a run trained from overrides into its own directory, a sweep, results as pandas tables."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

import ablate
import rundirs
from ablate import report, rundir, runlock
from conftest import ROOT, TINY

FINALS = {"step": [0.80, 0.82, 0.81], "cosine": [0.83, 0.84, 0.845]}


def test_import_ablate_stays_light():
    code = ("import sys, ablate; f = ablate.load_runs; "
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        ablate.nosuch  # noqa: B018


def test_train_run_makes_its_directory_and_returns_the_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, f"data.root={tmp_path / 'data'}"]
    summary = ablate.train_run(overrides)
    run = tmp_path / "outputs" / "runs"
    (day,) = run.iterdir()
    (run,) = day.iterdir()  # outputs/runs/DATE/TIME, as the command line names it
    assert summary == rundir.read_summary(run) and summary["status"] == "completed"
    assert summary["run_dir"] == str(run) and summary["choices"]["model"] == "simple_cnn"
    epochs = pd.read_csv(run / rundir.EPOCHS_CSV)
    assert summary["final_test_acc"] == epochs.test_acc.iloc[-1] and len(epochs) == 2
    assert rundir.read_config(run)["trainer"]["epochs"] == 2  # readers (report, inspect) find its config
    assert (run / rundir.HYDRA_DIR / "config.yaml").exists() and (run / rundir.MODEL).exists()
    # The same .hydra/ record as the command line's: its overrides and the hydra node (choices included).
    assert yaml.safe_load((run / rundir.HYDRA_DIR / "overrides.yaml").read_text()) == overrides
    hydra_node = yaml.safe_load((run / rundir.HYDRA_DIR / "hydra.yaml").read_text())["hydra"]
    assert hydra_node["runtime"]["choices"]["model"] == "simple_cnn"
    # The same call into the same directory: already completed, not trained again.
    before = (run / rundir.EPOCHS_CSV).stat().st_mtime_ns
    assert ablate.train_run(overrides, run_dir=run) == summary
    assert (run / rundir.EPOCHS_CSV).stat().st_mtime_ns == before
    # A bad value raises, naming the key.
    with pytest.raises(Exception, match="trainer.epochs=0"):
        ablate.train_run([*overrides, "trainer.epochs=0"], run_dir=tmp_path / "bad")


def test_load_runs_is_one_row_per_run_with_its_overrides(tmp_path):
    sweep = rundirs.sweep(tmp_path / "sweep", FINALS)
    runs = ablate.load_runs(sweep)
    assert len(runs) == 6 and list(runs.columns[:4]) == ["run", "path", "scheduler", "trainer.seed"]
    assert runs["trainer.seed"].dtype.kind == "i" and set(runs.status) == {"completed"}
    for _, r in runs.iterrows():
        assert r.final_test_acc == FINALS[r.scheduler][r["trainer.seed"]]
    # Several sweeps at once, and a run directory on its own.
    other = rundirs.sweep(tmp_path / "other", {"plateau": [0.7]})
    assert len(ablate.load_runs([sweep, other])) == 7
    assert ablate.load_runs(other / "scheduler=plateau,trainer.seed=0").final_test_acc.tolist() == [0.7]
    # Sweeps inside a folder (one per value of an execution option, as the bench makes them) are found as the
    # report finds them.
    rundirs.sweep(tmp_path / "grid" / "trainer.pipeline=resident", {"step": [0.6]})
    rundirs.sweep(tmp_path / "grid" / "trainer.pipeline=dataloader", {"step": [0.65]})
    assert sorted(ablate.load_runs(tmp_path / "grid").final_test_acc) == [0.6, 0.65]


def test_a_path_with_no_runs_is_an_error_not_an_empty_table(tmp_path):
    """Old: a mistyped path gave an empty DataFrame with no columns, and the README's next line (a groupby on
    "scheduler") failed with a KeyError far from the cause."""
    for load in (ablate.load_runs, ablate.load_epochs):
        with pytest.raises(FileNotFoundError, match=r"/nosuch is not a directory: pass a sweep directory"):
            load(tmp_path / "nosuch")
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(FileNotFoundError, match=r"no run directories under .*/empty \(a run directory holds"):
            load(tmp_path / "empty")


def test_load_epochs_is_one_row_per_run_and_epoch(tmp_path):
    sweep = rundirs.sweep(tmp_path / "sweep", FINALS)
    rundirs.write_run(sweep, ["scheduler=plateau", "trainer.seed=0"], [0.5, 0.6], epochs_planned=5,
                      status="running", summary=False)  # still running: its rows so far
    epochs = ablate.load_epochs(sweep)
    assert len(epochs) == 6 * 5 + 2
    csv = pd.read_csv(sweep / "scheduler=cosine,trainer.seed=2" / rundir.EPOCHS_CSV)
    assert list(epochs.columns) == ["run", "scheduler", "trainer.seed", *csv.columns]  # the columns the runs wrote
    one = epochs[(epochs.scheduler == "cosine") & (epochs["trainer.seed"] == 2)]
    pd.testing.assert_frame_equal(one[list(csv.columns)].reset_index(drop=True), csv)
    running = ablate.load_runs(sweep).set_index("run").loc["scheduler=plateau,trainer.seed=0"]
    assert running.status == "running"


def test_load_runs_shows_a_run_whose_writer_died_as_the_report_does(tmp_path):
    sweep = tmp_path / "s"
    live = rundirs.write_run(sweep, ["trainer.seed=0"], [0.3], epochs_planned=3, status="running")
    dead = rundirs.write_run(sweep, ["trainer.seed=1"], [0.3], epochs_planned=3, status="running")
    with runlock.RunLock(dead):
        pass  # its writer took the lock, then died
    with runlock.RunLock(live):
        runs = ablate.load_runs(sweep).set_index("run")
        shown = {r.path.name: r.status for r in report.build([sweep], plots=False).runs}
    assert (runs.status[live.name], runs.status[dead.name]) == ("running", "interrupted")
    assert runs.status.to_dict() == shown


@pytest.mark.slow
def test_sweep_runs_the_command_line_and_returns_its_directory(tmp_path):
    sweep = ablate.sweep(["scheduler=step,cosine", "trainer.epochs=1", "trainer.limit_batches=2", "model=lenet",
                          "trainer.limit_eval_batches=1", f"data.root={tmp_path / 'data'}", "report.arm_panels=false"],
                         sweep_dir=tmp_path / "sweep")
    assert sweep == tmp_path / "sweep" and (sweep / "report" / "index.html").exists()
    runs = ablate.load_runs(sweep)
    assert sorted(runs.scheduler) == ["cosine", "step"] and set(runs.status) == {"completed"}
    assert len(ablate.load_epochs(sweep)) == 2
    with pytest.raises(subprocess.CalledProcessError):
        ablate.sweep(["scheduler=nosuch"], sweep_dir=tmp_path / "bad")
    # A run that failed fails the call too, once the sweep and its report are written.
    with pytest.raises(subprocess.CalledProcessError):
        ablate.sweep(["optimizer.lr=-1,0.01", "trainer.epochs=1", "trainer.limit_batches=2", "model=lenet",
                      "trainer.limit_eval_batches=1", f"data.root={tmp_path / 'data'}", "report.arm_panels=false"],
                     sweep_dir=tmp_path / "failed")
    assert (tmp_path / "failed" / "report" / "index.html").exists()
    assert sorted(ablate.load_runs(tmp_path / "failed").status) == ["completed", "failed"]
