"""Terminal feedback: the trainer's events, a bar in a terminal, lines elsewhere, `k/N runs done`, last lines."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pandas as pd
import pytest

import rundirs
from ablate import rundir
from ablate.callbacks import verdict_lines
from ablate.compose import compose
from ablate.identity import job_dirname
from ablate.events import Observer
from ablate.monitor import SweepMonitor, planned_jobs
from ablate.train import fit
from conftest import ROOT, run_cli

RUN = ["trainer.epochs=2", "trainer.batch_size=32", "trainer.limit_batches=6", "trainer.limit_eval_batches=1",
       "trainer.eval_batch_size=200", "model=lenet", "trainer.log_every=2"]


class Recorder(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_start(self, run_dir, summary, epochs, steps, start_epoch) -> None:
        self.calls.append(("start", epochs, steps, start_epoch))

    def on_step(self, epoch, step, loss) -> None:
        self.calls.append(("step", epoch, step, loss))

    def on_epoch_end(self, row, steps) -> None:
        self.calls.append(("epoch", dict(row), [dict(s) for s in steps]))


def test_the_trainer_reports_at_its_syncs_what_it_writes(cfg_factory, tmp_path):
    rec = Recorder()
    run = tmp_path / "run"
    fit(cfg_factory(*RUN), run, "h", observer=rec)
    assert rec.calls[0] == ("start", 2, 6, 0)
    steps_seen = [(c[1], c[2]) for c in rec.calls if c[0] == "step"]
    assert steps_seen == [(e, s) for e in (1, 2) for s in (2, 4, 6)]  # every log_every steps, nothing between
    step_rows = pd.read_csv(run / rundir.STEPS_CSV)
    for _, epoch, step, loss in (c for c in rec.calls if c[0] == "step"):
        losses = step_rows[step_rows.epoch == epoch].loss.to_numpy()[:step]
        assert loss == pytest.approx(losses.mean(), rel=1e-5)  # the running mean of the steps so far
    epochs = [c for c in rec.calls if c[0] == "epoch"]
    csv_rows = pd.read_csv(run / rundir.EPOCHS_CSV).to_dict("records")
    assert [e[1] for e in epochs] == csv_rows  # the rows exactly as written
    assert sum((e[2] for e in epochs), []) == step_rows.to_dict("records")


def _pty_run(args: list[str], cwd: Path) -> str:
    """``python -m ablate.run`` in a 120-column pseudo-terminal; everything it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    proc = subprocess.Popen([sys.executable, "-m", "ablate.run", *args], cwd=cwd, env=env, stdin=slave,
                            stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.time() + 600
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


def _last_lines(text: str, run: Path) -> None:
    summary = json.loads((run / rundir.SUMMARY_JSON).read_text())
    last = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()][-2:]
    assert last == [f"Run: {run} (completed)",
                    f"Test accuracy: {100 * summary['final_test_acc']:.2f}% final after 2 epoch(s); "
                    f"{100 * summary['test_acc_at_best']:.2f}% at epoch {summary['best_epoch']}, the best on validation"]


