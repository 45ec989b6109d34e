"""``python -m ablate.run``: one Hydra job = one training run in its own directory.

Failures stay inside their run: an error is written to ``summary.json`` (status
``failed``, with the traceback, also logged) and the job returns normally, so
the other jobs, the report and the exit status of a sweep are unaffected
(``trainer.fail_fast=true`` re-raises instead). Rerunning a sweep with
``hydra.sweep.dir=<old sweep>`` skips runs already completed with the same
resolved config and resumes the others from their last checkpoint.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from . import compose as _schemas  # noqa: F401  (registers every group's schema before Hydra composes)
from . import rundir
from .config import CONF_DIR, PRESET_GROUPS, RUN_GROUPS, ConfigError, config_hash
from .data import DataError
from .progress import print_result
from .rundir import CheckpointError

log = logging.getLogger("ablate")


def _job_info() -> tuple[Path, list[str], dict[str, Any], bool]:
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if k in RUN_GROUPS or k in PRESET_GROUPS}
    return Path(hc.runtime.output_dir), list(hc.overrides.task), choices, hc.mode == RunMode.MULTIRUN


def _print_dry_run(run_dir: Path, overrides: list[str], h: str) -> None:
    """One line per job: its overrides, its run dir and what a real launch would do there."""
    shown = " ".join(o for o in overrides if o.lstrip("+~").split("=")[0] != "dry_run") or "(no overrides)"
    prev = rundir.read_summary(run_dir)
    if prev is None:
        what = "new"
    elif prev.get("config_hash") != h:
        what = f"holds another config: would run in {run_dir.name}~{h[:8]}"
    elif prev.get("status") in ("completed", "diverged"):
        what = f"already {prev['status']}: would skip"
    else:
        what = f"{prev.get('status')} after {prev.get('epochs_done') or 0} epoch(s): would resume"
    num = HydraConfig.get().job.get("num")
    print(f"[dry run]{'' if num is None else f' #{num}'} {shown} -> {run_dir} ({what})", flush=True)


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
    """Train (or skip, or resume) the run Hydra composed; return its final test accuracy."""
    run_dir, overrides, choices, multirun = _job_info()
    h = config_hash(cfg)
    if cfg.get("dry_run"):
        _print_dry_run(run_dir, overrides, h)
        return 0.0
    _spread_over_gpus(cfg)
    run_dir, prev = rundir.claim(run_dir, h)
    rundir.remove_stale_temps(run_dir)
    if prev is not None and prev.get("status") in ("completed", "diverged"):
        log.info("%s: already %s with this config; skipping", run_dir.name, prev["status"])
        if not multirun:
            print_result(dict(prev, run_dir=str(run_dir)))
        acc = prev.get("final_test_acc")
        return float(acc) if prev["status"] == "completed" and acc is not None else float(cfg.trainer.failure_value)

    from .device import release  # torch: only once there is a run to train
    from .loggers import for_run
    from .train import fit

    summary = {"status": "running", "overrides": overrides, "choices": choices,
               "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": h, "run_dir": str(run_dir)}
    observer = None
    try:
        observer = for_run(cfg, multirun)  # progress, and the trackers cfg.logger names
        summary = fit(cfg, run_dir, h, summary, observer)
    except Exception as e:
        if cfg.trainer.get("fail_fast"):
            raise
        summary.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        rundir.atomic_write_json(run_dir / rundir.SUMMARY_JSON, summary)
        if isinstance(e, (ConfigError, DataError, CheckpointError)) and not multirun:
            sys.exit(f"ablate: {e}")  # bad input: one line, non-zero exit
        log.error("%s failed: %s\n%s", run_dir.name, summary["error"], summary["traceback"])
        return float(cfg.trainer.failure_value)
    finally:
        if observer is not None:
            observer.on_end(summary)
        release()
        if not multirun:
            print_result(summary)  # a single run ends naming its directory and accuracy
    if summary["status"] != "completed":
        return float(cfg.trainer.failure_value)
    acc = summary.get("final_test_acc")
    return float(acc) if acc is not None else float(cfg.trainer.failure_value)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()
