"""Packed training: runs of one architecture trained as one batched model equal the same runs trained apart.

On the CPU in float32 every run of a packed group (:func:`ablate.packed.fit_group`)
must write the ``epochs.csv`` and ``steps.csv`` its separate run (:func:`ablate.train.fit`,
same seed) writes, to floating-point rounding (the batched convolutions sum in another
order), for every model and each scheduler family (per epoch, per step, on a metric);
its dropout masks are nn.Dropout's, bit for bit; it resumes with either trainer. The
grouping rule is checked on composed configs; the launcher end to end in the slow tests.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import torch
from torch import nn

from ablate import rundir
from ablate.batched import PackedModel, draw_mask
from ablate.packed import Member, fit_group
from ablate.packing import plan
from ablate.phases import PHASES
from ablate.train import fit

VOLATILE = ["epoch_seconds", "images_per_second"]  # wall-clock columns
BASE = ["trainer.epochs=2", "trainer.batch_size=16", "trainer.limit_batches=3", "trainer.limit_eval_batches=1",
        "trainer.eval_batch_size=100", "trainer.train_eval_size=100"]
# One run per scheduler family, each with its own seed, optimizer, augmentation and loss terms.
ARMS = {"per-epoch": ["scheduler=step", "scheduler.step_size=1", "trainer.seed=0", "augment=tutorial"],
        "per-step": ["scheduler=onecycle", "scheduler.max_lr=0.01", "optimizer=sgd", "trainer.seed=1"],
        "on-a-metric": ["scheduler=plateau", "scheduler.patience=0", "optimizer=sgd", "trainer.seed=2",
                        "regularization=label_smoothing", "regularization.l2=0.001"]}
MODELS = {"lenet": [], "simple_cnn": [], "tinynet": ["model.dropout2d=0.4"],
          # cnn3 keeps each conv's bias before its BatchNorm: the bias's true gradient is 0, and Adam turns the
          # rounding noise in it into lr-sized steps. With momentum 0.9 at lr 0.01, its BatchNorm1d over 16
          # images amplifies a rounding difference about tenfold per step (1e-7 -> 2e-4 in 6 steps); plain SGD
          # keeps both runs within rounding, as it does every other model with the settings above.
          "cnn3": ["optimizer=sgd", "optimizer.momentum=0"], "resnet": ["model.width=8", "model.depth=1"]}
RTOL, ATOL = 1e-4, 1e-5  # rounding: the batched convolutions and BatchNorm sum in another order


def _frame(run, name):
    df = pd.read_csv(run / name)
    return df.drop(columns=[c for c in VOLATILE if c in df])


def _assert_close(a, b, rtol=RTOL, atol=ATOL):
    for name in (rundir.EPOCHS_CSV, rundir.STEPS_CSV):
        pd.testing.assert_frame_equal(_frame(a, name), _frame(b, name), check_exact=False, rtol=rtol, atol=atol)


def _max_diff(a, b) -> float:
    return max(float((_frame(a, n) - _frame(b, n)).abs().max().max()) for n in (rundir.EPOCHS_CSV, rundir.STEPS_CSV))


def test_masks_are_the_ones_nn_dropout_draws():
    x = torch.randn(8, 6, 5, 5)
    for layer, shape in ((nn.Dropout(0.3), x.shape), (nn.Dropout2d(0.4), (8, 6, 1, 1)), (nn.Dropout(0.5), x.shape)):
        state = torch.get_rng_state()
        expected = layer.train()(x)
        after = torch.get_rng_state()
        torch.set_rng_state(state)
        got = x * draw_mask(tuple(shape), layer.p, torch.float32, torch.device("cpu"))
        assert torch.equal(got, expected), layer
        assert torch.equal(torch.get_rng_state(), after)  # and the stream goes on from where nn.Dropout leaves it
    assert not draw_mask((4, 3), 1.0, torch.float32, torch.device("cpu")).any()  # p=1 drops all, draws nothing


class _LateFirst(nn.Module):
    """Declares its dropouts in the reverse of the order they run in, each with its own rate."""

    def __init__(self):
        super().__init__()
        self.late, self.fc, self.early = nn.Dropout(1.0), nn.Linear(4, 6), nn.Dropout(0.0)

    def forward(self, x):
        return self.late(self.fc(self.early(x)))


def test_each_mask_gets_its_own_layers_rate_whatever_the_declaration_order():
    model = _LateFirst()
    packed = PackedModel(model, False, torch.device("cpu"))
    early, late = packed.draw_masks(model, (8, 4))  # the order they run in: early (keeps all), late (drops all)
    assert early.shape == (8, 4) and bool(early.all())
    assert late.shape == (8, 6) and not late.any()


@pytest.mark.parametrize("model", list(MODELS))
def test_a_packed_group_equals_its_runs_trained_apart(cfg_factory, tmp_path, model):
    cfgs = {arm: cfg_factory(*BASE, f"model={model}", *extra, *MODELS[model]) for arm, extra in ARMS.items()}
    for arm, cfg in cfgs.items():
        fit(cfg, tmp_path / f"apart-{arm}", "h")
    results = fit_group([Member(cfg, tmp_path / f"packed-{arm}", "h") for arm, cfg in cfgs.items()], step="batched")
    for arm, r in zip(cfgs, results):
        apart, packed = tmp_path / f"apart-{arm}", tmp_path / f"packed-{arm}"
        assert not isinstance(r, Exception), r
        assert (r["status"], r["packed"], r["epochs_done"], r["step_mode"]) == ("completed", 3, 2, "batched")
        _assert_close(packed, apart)
        s = json.loads((apart / rundir.SUMMARY_JSON).read_text())
        assert (r["best_epoch"], r["params"], r["mult_adds"]) == (s["best_epoch"], s["params"], s["mult_adds"])
        a, b = (torch.load(d / rundir.MODEL, weights_only=True) for d in (packed, apart))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)
        # The same files as a separate run (its checkpoint resumable by either trainer).
        assert sorted(p.name for p in packed.iterdir()) == sorted(p.name for p in apart.iterdir())
        print(f"{model} {arm}: max |packed - apart| over epochs.csv and steps.csv = {_max_diff(packed, apart):.2e}")
    # and the runs do differ: a group is not one run copied
    per_step = pd.read_csv(tmp_path / "packed-per-step" / rundir.STEPS_CSV)
    assert not per_step["loss"].equals(pd.read_csv(tmp_path / "packed-per-epoch" / rundir.STEPS_CSV)["loss"])


@pytest.mark.parametrize("model", ["simple_cnn", "cnn3"])
def test_an_interleaved_group_equals_its_runs_trained_apart_bit_for_bit(cfg_factory, tmp_path, model):
    """The CPU's default step: each run's own model in turn, its dropout drawn by its own layers on its stream."""
    cfgs = {arm: cfg_factory(*BASE, f"model={model}", *extra) for arm, extra in ARMS.items()}  # cnn3 with Adam too
    for arm, cfg in cfgs.items():
        fit(cfg, tmp_path / f"apart-{arm}", "h")
    results = fit_group([Member(c, tmp_path / f"packed-{arm}", "h") for arm, c in cfgs.items()], step="interleaved")
    for arm, r in zip(cfgs, results):
        assert (r["status"], r["packed"], r["step_mode"]) == ("completed", 3, "interleaved")
        for name in (rundir.EPOCHS_CSV, rundir.STEPS_CSV):
            pd.testing.assert_frame_equal(_frame(tmp_path / f"packed-{arm}", name),
                                          _frame(tmp_path / f"apart-{arm}", name), check_exact=True)
        a, b = (torch.load(tmp_path / f"{w}-{arm}" / rundir.CHECKPOINT, weights_only=True) for w in ("packed", "apart"))
        for part in ("model", "best_model"):
            for k in a[part]:
                assert torch.equal(a[part][k], b[part][k]), (arm, part, k)
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])  # its stream, where its own process leaves it


@pytest.mark.parametrize("step", ["batched", "interleaved"])
def test_a_killed_group_resumes_each_run_with_either_trainer(cfg_factory, tmp_path, monkeypatch, step):
    """Killed while checkpointing run b's epoch 2 (run a's already written): relaunched packed, a joins at
    epoch 3 and b at epoch 2; relaunched apart, b resumes on its own. Both end where an uninterrupted group does."""
    cfgs = {n: cfg_factory(*BASE, "model=simple_cnn", "trainer.epochs=3", f"trainer.seed={s}")
            for n, s in (("a", 0), ("b", 1))}
    whole = fit_group([Member(c, tmp_path / f"whole-{n}", "h") for n, c in cfgs.items()], step=step)
    real = rundir.save_checkpoint

    def killed(run_dir, state):
        if run_dir.name.endswith("-b") and state["epoch"] == 2:
            raise KeyboardInterrupt  # the process dies: b's epoch-2 rows are written, its checkpoint is not
        real(run_dir, state)

    for attempt in ("packed", "apart"):
        monkeypatch.setattr(rundir, "save_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            fit_group([Member(c, tmp_path / f"{attempt}-{n}", "h") for n, c in cfgs.items()], step=step)
        monkeypatch.undo()
        assert [torch.load(tmp_path / f"{attempt}-{n}" / rundir.CHECKPOINT)["epoch"] for n in "ab"] == [2, 1]
    resumed = fit_group([Member(c, tmp_path / f"packed-{n}", "h") for n, c in cfgs.items()], step=step)
    assert [r["status"] for r in resumed] == ["completed"] * 2 and resumed[1]["packed"] == 2
    fit(cfgs["a"], tmp_path / "apart-a", "h")
    fit(cfgs["b"], tmp_path / "apart-b", "h")
    for attempt in ("packed", "apart"):
        for n in "ab":
            run = tmp_path / f"{attempt}-{n}"
            assert pd.read_csv(run / rundir.EPOCHS_CSV).epoch.tolist() == [1, 2, 3]
            assert pd.read_csv(run / rundir.STEPS_CSV).step.tolist() == list(range(1, 10))
            _assert_close(run, tmp_path / f"whole-{n}")
    assert [w["status"] for w in whole] == ["completed"] * 2


@pytest.mark.parametrize("step", ["batched", "interleaved"])
def test_a_diverging_run_stops_alone_and_the_others_train_on(cfg_factory, tmp_path, step):
    cfgs = [cfg_factory(*BASE, "model=lenet", "optimizer=sgd", "optimizer.lr=1e38", "trainer.log_every=1"),
            cfg_factory(*BASE, "model=lenet", "trainer.seed=1"),
            cfg_factory(*BASE, "model=lenet", "optimizer=adam", "optimizer.lr=1e38", "trainer.seed=2")]
    results = fit_group([Member(c, tmp_path / f"packed{i}", "h") for i, c in enumerate(cfgs)], step=step)
    apart = [fit(c, tmp_path / f"apart{i}", "h") for i, c in enumerate(cfgs)]
    assert [r["status"] for r in results] == [a["status"] for a in apart] == ["diverged", "completed", "diverged"]
    assert [r["error"] for r in results] == [a["error"] for a in apart]
    assert results[2]["error"].startswith("float overflow in epoch 1")
    for i in range(3):
        _assert_close(tmp_path / f"packed{i}", tmp_path / f"apart{i}")


def test_a_bad_config_fails_its_own_run_only(cfg_factory, tmp_path):
    cfgs = [cfg_factory(*BASE, "model=lenet", "optimizer.lr=-1"), cfg_factory(*BASE, "model=lenet", "trainer.seed=1")]
    bad, good = fit_group([Member(c, tmp_path / f"run{i}", "h") for i, c in enumerate(cfgs)])
    assert isinstance(bad, Exception) and "optimizer.lr=-1" in str(bad)
    assert good["status"] == "completed" and good["packed"] == 1


def test_every_run_says_where_its_time_went(cfg_factory, tmp_path):
    cfgs = [cfg_factory(*BASE, "model=lenet", f"trainer.seed={s}") for s in (0, 1)]
    alone = fit(cfgs[0], tmp_path / "alone", "h")
    packed = fit_group([Member(c, tmp_path / f"packed{i}", "h") for i, c in enumerate(cfgs)])
    for s in (alone, *packed):
        assert list(s["phases"]) == list(PHASES) and all(v >= 0 for v in s["phases"].values())
        assert s["phases"]["train"] > 0 and s["phases"]["eval"] > 0 and s["phases"]["write"] > 0
        assert s["phases"]["warmup"] == 0  # eager on the CPU
        share = s.get("packed", 1)  # runs trained in one loop are each charged their part of it
        assert sum(pd.read_csv(f"{s['run_dir']}/{rundir.EPOCHS_CSV}").epoch_seconds) >= share * s["phases"]["train"]
    assert packed[0]["phases"]["train"] == packed[1]["phases"]["train"]


# ----------------------------------------------------------------------------- the grouping rule
def test_jobs_group_by_data_architecture_and_batch_shape(cfg_factory):
    jobs = [cfg_factory(*BASE, "model=lenet", "trainer.seed=0"),
            cfg_factory(*BASE, "model=lenet", "trainer.seed=1", "scheduler=plateau", "optimizer=sgd",
                        "augment=tutorial", "regularization=l2", "trainer.epochs=3"),
            cfg_factory(*BASE, "model=simple_cnn", "model.dropout=0.2"),
            cfg_factory(*BASE, "model=simple_cnn", "model.dropout=0.5", "model.init=kaiming_normal"),
            cfg_factory(*BASE, "model=lenet", "trainer.batch_size=32"),
            cfg_factory(*BASE, "model=lenet", "trainer.pipeline=dataloader"),
            cfg_factory(*BASE, "model=lenet", "optimizer.lr=-1")]
    p = plan(jobs)
    assert p.groups == [[0, 1], [2, 3]]  # seeds, schedules, optimizers, epochs, dropout rates, init: per run
    assert p.alone[4] == "no other job shares its data set, architecture and batch shape"
    assert p.alone[5].startswith("trainer.pipeline=dataloader")
    assert p.alone[6].startswith("its config is refused (optimizer.lr=-1")
    assert p.split.startswith("model.name (lenet, simple_cnn)") and "trainer.batch_size" in p.split


def test_a_group_larger_than_max_group_trains_in_turns(cfg_factory, tmp_path):
    cfgs = [cfg_factory(*BASE, "model=lenet", "trainer.epochs=1", f"trainer.seed={s}") for s in range(3)]
    results = fit_group([Member(c, tmp_path / f"run{i}", "h") for i, c in enumerate(cfgs)], max_group=2)
    assert [(r["status"], r["packed"]) for r in results] == [("completed", 2), ("completed", 2), ("completed", 1)]


# ----------------------------------------------------------------------------- the launcher, end to end
def _close_to_reference(sweep, reference):
    """What tests/test_faults.py checks of a resumed sweep, to rounding: every run completed once, epochs and
    steps each once, the numbers and weights of the uninterrupted separate sweep."""
    from test_faults import EPOCHS, STEPS, _runs, _seed

    runs = _runs(sweep)
    assert sorted(map(_seed, runs)) == sorted(map(_seed, reference))
    for name, run in runs.items():
        s = rundir.read_json(run / rundir.SUMMARY_JSON)
        assert s["status"] == "completed" and s["epochs_done"] == EPOCHS, (name, s.get("error"))
        assert pd.read_csv(run / rundir.EPOCHS_CSV).epoch.tolist() == list(range(1, EPOCHS + 1))
        assert pd.read_csv(run / rundir.STEPS_CSV).step.tolist() == list(range(1, EPOCHS * STEPS + 1))
        _assert_close(run, reference[name])
        assert s["best_epoch"] == rundir.read_json(reference[name] / rundir.SUMMARY_JSON)["best_epoch"]
        for weights in (rundir.MODEL, rundir.BEST):
            a, b = (torch.load(d / weights, weights_only=True) for d in (run, reference[name]))
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)
        assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference[name].iterdir())
        assert not list(run.glob(".*.tmp")) and "resuming" in (run / "run.log").read_text()


@pytest.mark.slow
def test_a_packed_sweep_killed_twice_resumes_packed_then_apart(tmp_path):
    """SIGKILLed in its first launch and in its relaunch (packed both times), finished by the basic launcher:
    each run is whole, and equals the same sweep run apart and never killed."""
    from conftest import run_cli
    from test_faults import NO_REPORT, SEEDS, _args, _kill, _n_rows, _ok, _popen, _runs

    _ok(run_cli(_args(tmp_path / "reference", *SEEDS, NO_REPORT), cwd=tmp_path))
    reference = _runs(tmp_path / "reference")
    sweep, kills = tmp_path / "sweep", 0
    for rows in (3, 7):  # of 12 epoch rows in all
        proc = _popen(_args(sweep, *SEEDS, "hydra/launcher=packed", NO_REPORT), tmp_path)
        try:
            while _n_rows(sweep) < rows and proc.poll() is None:
                time.sleep(0.01)
            kills += proc.poll() is None
        finally:
            _kill(proc)
        assert {rundir.read_json(r / rundir.SUMMARY_JSON)["status"] for r in _runs(sweep).values()} <= {
            "running", "completed"}
    assert kills >= 1, "the packed sweep ended before any kill"
    out = _ok(run_cli(_args(sweep, *SEEDS), cwd=tmp_path))
    assert "Report:" in out
    _close_to_reference(sweep, reference)
    rows = pd.read_csv(sweep / "report" / "summary.csv")
    assert len(rows) == 2 and set(rows["status"]) == {"completed"}


@pytest.mark.slow
def test_the_launcher_splits_by_architecture_and_says_why_a_job_trains_alone(tmp_path):
    from conftest import run_cli
    from test_faults import _ok

    tiny = ["trainer.epochs=1", "trainer.limit_batches=2", "trainer.batch_size=32", "trainer.limit_eval_batches=1",
            "hydra/launcher=packed", f"data.root={tmp_path / 'data'}"]
    sweep = tmp_path / "models"
    out = _ok(run_cli(["-m", "model=lenet,tinynet", "trainer.seed=0,1", *tiny, f"hydra.sweep.dir={sweep}"],
                      cwd=tmp_path))
    assert "packed: jobs differ in model.name (lenet, tinynet): they train in separate groups" in out
    assert "packed: group 1/2: jobs #0, #1 train as one model" in out
    assert "packed: group 2/2: jobs #2, #3 train as one model" in out
    runs = {d.name: d for d in sweep.iterdir() if (d / rundir.SUMMARY_JSON).exists()}
    assert len(runs) == 4
    for name, run in runs.items():
        s = rundir.read_json(run / rundir.SUMMARY_JSON)
        assert s["status"] == "completed" and s["packed"] == 2 and s["choices"]["model"] in name
        assert sorted(p.name for p in (run / rundir.HYDRA_DIR).iterdir()) == sorted(rundir.RECORD_FILES)
        log = (run / "run.log").read_text()
        assert f"[{name}][INFO] - epoch 1/1" in log  # its own epoch line, named, and no other run's
        assert sum(f"[{other}][INFO] - epoch" in log for other in runs) == 1
    report = pd.read_csv(sweep / "report" / "summary.csv")
    assert len(report) == 4 and set(report["status"]) == {"completed"}

    alone = tmp_path / "alone"
    out = _ok(run_cli(["-m", "model=lenet", "trainer.seed=0,1", "trainer.pipeline=dataloader", "trainer.num_workers=0",
                       *tiny, f"hydra.sweep.dir={alone}", "~hydra.callbacks.report"], cwd=tmp_path))
    assert out.count("trains on its own: trainer.pipeline=dataloader: its batches come from DataLoader") == 2
    assert "packed: group" not in out
    assert [rundir.read_json(p)["status"] for p in sorted(alone.glob("*/summary.json"))] == ["completed"] * 2
    out = _ok(run_cli(["-m", "model=lenet,tinynet", "trainer.seed=0,1", *tiny, f"hydra.sweep.dir={sweep}",
                       "dry_run=true"], cwd=tmp_path))
    assert out.count("(already completed: would skip)") == 4


@pytest.mark.slow
def test_the_bench_sweeps_one_grid_packed_and_apart_side_by_side(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    p = subprocess.run([sys.executable, "-m", "ablate.bench", "--launcher", "packed", "--no-pipelines", "--device", "cpu",
                        "--dataset", "fashion_mnist_mini", "--grid-axes", "trainer.seed=0,1", "--grid-epochs", "1",
                        "--limit-batches", "2", "--batch-size", "64", "--jobs", "1", "--out", str(tmp_path),
                        "model=lenet"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "CPU cores, load average" in p.stdout  # the machine beside its numbers
    grid = pd.read_csv(tmp_path / "grid.csv")
    assert list(grid.launcher) == ["packed (interleaved)", "basic"]
    assert list(grid.completed) == [2, 2] and list(grid.images) == [2 * 2 * 64] * 2 and grid.report.all()
    assert grid.vs_basic.iloc[1] == 1.0 and grid.vs_basic.iloc[0] > 0
    assert list(grid.vs_basic) == pytest.approx(list(grid.wall_seconds.iloc[1] / grid.wall_seconds))
    phases = pd.read_csv(tmp_path / "phases.csv")
    assert list(phases.phase) == list(PHASES)
    for launcher in ("packed", "basic"):
        assert (phases[f"{launcher}_seconds"] >= 0).all() and phases[f"{launcher}_share"].sum() == pytest.approx(1.0)
        assert phases.set_index("phase").loc["train", f"{launcher}_seconds"] > 0


def test_a_damaged_data_file_fails_every_run_of_the_group(cfg_factory, tmp_path, monkeypatch):
    from ablate import data as D

    bad = tmp_path / "bad.npz"
    bad.write_bytes((D.EMBEDDED.read_bytes())[:1000])  # truncated: found only when the group loads it
    monkeypatch.setattr(D, "EMBEDDED", bad)
    cfgs = [cfg_factory(*BASE, "model=lenet", f"trainer.seed={s}") for s in (0, 1)]
    results = fit_group([Member(c, tmp_path / f"run{i}", "h") for i, c in enumerate(cfgs)])
    assert [type(r).__name__ for r in results] == ["DataError"] * 2 and "damaged" in str(results[0])


def test_runs_of_different_architectures_are_refused_as_one_group(cfg_factory, tmp_path):
    cfgs = [cfg_factory(*BASE, "model=lenet"), cfg_factory(*BASE, "model=tinynet")]
    with pytest.raises(ValueError, match="differ in data set, architecture or batch shape"):
        fit_group([Member(c, tmp_path / f"run{i}", "h") for i, c in enumerate(cfgs)])
    assert not list(tmp_path.iterdir())  # refused before anything was written
