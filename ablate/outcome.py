"""How a launch of ``python -m ablate.run`` ends: its exit status and its last lines.

Left to Hydra, a sweep exits 0 whatever its runs did, a refused dry run ends in
Hydra's error report, and Ctrl-C in a traceback through Hydra and torch. The
launching process notes here what it needs to end better: the sweep's directory
and planned jobs (:class:`ablate.callbacks.ExitStatusCallback`), and how its
dry-run jobs fared. From them, :func:`sweep_end` gives the line a sweep ends with
when a run of this launch failed or a dry run refused a job (exit 1; a diverged run
is a result, not a failure). Import-light: it runs where Hydra launches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from . import monitor, rundir

# Launchers whose jobs run in the launching process. A dry run under any other launcher uses the basic one: it
# then submits nothing (SLURM), and every job's verdict is known here.
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
IN_PROCESS = (BASIC_LAUNCHER, "hydra_plugins.ablate_packed_launcher.packed_launcher.PackedLauncher")


@dataclass
class Launch:
    """The sweep this process launched (its directory, planned job names and count, when it started), and its
    dry-run jobs: how many were checked here and how many refused."""

    sweep: Optional[Path] = None
    names: Optional[list[str]] = None
    total: Optional[int] = None
    start: float = 0.0
    dry_run: bool = False
    dry_jobs: int = 0
    refused: int = 0


LAUNCH = Launch()


def start_sweep(config: DictConfig) -> None:
    """Note the sweep this process launches; a dry run's jobs are all checked in this process."""
    total, names = monitor.planned_jobs(config)
    LAUNCH.sweep, LAUNCH.names, LAUNCH.total = Path(str(config.hydra.sweep.dir)).absolute(), names, total
    # A file's mtime comes from the kernel's coarse clock, a few ms behind time.time(): a margin, so that a
    # summary written by this launch never reads as older than it.
    LAUNCH.start, LAUNCH.dry_run = time.time() - 0.5, bool(config.get("dry_run"))
    if LAUNCH.dry_run and OmegaConf.select(config, "hydra.launcher._target_") not in IN_PROCESS:
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.launcher = {"_target_": BASIC_LAUNCHER}


def note_dry_run(refused: bool) -> None:
    """One dry-run job of a sweep was checked here, and refused or not."""
    LAUNCH.dry_jobs += 1
    LAUNCH.refused += refused


def sweep_end() -> Optional[str]:
    """The sweep's last line when it must exit 1 (a run of this launch failed, or a dry run refused a job);
    None when it ends well."""
    if LAUNCH.dry_run:
        return (f"ablate: dry run: {LAUNCH.refused} of {LAUNCH.dry_jobs} jobs would be refused (see above)"
                if LAUNCH.refused else None)
    if LAUNCH.sweep is None:
        return None
    runs = monitor.run_statuses(LAUNCH.sweep, LAUNCH.names, LAUNCH.start)
    failed = [path for path, status, written in runs if status == "failed" and written >= LAUNCH.start]
    if not failed:
        return None
    index = LAUNCH.sweep / rundir.REPORT_DIR / "index.html"
    report = index.exists() and index.stat().st_mtime >= LAUNCH.start
    where = f"see the report's flagged runs, or {failed[0] / rundir.SUMMARY_JSON}" if report else (
        f"see {failed[0] / rundir.SUMMARY_JSON}")
    return f"ablate: {len(failed)} of {LAUNCH.total or len(runs)} runs failed ({where})"
