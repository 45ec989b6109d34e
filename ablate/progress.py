"""A run's progress in the terminal: a tqdm bar with rate and ETA, or plain log lines.

``logger.progress=auto`` draws a bar when stderr is a terminal and the run trains in
the process that owns it (a single run, or a sweep's jobs under Hydra's basic
launcher); elsewhere (CI, SLURM logs, joblib or submitit job processes sharing one
terminal) it writes a line every ``trainer.log_every`` steps and one per epoch. Log
lines name their job (``conf/config.yaml`` sets the format), so parallel jobs can be
told apart. While a bar is shown, log lines are printed above it through tqdm.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from .config import LoggerConf
from .events import Observer

log = logging.getLogger("ablate")

_launcher_pid: Optional[int] = None  # the process that launched the current sweep (set by its Hydra callback)


def mark_launcher() -> None:
    """Called in a sweep's launching process: jobs that run in this process may draw a bar."""
    global _launcher_pid
    _launcher_pid = os.getpid()


def wants_bar(conf: LoggerConf, multirun: bool) -> bool:
    if conf.progress != "auto":
        return conf.progress == "bar"
    in_own_process = not multirun or _launcher_pid == os.getpid()  # joblib/submitit jobs run elsewhere
    return in_own_process and sys.stderr.isatty()


def observers(conf: LoggerConf, multirun: bool) -> list[Observer]:
    """The terminal side of ``logger.progress``: a bar (with epoch lines above it) or lines."""
    if conf.progress == "none":
        return [LogLines(steps=False, end=multirun)]
    if wants_bar(conf, multirun):
        return [Bar(), LogLines(steps=False, end=multirun)]
    return [LogLines(steps=True, end=multirun)]


def _pct(v: Any) -> str:
    return "-" if v in (None, "") else f"{100 * float(v):.2f}%"


def _loss(v: Any) -> str:
    return "-" if v in (None, "") else f"{float(v):.4f}"


class LogLines(Observer):
    """Log lines: every ``trainer.log_every`` steps (with ``steps``), every epoch, and (with ``end``: a sweep's
    job, whose result is not printed) how the run ended; a failed run's end is its error line
    (:func:`ablate.job.log_failure`), and a Ctrl-C's the launch's own last lines."""

    def __init__(self, steps: bool, end: bool) -> None:
        self.steps, self.end = steps, end
        self.epochs = self.per_epoch = 0

    def on_start(self, run_dir: Path, summary: dict, epochs: int, steps: int, start_epoch: int) -> None:
        self.epochs, self.per_epoch = epochs, steps

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        if self.steps:
            log.info("epoch %d/%d step %d/%d loss %.4f", epoch, self.epochs, step, self.per_epoch, loss)

    def on_epoch_end(self, row: dict, steps: list[dict]) -> None:
        scores = " | ".join(f"{split} loss {_loss(row[f'{split}_loss'])} acc {_pct(row[f'{split}_acc'])}"
                            for split in ("val", "test", "train_eval") if row.get(f"{split}_acc") is not None)
        log.info("epoch %d/%d lr %.3g | train loss %s acc %s | %s | %.1f s, %.0f img/s",
                 row["epoch"], self.epochs, row["lr"], _loss(row["train_loss"]), _pct(row["train_acc"]),
                 scores or "not evaluated", row["epoch_seconds"], row["images_per_second"])

    def on_end(self, summary: dict) -> None:
        if self.end and summary.get("status") not in ("failed", "interrupted"):
            log.info("%s", " | ".join(result_lines(summary)))


class Bar(Observer):
    """One tqdm bar over the run's training steps (rate and ETA from tqdm), updated where the trainer syncs."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.redirect = contextlib.ExitStack()
        self.per_epoch = 0
        self.test_acc = "-"

    def on_start(self, run_dir: Path, summary: dict, epochs: int, steps: int, start_epoch: int) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.per_epoch = steps
        self.redirect.enter_context(logging_redirect_tqdm())  # log lines print above the bar, not through it
        self.bar = tqdm(total=epochs * steps, initial=start_epoch * steps, desc=_short(run_dir.name),
                        unit="step", dynamic_ncols=True, file=sys.stderr)

    def _to(self, n: int, epoch: int, loss: str) -> None:
        self.bar.update(n - self.bar.n)
        self.bar.set_postfix(epoch=epoch, loss=loss, test_acc=self.test_acc, refresh=True)

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        self._to((epoch - 1) * self.per_epoch + step, epoch, f"{loss:.4f}")

    def on_epoch_end(self, row: dict, steps: list[dict]) -> None:
        if row["test_acc"] is not None:
            self.test_acc = _pct(row["test_acc"])
        self._to(row["epoch"] * self.per_epoch, row["epoch"], _loss(row["train_loss"]))

    def on_end(self, summary: dict) -> None:
        if self.bar is not None:
            self.bar.close()
        self.redirect.close()


def _short(name: str) -> str:
    """A bar's label, at most a third of the terminal: a long job name would push rate and ETA off the line."""
    width = max(12, shutil.get_terminal_size().columns // 3)
    return name if len(name) <= width else name[: width - 1] + "…"


def result_lines(summary: dict) -> list[str]:
    """What a finished run says last: where it is, how it ended, its final test accuracy and the epoch its
    selection split (validation, else test) chose."""
    status = summary.get("status")
    why = f": {summary['error']}" if summary.get("error") and status != "completed" else ""
    lines = [f"Run: {summary.get('run_dir')} ({status}{why})"]
    if summary.get("final_test_acc") is not None:
        split = "validation" if summary.get("selection", "val") == "val" else "test"
        lines.append(f"Test accuracy: {_pct(summary['final_test_acc'])} final after {summary.get('epochs_done')} "
                     f"epoch(s); {_pct(summary.get('test_acc_at_best'))} at epoch {summary.get('best_epoch')}, "
                     f"the best on {split}")
    else:
        lines.append(f"Test accuracy: none measured ({status})")
    return lines


def print_result(summary: dict) -> None:
    """A single run's last lines on stdout (after any bar is gone)."""
    print("\n".join(result_lines(summary)), flush=True)
