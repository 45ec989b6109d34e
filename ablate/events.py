"""What the trainer tells the outside while a run trains, and who listens.

The trainer calls :class:`Observer` hooks only where it already holds host values
(the ``trainer.log_every`` syncs and the end of each epoch), so listening costs the
hot loop no extra device read. The terminal display (:mod:`ablate.progress`) and the
experiment trackers (:mod:`ablate.loggers`) are observers; whoever owns the run (the
Hydra entry, the Python API) builds them from ``cfg.logger`` with
:func:`ablate.loggers.for_run` and ends them with the final summary, whatever
happened to the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .config import LoggerConf, typed

log = logging.getLogger("ablate")


class Observer:
    """Hooks a run calls; each does nothing unless overridden."""

    def on_start(self, run_dir: Path, summary: dict, epochs: int, steps: int, start_epoch: int) -> None:
        """Training is about to start (``start_epoch`` > 0: resumed after that epoch; ``steps`` per epoch)."""

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        """The running mean training loss after ``step`` steps of ``epoch`` (every ``trainer.log_every``)."""

    def on_epoch_end(self, row: dict, steps: list[dict]) -> None:
        """An epoch's ``epochs.csv`` row and its ``steps.csv`` rows, just written."""

    def on_end(self, summary: dict) -> None:
        """The run is over: ``summary['status']`` says how (completed, diverged, failed, or still running if killed)."""


class Observers(Observer):
    """Several observers as one. One that raises is logged and dropped: a tracker never stops a run."""

    def __init__(self, observers: list[Observer]) -> None:
        self.observers = list(observers)

    def _call(self, hook: str, *args: Any) -> None:
        for obs in list(self.observers):
            try:
                getattr(obs, hook)(*args)
            except Exception as e:  # noqa: BLE001
                log.warning("%s.%s failed (%s: %s); it is off for the rest of this run",
                            type(obs).__name__, hook, type(e).__name__, e)
                self.observers.remove(obs)

    def on_start(self, *args: Any) -> None:
        self._call("on_start", *args)

    def on_step(self, *args: Any) -> None:
        self._call("on_step", *args)

    def on_epoch_end(self, *args: Any) -> None:
        self._call("on_epoch_end", *args)

    def on_end(self, *args: Any) -> None:
        self._call("on_end", *args)


def logger_conf(cfg: Any) -> LoggerConf:
    """The run's ``logger`` node, typed; the defaults when the config has none."""
    node = cfg.get("logger") if hasattr(cfg, "get") else None
    return LoggerConf() if node is None else typed(node, LoggerConf)
