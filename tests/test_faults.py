"""Fault injection: what survives a kill, a crash mid-write, a diverging or failing run, and bad input.

The subprocess tests start real sweeps (``python -m ablate.run -m ...``) on tiny
CPU settings and SIGKILL them at chosen and at random moments, then relaunch the
same command with ``hydra.sweep.dir`` pointing at the interrupted sweep. The
README's "What survives what" table lists the same cases.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, make_cfg, run_cli, tmpfs

from ablate import report, rundir, runlock
from ablate.config import ConfigError
from ablate.identity import config_hash
from ablate.rundir import CheckpointError
from ablate.train import fit

EPOCHS = 6
STEPS = 3
COMMON = ["model=lenet", f"trainer.epochs={EPOCHS}", f"trainer.limit_batches={STEPS}", "trainer.batch_size=32",
          "trainer.limit_eval_batches=1", "trainer.eval_batch_size=200"]
SEEDS = ["trainer.seed=0,1"]
VOLATILE = ["epoch_seconds", "images_per_second"]  # wall-clock columns; everything else must match exactly
NO_REPORT = "~hydra.callbacks.report"  # for launches whose report nobody reads (saves seconds)


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                HYDRA_FULL_ERROR="0", MPLBACKEND="Agg")


def _args(sweep: Path, *extra: str) -> list[str]:
    return ["-m", *COMMON, *extra, f"hydra.sweep.dir={sweep}", f"data.root={sweep.parent / 'data'}"]


def _popen(args: list[str], cwd: Path) -> subprocess.Popen:
    """A sweep in its own process group (so a kill reaches all of it), output to a file."""
    log = open(cwd / f"out-{time.monotonic_ns()}.txt", "w")
    return subprocess.Popen([sys.executable, "-m", "ablate.run", *args], cwd=cwd, env=_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def _runs(sweep: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted(sweep.iterdir()) if (d / rundir.SUMMARY_JSON).exists()}


def _seed(name: str) -> str:
    return name.rsplit("trainer.seed=", 1)[1]


def _epochs(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / rundir.EPOCHS_CSV).drop(columns=VOLATILE)


def _n_rows(sweep: Path) -> int:
    return sum(len(rundir.read_rows(p)) for p in sweep.glob(f"*/{rundir.EPOCHS_CSV}"))


def _fingerprint(run: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of the files a retrain would rewrite."""
    return {n: ((run / n).stat().st_mtime_ns, (run / n).read_bytes())
            for n in (rundir.MODEL, rundir.SUMMARY_JSON, rundir.CHECKPOINT, rundir.EPOCHS_CSV, rundir.STEPS_CSV)}


def _assert_matches_reference(sweep: Path, reference: dict[str, Path], report_read: bool = True) -> None:
    """Every run completed, epochs 1..N and steps once each, numbers equal to the uninterrupted sweep."""
    runs = _runs(sweep)
    assert sorted(map(_seed, runs)) == sorted(map(_seed, reference))
    for name, run in runs.items():
        summary = rundir.read_json(run / rundir.SUMMARY_JSON)
        assert summary["status"] == "completed", (name, summary.get("error"))
        assert summary["epochs_done"] == EPOCHS
        ep = pd.read_csv(run / rundir.EPOCHS_CSV)
        assert ep.epoch.tolist() == list(range(1, EPOCHS + 1)), name
        steps = pd.read_csv(run / rundir.STEPS_CSV)
        assert steps.step.tolist() == list(range(1, EPOCHS * STEPS + 1)), name
        ref = reference[name]
        pd.testing.assert_frame_equal(_epochs(run), _epochs(ref))
        pd.testing.assert_frame_equal(steps, pd.read_csv(ref / rundir.STEPS_CSV))
        # What the resumed model ends with is what the uninterrupted one ends with, and so is the
        # validation-best epoch it kept (best.pt), even when that epoch came before a kill.
        assert summary["best_epoch"] == rundir.read_json(ref / rundir.SUMMARY_JSON)["best_epoch"], name
        for weights in (rundir.MODEL, rundir.BEST):
            a, b = (torch.load(d / weights, weights_only=True) for d in (run, ref))
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        assert not list(run.glob(".*.tmp"))
    if report_read:
        rows = pd.read_csv(sweep / "report" / "summary.csv")
        assert len(rows) == len(runs) and set(rows["status"]) == {"completed"}


