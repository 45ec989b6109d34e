"""How a launch of ``python -m ablate.run`` ends: its exit status and its last lines.

Left to Hydra, a sweep exits 0 whatever its runs did, a refused dry run ends in
Hydra's error report, and Ctrl-C in a traceback through Hydra and torch. The
launching process notes here what it needs to end better: the single run's
directory (:mod:`ablate.run`), or the sweep's directory and planned jobs
(:class:`ablate.callbacks.ExitStatusCallback`), and how its dry-run jobs fared.
From them, :func:`sweep_end` gives the line a sweep ends with when a run of this
launch failed (exit 1; a diverged run is a result, not a failure), and
:func:`interrupted` says what a Ctrl-C kept and the command that resumes (exit 130).
Import-light: it runs where Hydra launches.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from . import monitor, rundir

# Launchers whose jobs run in the launching process. A dry run under any other launcher uses the basic one: it
# then submits nothing (SLURM), and every job's verdict is known here.
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
IN_PROCESS = (BASIC_LAUNCHER, "hydra_plugins.ablate_packed_launcher.packed_launcher.PackedLauncher")


@dataclass
class Launch:
    """What this process launched: a single run (``run_dir``) or a sweep (``sweep``, its planned job names and
    count, when it started), and its dry-run jobs: how many were checked here and how many refused."""

    run_dir: Optional[Path] = None
    config_hash: str = ""
    sweep: Optional[Path] = None
    names: Optional[list[str]] = None
    total: Optional[int] = None
    start: float = 0.0
    dry_run: bool = False
    dry_jobs: int = 0
    refused: int = 0
    monitor: Any = None  # the `k/N runs done` thread, silenced before the last lines of a Ctrl-C


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


def note_run(run_dir: Path, config_hash: str, dry_run: bool) -> None:
    """Note the single run this process trains (what a Ctrl-C resumes)."""
    LAUNCH.run_dir, LAUNCH.config_hash, LAUNCH.dry_run = Path(run_dir), config_hash, dry_run


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


# --------------------------------------------------------------------------- Ctrl-C
def interrupted(argv: Optional[list[str]] = None) -> NoReturn:
    """End a launch stopped by Ctrl-C: what it kept and the command that resumes it, on stderr; exit 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while this is said changes nothing
    if LAUNCH.monitor is not None:
        LAUNCH.monitor.halt()
    try:
        lines = interrupted_lines(sys.argv if argv is None else argv)
    except Exception:  # noqa: BLE001  (a stopped launch's last words must not be a traceback)
        lines = ["Interrupted."]
    sys.stderr.write("\n" + "\n".join(lines) + "\n")
    sys.stderr.flush()
    raise SystemExit(130)


def interrupted_lines(argv: list[str]) -> list[str]:
    """What the launch kept (a sweep: its finished runs; a run: its last checkpoint) and the command that resumes."""
    if LAUNCH.dry_run:
        return ["Interrupted (a dry run: nothing was written)."]
    if LAUNCH.sweep is not None:
        runs = monitor.run_statuses(LAUNCH.sweep, LAUNCH.names, LAUNCH.start)
        done = sum(status in monitor.FINAL for _, status, _ in runs)
        of = f" of {LAUNCH.total}" if LAUNCH.total else ""
        return [f"Interrupted: {LAUNCH.sweep} keeps {done}{of} runs finished and the others up to their last "
                "checkpoint; resume with:", resume_command(argv, "hydra.sweep.dir", LAUNCH.sweep)]
    if LAUNCH.run_dir is None:
        return ["Interrupted before training started: nothing to resume."]
    home, summary = rundir.placement(LAUNCH.run_dir, LAUNCH.config_hash)
    kept = checkpointed_epoch(home, LAUNCH.config_hash)
    what = (f"keeps epoch{'s 1-' if kept > 1 else ' '}{kept} of {(summary or {}).get('epochs_planned')} "
            "(its last checkpoint)" if kept else "keeps no epoch yet (no checkpoint)")
    return [f"Interrupted: {home} {what}; resume with:", resume_command(argv, "hydra.run.dir", LAUNCH.run_dir)]


def checkpointed_epoch(run_dir: Path, config_hash: str) -> int:
    """The last epoch the run's checkpoint holds, what a resume continues after (0: none of this config)."""
    try:
        state = rundir.load_checkpoint(run_dir)
    except rundir.CheckpointError:
        return 0
    epoch = state.get("epoch") if state and state.get("config_hash") == config_hash else 0
    return epoch if isinstance(epoch, int) else 0


def resume_command(argv: list[str], key: str, place: Path) -> str:
    """The command line that relaunches ``argv`` into ``place`` (``key=place`` added unless given), quoted
    for a POSIX shell; the program as the user can type it (``python`` when that is this interpreter)."""
    args = list(argv[1:])
    if not any(re.match(rf"\+*{re.escape(key)}=", a) for a in args):
        args.append(f"{key}={hydra_value(str(place))}")
    if Path(argv[0]).name == "ablate-run":
        prog = "ablate-run"
    else:
        found = shutil.which("python")
        python = "python" if found and os.path.realpath(found) == os.path.realpath(sys.executable) else sys.executable
        prog = f"{shlex.quote(python)} -m ablate.run"
    return " ".join([prog, *map(shlex.quote, args)])


def hydra_value(text: str) -> str:
    """``text`` as a Hydra override value: as is when plain, else single-quoted (quotes, ``\\`` before a quote
    and ``${`` escaped), so a comma is not a sweep and a space not a parse error."""
    if re.fullmatch(r"[\w./@%+-]+", text):
        return text
    out = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text).replace("${", "\\${")
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, out) + "'"
