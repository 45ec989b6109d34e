"""TensorBoard and MLflow stores, read back with the libraries' own readers and compared with the CSVs.

The run is interrupted after its second epoch's rows are written (before that epoch's
checkpoint, as a kill would) and resumed: the stores must hold each epoch once, with
the numbers of the final ``epochs.csv`` and ``steps.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

import rundirs
from ablate import events, loggers, rundir
from ablate.config import MlflowConf
from ablate.identity import config_hash, job_dirname
from ablate.train import fit
from conftest import make_cfg

RUN = ["trainer.epochs=3", "trainer.batch_size=32", "trainer.limit_batches=3", "trainer.limit_eval_batches=1",
       "trainer.eval_batch_size=200", "model=lenet"]


class KillAfterEpoch(events.Observer):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, row, steps) -> None:
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt  # not an Exception: it stops the run as Ctrl-C would


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A run with both trackers on, interrupted in epoch 2 and resumed to the end."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("tracked")
    store = tmp / "mlruns"
    cfg = make_cfg([*RUN, f"data.root={tmp / 'data'}", "logger=[tensorboard,mlflow]",
                    f"logger.mlflow.tracking_uri={store}", "logger.mlflow.experiment=tests"])
    run, h = tmp / "run", config_hash(cfg)
    base = {"config": OmegaConf.to_container(cfg, resolve=True), "config_hash": h,
            "choices": {"model": "lenet", "scheduler": "cosine", "optimizer": "adam"}}
    first = loggers.for_run(cfg)
    first.observers.append(KillAfterEpoch(2))
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, run, h, dict(base), first)
    first.on_end({**base, "status": "interrupted"})  # what ablate.job ends a Ctrl-C'd run with
    assert len(pd.read_csv(run / rundir.EPOCHS_CSV)) == 2  # rows of epoch 2 were written, its checkpoint not
    client = loggers.mlflow_client(MlflowConf(tracking_uri=str(store)))
    (cut,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert cut.info.status == "KILLED" and cut.data.tags["ablate.status"] == "interrupted"  # not a failure
    second = loggers.for_run(cfg)
    summary = fit(cfg, run, h, dict(base), second)
    second.on_end(summary)
    return run, summary, store


def test_logger_is_not_part_of_a_runs_identity():
    cfg = make_cfg([])
    for choice in ("tensorboard", "mlflow", "[tensorboard,mlflow]"):
        assert config_hash(make_cfg([f"logger={choice}"])) == config_hash(cfg)
    assert job_dirname(["logger=tensorboard", "scheduler=step"]) == "scheduler=step"
    assert make_cfg(["logger=[tensorboard,mlflow]"]).logger.tensorboard is not None


def test_tensorboard_holds_each_epoch_once_with_the_csvs_numbers(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, summary, _ = tracked
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    epochs = pd.read_csv(run / rundir.EPOCHS_CSV)
    assert list(epochs.epoch) == [1, 2, 3]
    for col in loggers.EPOCH_METRICS:
        events_ = acc.Scalars(f"epoch/{col}")
        assert [e.step for e in events_] == [1, 2, 3], col
        assert [e.value for e in events_] == pytest.approx(list(epochs[col]), rel=1e-6), col
    steps = pd.read_csv(run / rundir.STEPS_CSV)
    assert [e.step for e in acc.Scalars("step/loss")] == list(steps.step) == list(range(1, 10))
    assert [e.value for e in acc.Scalars("step/loss")] == pytest.approx(list(steps.loss), rel=1e-6)
    assert [e.value for e in acc.Scalars("step/lr")] == pytest.approx(list(steps.lr), rel=1e-6)
    # HParams tab: the identity config, and the final accuracy as its metric.
    assert acc.Scalars("hparams/final_test_acc")[0].value == pytest.approx(summary["final_test_acc"])
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["optimizer.lr"].number_value == pytest.approx(0.001)
    assert hp["model"].string_value == "lenet" and hp["trainer.epochs"].number_value == 3
    assert "trainer.log_every" not in hp and "data.root" not in hp  # not part of what the run is


def test_mlflow_holds_one_run_with_the_csvs_numbers_and_files(tracked):
    from mlflow.tracking import MlflowClient

    run, summary, store = tracked
    client = loggers.mlflow_client(MlflowConf(tracking_uri=str(store)))
    assert isinstance(client, MlflowClient)
    exp = client.get_experiment_by_name("tests")
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`ablate.run_dir` = '{run}'")
    assert len(found) == 1  # the interrupted attempt's run was replaced
    r = found[0]
    assert r.info.status == "FINISHED" and r.data.tags["ablate.status"] == "completed"
    assert r.data.params["optimizer.lr"] == "0.001" and r.data.params["model"] == "lenet"
    epochs = pd.read_csv(run / rundir.EPOCHS_CSV)
    for col in loggers.EPOCH_METRICS:
        history = sorted(client.get_metric_history(r.info.run_id, col), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3], col
        assert [m.value for m in history] == pytest.approx(list(epochs[col]), rel=1e-12), col
    files = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert files == {"epochs.csv", "steps.csv", "summary.json", "model.pt"}
    local = Path(client.download_artifacts(r.info.run_id, "epochs.csv", str(store.parent / "dl")))
    assert local.read_bytes() == (run / rundir.EPOCHS_CSV).read_bytes()


def test_a_sweeps_report_goes_to_mlflow_as_a_run_of_its_own(tmp_path):
    pytest.importorskip("mlflow")
    from ablate import report

    sweep = rundirs.sweep(tmp_path / "sweep", {"step": [0.80, 0.82], "cosine": [0.83, 0.84]})
    index = report.make_report([sweep], arm_panels=False)
    conf = MlflowConf(tracking_uri=str(tmp_path / "mlruns"), experiment="reports")
    first = loggers.log_report(conf, Path(index).parent, sweep)
    again = loggers.log_report(conf, Path(index).parent, sweep)  # a rebuilt report replaces the old run
    client = loggers.mlflow_client(conf)
    exp = client.get_experiment_by_name("reports").experiment_id
    assert [r.info.run_id for r in client.search_runs([exp])] == [again] != [first]
    names = {a.path for a in client.list_artifacts(again, "report")}
    assert {"report/index.html", "report/report.md", "report/summary.csv"} <= names
    assert os.environ.get("MLFLOW_ALLOW_FILE_STORE") == "true"  # set only because a local store was chosen