# --------------------------------------------------------------------------- reference sweeps
@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Two uninterrupted sweeps, started together: seeds 0 then 1, and seeds 1 then 0 (one process each)."""
    base = tmp_path_factory.mktemp("reference")
    procs = {order: _popen(_args(base / f"seeds{order.replace(',', '')}", f"trainer.seed={order}", NO_REPORT), base)
             for order in ("0,1", "1,0")}
    for order, p in procs.items():
        assert p.wait(timeout=600) == 0, f"reference sweep {order} failed"
    return {order: _runs(base / f"seeds{order.replace(',', '')}") for order in procs}


@pytest.fixture(scope="module")
def reference(sweeps):
    return sweeps["0,1"]


@pytest.mark.slow
def test_jobs_sharing_a_process_do_not_leak_into_each_other(sweeps):
    """Basic launcher: one process runs both jobs; a job's numbers do not depend on what ran before it."""
    first, second = sweeps["0,1"], sweeps["1,0"]
    assert sorted(first) == sorted(second) and len(first) == 2
    for name in first:
        pd.testing.assert_frame_equal(_epochs(first[name]), _epochs(second[name]))
    a, b = (_epochs(first[n]) for n in first)
    assert not a.train_loss.equals(b.train_loss)  # and the seeds do differ


# --------------------------------------------------------------------------- SIGKILL + resume
@pytest.mark.slow
def test_sigkill_mid_run_then_resume_finishes_without_retraining(tmp_path, reference):
    sweep = tmp_path / "sweep"
    proc = _popen(_args(sweep, *SEEDS), tmp_path)
    deadline = time.monotonic() + 300
    try:
        # Job 0 has completed; job 1 is in its third epoch or later.
        while len(rundir.read_rows(next(iter(sweep.glob(f"*seed=1/{rundir.EPOCHS_CSV}")), sweep / "x"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "sweep ended before the kill"
            time.sleep(0.02)
    finally:
        _kill(proc)
    runs = _runs(sweep)
    done, killed = (runs[n] for n in sorted(runs, key=_seed))
    assert rundir.read_json(done / rundir.SUMMARY_JSON)["status"] == "completed"
    assert rundir.read_json(killed / rundir.SUMMARY_JSON)["status"] == "running"
    before = _fingerprint(done)

    _ok(run_cli(_args(sweep, *SEEDS, NO_REPORT), cwd=tmp_path))
    assert _fingerprint(done) == before  # skipped, not retrained
    assert "already completed with this config; skipping" in (done / "run.log").read_text()
    assert "resuming" in (killed / "run.log").read_text()
    _assert_matches_reference(sweep, reference, report_read=False)


@pytest.mark.slow
def test_five_random_kills_then_resume_lose_nothing(tmp_path, reference):
    """Kill the sweep at seeded random instants inside epochs, five times; the sixth launch finishes it."""
    rng = random.Random(20240605)
    epoch_s = max(0.05, float(pd.read_csv(next(iter(reference.values())) / rundir.EPOCHS_CSV).epoch_seconds.median()))
    sweep = tmp_path / "sweep"
    completed: dict[str, dict] = {}
    kills = 0
    for target in (2, 4, 6, 8, 10):  # of 12 epoch rows in all: each round must make progress
        proc = _popen(_args(sweep, *SEEDS), tmp_path)
        deadline = time.monotonic() + 300
        try:
            while _n_rows(sweep) < target and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5 * epoch_s))  # somewhere in the next epoch, writes included
            kills += proc.poll() is None
        finally:
            _kill(proc)
        for name, run in _runs(sweep).items():
            s = rundir.read_json(run / rundir.SUMMARY_JSON)
            assert s is not None and s["status"] in ("running", "completed"), (name, s)  # whole files only
            for p in run.glob("*.csv"):  # every CSV reads back as whole rows
                rows = rundir.read_rows(p)
                assert p.read_text().endswith("\n") and len(rows) == p.read_text().count("\n") - 1
            if s["status"] == "completed" and name not in completed:
                completed[name] = _fingerprint(run)
        # The report reads the sweep at any instant, and shows no run of the killed sweep as running.
        assert "running" not in {r.status for r in report.load_runs([sweep])}
    assert kills >= 4, f"only {kills} kill(s) landed before the sweep ended"

    _ok(run_cli(_args(sweep, *SEEDS), cwd=tmp_path))
    for name, fp in completed.items():
        assert _fingerprint(_runs(sweep)[name]) == fp, f"{name} was retrained"
    _assert_matches_reference(sweep, reference)


_CRASH_ON_RENAME = """
import os, runpy, sys
target, nth = sys.argv[1], int(sys.argv[2])
real, seen = os.replace, [0]
def replace(src, dst, *a, **k):
    if os.path.basename(dst) == target:
        seen[0] += 1
        if seen[0] == nth:
            os._exit(137)  # the temporary file is written and synced; the rename never happens
    return real(src, dst, *a, **k)
os.replace = replace
sys.argv = ["ablate.run", *sys.argv[3:]]
runpy.run_module("ablate.run", run_name="__main__")
"""


@pytest.mark.slow
def test_crash_between_temp_write_and_rename_leaves_a_readable_run(tmp_path, reference):
    sweep = tmp_path / "sweep"
    args = _args(sweep, "trainer.seed=0")
    proc = subprocess.run([sys.executable, "-c", _CRASH_ON_RENAME, rundir.CHECKPOINT, "3", *args], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 137, (proc.stdout + proc.stderr)[-3000:]
    (run,) = _runs(sweep).values()
    (tmp,) = run.glob(f".{rundir.CHECKPOINT}.*.tmp")  # the epoch-3 checkpoint, never renamed
    ckpt = torch.load(run / rundir.CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 2  # the previous checkpoint, whole
    summary = rundir.read_json(run / rundir.SUMMARY_JSON)
    assert summary["status"] == "running" and summary["epochs_done"] == 2
    assert pd.read_csv(run / rundir.EPOCHS_CSV).epoch.tolist() == [1, 2, 3]  # epoch 3's row was appended
    (r,) = report.load_runs([sweep])  # the leftover temp file does not confuse the report
    assert r.status == "interrupted" and r.epochs_done == 3  # its process is gone: never shown running

    _ok(run_cli([*args, NO_REPORT], cwd=tmp_path))
    assert not tmp.exists()
    name = next(iter(_runs(sweep)))
    _assert_matches_reference(sweep, {name: reference[name]}, report_read=False)


# --------------------------------------------------------------------------- divergence and failures
@pytest.mark.slow
def test_diverging_and_failing_runs_stay_inside_their_run(tmp_path):
    sweep = tmp_path / "sweep"
    # lr 1e38 overflows to a NaN loss in epoch 1; lr -1 is refused by the optimizer schema.
    cmd = ["-m", "model=lenet", "trainer.epochs=3", "trainer.limit_batches=2", "trainer.batch_size=32",
           "trainer.limit_eval_batches=1", "trainer.eval_batch_size=200", "optimizer=sgd",
           "optimizer.lr=0.01,1e38,-1", f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}"]
    p = run_cli(cmd, cwd=tmp_path)
    out = p.stdout + p.stderr
    runs = {_lr(n): (d, rundir.read_json(d / rundir.SUMMARY_JSON)) for n, d in _runs(sweep).items()}
    # The sweep runs to its report, then exits 1 for its one failed run (the diverged one is a result).
    failed = runs[-1.0][0] / rundir.SUMMARY_JSON
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1] == (
        f"ablate: 1 of 3 runs failed (see the report's flagged runs, or {failed})"), out[-3000:]
    # Bad input is one line on the console; its traceback is in the run's record and log (below).
    assert [ln.split("][ERROR] - ", 1)[1] for ln in out.splitlines() if "is invalid" in ln] == [
        f"{runs[-1.0][0].name} failed: ConfigError: optimizer.lr=-1.0 is invalid: must be > 0"]
    assert "Traceback" not in out
    assert runs[0.01][1]["status"] == "completed" and runs[0.01][1]["epochs_done"] == 3
    d, s = runs[1e38]
    assert s["status"] == "diverged" and "non-finite training loss in epoch 1" in s["error"]
    assert s["epochs_done"] == 1 and len(rundir.read_rows(d / rundir.EPOCHS_CSV)) == 1  # stopped there
    assert not (d / rundir.MODEL).exists()
    d, s = runs[-1.0]
    assert s["status"] == "failed" and s["error"].startswith("ConfigError: optimizer.lr=-1")
    assert "Traceback (most recent call last)" in s["traceback"]
    log = (d / "run.log").read_text()
    assert "Traceback (most recent call last)" in log and "optimizer.lr=-1" in log  # in the job's own log
    rows = pd.read_csv(sweep / "report" / "summary.csv")  # the end-of-sweep report ran
    assert sorted(rows["status"]) == ["completed", "diverged", "failed"]
    assert "Runs: 3 job dir(s)" in out

    # A relaunch skips the completed and the diverged run, and retries the failed one (no report: the exit
    # status does not depend on it).
    p = run_cli([*cmd, NO_REPORT], cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1] == f"ablate: 1 of 3 runs failed (see {failed})"
    assert out.count("already completed with this config; skipping") == 1
    assert out.count("already diverged with this config; skipping") == 1
    assert "optimizer.lr=-1.0 is invalid" in out  # retried, and failed again


def _lr(name: str) -> float:
    return float(name.split("optimizer.lr=", 1)[1].split(",", 1)[0])


# --------------------------------------------------------------------------- changed config
@pytest.mark.slow
def test_changed_config_gets_its_own_dir_and_the_old_results_stay(tmp_path):
    """A relaunch after the YAML was edited (adam's lr) never mixes with the old run's results."""
    import shutil

    src = tmp_path / "src"  # a copy of the package and its conf/, so the test can edit a YAML
    shutil.copytree(ROOT / "ablate", src / "ablate", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", src / "conf")
    env = {"PYTHONPATH": str(src)}
    sweep = tmp_path / "sweep"
    cmd = ["-m", "model=lenet", "trainer.epochs=1", "trainer.limit_batches=1", "trainer.limit_eval_batches=1",
           "trainer.eval_batch_size=200", f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}", NO_REPORT]
    _ok(run_cli(cmd, cwd=tmp_path, env=env))
    (old,) = _runs(sweep).values()
    before = _fingerprint(old)
    y = src / "conf" / "optimizer" / "adam.yaml"
    assert "lr: 0.001" in y.read_text()
    y.write_text(y.read_text().replace("lr: 0.001", "lr: 0.002"))
    out = _ok(run_cli(cmd, cwd=tmp_path, env=env))
    assert "holds results of a different config" in out
    runs = _runs(sweep)
    (new,) = [d for n, d in runs.items() if n != old.name]
    h = rundir.read_json(new / rundir.SUMMARY_JSON)["config_hash"]
    assert new.name == f"{old.name}~{h[:8]}"
    assert _fingerprint(old) == before  # the old results, untouched
    assert rundir.read_json(old / rundir.SUMMARY_JSON)["config"]["optimizer"]["lr"] == 0.001
    assert rundir.read_json(new / rundir.SUMMARY_JSON)["config"]["optimizer"]["lr"] == 0.002
    assert rundir.read_json(new / rundir.SUMMARY_JSON)["status"] == "completed"
    # Hydra wrote the new config into the old dir's .hydra/: it is put back, and the new run has its own.
    assert "lr: 0.001" in (old / ".hydra" / "config.yaml").read_text()
    assert "lr: 0.002" in (new / ".hydra" / "config.yaml").read_text()
    old_log = (old / "run.log").read_text().split("holds results of a different config")[-1]
    assert "epoch 1/1" not in old_log and "epoch 1/1" in (new / "run.log").read_text()


# --------------------------------------------------------------------------- bad input
def _crafted_checkpoint(path: Path, marker: Path) -> None:
    """A checkpoint whose unpickling would create ``marker`` (what a plain ``torch.load`` would run)."""
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"config_hash": "x", "payload": Payload()}, path)


@pytest.mark.slow
def test_bad_input_gets_one_clear_line(tmp_path):
    """Run together: Hydra's own errors, range checks, a damaged data file, a crafted checkpoint, fail_fast."""
    from fakedata import make_mnist_like

    raw = make_mnist_like(tmp_path / "mnist", folder="MNIST")
    bad = raw / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated
    crafted_dir = tmp_path / "crafted"
    crafted_dir.mkdir()
    over = ["trainer.epochs=1", "trainer.limit_batches=1", "model=lenet"]
    h = config_hash(make_cfg(over, tiny=False))
    (crafted_dir / rundir.SUMMARY_JSON).write_text(json.dumps({"status": "running", "config_hash": h}))
    marker = tmp_path / "pwned"
    _crafted_checkpoint(crafted_dir / rundir.CHECKPOINT, marker)
    cases = {
        "nosuch": ["scheduler=nosuch"],
        "misspelt": ["trainer.epoch=3"],
        "range": ["trainer.epochs=0"],
        "data": ["dataset=mnist", f"data.root={tmp_path / 'mnist'}"],
        "crafted": [*over, f"hydra.run.dir={crafted_dir}"],
        "fail_fast": ["optimizer.lr=-1", "trainer.fail_fast=true"],
    }
    procs = {k: subprocess.Popen([sys.executable, "-m", "ablate.run", *v] + ([] if "crafted" == k else
                                 [f"hydra.run.dir={tmp_path / k}"]), cwd=tmp_path, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, v in cases.items()}
    res = {k: (p.wait(timeout=600), *p.communicate()) for k, p in procs.items()}
    for k, (rc, _, err) in res.items():
        assert rc == 1, (k, err)

    def one_line(k: str) -> str:
        err = res[k][2].strip()
        assert "\n" not in err and err.startswith("ablate: "), (k, err)
        return err

    err = res["nosuch"][2]
    assert "Could not find 'scheduler/nosuch'" in err and "Available options in 'scheduler'" in err
    assert "\tcosine\n" in err and "onecycle" in err
    assert "Key 'epoch' not in 'TrainerConf'" in res["misspelt"][2] and "full_key: trainer.epoch" in res["misspelt"][2]
    assert one_line("range") == "ablate: trainer.epochs=0 is invalid: must be > 0"
    assert str(bad) in one_line("data")
    msg = one_line("crafted")
    assert str(crafted_dir / rundir.CHECKPOINT) in msg and "delete it" in msg
    assert not marker.exists()  # refused, never executed
    assert rundir.read_json(crafted_dir / rundir.SUMMARY_JSON)["status"] == "failed"
    assert "Traceback" in res["fail_fast"][2] or "ConfigError" in res["fail_fast"][2]
    assert "optimizer.lr=-1" in res["fail_fast"][2] and not res["fail_fast"][2].startswith("ablate: ")


@pytest.mark.parametrize("overrides,key", [
    (["trainer.epochs=-2"], "trainer.epochs"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=inf"], "optimizer.lr"),
    (["optimizer=sgd", "optimizer.lr=nan"], "optimizer.lr"),
    (["regularization.weight_decay=inf"], "regularization.weight_decay"),
    (["scheduler=step", "scheduler.gamma=inf"], "scheduler.gamma"),
    (["augment.erasing=-0.1"], "augment.erasing"),
    (["augment.hflip=1.5"], "augment.hflip"),
    (["scheduler=onecycle", "scheduler.max_lr=null"], "scheduler.max_lr"),
    (["scheduler=plateau", "trainer.eval_every=2"], "trainer.eval_every"),
])
def test_range_and_cross_field_checks_name_key_and_value(cfg_factory, tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}=\S+ is invalid: ") as e:
        fit(cfg_factory(*overrides), tmp_path, "h")
    assert "\n" not in str(e.value)
    assert not (tmp_path / rundir.EPOCHS_CSV).exists()  # refused before training


def test_wrong_type_names_the_key():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        make_cfg(["trainer.batch_size=big"])
    msg = str(e.value) + str(e.value.__cause__)
    assert "Value 'big' of type 'str' could not be converted to Integer" in msg and "trainer.batch_size" in msg


def test_crafted_checkpoint_is_refused_not_executed(cfg_factory, tmp_path):
    marker = tmp_path / "pwned"
    _crafted_checkpoint(tmp_path / rundir.CHECKPOINT, marker)
    with pytest.raises(CheckpointError, match=str(tmp_path / rundir.CHECKPOINT)):
        fit(cfg_factory(), tmp_path, "h")
    assert not marker.exists()


# --------------------------------------------------------------------------- crash-safe files, in process
def test_a_failed_rename_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / rundir.SUMMARY_JSON
    rundir.atomic_write_json(path, {"epochs_done": 1})
    torch_path = tmp_path / rundir.CHECKPOINT
    rundir.atomic_torch_save({"epoch": 1}, torch_path)

    def boom(*a, **k):
        raise OSError("disk vanished")

    monkeypatch.setattr(rundir.os, "replace", boom)
    with pytest.raises(OSError):
        rundir.atomic_write_json(path, {"epochs_done": 2})
    with pytest.raises(OSError):
        rundir.atomic_torch_save({"epoch": 2}, torch_path)
    monkeypatch.undo()
    assert rundir.read_json(path) == {"epochs_done": 1}
    assert torch.load(torch_path, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [rundir.CHECKPOINT, rundir.SUMMARY_JSON]  # no temp left


def test_a_torn_csv_row_is_dropped_and_stale_temps_are_cleared(tmp_path):
    p = tmp_path / rundir.EPOCHS_CSV
    rundir.append_rows(p, rundir.EPOCH_COLUMNS, [dict(epoch=1, lr=0.1), dict(epoch=2, lr=0.1)])
    with open(p, "a") as f:
        f.write("3,0.1,2.3")  # a writer killed mid-row
    assert [r["epoch"] for r in rundir.read_rows(p)] == ["1", "2"]
    assert [r["epoch"] for r in rundir.truncate_rows(p, rundir.EPOCH_COLUMNS, 1)] == ["1"]
    assert p.read_text().count("\n") == 2
    (tmp_path / f".{rundir.CHECKPOINT}.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".keep.tmp").write_bytes(b"not ours")
    assert [t.name for t in rundir.remove_stale_temps(tmp_path)] == [f".{rundir.CHECKPOINT}.abc123.tmp"]
    assert (tmp_path / ".keep.tmp").exists()


def test_every_run_resets_global_state_an_earlier_job_changed():
    """What a job in a shared process inherits: RNGs and backend flags are set from its own config."""
    import random

    import numpy as np

    from ablate.config import TrainerConf
    from ablate.device import prepare_backends, seed_everything

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    cpu = torch.device("cpu")
    try:
        prepare_backends(TrainerConf(), cpu)
        seed_everything(3)
        first = draws()
        prepare_backends(TrainerConf(deterministic=True), cpu)  # an earlier job's settings
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        seed_everything(7)
        draws()
        prepare_backends(TrainerConf(), cpu)
        seed_everything(3)
        assert draws() == first
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
        assert torch.backends.cudnn.benchmark
    finally:
        prepare_backends(TrainerConf(), cpu)


# --------------------------------------------------------------------------- one writer, records, dry run
TINY_LENET = ["model=lenet", "trainer.epochs=1", "trainer.limit_batches=1", "trainer.batch_size=32",
              "trainer.limit_eval_batches=1", "trainer.eval_batch_size=200"]


@pytest.mark.slow
def test_two_launchers_on_one_sweep_train_each_run_once(tmp_path):
    """Two terminals launch the same sweep together: every run is trained by exactly one of them."""
    sweep = tmp_path / "sweep"
    args = ["-m", "model=lenet", "trainer.epochs=3", "trainer.limit_batches=2", "trainer.batch_size=32",
            "trainer.limit_eval_batches=1", "trainer.eval_batch_size=200", "trainer.seed=0,1,2",
            f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}"]
    procs = [_popen(args, tmp_path) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0
    runs = _runs(sweep)
    assert len(runs) == 3
    for name, run in runs.items():
        s = rundir.read_json(run / rundir.SUMMARY_JSON)
        assert s["status"] == "completed", (name, s.get("error"))
        assert pd.read_csv(run / rundir.EPOCHS_CSV).epoch.tolist() == [1, 2, 3], name
        assert pd.read_csv(run / rundir.STEPS_CSV).step.tolist() == list(range(1, 7)), name
        assert (run / "run.log").read_text().count("epoch 3/3 lr") == 1, name  # trained by one launcher
    rows = pd.read_csv(sweep / "report" / "summary.csv")  # both reports read the sweep; the last one stays
    assert len(rows) == 3 and set(rows["status"]) <= {"completed", "running"}


@pytest.mark.slow
def test_a_skipped_or_locked_run_keeps_its_files_and_record(tmp_path):
    import socket

    sweep = tmp_path / "sweep"
    cmd = ["-m", *TINY_LENET, f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}", NO_REPORT]
    _ok(run_cli(cmd, cwd=tmp_path))
    (run,) = _runs(sweep).values()
    hyd = run / rundir.HYDRA_DIR

    def record() -> dict:
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in hyd.iterdir()}

    before, rec = _fingerprint(run), record()
    assert sorted(rec) == ["config.yaml", "hydra.yaml", "overrides.yaml"] and b"log_every: 50" in rec["config.yaml"][1]
    # A relaunch with another value of a key outside the identity: skipped, and its .hydra/ stays its own.
    assert "already completed with this config; skipping" in _ok(run_cli([*cmd, "trainer.log_every=7"], cwd=tmp_path))
    assert record() == rec
    # Held by another live process (here: this one): skipped with one line, nothing touched.
    line = f"{run.name}: running in another process, pid {os.getpid()} on {socket.gethostname()}; skipping"
    with runlock.RunLock(run):
        assert line in _ok(run_cli(cmd, cwd=tmp_path))
        single = run_cli([*cmd[1:], f"hydra.run.dir='{run}'"], cwd=tmp_path)  # without -m: a non-zero exit
        assert single.returncode == 1 and single.stderr.strip().splitlines()[-1] == f"ablate: {line}"
    assert _fingerprint(run) == before and record() == rec


@pytest.mark.slow
def test_a_dry_run_checks_what_a_launch_checks(tmp_path):
    """Ranges, cross-group checks and the data set's presence; every job's line, then a non-zero exit."""
    def dry(*args: str) -> subprocess.CompletedProcess:
        return run_cli([*args, "dry_run=true"], cwd=tmp_path)

    for args, msg in [(["trainer.batch_size=0"], "trainer.batch_size=0 is invalid: must be > 0"),
                      (["scheduler=plateau", "trainer.eval_every=2"], "trainer.eval_every=2 is invalid: "),
                      (["dataset=mnist", f"data.root={tmp_path / 'none'}"], "mnist: not found in ")]:
        p = dry(*args, f"hydra.run.dir={tmp_path / 'one'}")
        assert p.returncode == 1 and p.stderr.strip().startswith(f"ablate: {msg}"), p.stderr
        assert "\n" not in p.stderr.strip()
    sweep = tmp_path / "sweep"
    p = dry("-m", "trainer.batch_size=0,16", "optimizer.lr=-1,0.01", f"hydra.sweep.dir={sweep}")
    # Every job's line, then one line and exit 1: no report announced, none of Hydra's error report.
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == ["ablate: dry run: 3 of 4 jobs would be refused (see above)"], p.stderr
    assert "Sweep: " not in p.stdout and p.stdout.strip().endswith("Dry run: nothing was trained, no report written.")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("[dry run]")]
    assert [ln.split(" (", 1)[1] for ln in lines] == [
        "refused: ablate: trainer.batch_size=0 is invalid: must be > 0)",
        "refused: ablate: trainer.batch_size=0 is invalid: must be > 0)",
        "refused: ablate: optimizer.lr=-1.0 is invalid: must be > 0)",
        "new)"]
    assert not [p for p in sweep.rglob("*") if p.name in (rundir.HYDRA_DIR, runlock.LOCK, rundir.SUMMARY_JSON)]


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["model.conv_channels=[32,64,128,256,512,1024]"],  # the 28x28 images shrink to nothing
    ["dataset.val_size=0.999"],  # the validation split takes the last image of four classes
    ["dataset.mean=[0.5,0.5]", "dataset.std=[0.5,0.5]"],  # two channels' constants for a one-channel data set
    ["trainer.batch_size=100000"],  # drop_last: never one full batch of the 5,400 training images
])
def test_a_dry_run_refuses_with_the_launchs_own_line(tmp_path, args):
    """Bad values a dry run once listed as new, while the launch refused them once it had loaded the data or
    built the model: both now refuse them in validate(), with the same line and exit status."""
    launch, dry = (run_cli(["model=lenet", *args, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path)
                   for name, extra in (("launch", []), ("dry", ["dry_run=true"])))
    assert launch.returncode == dry.returncode == 1, (launch.stderr[-2000:], dry.stdout)
    assert dry.stderr.strip() == launch.stderr.strip().splitlines()[-1] and dry.stderr.startswith("ablate: "), dry.stderr
    assert rundir.read_json(tmp_path / "launch" / rundir.SUMMARY_JSON)["error"] == f"ConfigError: {dry.stderr[8:].strip()}"


# --------------------------------------------------------------------------- overflow, threads, the command
def test_float_overflow_of_the_update_is_divergence_not_failure(cfg_factory, tmp_path):
    """Adam's lr / bias correction overflows float32 at lr 1e38: torch refuses the scalar in the step."""
    s = fit(cfg_factory("model=lenet", "optimizer=adam", "optimizer.lr=1e38", "trainer.limit_batches=2"),
            tmp_path, "h")
    assert s["status"] == "diverged" and s["error"].startswith("float overflow in epoch 1")
    assert s["epochs_done"] == 1 and rundir.read_json(tmp_path / rundir.SUMMARY_JSON)["status"] == "diverged"
    assert not (tmp_path / rundir.MODEL).exists()


def test_a_resumed_run_trains_with_the_thread_count_it_started_with(cfg_factory, tmp_path, monkeypatch):
    """Started on 1 thread, killed while checkpointing epoch 2, resumed by a process on 2 threads:
    the rows and the model equal an uninterrupted 1-thread run's (float sums depend on the count)."""
    cfg = cfg_factory("model=lenet", "trainer.epochs=2", "trainer.limit_batches=2")
    threads = torch.get_num_threads()
    real = rundir.save_checkpoint

    def killed_at_epoch_2(run_dir, state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # the process dies here; epoch 2's rows are already appended
        real(run_dir, state)

    try:
        torch.set_num_threads(1)
        whole = fit(cfg, tmp_path / "whole", "h")
        monkeypatch.setattr(rundir, "save_checkpoint", killed_at_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, tmp_path / "resumed", "h")
        monkeypatch.undo()
        torch.set_num_threads(2)
        resumed = fit(cfg, tmp_path / "resumed", "h")
        assert torch.get_num_threads() == 2  # the process's own count, back for its next job
    finally:
        torch.set_num_threads(threads)
    assert whole["threads"] == resumed["threads"] == 1
    assert torch.load(tmp_path / "resumed" / rundir.CHECKPOINT, weights_only=True)["threads"] == 1
    pd.testing.assert_frame_equal(_epochs(tmp_path / "resumed"), _epochs(tmp_path / "whole"))
    a, b = (torch.load(d / rundir.MODEL, weights_only=True) for d in (tmp_path / "resumed", tmp_path / "whole"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_the_printed_report_command_is_shell_quoted(tmp_path, capsys):
    import shlex

    from ablate.callbacks import ReportCallback
    from ablate.compose import compose

    sweep = tmp_path / "my sweeps" / "it's; rm -rf ~"
    cfg = compose([f"hydra.sweep.dir='{sweep}'".replace("'s;", "\\'s;")], return_hydra_config=True)
    assert cfg.hydra.sweep.dir == str(sweep)
    ReportCallback().on_multirun_start(cfg)
    command = capsys.readouterr().out.split("any time: ", 1)[1].strip()[:-1]  # (... any time: CMD)
    assert shlex.split(command) == ["python", "-m", "ablate.report", str(sweep)]


# --------------------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A real 1.2 MiB filesystem: room for one LeNet checkpoint (750 kB), not for a second."""
    with tmpfs(tmp_path / "disk", "1200k") as mnt:
        yield mnt


@pytest.mark.slow
def test_a_full_disk_ends_the_sweep_with_a_report_and_no_run_left_running(tmp_path, small_disk):
    sweep = small_disk / "sweep"
    common = ["model=lenet", "trainer.epochs=2", "trainer.limit_batches=1", "trainer.batch_size=32",
              "trainer.limit_eval_batches=1", "trainer.eval_batch_size=200", f"data.root={tmp_path / 'data'}"]
    p = run_cli(["-m", *common, "trainer.seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    out = p.stdout + p.stderr
    runs = _runs(sweep)
    assert len(runs) == 2 and "Report: " in out
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("ablate: 2 of 2 runs failed (")
    assert "Traceback (most recent call last)" in out  # not bad input: the console shows where it happened
    for name, run in runs.items():
        s = rundir.read_json(run / rundir.SUMMARY_JSON)
        assert s["status"] == "failed", (name, s)
        assert s["error"] == f"OSError: [Errno 28] No space left on device: '{run / rundir.CHECKPOINT}'"
        assert rundir.read_rows(run / rundir.EPOCHS_CSV)  # what fitted is kept
    rows = pd.read_csv(sweep / "report" / "summary.csv")
    assert sorted(rows["status"]) == ["failed", "failed"]
    # A single run (no -m) on the full disk exits non-zero with the same line.
    single = run_cli([*common, f"hydra.run.dir={small_disk / 'single'}"], cwd=tmp_path)
    assert single.returncode == 1
    assert single.stderr.strip().splitlines()[-1] == (
        f"ablate: single failed: OSError: [Errno 28] No space left on device: '{small_disk / 'single' / rundir.CHECKPOINT}'")
    assert rundir.read_json(small_disk / "single" / rundir.SUMMARY_JSON)["status"] == "failed"


# --------------------------------------------------------------------------- the report
_KILL_IN_REPORT = """
import os, sys
from ablate import report, rundir
real = rundir.atomic_write_bytes
def write(path, data):
    if os.path.basename(path) == "report.md":
        os._exit(137)  # killed with summary.csv and the curves of the new report written, the rest not
    real(path, data)
rundir.atomic_write_bytes = write
report.make_report([sys.argv[1]])
"""


@pytest.mark.slow
def test_a_killed_report_leaves_the_previous_one_whole_and_its_leftovers_go(tmp_path):
    import rundirs

    sweep = rundirs.sweep(tmp_path / "s", {"step": [0.8, 0.81], "cosine": [0.82, 0.83]})
    out = report.make_report([sweep]).parent
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rundirs.write_run(sweep, ["scheduler=plateau", "trainer.seed=0"], rundirs.curve(0.9))  # the sweep moves on
    proc = subprocess.run([sys.executable, "-c", _KILL_IN_REPORT, str(sweep)], env=_env(), capture_output=True)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous report, whole
    (left,) = sweep.glob(".report.*.tmp")  # the half-built one, hidden beside it
    assert (left / "summary.csv").exists() and not (left / "index.html").exists()
    assert len(report.load_runs([sweep])) == 5  # the leftover is no run

    busy = sweep / ".report.0000beef.tmp"  # another report still building: left alone
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY)
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        report.make_report([sweep])
    finally:
        os.close(fd)
    assert not left.exists() and busy.exists()
    rows = pd.read_csv(out / "summary.csv")
    assert len(rows) == 5 and "plateau" in (out / "index.html").read_text()  # one generation: both see 5 runs
    assert "plateau" in (out / "report.md").read_text()


def test_a_read_only_sweep_gets_one_line_not_a_traceback(tmp_path, capsys):
    import rundirs

    from ablate.report.cli import main as report_main

    src = rundirs.sweep(tmp_path / "s", {"step": [0.8, 0.81], "cosine": [0.82, 0.83]})
    sweep = tmp_path / "ro"
    sweep.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: a read-only bind mount
        if subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(sweep)], capture_output=True).returncode:
            pytest.skip("cannot make a read-only bind mount here")
    else:
        sweep.rmdir()
        sweep = src
        os.chmod(sweep, 0o555)
    try:
        assert report_main([str(sweep), "--no-arm-panels"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"ablate.report: cannot write the report to {sweep / 'report'} (") and "\n" not in err
        assert "give --out DIR" in err
        assert report_main([str(sweep), "--no-arm-panels", "--out", str(tmp_path / "elsewhere")]) == 0
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(sweep)], check=False)
        else:
            os.chmod(sweep, 0o755)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_report_files_get_the_permissions_the_umask_gives(tmp_path, umask):
    import rundirs

    sweep = rundirs.sweep(tmp_path / "s", {"step": [0.8, 0.81], "cosine": [0.82, 0.83]})
    old = os.umask(umask)
    try:
        out = report.make_report([sweep], arm_panels=False).parent
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~umask)
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {oct(0o666 & ~umask)}
