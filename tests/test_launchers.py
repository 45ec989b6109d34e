"""Launchers, sweepers, the dry run and the experiment presets, end to end through the CLI.

Each test starts ``python -m ablate.run -m ...`` on tiny settings (one or two batches)
and checks the job dirs, their ``summary.json`` and the report built from them. The
plugin tests skip when the optional extra (``launchers``, ``optuna``) is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, make_cfg, run_cli

from ablate.compose import compose
from ablate.identity import config_hash
from ablate.report.cli import main as report_main

pytestmark = pytest.mark.slow

TINY = ["trainer.epochs=1", "trainer.limit_batches=2", "trainer.batch_size=32", "trainer.limit_eval_batches=1",
        "model=lenet"]
ONE_BATCH = ["trainer.epochs=1", "trainer.limit_batches=1", "trainer.limit_eval_batches=1"]


def _summaries(sweep: Path) -> dict[str, dict]:
    """Job dir name -> summary.json, for every job dir of a sweep."""
    return {d.name: json.loads((d / "summary.json").read_text())
            for d in sorted(sweep.iterdir()) if (d / "summary.json").exists()}


def _report_rows(sweep: Path) -> pd.DataFrame:
    """The rows of the report the end-of-sweep callback wrote."""
    csv = sweep / "report" / "summary.csv"
    assert csv.exists(), f"no report in {sweep}"
    return pd.read_csv(csv)


def _ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def test_joblib_runs_two_jobs_at_once_and_the_report_merges_them(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    out = _ok(run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "scheduler=step,cosine", *TINY,
                       f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}"], cwd=tmp_path))
    assert "n_jobs=2" in out and "launching 2 jobs" in out
    runs = _summaries(sweep)
    assert sorted(runs) == [f"model=lenet,scheduler={s},trainer.batch_size=32,trainer.epochs=1,"
                            "trainer.limit_batches=2,trainer.limit_eval_batches=1" for s in ("cosine", "step")]
    assert {r["status"] for r in runs.values()} == {"completed"}
    rows = _report_rows(sweep)
    assert len(rows) == 2 and set(rows["status"]) == {"completed"}
    assert set(rows["scheduler"]) == {"step", "cosine"}


def test_submitit_local_runs_a_sweep_and_the_report_reads_it(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    _ok(run_cli(["-m", "hydra/launcher=submitit_local", "scheduler=step,cosine", *TINY,
                 f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}"], cwd=tmp_path))
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # two real submitit jobs
    runs = _summaries(sweep)
    assert len(runs) == 2 and {r["status"] for r in runs.values()} == {"completed"}
    rows = _report_rows(sweep)  # .submitit/ is not mistaken for a run
    assert len(rows) == 2 and set(rows["status"]) == {"completed"}


def _cli_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                HYDRA_FULL_ERROR="0", MPLBACKEND="Agg")


def test_submitit_job_preempted_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    """What SLURM does on preemption, through submitit's local executor: USR2, checkpoint, requeue."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "ablate.run", "-m", "hydra/launcher=submitit_local", "model=cnn3",
            "trainer.epochs=5", "trainer.limit_batches=10", "trainer.batch_size=32", "trainer.limit_eval_batches=1",
            f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(sweep.glob("*/checkpoint.pt")):  # epoch 1 is done and saved
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.05)
        (job,) = [d for d in (sweep / ".submitit").iterdir() if d.name.isdigit()]  # the controller's pid
        (task,) = Path(f"/proc/{job.name}/task/{job.name}/children").read_text().split()
        os.kill(int(task), signal.SIGUSR2)  # submitit's preemption / near-timeout signal
        out = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    (run_dir,) = [d for d in sweep.iterdir() if (d / "summary.json").exists()]
    assert "this job is preempted" in (job / f"{job.name}_0_log.err").read_text()
    assert "resuming" in (run_dir / "run.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 5
    epochs = pd.read_csv(run_dir / "epochs.csv")["epoch"].tolist()
    assert epochs == [1, 2, 3, 4, 5]  # no epoch lost or repeated


def test_optuna_study_survives_a_failing_trial_and_the_report_reads_it(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    # The preset, with Optuna's grid sampler so that all three trials, one of them failing, are certain.
    p = run_cli(["-m", "hparams_search=cnn3_cosine", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=3",
                 "optimizer.lr=choice(0.001,0.003,-1.0)", "regularization.weight_decay=choice(0.0)", *TINY,
                 f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}"], cwd=tmp_path)
    out = p.stdout + p.stderr
    assert "Failed experiment" not in out
    # The study ran to its end and its report; the launch then exits 1 for the failed trial.
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("ablate: 1 of 3 runs failed ("), out
    runs = _summaries(sweep)
    assert len(runs) == 3
    failed = [r for r in runs.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "optimizer.lr=-1.0" in failed[0]["error"]
    assert sum(r["status"] == "completed" for r in runs.values()) == 2
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["optimizer.lr"] in (0.001, 0.003)
    # The study maximised validation accuracy: the test split chose nothing.
    done = [r for r in runs.values() if r["status"] == "completed"]
    assert all(r["selection"] == "val" for r in done)
    assert best["best_value"] == pytest.approx(max(r["final_val_acc"] for r in done))
    rows = _report_rows(sweep)
    assert len(rows) == 3 and sorted(rows["status"]) == ["completed", "completed", "failed"]


def test_dry_run_lists_every_job_and_trains_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    # Two runs of the grid already launched: the dry run says what a relaunch would do with them.
    for overrides, state in ((["regularization=l2", "variant=dropout"], {"status": "completed"}),
                             (["regularization=none", "variant=base"], {"status": "running", "epochs_done": 3})):
        d = sweep / ",".join(["experiment=birds_vs_planes", *overrides])
        d.mkdir(parents=True)
        h = config_hash(make_cfg(["experiment=birds_vs_planes", *overrides], tiny=False))
        (d / "summary.json").write_text(json.dumps({**state, "config_hash": h}))
    from fakedata import make_cifar10

    make_cifar10(tmp_path / "data")  # a dry run checks the data set is there, as a launch does
    out = _ok(run_cli(["-m", "experiment=birds_vs_planes", "dry_run=true", f"hydra.sweep.dir={sweep}",
                       f"data.root={tmp_path / 'data'}"], cwd=tmp_path))
    lines = [ln for ln in out.splitlines() if ln.startswith("[dry run]")]
    assert len(lines) == 4 * 3
    dirs = {ln.split(" -> ")[1].rsplit(" (", 1)[0] for ln in lines}
    assert len(dirs) == 12 and all(Path(d).parent == sweep for d in dirs)
    assert str(sweep / "experiment=birds_vs_planes,regularization=l2,variant=batchnorm") in dirs
    assert sum(ln.endswith("(already completed: would skip)") for ln in lines) == 1
    assert sum(ln.endswith("(interrupted after 3 epoch(s): would resume)") for ln in lines) == 1  # no writer
    assert sum(ln.endswith("(new)") for ln in lines) == 10
    assert all(" dry_run=" not in ln.split(" -> ")[0] for ln in lines)
    # Nothing trained, no Hydra record written, no report.
    assert not list(sweep.rglob(".hydra")) and not list(sweep.rglob("epochs.csv"))
    assert len(list(sweep.rglob("summary.json"))) == 2
    assert not (sweep / "report").exists()
    assert "Dry run: nothing was trained" in out


@pytest.fixture
def fake_data(tmp_path):
    """CIFAR-10, MNIST and Fashion-MNIST in their on-disk formats, a few images each."""
    from fakedata import make_cifar10, make_mnist_like

    root = tmp_path / "data"
    make_cifar10(root, n_per_batch=40, n_test=40)
    make_mnist_like(root, "MNIST")
    make_mnist_like(root, "FashionMNIST")  # found before Debian's /usr/share/datasets copy
    return root


def _config(run: dict, key: str):
    node = run["config"]
    for k in key.split("."):
        node = node[k]
    return node


def test_every_experiment_preset_runs_one_batch_and_the_report_merges_them(tmp_path, fake_data):
    base = [*ONE_BATCH, f"data.root={fake_data}", "~hydra.callbacks.report"]  # one merged report at the end
    single = tmp_path / "single"  # the one-run presets, as one sweep
    _ok(run_cli(["-m", "experiment=cifar10_cnn,mnist_simple_cnn,lenet_fashion,homework", *base,
                 f"hydra.sweep.dir={single}"], cwd=tmp_path))
    sweeps = {"single": single}
    for name, extra in {"cifar10_schedulers": [], "birds_vs_planes": []}.items():  # the new sweeps: test_presets.py
        sweeps[name] = tmp_path / name
        _ok(run_cli(["-m", f"experiment={name}", *base, *extra, f"hydra.sweep.dir={sweeps[name]}"], cwd=tmp_path))

    runs = {k: _summaries(v) for k, v in sweeps.items()}
    assert [len(runs[k]) for k in sweeps] == [4, 4, 12]
    for group in runs.values():
        for name, r in group.items():
            assert r["status"] == "completed", (name, r.get("error"))
            assert r["choices"]["experiment"] in name

    def one(group: str, experiment: str) -> dict:
        (r,) = [r for n, r in runs[group].items() if n.startswith(f"experiment={experiment}")]
        return r

    cifar = one("single", "cifar10_cnn")
    assert (cifar["choices"]["model"], cifar["choices"]["augment"], cifar["choices"]["dataset"]) == (
        "cnn3", "tutorial", "cifar10")
    assert (_config(cifar, "optimizer.name"), _config(cifar, "optimizer.lr"), _config(cifar, "trainer.batch_size"),
            _config(cifar, "scheduler.T_max"), _config(cifar, "scheduler.eta_min")) == ("adam", 1e-3, 64, 10, 1e-5)
    mnist = one("single", "mnist_simple_cnn")
    assert (_config(mnist, "dataset.mean"), _config(mnist, "dataset.std"), _config(mnist, "optimizer.lr"),
            _config(mnist, "model.name")) == ([0.5], [0.5], 1e-3, "simple_cnn")
    lenet = one("single", "lenet_fashion")
    assert (_config(lenet, "optimizer.lr"), _config(lenet, "optimizer.momentum"), _config(lenet, "trainer.batch_size"),
            _config(lenet, "model.init"), _config(lenet, "augment.name")) == (0.9, 0.0, 256, "xavier_uniform", "none")
    assert {r["choices"]["scheduler"] for r in runs["cifar10_schedulers"].values()} == {
        "step", "exponential", "cosine_t10", "plateau"}
    birds = runs["birds_vs_planes"]
    assert {(r["choices"]["variant"], r["choices"]["regularization"]) for r in birds.values()} == {
        (v, g) for v in ("base", "width", "dropout", "batchnorm") for g in ("none", "l2", "l2_as_decay")}
    (bn,) = [r for r in birds.values() if (r["choices"]["variant"], r["choices"]["regularization"]) == (
        "batchnorm", "l2")]
    assert (_config(bn, "model.conv_channels"), _config(bn, "model.norm"), _config(bn, "regularization.l2"),
            _config(bn, "optimizer.momentum"), _config(bn, "optimizer.lr")) == ([32, 16], "batch", 0.001, 0.0, 0.01)
    homework = one("single", "homework")
    assert (homework["choices"]["model"], homework["choices"]["scheduler"], homework["choices"]["dataset"]) == (
        "cnn3", "cosine", "fashion_mnist")

    # One report over all three sweeps.
    out = tmp_path / "merged"
    assert report_main([*map(str, sweeps.values()), "--out", str(out)]) == 0
    rows = pd.read_csv(out / "summary.csv")
    assert len(rows) == 4 + 4 + 12 and set(rows["status"]) == {"completed"}


def test_slurm_preset_reaches_sbatch_and_a_requeue_reruns_the_same_job(tmp_path, monkeypatch):
    """No cluster here: the real launcher runs up to submission, and the sbatch script it would send is checked."""
    submitit = pytest.importorskip("submitit")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}",
                   "hydra.job.name=run"], return_hydra_config=True)

    class Submitted(Exception):
        pass

    captured = {}

    def map_array(executor, fn, *args):
        captured.update(executor=executor._executor, fn=fn, args=args)
        raise Submitted

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun exists"
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    with pytest.raises(Submitted):
        launcher.launch([["scheduler=step"], ["scheduler=cosine"]], initial_job_idx=0)
    ex = captured["executor"]
    script = _make_sbatch_string(command="python -u -m submitit.core._submit", folder=tmp_path, map_count=20,
                                 **ex.parameters)
    for line in ("--partition=gpu", "--time=240", "--gpus-per-task=1", "--cpus-per-task=8", "--mem=32GB",
                 "--signal=USR2@120", "--array=0-19%16"):
        assert f"#SBATCH {line}" in script, line
    assert ex.max_num_timeout == 3 and str(ex.folder).startswith(str(tmp_path / ".submitit"))
    # On preemption or timeout submitit calls checkpoint(): the same launcher and job arguments are
    # resubmitted, so the job gets the same overrides, hence the same run dir, and resumes there.
    job_args = [a[0] for a in captured["args"]]
    delayed = launcher.checkpoint(*job_args)
    assert delayed.function is launcher and delayed.args == tuple(job_args)
    assert delayed.args[0] == ["scheduler=step"]


def test_a_sweep_preset_sweeps_without_dash_m(tmp_path):
    sweep = tmp_path / "sweep"
    from fakedata import make_mnist_like

    make_mnist_like(tmp_path / "data")  # a dry run checks the data set is there, as a launch does
    out = _ok(run_cli(["experiment=homework_schedulers", "dry_run=true", f"hydra.sweep.dir={sweep}",
                       f"data.root={tmp_path / 'data'}"], cwd=tmp_path))
    lines = [ln for ln in out.splitlines() if ln.startswith("[dry run]")]
    assert len(lines) == 18 and len({ln.split(" -> ")[1] for ln in lines}) == 18
    assert "Dry run: nothing was trained" in out


def test_a_plain_optuna_study_maximises_what_a_run_returns(tmp_path):
    """No preset, no direction given: the better learning rate wins (the diverged one returns 0.0)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    _ok(run_cli(["-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=2",
                 "optimizer.lr=choice(0.01,1e9)", "model=simple_cnn", "trainer.epochs=1", "trainer.limit_batches=3",
                 "trainer.batch_size=32", "trainer.limit_eval_batches=1", f"hydra.sweep.dir={sweep}",
                 f"data.root={tmp_path / 'data'}", "report.arm_panels=false"], cwd=tmp_path))
    by_lr = {r["config"]["optimizer"]["lr"]: r for r in _summaries(sweep).values()}
    assert by_lr[1e9]["status"] == "diverged" and by_lr[0.01]["status"] == "completed"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["optimizer.lr"] == 0.01
    assert best["best_value"] == pytest.approx(by_lr[0.01]["final_test_acc"]) and best["best_value"] > 0
