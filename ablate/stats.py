"""The few statistics the report needs, in numpy only (no scipy), reproducible by seed.

Sweeps here have a handful of seeds per arm, so everything is stated with that in
mind: intervals come from the bootstrap (no normality assumed), pairing by seed is
used whenever both arms ran the same seeds (it removes the seed-to-seed noise that
both arms share), and a comparison with fewer than two values per arm gets no
interval at all rather than a misleadingly narrow one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN std for a single value, NaN both for none)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: mean difference with its bootstrap interval and P(a beats b)."""

    diff: float
    lo: float  # NaN when there are too few values for an interval
    hi: float
    n_a: int
    n_b: int
    paired: bool
    p_beats: float

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def conclusive(self) -> bool:
        """True when the interval excludes zero (the sign of the difference is settled)."""
        return self.has_interval and (self.lo > 0 or self.hi < 0)


def bootstrap_diff(a: Sequence[float], b: Sequence[float], paired: bool, n_boot: int = 5000,
                   confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a`` minus mean of ``b`` with a percentile bootstrap interval.

    Paired (``a[i]`` and ``b[i]`` share seed i): the seed indices are resampled
    jointly, i.e. the per-seed differences are resampled. Unpaired: each arm is
    resampled on its own. The generator is ``np.random.default_rng(seed)`` and the
    index draws are ``integers(0, n, size=(n_boot, n))`` (paired: one draw; unpaired:
    a's then b's), so a caller can reproduce the interval exactly."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"paired comparison needs equal lengths, got {a.size} and {b.size}")
        d = a - b
        diff = float(d.mean())
        if d.size < 2:
            return diff, math.nan, math.nan
        boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    else:
        diff = float(a.mean() - b.mean())
        if a.size < 2 or b.size < 2:
            return diff, math.nan, math.nan
        boots = (a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
                 - b[rng.integers(0, b.size, size=(n_boot, b.size))].mean(axis=1))
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha])
    return diff, float(lo), float(hi)


def prob_beats(a: Sequence[float], b: Sequence[float], paired: bool) -> float:
    """P(a > b on a fresh seed), estimated from the values alone (ties count one half).

    Paired: the fraction of seeds on which a beat b. Unpaired: the fraction of all
    (a_i, b_j) pairs with a_i > b_j, i.e. the Mann-Whitney AUC. Neither assumes a
    distribution; with three seeds the estimate moves in steps of 1/3 (or 1/9)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return math.nan
    if paired:
        d = a - b
        return float(np.mean((d > 0) + 0.5 * (d == 0)))
    gt = (a[:, None] > b[None, :]).mean()
    eq = (a[:, None] == b[None, :]).mean()
    return float(gt + 0.5 * eq)


def compare(a: Sequence[float], b: Sequence[float], paired: bool, n_boot: int = 5000,
            confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Everything a verdict says about ``a`` against ``b``."""
    diff, lo, hi = bootstrap_diff(a, b, paired, n_boot, confidence, seed)
    return Comparison(diff, lo, hi, len(a), len(b), paired, prob_beats(a, b, paired))


def tie_ranks(means: Sequence[float], stds: Sequence[float]) -> list[str]:
    """Competition ranks where overlapping mean ± std intervals are ties.

    An arm's rank is 1 + the number of arms whose whole interval lies above its
    own; arms sharing a rank are shown as ``=k``. The interval is the mean ± std
    printed next to it, so a reader can check every tie by eye; a single-seed arm
    has no std and counts as a point. Arms without a mean get ``-``."""
    m = np.asarray(means, dtype=float)
    s = np.nan_to_num(np.asarray(stds, dtype=float), nan=0.0)
    lo, hi = m - s, m + s
    ranks: list[int | None] = []
    for i in range(m.size):
        if not math.isfinite(m[i]):
            ranks.append(None)
            continue
        above = np.isfinite(m) & (lo > hi[i])
        ranks.append(1 + int(above.sum()))
    out = []
    for r in ranks:
        if r is None:
            out.append("-")
        else:
            out.append(f"={r}" if ranks.count(r) > 1 else str(r))
    return out

