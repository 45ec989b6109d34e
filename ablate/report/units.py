"""Units: one configuration and seed, the one number it contributes, and the one rule for repeated runs.

Merged sweeps can hold the same configuration and seed twice (the same ``config_hash``, e.g. a
sweep relaunched into a second directory). Such repeats are one unit: the tables and the
verdicts alike count it once, as the mean of its runs' results, so a repeated run never weighs
twice in a mean nor once in a verdict and twice in a table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..stats import mean_std
from .runs import Run, model_size

REPEAT_RULE = ("a configuration and seed run more than once (merged sweeps) counts once, as the mean of its "
               "runs' results, in the tables and the verdicts alike")


@dataclass
class Unit:
    """The runs of one arm with one seed (several only when merged sweeps repeat it)."""

    arm: tuple[str, ...]
    key: Any  # the seed; the run's name when it recorded none
    runs: list[Run] = field(default_factory=list)

    @property
    def results(self) -> list[float]:
        return [v for r in self.runs if (v := r.result) is not None]

    @property
    def value(self) -> float | None:
        """The unit's number: the mean of its runs' results; None when none has a result (excluded)."""
        res = self.results
        return float(np.mean(res)) if res else None

    @property
    def diverged(self) -> bool:
        """A run of it diverged and entered at chance accuracy."""
        return any("diverged" in r.flags and r.result is not None for r in self.runs)

    @property
    def counted(self) -> list[Run]:
        """Its runs that finished every epoch with finite losses (their curves and best epochs count)."""
        return [r for r in self.runs if r.counted]

    @property
    def repeats(self) -> int:
        """Runs beyond the first (0 for a unit run once)."""
        return len(self.runs) - 1

    def mean_of(self, attr: str) -> float:
        """Mean of a per-run number over the unit's counted runs (NaN when none has it)."""
        v = [x for r in self.counted if (x := getattr(r, attr)) is not None]
        return float(np.mean(v)) if v else math.nan


def unit_key(run: Run) -> Any:
    return run.seed if run.seed is not None else run.name


def units_of(arms: dict[tuple[str, ...], list[Run]]) -> dict[tuple[str, ...], dict[Any, Unit]]:
    """Per arm, its units by seed: runs of one arm with one seed are repeats of one configuration."""
    out: dict[tuple[str, ...], dict[Any, Unit]] = {}
    for arm, runs in arms.items():
        units = out.setdefault(arm, {})
        for r in runs:
            units.setdefault(unit_key(r), Unit(arm, unit_key(r))).runs.append(r)
    return out


def mixed_configs(units: Iterable[Unit]) -> list[Unit]:
    """Units whose runs recorded different configurations: not repeats, though no swept key tells them apart."""
    return [u for u in units if len({r.config_hash for r in u.runs if r.config_hash}) > 1]


def unit_stats(units: Sequence[Unit], expected: int) -> dict[str, Any]:
    """A table row's numbers over units (repeats already averaged): mean ± std (ddof = 1) of the results."""
    vals = [v for u in units if (v := u.value) is not None]
    mean, std = mean_std(vals)

    def over(attr: str) -> float:
        per = [x for u in units if math.isfinite(x := u.mean_of(attr))]
        return float(np.mean(per)) if per else math.nan

    return dict(n=len(vals), expected=max(expected, len(units)), mean=mean, std=std,
                diverged=sum(u.diverged for u in units), excluded=sum(u.value is None for u in units),
                best=over("test_acc_at_best"), best_epoch=over("best_epoch"), gap_final=over("gap_final"),
                gap_best=over("gap_best"), seconds=over("seconds"), ips=over("images_per_second"),
                flagged=sum(bool(r.flags) for u in units for r in u.runs), **model_size([r for u in units for r in u.runs]))
