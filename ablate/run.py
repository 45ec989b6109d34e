"""``python -m ablate.run``: one Hydra job = one training run in its own directory (:mod:`ablate.job`).

In a sweep a failed run is recorded in its directory and the job returns normally,
so the other jobs and the report still run; the sweep then exits 1 with one line
saying how many runs failed (:mod:`ablate.outcome`; ``trainer.fail_fast=true``
re-raises at once instead). A single run, without ``-m``, exits 1 with the error as
its last line. Bad input (a config value, a data set, a checkpoint) is one line
wherever it happens; its traceback is kept in the run's ``summary.json`` and log.
Ctrl-C ends with what was kept and the command that resumes (exit 130). Rerunning a
sweep with ``hydra.sweep.dir=<old sweep>`` skips runs already completed with the
same resolved config and resumes the others from their last checkpoint; a run
another live process writes is skipped with one line. Here: what only a Hydra job
has (its directory and overrides, the dry run, GPU spread).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from . import outcome, rundir, runlock
from .compose import validate  # importing it registers every group's schema before Hydra composes
from .job import BAD_INPUT, hydra_job, hydra_record, log_failure, run_job, score
from .config import CONF_DIR, ConfigError
from .identity import config_hash
from .data import DataError
from .progress import print_result

log = logging.getLogger("ablate")


def _job_info() -> tuple[Path, list[str], dict[str, Any], bool]:
    hc = HydraConfig.get()
    return (*hydra_job(hc), hc.mode == RunMode.MULTIRUN)


def _dry_run(cfg: DictConfig, run_dir: Path, overrides: list[str], h: str, multirun: bool) -> float:
    """One line per job: its overrides, its run dir and what a real launch would do there, after the
    checks a launch makes (:func:`ablate.compose.validate`). Writes nothing. A refused job returns
    normally, so the other jobs still print their line; the sweep then ends with one line and exit 1
    (:func:`ablate.outcome.sweep_end`)."""
    shown = " ".join(o for o in overrides if o.lstrip("+~").split("=")[0] != "dry_run") or "(no overrides)"
    num = HydraConfig.get().job.get("num")
    line = f"[dry run]{'' if num is None else f' #{num}'} {shown} -> "
    try:
        validate(cfg)
    except (ConfigError, DataError) as e:
        if not multirun:
            sys.exit(f"ablate: {e}")
        print(f"{line}{run_dir} (refused: ablate: {e})", flush=True)
        outcome.note_dry_run(refused=True)
        return 0.0
    outcome.note_dry_run(refused=False)
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


def run(cfg: DictConfig) -> float:
    """Train (or skip, or resume) the run Hydra composed; return its :func:`ablate.job.score`."""
    run_dir, overrides, choices, multirun = _job_info()
    if not multirun:
        outcome.note_run(run_dir, config_hash(cfg), bool(cfg.get("dry_run")))
    if cfg.get("dry_run"):
        return _dry_run(cfg, run_dir, overrides, config_hash(cfg), multirun)
    _spread_over_gpus(cfg)
    try:
        summary, error = run_job(cfg, run_dir, overrides, choices, hydra_record(cfg, HydraConfig.instance().cfg),
                                 multirun)
    except runlock.RunLocked as e:
        log.warning("%s", e)
        if not multirun:
            sys.exit(f"ablate: {e}")
        return float(cfg.trainer.failure_value)
    if error is not None:
        if isinstance(error, BAD_INPUT) and not multirun:
            sys.exit(f"ablate: {error}")  # bad input: one line, non-zero exit
        log_failure(summary, error)
    if not multirun:
        print_result(summary)  # a single run ends naming its directory and accuracy
        if error is not None:
            sys.exit(f"ablate: {Path(summary['run_dir']).name} failed: {summary['error']}")
    return score(summary, cfg.trainer.failure_value)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    return run(cfg)


def main() -> None:
    """``python -m ablate.run`` and ``ablate-run``: Hydra's entry, ended by Ctrl-C with two lines, not a
    traceback (:func:`ablate.outcome.interrupted`; exit 130)."""
    try:
        _hydra_main()
    except KeyboardInterrupt:
        outcome.interrupted()


if __name__ == "__main__":
    main()
