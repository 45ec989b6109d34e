"""What a run reports to (``conf/logger/``): the terminal, and trackers beside the run directory's CSVs,
TensorBoard event files and MLflow runs (:func:`for_run` builds them from ``cfg.logger``).

Each tracker is an :class:`ablate.events.Observer` chosen in ``conf/logger/`` (optional
extras: ``pip install 'ablate[tensorboard]'``, ``'ablate[mlflow]'``). The CSVs stay
the record: a tracker's store mirrors them. When a run starts from scratch its
earlier store is replaced; when it resumes, the store is rebuilt from the CSV rows
kept up to the checkpoint, so it never holds an epoch twice. Values are the trainer's
own: per epoch every ``epochs.csv`` column; per step (TensorBoard) the loss and lr of
``steps.csv``; the run's identity config as hyper-parameters.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import progress, rundir
from .config import ConfigError, MlflowConf, TensorBoardConf
from .identity import is_identity_key
from .events import Observer, Observers, logger_conf

EPOCH_METRICS = [c for c in rundir.EPOCH_COLUMNS if c != "epoch"]
FINAL_METRICS = ("final_test_acc", "best_test_acc", "final_train_acc", "final_test_loss")


def for_run(cfg: Any, multirun: bool = False) -> Observers:
    """Everything ``cfg.logger`` asks a run to report to: the terminal always, TensorBoard and MLflow when set."""
    conf = logger_conf(cfg)
    observers = progress.observers(conf, multirun)
    if conf.tensorboard is not None:
        observers.append(TensorBoardLogger(conf.tensorboard))
    if conf.mlflow is not None:
        observers.append(MlflowLogger(conf.mlflow))
    return Observers(observers)


def _need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"logger={extra} needs the {extra} package: pip install 'ablate[{extra}]' "
                          f"(or choose another logger)")


def _num(v: Any) -> float | None:
    return None if v in (None, "") else float(v)


def hyperparameters(summary: Mapping) -> dict[str, Any]:
    """The run's identity as flat ``key: scalar`` pairs: each group's choice and every identity key's value."""
    out: dict[str, Any] = {k: str(v) for k, v in (summary.get("choices") or {}).items() if is_identity_key(k)}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif "." in prefix and is_identity_key(prefix):
            out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", summary.get("config") or {})
    return out


def kept_epochs(run_dir: Path) -> Iterator[tuple[dict, list[dict]]]:
    """The epochs a resumed run keeps, as (epoch row, its step rows) with numbers, read from its CSVs."""
    steps: dict[int, list[dict]] = {}
    for r in rundir.read_rows(Path(run_dir) / rundir.STEPS_CSV):
        steps.setdefault(int(r["epoch"]), []).append({k: _num(v) for k, v in r.items()})
    for r in rundir.read_rows(Path(run_dir) / rundir.EPOCHS_CSV):
        row = {k: _num(v) for k, v in r.items()}
        row["epoch"] = int(r["epoch"])
        yield row, [dict(s, step=int(s["step"])) for s in steps.get(row["epoch"], [])]


