"""One job: claim a run directory, then skip, resume or train the run there, and record how it ended.

Both ways of starting a run go through :func:`run_job`: the Hydra entry
(``python -m ablate.run``, :mod:`ablate.run`) and the Python API
(``ablate.train_run``, :mod:`ablate.api`). A run directory has one writer: its lock
(:class:`ablate.runlock.RunLock`) is held from the claim to the last write.
Failures stay inside their run: the error is written to ``summary.json`` (status
``failed``, with the traceback) and handed back to the caller, who decides
whether it ends a sweep, a process or a notebook cell (``trainer.fail_fast=true``
re-raises at once).
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from . import rundir, runlock
from .identity import config_hash

log = logging.getLogger("ablate")


def score(summary: dict, failure_value: float) -> float:
    """What a run returns to a sweeper (Optuna's objective): its final validation accuracy, never a test
    number, unless it has no validation split (``selection: test``, a tutorial's way); ``failure_value``
    for a run that did not complete."""
    acc = summary.get("final_val_acc" if summary.get("selection") == "val" else "final_test_acc")
    return float(acc) if summary.get("status") == "completed" and acc is not None else float(failure_value)


def run_job(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: dict[str, Any],
            record: Mapping[str, str], multirun: bool = False) -> tuple[dict, Optional[Exception]]:
    """Train (or skip, or resume) the run ``cfg`` describes in ``run_dir``; its summary and the error that
    failed it, if one did.

    ``record`` is the job's ``.hydra/`` files (name -> YAML), written only for a run this job trains,
    so a skipped run keeps its own. Raises :class:`ablate.runlock.RunLocked` when another live process
    writes the run."""
    h = config_hash(cfg)
    run_dir, prev, lock = rundir.claim(Path(run_dir), h)
    with lock:
        rundir.remove_stale_temps(run_dir)
        if prev is not None and prev.get("status") in ("completed", "diverged"):
            log.info("%s: already %s with this config; skipping", run_dir.name, prev["status"])
            return dict(prev, run_dir=str(run_dir)), None

        from .device import release  # torch: only once there is a run to train
        from .loggers import for_run
        from .train import fit

        summary = {"status": "running", "overrides": overrides, "choices": choices,
                   "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": h, "run_dir": str(run_dir),
                   **runlock.owner()}
        observer, error = None, None
        try:
            rundir.write_record(run_dir, record)
            observer = for_run(cfg, multirun)  # progress, and the trackers cfg.logger names
            summary = fit(cfg, run_dir, h, summary, observer)
        except Exception as e:
            if cfg.trainer.get("fail_fast"):
                raise
            summary, error = _record_failure(run_dir, summary, e), e
        finally:
            if observer is not None:
                observer.on_end(summary)
            release()
        return summary, error


def _record_failure(run_dir: Path, summary: dict, e: Exception) -> dict:
    """``status: failed`` over the last summary the trainer wrote (its epochs kept), even on a full disk;
    a record that cannot be written is logged, never raised: the sweep goes on. Returns the record."""
    last = rundir.read_summary(run_dir) or {}
    record = {**summary, **(last if last.get("config_hash") == summary["config_hash"] else {}), **runlock.owner(),
              "status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    try:
        rundir.write_summary_anyway(run_dir, record)
    except OSError as w:
        log.error("%s: the failure could not be recorded in %s (%s)", run_dir.name, rundir.SUMMARY_JSON, w)
    return record
