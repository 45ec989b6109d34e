"""How a launch ends: one line for bad input, the sweep's exit status, a refused dry run, Ctrl-C.

The slow tests start real ``python -m ablate.run`` processes on tiny CPU settings and
read their exit status and last lines; the Ctrl-C ones send a real SIGINT, then run the
command the interrupted process printed and check the run continues where it stopped.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import rundirs
from conftest import ROOT, make_cfg, run_cli

from ablate import job, outcome, rundir, runlock
from ablate.identity import config_hash

TINY = ["model=lenet", "trainer.batch_size=32", "trainer.limit_eval_batches=1", "trainer.eval_batch_size=200"]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                HYDRA_FULL_ERROR="0", MPLBACKEND="Agg")


# --------------------------------------------------------------------------- the command that resumes
def test_the_resume_command_gives_back_the_arguments_and_the_directory(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    place = tmp_path / "my sweeps" / "it's, odd ${x}"
    argv = ["/somewhere/ablate/run.py", "-m", "optimizer.lr=tag(log, interval(1e-4, 1e-1))", "scheduler=step,cosine"]
    words = shlex.split(outcome.resume_command(argv, "hydra.sweep.dir", place))
    assert words[0] in ("python", sys.executable) and words[1:3] == ["-m", "ablate.run"]
    assert words[3:-1] == argv[1:]  # what the user typed, in order
    assert words[-1].startswith("hydra.sweep.dir=") and OverridesParser.create().parse_override(words[-1]).value() == (
        str(place).replace("${", "\\${"))  # Hydra's parser keeps the escape; OmegaConf drops it on resolving
    from ablate.compose import compose

    assert compose([words[-1]], return_hydra_config=True).hydra.sweep.dir == str(place)
    given = ["ablate-run", "model=lenet", "hydra.run.dir=rel/dir"]
    assert outcome.resume_command(given, "hydra.run.dir", tmp_path) == "ablate-run model=lenet hydra.run.dir=rel/dir"


# --------------------------------------------------------------------------- the sweep's exit status
def test_a_sweep_fails_for_the_runs_this_launch_failed_not_for_diverged_or_older_ones(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    names = [f"scheduler={s}" for s in ("a", "b", "c", "d")]
    old = rundirs.write_run(sweep, ["scheduler=e"], status="failed", error="boom")  # an earlier launch's
    os.utime(old / rundir.SUMMARY_JSON, (time.time() - 3600,) * 2)
    launch = outcome.Launch(sweep=sweep, names=[*names, "scheduler=e"], total=5, start=time.time() - 1)
    monkeypatch.setattr(outcome, "LAUNCH", launch)
    rundirs.write_run(sweep, ["scheduler=a"])
    rundirs.write_run(sweep, ["scheduler=b"], [0.1], status="diverged", error="non-finite training loss in epoch 1")
    assert outcome.sweep_end() is None  # a diverged run is a result
    failed = rundirs.write_run(sweep, ["scheduler=c"], [0.1], status="failed", error="ConfigError: x")
    rundirs.write_run(sweep, ["scheduler=d"], [0.1], status="running")
    assert outcome.sweep_end() == f"ablate: 1 of 5 runs failed (see {failed / rundir.SUMMARY_JSON})"
    (sweep / "report").mkdir()
    (sweep / "report" / "index.html").write_text("<html></html>")
    assert outcome.sweep_end() == (f"ablate: 1 of 5 runs failed (see the report's flagged runs, or "
                                   f"{failed / rundir.SUMMARY_JSON})")


@pytest.mark.slow
def test_bad_input_in_a_sweep_is_one_line_per_run_and_the_sweep_exits_1(tmp_path):
    sweep = tmp_path / "sweep"
    p = run_cli(["-m", *TINY, "trainer.epochs=1", "trainer.limit_batches=2", "model.norm=group",
                 "model.norm_groups=4", "scheduler=step,cosine", "report.arm_panels=false",
                 f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}"], cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out[-3000:]
    said = [ln for ln in out.splitlines() if "model.norm_groups=4 is invalid" in ln]
    assert len(said) == 2 and all("][ERROR] - " in ln and " failed: ConfigError: " in ln for ln in said), said
    assert "Traceback" not in out and "ablate/job.py" not in out
    runs = sorted(d for d in sweep.iterdir() if (d / rundir.SUMMARY_JSON).exists())
    for run in runs:  # the traceback is kept where it was: the run's summary and log
        assert "Traceback (most recent call last)" in rundir.read_summary(run)["traceback"]
        assert "Traceback (most recent call last)" in (run / "run.log").read_text()
    assert (sweep / "report" / "index.html").exists()  # the report first, then the exit status
    first = next(r for r in runs if "scheduler=step" in r.name)  # job #0
    assert p.stderr.strip().splitlines()[-1] == (
        f"ablate: 2 of 2 runs failed (see the report's flagged runs, or {first / rundir.SUMMARY_JSON})")


# --------------------------------------------------------------------------- dry run
@pytest.mark.slow
def test_a_refused_dry_run_ends_with_one_line_whatever_the_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    p = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.batch_size=0,16",
                 "dry_run=true", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert p.returncode == 1, (p.stdout + p.stderr)[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("[dry run]")]
    assert [ln.rsplit(" (", 1)[1] for ln in lines] == ["refused: ablate: trainer.batch_size=0 is invalid: must be > 0)",
                                                       "new)"]
    assert "Launching 2 jobs locally" in p.stdout  # checked in this process: nothing submitted anywhere
    assert "Sweep: " not in p.stdout  # a dry run writes no report to announce
    assert p.stderr.strip().splitlines() == ["ablate: dry run: 1 of 2 jobs would be refused (see above)"]


# --------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_marks_the_run_interrupted_and_releases_its_lock(tmp_path, monkeypatch):
    """Interrupted while checkpointing epoch 2 (its rows written): the run reads interrupted, nobody holds
    it, and the next launch resumes after epoch 1."""
    cfg = make_cfg([*TINY, "trainer.epochs=3", "trainer.limit_batches=2", f"data.root={tmp_path / 'data'}"],
                   tiny=False)
    run = tmp_path / "run"
    real = rundir.save_checkpoint

    def ctrl_c_at_epoch_2(run_dir, state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt
        real(run_dir, state)

    monkeypatch.setattr(rundir, "save_checkpoint", ctrl_c_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        job.run_job(cfg, run, [], {}, {})
    monkeypatch.undo()
    summary = rundir.read_summary(run)
    assert summary["status"] == "interrupted" and summary["epochs_done"] == 1
    assert runlock.lock_held(run) is False and runlock.shown_status(run, summary) == "interrupted"
    assert outcome.checkpointed_epoch(run, config_hash(cfg)) == 1
    summary, error = job.run_job(cfg, run, [], {}, {})
    assert error is None and summary["status"] == "completed"
    assert pd.read_csv(run / rundir.EPOCHS_CSV).epoch.tolist() == [1, 2, 3]


def _interrupt(args: list[str], cwd: Path, ready) -> subprocess.CompletedProcess:
    """Start ``python -m ablate.run *args``, send SIGINT (what Ctrl-C sends) once ``ready()``, return how it ended."""
    proc = subprocess.Popen([sys.executable, "-m", "ablate.run", *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # the terminal sends it to the whole foreground group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _relaunch(command: str, cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    assert words[0] in ("python", sys.executable) and words[1:3] == ["-m", "ablate.run"], command
    return subprocess.run([sys.executable, *words[1:]], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=600)


def _epochs_done(pattern: str, root: Path) -> int:
    return max([(rundir.read_summary(p.parent) or {}).get("epochs_done") or 0 for p in root.glob(pattern)] or [0])


@pytest.mark.slow
def test_ctrl_c_in_a_run_says_what_it_kept_and_the_command_that_resumes_it(tmp_path):
    args = [*TINY, "trainer.epochs=6", "trainer.limit_batches=6", f"data.root={tmp_path / 'data'}"]
    p = _interrupt(args, tmp_path, lambda: _epochs_done(f"outputs/runs/*/*/{rundir.SUMMARY_JSON}", tmp_path) >= 1)
    assert p.returncode == 130, (p.stdout + p.stderr)[-3000:]
    assert "Traceback" not in p.stdout + p.stderr and "KeyboardInterrupt" not in p.stdout + p.stderr
    (run,) = tmp_path.glob("outputs/runs/*/*")
    said, command = p.stderr.strip().splitlines()[-2:]
    kept = rundir.load_checkpoint(run)["epoch"]
    assert said == (f"Interrupted: {run} keeps epoch{'s 1-' if kept > 1 else ' '}{kept} of 6 (its last checkpoint); "
                    "resume with:")
    assert command.endswith(f" hydra.run.dir={run}")  # the user gave none: the run's own is added
    summary = rundir.read_summary(run)
    assert summary["status"] == "interrupted" and runlock.shown_status(run, summary) == "interrupted"
    assert runlock.lock_held(run) is False

    again = _relaunch(command, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming {run.name} after epoch {kept}/6" in (run / "run.log").read_text()
    assert pd.read_csv(run / rundir.EPOCHS_CSV).epoch.tolist() == [1, 2, 3, 4, 5, 6]  # each epoch once
    assert rundir.read_summary(run)["status"] == "completed"
    assert list(tmp_path.glob("outputs/runs/*/*")) == [run]  # resumed in place, no new directory


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_says_what_it_kept_and_the_command_that_resumes_it(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.epochs=4", "trainer.limit_batches=6", "trainer.seed=0,1",
            f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}", "~hydra.callbacks.report"]
    p = _interrupt(args, tmp_path, lambda: _epochs_done(f"*seed=1/{rundir.SUMMARY_JSON}", sweep) >= 1)
    assert p.returncode == 130, (p.stdout + p.stderr)[-3000:]
    assert "Traceback" not in p.stdout + p.stderr and "KeyboardInterrupt" not in p.stdout + p.stderr
    said, command = p.stderr.strip().splitlines()[-2:]
    assert said == (f"Interrupted: {sweep} keeps 1 of 2 runs finished and the others up to their last checkpoint; "
                    "resume with:")
    assert shlex.split(command)[3:] == args  # the user's own command: it named the sweep dir already
    (done,) = sweep.glob("*seed=0")
    (cut,) = sweep.glob("*seed=1")
    assert rundir.read_summary(cut)["status"] == "interrupted"
    kept = rundir.load_checkpoint(cut)["epoch"]

    again = _relaunch(command, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already completed with this config; skipping" in (done / "run.log").read_text()
    assert f"resuming {cut.name} after epoch {kept}/4" in (cut / "run.log").read_text()
    for run in (done, cut):
        assert pd.read_csv(run / rundir.EPOCHS_CSV).epoch.tolist() == [1, 2, 3, 4]
        assert rundir.read_summary(run)["status"] == "completed"
