"""``python -m ablate.run``: one Hydra job = one training run in its own directory.

Failures stay inside their run: an error is written to ``summary.json`` (status
``failed``, with the traceback, also logged) and the job returns normally, so
the other jobs, the report and the exit status of a sweep are unaffected
(``trainer.fail_fast=true`` re-raises instead). Rerunning a sweep with
``hydra.sweep.dir=<old sweep>`` skips runs already completed with the same
resolved config and resumes the others from their last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import traceback
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from . import files, report  # noqa: F401  (report registers schema/report/base)
from .config import CONF_DIR, ConfigError
from .data import DataError
from .train import CheckpointError, fit, release  # also registers every group's schema before Hydra composes

log = logging.getLogger("ablate")

GROUPS = ("dataset", "model", "optimizer", "scheduler", "augment", "regularization", "trainer")
PRESETS = ("experiment", "variant", "hparams_search")  # preset groups whose choice is recorded too
# Keys that change neither what a run computes nor its results: not part of its identity.
# Speed options are left out too: a run resumed with or without them continues the same run.
NOT_IDENTITY = {("trainer", "fail_fast"), ("trainer", "log_every"), ("trainer", "failure_value"),
                ("trainer", "cuda_graph"), ("trainer", "compile"), ("trainer", "num_workers"),
                ("trainer", "cudnn_benchmark")}


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """``conf/<config_name>.yaml`` with Hydra overrides, composed as ``python -m ablate.run`` does
    (every group's schema is registered by this module's imports), for tools outside a Hydra job."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def config_hash(cfg: DictConfig) -> str:
    """Identity of a run: its resolved config, minus where data lives and how it is reported."""
    d = OmegaConf.to_container(cfg, resolve=True)
    d = {k: v for k, v in d.items() if k in GROUPS}
    for group, key in NOT_IDENTITY:
        d.get(group, {}).pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _job_info() -> tuple[Path, list[str], dict[str, Any], bool]:
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if k in GROUPS or k in PRESETS}
    return Path(hc.runtime.output_dir), list(hc.overrides.task), choices, hc.mode == RunMode.MULTIRUN


def _claim_run_dir(run_dir: Path, h: str) -> tuple[Path, dict | None]:
    """The directory this config's results belong in, and its earlier summary if any.

    A directory holding results of a *different* config (the YAML changed since)
    is left alone: this run gets a sibling named with its config hash, and the
    old directory gets back the config record Hydra just overwrote."""
    prev = files.read_json(run_dir / files.SUMMARY_JSON)
    if prev is None or prev.get("config_hash") == h:
        return run_dir, prev
    new = run_dir.with_name(f"{run_dir.name}~{h[:8]}")
    new.mkdir(parents=True, exist_ok=True)
    hyd = run_dir / ".hydra"
    if hyd.is_dir():
        shutil.copytree(hyd, new / ".hydra", dirs_exist_ok=True)
        if prev.get("config") is not None:  # Hydra wrote this job's config over the old run's record
            import yaml

            files.atomic_write_bytes(hyd / "config.yaml", yaml.safe_dump(prev["config"], sort_keys=False).encode())
            files.atomic_write_bytes(hyd / "overrides.yaml", yaml.safe_dump(prev.get("overrides") or []).encode())
    log.warning("%s holds results of a different config; this run goes to %s", run_dir, new)
    _move_log(run_dir, new)
    return new, files.read_json(new / files.SUMMARY_JSON)


def _move_log(old: Path, new: Path) -> None:
    """Send the job log from ``old``'s log file to the same-named file in ``new``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == old.resolve():
            moved = logging.FileHandler(new / Path(h.baseFilename).name)
            moved.setFormatter(h.formatter)
            moved.setLevel(h.level)
            root.removeHandler(h)
            h.close()
            root.addHandler(moved)


def _print_dry_run(run_dir: Path, overrides: list[str], h: str) -> None:
    """One line per job: its overrides, its run dir and what a real launch would do there."""
    shown = " ".join(o for o in overrides if o.lstrip("+~").split("=")[0] != "dry_run") or "(no overrides)"
    prev = files.read_json(run_dir / files.SUMMARY_JSON)
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
    run_dir, prev = _claim_run_dir(run_dir, h)
    files.remove_stale_temps(run_dir)
    if prev is not None and prev.get("status") in ("completed", "diverged"):
        log.info("%s: already %s with this config; skipping", run_dir.name, prev["status"])
        acc = prev.get("final_test_acc")
        return float(acc) if prev["status"] == "completed" and acc is not None else float(cfg.trainer.failure_value)

    summary = {"status": "running", "overrides": overrides, "choices": choices,
               "config": OmegaConf.to_container(cfg, resolve=True), "config_hash": h, "run_dir": str(run_dir)}
    try:
        summary = fit(cfg, run_dir, h, summary)
    except Exception as e:
        if cfg.trainer.get("fail_fast"):
            raise
        summary.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        files.atomic_write_json(run_dir / files.SUMMARY_JSON, summary)
        if isinstance(e, (ConfigError, DataError, CheckpointError)) and not multirun:
            sys.exit(f"ablate: {e}")  # bad input: one line, non-zero exit
        log.error("%s failed: %s\n%s", run_dir.name, summary["error"], summary["traceback"])
        return float(cfg.trainer.failure_value)
    finally:
        release()
    if summary["status"] != "completed":
        return float(cfg.trainer.failure_value)
    acc = summary.get("final_test_acc")
    return float(acc) if acc is not None else float(cfg.trainer.failure_value)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()
