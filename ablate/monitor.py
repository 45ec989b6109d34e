"""`k/N runs done` with an ETA, printed by a sweep's launching process whatever runs the jobs.

Jobs may train in this process (Hydra's basic launcher), in joblib worker processes
or as submitit jobs, so the monitor does not listen to them: a thread reads the
sweep's run directories (their ``summary.json``, through :mod:`ablate.rundir`) every
``logger.poll_seconds`` and prints a line when the count changes. N comes from the
sweep's grid (or an Optuna study's ``n_trials``). Import-light: it runs where Hydra
launches, which must not import torch.
"""

from __future__ import annotations

import copy
import glob
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from . import rundir

FINAL = ("completed", "diverged", "failed")


def _say(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)  # above a run's bar when the jobs train in this process


def planned_jobs(config: DictConfig) -> tuple[Optional[int], Optional[list[str]]]:
    """How many jobs the sweep launches and, for a grid, the directory name of each (None: unknown)."""
    sweeper = config.hydra.sweeper
    if sweeper.get("n_trials") is not None:  # a search: trials are named as they are proposed
        return int(sweeper.n_trials), None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = sweeper.get("params") or {}
        lines = [*(f"{k}={v}" for k, v in params.items()), *config.hydra.overrides.task]
        jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(lines), None)[0]
        c = copy.deepcopy(config)
        names = []
        for num, job in enumerate(jobs):  # each job's subdir, resolved as Hydra resolves it in the job
            with open_dict(c):
                c.hydra.overrides.task = job
                c.hydra.job.num = num
            names.append(str(OmegaConf.select(c, "hydra.sweep.subdir")))
        return len(jobs), names
    except Exception:  # noqa: BLE001  (a sweep this cannot expand still runs; the count is then open)
        return None, None


def run_statuses(sweep: Path, names: Optional[list[str]], since: float) -> list[tuple[Path, Optional[str], float]]:
    """Each job's run directory, its status and when its summary was written (0: none yet). For a grid
    (``names``), the newest summary among each job's directory and its ``~hash`` siblings; without one (a
    search), every run directory whose summary was written since ``since``."""
    if names is None:
        found = [(p, (p / rundir.SUMMARY_JSON).stat().st_mtime) for p in sweep.glob("*")
                 if rundir.is_run_dir(p) and (p / rundir.SUMMARY_JSON).exists()]
        return [(p, (rundir.read_summary(p) or {}).get("status"), t) for p, t in found if t >= since]
    runs = []
    for n in names:
        dirs = [sweep / n, *map(Path, glob.glob(str(sweep / glob.escape(n)) + "~*"))]
        found = [((p / rundir.SUMMARY_JSON).stat().st_mtime, p, s.get("status")) for p in dirs
                 if (p / rundir.SUMMARY_JSON).exists() and (s := rundir.read_summary(p))]
        t, p, status = max(found, key=lambda f: f[0]) if found else (0.0, sweep / n, None)
        runs.append((p, status, t))
    return runs


class SweepMonitor:
    """Counts the sweep's finished runs from their directories and says so when the count changes."""

    def __init__(self, sweep: Path, total: Optional[int], names: Optional[list[str]], poll_seconds: float,
                 say: Callable[[str], None] = _say) -> None:
        self.sweep, self.total, self.names, self.poll = Path(sweep), total, names, poll_seconds
        self.say = say
        self.start_time = time.time()
        self.stop_event = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.last: Any = None
        self.done_at_start = self.count()["done"]  # finished in an earlier launch: skipped, not timed

    def count(self) -> dict[str, int]:
        statuses = [status for _, status, _ in run_statuses(self.sweep, self.names, self.start_time)]
        return {"done": sum(s in FINAL for s in statuses), "failed": sum(s == "failed" for s in statuses),
                "running": sum(s == "running" for s in statuses)}

    def line(self, c: dict[str, int], final: bool = False) -> str:
        from tqdm import tqdm

        elapsed = time.time() - self.start_time
        of = f"/{self.total}" if self.total else ""
        text = f"[sweep] {c['done']}{of} runs done" + (f" in {tqdm.format_interval(elapsed)}" if final else "")
        extra = [f"{c['failed']} failed"] if c["failed"] else []
        if not final and c["running"]:
            extra.append(f"{c['running']} running")
        text += f" ({', '.join(extra)})" if extra else ""
        text += "" if final else f", {tqdm.format_interval(elapsed)} elapsed"
        new = c["done"] - self.done_at_start
        if not final and self.total and new > 0 and c["done"] < self.total:
            text += f", ETA {tqdm.format_interval(elapsed / new * (self.total - c['done']))}"
        return text

    def check(self) -> None:
        c = self.count()
        key = (c["done"], c["running"], c["failed"])
        if key != self.last:
            self.last = key
            self.say(self.line(c))

    def _loop(self) -> None:
        while not self.stop_event.wait(self.poll):
            try:
                self.check()
            except Exception:  # noqa: BLE001  (a directory read mid-write is read again next time)
                pass

    def start(self) -> "SweepMonitor":
        self.thread = threading.Thread(target=self._loop, name="ablate-sweep-monitor", daemon=True)
        self.thread.start()
        return self

    def halt(self) -> None:
        """Stop watching, silently (a Ctrl-C's last lines follow)."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def stop(self) -> None:
        """Stop watching and print the final count."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()
        self.say(self.line(self.count(), final=True))
