"""How a launch ends: one line for bad input, the sweep's exit status, a refused dry run.

The slow tests start real ``python -m ablate.run`` processes on tiny CPU settings and
read their exit status and last lines.
"""

from __future__ import annotations

import os
import time

import pytest
import rundirs
from conftest import run_cli

from ablate import outcome, rundir

TINY = ["model=lenet", "trainer.batch_size=32", "trainer.limit_eval_batches=1", "trainer.eval_batch_size=200"]


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
