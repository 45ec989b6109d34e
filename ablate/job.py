"""One job: claim a run directory, then skip, resume or train the run there, and record how it ended.

Every way of starting runs goes through here: the Hydra entry (``python -m ablate.run``,
:mod:`ablate.run`) and the Python API (``ablate.train_run``, :mod:`ablate.api`) with
:func:`run_job`, one run at a time; the packed launcher (:mod:`ablate.launcher`) with
:func:`run_group`, several runs trained together (:mod:`ablate.packed`). A run directory
has one writer: its lock (:class:`ablate.runlock.RunLock`) is held from the claim to the
last write. Failures stay inside their run: the error is written to ``summary.json``
(status ``failed``, with the traceback) and handed back to the caller, who decides
whether it ends a sweep, a process or a notebook cell (``trainer.fail_fast=true``
re-raises at once). A Ctrl-C marks the run ``interrupted`` (one atomic rewrite of its
last summary) and goes on up: the lock is released on the way.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from . import rundir, runlock
from .config import ConfigError
from .data import DataError
from .identity import PRESET_GROUPS, RUN_GROUPS, config_hash
from .rundir import CheckpointError

log = logging.getLogger("ablate")

# Bad input, not a bug: a config value, a data set, a checkpoint. Its message is one line for people, and it is
# all that a console shows of it.
BAD_INPUT = (ConfigError, DataError, CheckpointError)


def score(summary: dict, failure_value: float) -> float:
    """What a run returns to a sweeper (Optuna's objective): its final validation accuracy, never a test
    number, unless it has no validation split (``selection: test``, a tutorial's way); ``failure_value``
    for a run that did not complete."""
    acc = summary.get("final_val_acc" if summary.get("selection") == "val" else "final_test_acc")
    return float(acc) if summary.get("status") == "completed" and acc is not None else float(failure_value)


def log_failure(summary: dict, error: Optional[BaseException] = None) -> None:
    """A failed run's error in the launcher's log: its name and the error, then the traceback, which for bad
    input (:data:`BAD_INPUT`) goes to the log files only (the job's ``run.log``), so the console shows one line."""
    name = Path(summary["run_dir"]).name
    if not isinstance(error, BAD_INPUT):
        log.error("%s failed: %s\n%s", name, summary["error"], summary.get("traceback"))
        return
    log.error("%s failed: %s", name, summary["error"])
    if summary.get("traceback") and log.isEnabledFor(logging.ERROR):
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (summary["traceback"],), None)
        logger: Optional[logging.Logger] = log
        while logger is not None:
            for h in logger.handlers:
                if isinstance(h, logging.FileHandler) and record.levelno >= h.level:
                    h.handle(record)
            logger = logger.parent if logger.propagate else None


def hydra_job(hc: DictConfig) -> tuple[Path, list[str], dict[str, Any]]:
    """A Hydra job's run directory, overrides and group choices, from its ``hydra`` node."""
    return Path(hc.runtime.output_dir), list(hc.overrides.task), run_choices(hc)


def run_choices(hc: DictConfig) -> dict[str, Any]:
    """The option chosen in each group that says what a run is (presets included), from a ``hydra`` node."""
    return {k: v for k, v in hc.runtime.choices.items() if k in RUN_GROUPS or k in PRESET_GROUPS}


def hydra_record(cfg: DictConfig, hydra_root: DictConfig) -> dict[str, str]:
    """The job's ``.hydra/`` files, as Hydra writes them (``hydra_root`` holds the ``hydra`` node; with
    ``hydra.output_subdir: null`` Hydra does not: it would rewrite a skipped run's record, in place)."""
    return {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml(hydra_root),
            "overrides.yaml": OmegaConf.to_yaml(hydra_root.hydra.overrides.task)}


@dataclass
class Job:
    """A run to train, as its launcher describes it: config, directory, overrides, group choices and the
    ``.hydra/`` record (name -> YAML), written only for a run this job trains, so a skipped run keeps its own."""

    cfg: DictConfig
    run_dir: Path
    overrides: Sequence[str] = ()
    choices: Mapping[str, Any] = ()
    record: Mapping[str, str] = ()


class _Claimed:
    """A job whose directory this process holds: skipped (``done``) or ready to train."""

    def __init__(self, job: Job, multirun: bool) -> None:
        self.job, self.multirun = job, multirun
        self.hash = config_hash(job.cfg)
        self.run_dir, prev, self.lock = rundir.claim(Path(job.run_dir), self.hash)
        self.observer: Any = None
        self.done: Optional[dict] = None
        try:
            rundir.remove_stale_temps(self.run_dir)
            if prev is not None and prev.get("status") in ("completed", "diverged"):
                log.info("%s: already %s with this config; skipping", self.run_dir.name, prev["status"])
                self.done = dict(prev, run_dir=str(self.run_dir))
            self.summary = {"status": "running", "overrides": list(job.overrides), "choices": dict(job.choices),
                            "config": OmegaConf.to_container(job.cfg, resolve=True), "config_hash": self.hash,
                            "run_dir": str(self.run_dir), **runlock.owner()}
        except BaseException:  # the caller never gets the lock to release
            self.lock.release()
            raise

    def start(self, bar: bool = True) -> None:
        """Write the job's record and start its observers (``bar=False``: progress as lines, for runs trained
        together, whose bars would overwrite each other)."""
        from .loggers import for_run  # torch: only once there is a run to train

        rundir.write_record(self.run_dir, self.job.record)
        cfg = self.job.cfg
        if not bar and str(OmegaConf.select(cfg, "logger.progress", default="auto")) in ("auto", "bar"):
            cfg = copy.deepcopy(cfg)
            with open_dict(cfg):
                cfg.logger.progress = "lines"
        self.observer = for_run(cfg, self.multirun)  # progress, and the trackers cfg.logger names

    def fail(self, e: Exception) -> tuple[dict, Exception]:
        if self.job.cfg.trainer.get("fail_fast"):
            raise e
        return _record_failure(self.run_dir, self.summary, e), e

    def interrupted(self) -> dict:
        """Ctrl-C: the run's last summary (its epochs, checkpoint and files as they were) rewritten as
        ``interrupted``, atomically; a run with no summary of this config yet is left alone."""
        last = rundir.read_json(self.run_dir / rundir.SUMMARY_JSON)
        if last is None or last.get("config_hash") != self.hash or last.get("status") != "running":
            return dict(self.summary, status="interrupted")
        try:
            rundir.atomic_write_json(self.run_dir / rundir.SUMMARY_JSON, {**last, "status": "interrupted"})
        except OSError:
            pass  # still "running" on disk: readers show it interrupted once the lock is gone
        return {**last, "status": "interrupted"}

    def end(self, summary: dict) -> None:
        if self.observer is not None:
            self.observer.on_end(summary)


def run_job(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: dict[str, Any],
            record: Mapping[str, str], multirun: bool = False) -> tuple[dict, Optional[Exception]]:
    """Train (or skip, or resume) the run ``cfg`` describes in ``run_dir``; its summary and the error that
    failed it, if one did. Raises :class:`ablate.runlock.RunLocked` when another live process writes the run."""
    c = _Claimed(Job(cfg, run_dir, overrides, choices, record), multirun)
    with c.lock:
        if c.done is not None:
            return c.done, None
        from .device import release
        from .train import fit

        summary, error = c.summary, None
        try:
            c.start()
            summary = fit(cfg, c.run_dir, c.hash, c.summary, c.observer)
        except Exception as e:
            summary, error = c.fail(e)
        except KeyboardInterrupt:
            summary = c.interrupted()
            raise
        finally:
            c.end(summary)
            release()
        return summary, error


def run_group(jobs: Sequence[Job], multirun: bool = False, max_group: int = 16, memory_fraction: float = 0.8,
              step: str = "auto") -> list[tuple[Optional[dict], Optional[Exception]]]:
    """Train (or skip, or resume) the runs of ``jobs`` packed (:func:`ablate.packed.fit_group`, which the knobs
    are for); for each, its
    summary and the error that failed it, if one did. A run another live process writes is
    ``(None, RunLocked)``; one already finished is skipped, as :func:`run_job` skips it."""
    results: list[tuple[Optional[dict], Optional[Exception]]] = [(None, None)] * len(jobs)
    with contextlib.ExitStack() as locks:
        training: dict[int, _Claimed] = {}
        for i, job in enumerate(jobs):
            try:
                c = _Claimed(job, multirun)
            except runlock.RunLocked as e:
                results[i] = (None, e)
                continue
            locks.enter_context(c.lock)
            if c.done is not None:
                results[i] = (c.done, None)
                continue
            try:
                c.start(bar=False)
                training[i] = c
            except Exception as e:
                results[i] = c.fail(e)
                c.end(results[i][0])
        if not training:
            return results
        from .device import release
        from .packed import RUN, Member, fit_group

        outcomes: list[Any] = []
        try:
            outcomes = fit_group([Member(c.job.cfg, c.run_dir, c.hash, c.summary, c.observer)
                                  for c in training.values()], max_group, memory_fraction, step)
            for (i, c), out in zip(training.items(), outcomes):
                results[i] = c.fail(out) if isinstance(out, Exception) else (out, None)
        except KeyboardInterrupt:
            for i, c in training.items():
                results[i] = (c.interrupted(), None)
            raise
        finally:
            for i, c in training.items():
                token = RUN.set(c.run_dir.name)  # its last line goes to its own log
                try:
                    c.end(results[i][0] or c.summary)
                finally:
                    RUN.reset(token)
            release()
    return results


def _record_failure(run_dir: Path, summary: dict, e: Exception) -> dict:
    """``status: failed`` over the last summary the trainer wrote (its epochs kept), even on a full disk;
    a record that cannot be written is logged, never raised: the sweep goes on. Returns the record."""
    last = rundir.read_summary(run_dir) or {}
    record = {**summary, **(last if last.get("config_hash") == summary["config_hash"] else {}), **runlock.owner(),
              "status": "failed", "error": f"{type(e).__name__}: {e}",
              "traceback": "".join(traceback.format_exception(e))}
    try:
        rundir.write_summary_anyway(run_dir, record)
    except OSError as w:
        log.error("%s: the failure could not be recorded in %s (%s)", run_dir.name, rundir.SUMMARY_JSON, w)
    return record