# ----------------------------------------------------------------------------- TensorBoard
class TensorBoardLogger(Observer):
    """Event files in ``RUN_DIR/tensorboard`` (or ``logger.tensorboard.log_dir/<run name>``).

    Tags: ``epoch/<column>`` for every epochs.csv column at step = epoch; ``step/loss`` and
    ``step/lr`` at the global step; the HParams tab gets the identity config with
    ``hparams/<final metric>`` when the run ends."""

    def __init__(self, conf: TensorBoardConf) -> None:
        _need("tensorboard", "tensorboard")
        self.conf = conf
        self.writer: Any = None
        self.summary: dict = {}

    def on_start(self, run_dir: Path, summary: dict, epochs: int, steps: int, start_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = f"{self.conf.log_dir.rstrip('/')}/{run_dir.name}" if self.conf.log_dir else str(run_dir / "tensorboard")
        if "://" not in log_dir:
            shutil.rmtree(log_dir, ignore_errors=True)  # rebuilt from the CSVs below
        self.writer = SummaryWriter(log_dir)
        self.summary = summary
        for row, step_rows in kept_epochs(run_dir) if start_epoch else ():
            self.on_epoch_end(row, step_rows)

    def on_epoch_end(self, row: dict, steps: list[dict]) -> None:
        for s in steps:
            self.writer.add_scalar("step/loss", s["loss"], s["step"])
            self.writer.add_scalar("step/lr", s["lr"], s["step"])
        for k in EPOCH_METRICS:
            if row.get(k) is not None:
                self.writer.add_scalar(f"epoch/{k}", row[k], row["epoch"])
        self.writer.flush()  # `tensorboard --logdir` shows the run while it trains

    def on_end(self, summary: dict) -> None:
        if self.writer is None:
            return
        metrics = {f"hparams/{k}": float(summary[k]) for k in FINAL_METRICS if summary.get(k) is not None}
        # run_name=".": the HParams record goes into this run's directory, not a new timestamped one.
        self.writer.add_hparams(hyperparameters(summary), metrics, run_name=".")
        self.writer.close()


# ----------------------------------------------------------------------------- MLflow
def mlflow_client(conf: MlflowConf) -> Any:
    """A client for ``logger.mlflow.tracking_uri``: a plain directory is a local file store."""
    from mlflow.tracking import MlflowClient

    uri = conf.tracking_uri
    if "://" not in uri and not uri.startswith("file:"):
        uri = Path(uri).resolve().as_uri()
    if uri.startswith("file:"):
        # MLflow 3 keeps its file store in maintenance mode behind this switch; the store is local and
        # needs no server or database, which parallel jobs writing at once would contend for.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(uri)


def experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001  (a parallel job created it first)
        return client.get_experiment_by_name(name).experiment_id


def _replace_runs(client: Any, exp: str, tag: str, value: str) -> None:
    """Delete earlier MLflow runs tagged ``tag=value``: the store mirrors what exists now."""
    for r in client.search_runs([exp], filter_string=f"tags.`{tag}` = '{value}'"):
        client.delete_run(r.info.run_id)


class MlflowLogger(Observer):
    """One MLflow run per training run (name: the run dir's), tagged ``ablate.run_dir``."""

    def __init__(self, conf: MlflowConf) -> None:
        _need("mlflow", "mlflow")
        self.conf = conf
        self.client: Any = None
        self.run_id = ""
        self.run_dir = Path()

    def on_start(self, run_dir: Path, summary: dict, epochs: int, steps: int, start_epoch: int) -> None:
        from mlflow.entities import Param

        self.client, self.run_dir = mlflow_client(self.conf), Path(run_dir)
        exp = experiment_id(self.client, self.conf.experiment)
        _replace_runs(self.client, exp, "ablate.run_dir", str(run_dir))
        run = self.client.create_run(exp, run_name=run_dir.name, tags={
            "ablate.run_dir": str(run_dir), "ablate.sweep": str(run_dir.parent),
            "ablate.config_hash": str(summary.get("config_hash", "")), "ablate.status": "running"})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in sorted(hyperparameters(summary).items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        for row, step_rows in kept_epochs(run_dir) if start_epoch else ():
            self.on_epoch_end(row, step_rows)

    def on_epoch_end(self, row: dict, steps: list[dict]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(row[k]), now, int(row["epoch"]))
                                                    for k in EPOCH_METRICS if row.get(k) is not None])

    def on_end(self, summary: dict) -> None:
        if not self.run_id:
            return
        names = [rundir.EPOCHS_CSV, rundir.STEPS_CSV, rundir.SUMMARY_JSON] + ([rundir.MODEL] if self.conf.log_model else [])
        for name in names:
            if (self.run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        status = str(summary.get("status"))
        self.client.set_tag(self.run_id, "ablate.status", status)
        self.client.set_terminated(self.run_id, "FINISHED" if status in ("completed", "diverged") else
                                   "KILLED" if status == "interrupted" else "FAILED")


def log_report(conf: MlflowConf, report_dir: Path, sweep: Path) -> str:
    """The sweep's report as the artifacts of an MLflow run of its own (``report <sweep name>``); its run id."""
    client = mlflow_client(conf)
    exp = experiment_id(client, conf.experiment)
    _replace_runs(client, exp, "ablate.report", str(sweep))
    run = client.create_run(exp, run_name=f"report {sweep.name}",
                            tags={"ablate.report": str(sweep), "ablate.sweep": str(sweep)})
    client.log_artifacts(run.info.run_id, str(report_dir), "report")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