def test_a_terminal_gets_a_bar_with_rate_and_eta_and_the_result_last(tmp_path):
    out = _pty_run([*RUN, f"data.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    bars = [s for s in out.split("\r") if "step/s" in s or "s/step" in s]
    assert bars, out[-2000:]
    # tqdm's own meter: done/total [elapsed<remaining, rate], under the run's name.
    meter = re.compile(r"^run: +\d+%\|.*\| +(\d+)/12 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(?:step/s|s/step)")
    done = [int(m.group(1)) for s in bars if (m := meter.match(s.strip("\n")))]
    assert done and done[-1] == 12 and done == sorted(done), bars[-3:]
    assert "epoch 1/2 step" not in out  # the bar replaces the step lines
    assert "epoch 2/2 lr" in out  # epoch lines still print (above the bar)
    _last_lines(out, tmp_path / "run")


def test_a_pipe_gets_periodic_lines_naming_the_job(tmp_path):
    run = tmp_path / "some-run"
    p = run_cli([*RUN, f"data.root={tmp_path / 'data'}", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert "\r" not in out and "step/s" not in out  # no bar drawn into a log file
    steps = re.findall(r"\]\[some-run\]\[INFO\] - epoch (\d)/2 step (\d)/6 loss \d\.\d{4}$", out, re.M)
    assert steps == [(str(e), str(s)) for e in (1, 2) for s in (2, 4, 6)]
    assert len(re.findall(r"\[some-run\]\[INFO\] - epoch \d/2 lr ", out)) == 2
    _last_lines(p.stdout, run)


def test_a_grid_sweep_knows_its_jobs_and_their_directories():
    cfg = compose(["experiment=homework_schedulers"], return_hydra_config=True)
    total, names = planned_jobs(cfg)
    assert total == 18 and len(set(names)) == 18
    assert names[0] == job_dirname(["scheduler=none", "trainer.seed=0", "experiment=homework_schedulers"])
    assert "experiment=homework_schedulers,scheduler=onecycle,trainer.seed=2" in names


def test_a_search_knows_its_trial_count():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    assert planned_jobs(compose(["hparams_search=cnn3_cosine"], return_hydra_config=True)) == (20, None)


def test_the_monitor_counts_finished_runs_and_estimates_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    names = ["scheduler=a", "scheduler=b", "scheduler=c", "scheduler=d", "scheduler=e"]
    rundirs.write_run(sweep, ["scheduler=a"])  # finished in an earlier launch: counted, not timed
    lines: list[str] = []
    mon = SweepMonitor(sweep, 5, names, poll_seconds=0.05, say=lines.append)
    assert mon.done_at_start == 1
    mon.start_time -= 60  # one minute into the sweep...
    rundirs.write_run(sweep, ["scheduler=b"])  # ...one run finished, one running, one failed
    rundirs.write_run(sweep, ["scheduler=c"], status="running")
    rundirs.write_run(sweep, ["scheduler=d"], status="completed")
    time.sleep(0.02)
    rundirs.write_run(sweep, ["scheduler=d"], status="failed", name="scheduler=d~1234abcd")  # newer: it counts
    line = mon.line(mon.count())
    # 2 new runs in 60 s: 30 s each, 2 left -> ETA about 60 s
    assert re.fullmatch(r"\[sweep\] 3/5 runs done \(1 failed, 1 running\), 01:0\d elapsed, ETA 01:0\d", line), line
    mon.start()
    rundirs.write_run(sweep, ["scheduler=c"])
    rundirs.write_run(sweep, ["scheduler=e"])
    deadline = time.time() + 30
    while time.time() < deadline and not any(ln.startswith("[sweep] 5/5") for ln in lines):
        time.sleep(0.05)
    mon.stop()
    assert lines[-2].startswith("[sweep] 5/5 runs done (1 failed),"), lines
    assert re.fullmatch(r"\[sweep\] 5/5 runs done in 01:0\d \(1 failed\)", lines[-1]), lines


def test_verdict_lines_are_the_reports_verdicts(tmp_path):
    from ablate import report

    sweep = rundirs.sweep(tmp_path / "sweep", {"step": [0.80, 0.82, 0.81], "cosine": [0.83, 0.84, 0.845]})
    rep = report.build([sweep], plots=False)
    got = verdict_lines(rep)
    md = (Path(report.write(rep, tmp_path / "report")).parent / "report.md").read_text()
    assert got[0] == "Verdicts:" and got[1] == "scheduler:" and len(got) > 2
    for line in got[2:]:  # every terminal line is a verdict line of report.md
        assert f"- {line.strip()}" in md, line
    assert "cosine" in got[2]


@pytest.mark.slow
def test_parallel_jobs_are_told_apart_and_the_sweep_ends_with_its_verdicts(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    p = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "scheduler=step,cosine", *RUN,
                 "logger.poll_seconds=0.2", "report.arm_panels=false", f"hydra.sweep.dir={sweep}",
                 f"data.root={tmp_path / 'data'}"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    names = [job_dirname([f"scheduler={s}", *RUN]) for s in ("cosine", "step")]
    for name in names:  # both jobs' step lines, each under its own name
        assert len(re.findall(rf"\[{re.escape(name)}\]\[INFO\] - epoch \d/2 step \d/6 loss", out)) == 6, name
    counts = re.findall(r"^\[sweep\] (\d)/2 runs done", p.stdout, re.M)
    assert counts[0] == "0" and counts[-1] == "2" and counts == sorted(counts)
    tail = p.stdout.strip().splitlines()
    from ablate import report

    verdicts = verdict_lines(report.build([sweep], plots=False))
    assert tail[-len(verdicts):] == verdicts and verdicts[1] == "scheduler:"
    assert tail[-len(verdicts) - 1] == f"Report: {sweep / 'report' / 'index.html'}"
