"""Hydra callbacks (registered in ``conf/config.yaml`` under ``hydra.callbacks``).

Import-light on purpose: Hydra instantiates callbacks in the launching process,
which must never import torch or initialise CUDA, so the report (pandas,
matplotlib) is imported only when a sweep ends. ``conf/config.yaml`` lists the
exit-status callback first, then the report, then progress: Hydra runs end hooks in
reverse order, so the final `k/N runs done` line comes before the report's path and
verdicts, and the exit status is decided last, once the report is written.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import outcome
from .config import ConfigError, ReportConf
from .identity import check_sweep
from .events import logger_conf

log = logging.getLogger("ablate")


class ExitStatusCallback(Callback):
    """The sweep's exit status, decided after every other end hook (the report's included): 1, with one last
    line (:func:`ablate.outcome.sweep_end`), when a run of this launch failed or a dry run refused a job.

    A ``SystemExit`` is the one thing a callback raises that Hydra does not turn into a
    warning. Hydra skips end hooks when a job raised (``trainer.fail_fast=true``); it
    then exits 1 itself."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        outcome.start_sweep(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        line = outcome.sweep_end()
        if line is not None:
            raise SystemExit(line)


class ReportCallback(Callback):
    """Write ``<sweep dir>/report/`` when a multirun ends, and say where the runs and report are.

    Hydra 1.3 skips ``on_multirun_end`` when a job raised, so the start hook also
    prints the command that builds the same report from the run directories. The start
    hook also refuses a sweep over an option that is not part of a run's identity
    (:func:`ablate.identity.check_sweep`) before any job starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = config.hydra.sweeper.get("params") or {}
        try:
            check_sweep([*config.hydra.overrides.task, *(f"{k}={v}" for k, v in params.items())])
        except ConfigError as e:  # Hydra turns a callback's exceptions into warnings; this must stop the sweep
            raise SystemExit(f"ablate: {e}") from None
        if config.get("dry_run"):
            return  # no report to announce
        try:
            sweep = Path(config.hydra.sweep.dir)
            print(f"Sweep: {sweep}/ (report at the end, or any time: python -m ablate.report "
                  f"{shlex.quote(str(sweep))})", flush=True)
        except Exception as e:  # noqa: BLE001  (a callback must never stop the sweep)
            log.warning("report callback: %s", e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("dry_run"):
            print("Dry run: nothing was trained, no report written.", flush=True)
            return
        try:
            sweep = Path(config.hydra.sweep.dir)
            from . import report  # lazy: pandas and matplotlib only now

            knobs = config.get("report")
            knobs = OmegaConf.to_container(knobs, resolve=True) if isinstance(knobs, DictConfig) else {}
            runs = report.find_runs(sweep)
            print(f"Runs: {len(runs)} job dir(s) in {sweep}/", flush=True)
            rep = report.build([sweep], **{k: v for k, v in knobs.items() if k in ReportConf.__dataclass_fields__})
            path = report.write(rep, sweep / report.REPORT_DIR)
            print(f"Report: {path}", flush=True)
            print("\n".join(verdict_lines(rep)), flush=True)
        except Exception as e:  # noqa: BLE001
            log.warning("report callback: no report written (%s: %s); run python -m ablate.report %s",
                        type(e).__name__, e, shlex.quote(str(config.hydra.sweep.dir)) if "hydra" in config
                        else "SWEEP_DIR")
            return
        mlflow = logger_conf(config).mlflow
        if mlflow is not None:
            try:
                from .loggers import log_report

                log_report(mlflow, Path(path).parent, sweep)
            except Exception as e:  # noqa: BLE001
                log.warning("report callback: the report is written but not logged to MLflow (%s: %s)",
                            type(e).__name__, e)


def verdict_lines(rep: Any) -> list[str]:
    """A report's verdicts as terminal lines (what a sweep ends by saying): the lines of report.md's
    verdict section, factor by factor."""
    lines = ["Verdicts:"]
    for key, said in rep.verdict_lines:
        lines += [f"{key}:", *(f"  {line}" for line in said)]
    return lines if len(lines) > 1 else ["Verdicts: nothing varies across the runs but the seed."]


class ProgressCallback(Callback):
    """The launching process's side of progress: jobs trained here may draw a bar, and while the sweep
    runs a thread prints `k/N runs done` with an ETA (:mod:`ablate.monitor`)."""

    def __init__(self) -> None:
        self.monitor: Any = None

    def __getstate__(self) -> dict:
        return {"monitor": None}  # the joblib launcher pickles callbacks for its workers; the thread stays here

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from . import progress
        from .monitor import SweepMonitor, planned_jobs

        progress.mark_launcher()
        if config.get("dry_run"):
            return
        try:
            total, names = planned_jobs(config)
            self.monitor = SweepMonitor(Path(config.hydra.sweep.dir), total, names,
                                        logger_conf(config).poll_seconds).start()
            outcome.LAUNCH.monitor = self.monitor
        except Exception as e:  # noqa: BLE001  (a callback must never stop the sweep)
            log.warning("progress callback: %s", e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.stop()
