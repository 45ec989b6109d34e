"""``python -m ablate.run``: one Hydra job = one training run in its own directory.

Failures stay inside their run: an error is written to ``summary.json`` (status
``failed``, with the traceback, also logged) and the job returns normally, so
the other jobs, the report and the exit status of a sweep are unaffected
(``trainer.fail_fast=true`` re-raises instead; a single run, without ``-m``,
exits non-zero). Rerunning a sweep with ``hydra.sweep.dir=<old sweep>`` skips
runs already completed with the same resolved config and resumes the others from
their last checkpoint. Each run directory has one writer: a job meeting a run
that another live process holds skips it (:class:`ablate.runlock.RunLock`).
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from . import rundir, runlock
from .compose import validate  # importing it registers every group's schema before Hydra composes
from .config import CONF_DIR, ConfigError
from .identity import PRESET_GROUPS, RUN_GROUPS, config_hash
from .data import DataError
from .progress import print_result
from .rundir import CheckpointError

log = logging.getLogger("ablate")


class DryRunRefused(CompactHydraException):
    """A dry-run job a launch would refuse. Raised (not exited) so the other jobs still print their
    line; Hydra then prints this one line and exits 1."""


def _job_info() -> tuple[Path, list[str], dict[str, Any], bool]:
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if k in RUN_GROUPS or k in PRESET_GROUPS}
    return Path(hc.runtime.output_dir), list(hc.overrides.task), choices, hc.mode == RunMode.MULTIRUN


def _dry_run(cfg: DictConfig, run_dir: Path, overrides: list[str], h: str, multirun: bool) -> float:
    """One line per job: its overrides, its run dir and what a real launch would do there, after the
    checks a launch makes (:func:`ablate.compose.validate`). Writes nothing."""
    shown = " ".join(o for o in overrides if o.lstrip("+~").split("=")[0] != "dry_run") or "(no overrides)"
    num = HydraConfig.get().job.get("num")
    line = f"[dry run]{'' if num is None else f' #{num}'} {shown} -> "
    try:
        validate(cfg)
    except (ConfigError, DataError) as e:
        if not multirun:
            sys.exit(f"ablate: {e}")
        print(f"{line}{run_dir} (refused: ablate: {e})", flush=True)
        raise DryRunRefused(f"ablate: {e}") from None
    home, prev = rundir.placement(run_dir, h)
    if home != run_dir:
        what = f"holds another config: would run in {home.name}"
    elif prev is None:
        what = "new"
    elif prev.get("status") in ("completed", "diverged"):
        what = f"already {prev['status']}: would skip"
    else:
        what = f"{runlock.shown_status(run_dir, prev)} after {prev.get('epochs_done') or 0} epoch(s): would resume"
    print(f"{line}{run_dir} ({what})", flush=True)
    return 0.0


def _record(cfg: DictConfig) -> dict[str, str]:
    """The job's ``.hydra/`` files, as Hydra writes them (with ``hydra.output_subdir: null`` it does not:
    it would rewrite a skipped run's record, in place)."""
    hydra_node = HydraConfig.instance().cfg
    return {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml(hydra_node),
            "overrides.yaml": OmegaConf.to_yaml(hydra_node.hydra.overrides.task)}


def _spread_over_gpus(cfg: DictConfig) -> None:
    """Multirun job N trains on GPU N mod count when several are visible and trainer.device=auto.

    By device index, not CUDA_VISIBLE_DEVICES: a joblib worker process runs many
    jobs and its CUDA context, once made, ignores later changes to the variable.
    Not part of the run's identity (the hash is taken before)."""
    num = HydraConfig.get().job.get("num")
    if num is None or cfg.trainer.device != "auto":
        return
    import torch

    n = torch.cuda.device_count()  # asks the driver; creates no CUDA context
    if n > 1:
        with open_dict(cfg):
            cfg.trainer.device = f"cuda:{num % n}"


def score(summary: dict, failure_value: float) -> float:
    """What a run returns to a sweeper (Optuna's objective): its final validation accuracy, never a test
    number, unless it has no validation split (``selection: test``, a tutorial's way); ``failure_value``
    for a run that did not complete."""
    acc = summary.get("final_val_acc" if summary.get("selection") == "val" else "final_test_acc")
    return float(acc) if summary.get("status") == "completed" and acc is not None else float(failure_value)


def run(cfg: DictConfig) -> float:
    """Train (or skip, or resume) the run Hydra composed; return its :func:`score`."""
    run_dir, overrides, choices, multirun = _job_info()
    h = config_hash(cfg)
    if cfg.get("dry_run"):
        return _dry_run(cfg, run_dir, overrides, h, multirun)
    try:
        run_dir, prev, lock = rundir.claim(run_dir, h)
    except runlock.RunLocked as e:
        log.warning("%s", e)
        if not multirun:
            sys.exit(f"ablate: {e}")
        return float(cfg.trainer.failure_value)
    with lock:
        return _run_locked(cfg, run_dir, prev, h, overrides, choices, multirun)


def _run_locked(cfg: DictConfig, run_dir: Path, prev: dict | None, h: str, overrides: list[str],
                choices: dict[str, Any], multirun: bool) -> float:
    rundir.remove_stale_temps(run_dir)
    if prev is not None and prev.get("status") in ("completed", "diverged"):
        log.info("%s: already %s with this config; skipping", run_dir.name, prev["status"])
        if not multirun:
            print_result(dict(prev, run_dir=str(run_dir)))
        return score(prev, cfg.trainer.failure_value)
    record = _record(cfg)
    _spread_over_gpus(cfg)

    from .device import release  # torch: only once there is a run to train
    from .loggers import for_run
    from .train import fit

    summary = {"status": "running", "overrides": overrides, "choices": choices,
               "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": h, "run_dir": str(run_dir),
               **runlock.owner()}
    observer = None
    try:
        rundir.write_record(run_dir, record)
        observer = for_run(cfg, multirun)  # progress, and the trackers cfg.logger names
        summary = fit(cfg, run_dir, h, summary, observer)
    except Exception as e:
        if cfg.trainer.get("fail_fast"):
            raise
        summary = _record_failure(run_dir, summary, e)
        if isinstance(e, (ConfigError, DataError, CheckpointError)) and not multirun:
            sys.exit(f"ablate: {e}")  # bad input: one line, non-zero exit
        log.error("%s failed: %s: %s\n%s", run_dir.name, type(e).__name__, e, traceback.format_exc())
        if not multirun:
            sys.exit(f"ablate: {run_dir.name} failed: {type(e).__name__}: {e}")
        return float(cfg.trainer.failure_value)
    finally:
        if observer is not None:
            observer.on_end(summary)
        release()
        if not multirun:
            print_result(summary)  # a single run ends naming its directory and accuracy
    return score(summary, cfg.trainer.failure_value)


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


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()
