"""Where a run's time goes: seconds per phase, from its process's start to its last write.

``summary.json`` holds ``phases``, which do not overlap and add up to the run's share
of its process's time:

- ``start``: the process's start (or, for a later job in the same process, the previous
  run's end) to this run's setup: interpreter and imports, Hydra, the run's claim;
- ``data``: the data set read, its batches and evaluation splits on the device;
- ``setup``: model, optimizer, scheduler, a resumed checkpoint;
- ``warmup``: a CUDA graph's warm-up steps and capture (they run inside the first epoch's
  loop and are taken out of ``train``), a packed group's memory probe;
- ``train``: the training steps; ``eval``: the evaluations; ``checkpoint``: ``checkpoint.pt``
  and ``best.pt``; ``write``: the CSV rows, ``summary.json`` and ``model.pt``.

Stages are timed whole with ``perf_counter`` (the training loop's time is the epoch's,
which the trainer already reads once per epoch), so the hot loop pays nothing. Runs
trained together (:mod:`ablate.packed`) share their process: each gets an equal share of
the time they spend together. The phases cover this launch: a resumed run's earlier
attempts are not in them. Torch-free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

PHASES = ("start", "data", "setup", "warmup", "train", "eval", "checkpoint", "write")
_IMPORTED = time.perf_counter()
_last_end: Optional[float] = None  # when the previous run of this process stopped timing


def process_age() -> float:
    """Seconds since this process started (Linux: its start time in ``/proc``); elsewhere since this module
    was imported, which misses the interpreter's own start-up."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime: clock ticks after boot
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED


def since_last_run() -> float:
    """The ``start`` phase of a run beginning now: since the previous run of this process ended, or since
    the process started."""
    return process_age() if _last_end is None else time.perf_counter() - _last_end


class Phases:
    """One run's seconds per phase (:data:`PHASES`)."""

    def __init__(self, start: Optional[float] = None) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.seconds["start"] = since_last_run() if start is None else start

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Time the block as ``phase``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t0)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


def mark_end() -> None:
    """This process's run (or group of runs) stops timing: the next run's ``start`` counts from now."""
    global _last_end
    _last_end = time.perf_counter()
