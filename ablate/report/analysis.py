"""What the runs say: arms, ranked tables per factor, paired comparisons and their verdict lines.

Runs are grouped into *arms* by every override that varies across the runs
except the seed. Only counted runs (finished every epoch, finite losses) enter
the means; two levels of a factor are compared on runs that differ in that
factor only (:func:`factor_values`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from ..config import ReportConf
from ..identity import is_factor_key
from .runs import FLAGS, SEED_KEY, Run, num, sweep_plan

MAX_VERDICTS = 10  # comparison lines per factor; the table ranks the rest


@dataclass
class Report:
    runs: list[Run]
    conf: ReportConf
    sweeps: list[Path]
    keys: list[str]  # varying overrides, seed excluded, in command-line order
    arms: dict[tuple[str, ...], list[Run]]
    expected: dict[tuple[str, ...], int]
    n_expected: int | None
    tables: list[tuple[str, str, pd.DataFrame]] = field(default_factory=list)  # (id, title, display)
    verdicts: list[tuple[str, list[str]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    figures: list[tuple[str, str, bytes]] = field(default_factory=list)  # (file name, caption, png)
    panels: list[Any] = field(default_factory=list)  # panels.ArmPanel: best and worst arm, drawn by write()
    panels_note: str | None = None  # why there is no best/worst pair (fewer than two arms), if so

    def label(self, arm: tuple[str, ...]) -> str:
        return ", ".join(f"{k}={v}" for k, v in zip(self.keys, arm)) if self.keys else "all runs"

    def short(self, arm: tuple[str, ...], skip: Sequence[str] = ()) -> str:
        parts = [v if len(self.keys) == 1 else f"{k}={v}" for k, v in zip(self.keys, arm) if k not in skip]
        return ", ".join(parts) or "all runs"

    def flag_counts(self) -> dict[str, int]:
        return {f: sum(f in r.flags for r in self.runs) for f in FLAGS}

    def arm_of(self, run: Run) -> tuple[str, ...]:
        return tuple(run.value(k) for k in self.keys)


def sort_levels(levels: Sequence[str]) -> list[str]:
    """Numeric levels in numeric order; any other levels as given."""
    nums = [num(v) for v in levels]
    if all(n is not None for n in nums):
        return [v for _, v in sorted(zip(nums, levels))]
    return list(levels)


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value differs between runs (the seed and bookkeeping keys excluded)."""
    order: list[str] = []
    for r in runs:
        order += [k for k in r.overrides if k not in order]
    keys = [k for k in order if k != SEED_KEY and is_factor_key(k)]
    return [k for k in keys if len({r.value(k) for r in runs}) > 1]


def analyse(runs: list[Run], conf: ReportConf, sweeps: Sequence[Path]) -> Report:
    """Arms, ranked tables, verdicts and warnings (no plotting, no writing)."""
    keys = varying_keys(runs)
    arms: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        arms.setdefault(tuple(r.value(k) for k in keys), []).append(r)
    expected: dict[tuple[str, ...], int] = {a: 0 for a in arms}
    n_expected: int | None = 0
    for sweep in map(Path, sweeps):
        plan = sweep_plan(sweep)
        if n_expected is not None:
            n_expected = n_expected + plan[1] if plan else None
        for a, members in arms.items():
            mine = [r for r in members if r.sweep == sweep]
            if mine:
                per_arm = len(plan[0].get(SEED_KEY, [None])) if plan else len(mine)
                expected[a] += max(per_arm, len(mine))
    if n_expected is not None and n_expected < len(runs):
        n_expected = None
    rep = Report(runs, conf, [Path(s) for s in sweeps], keys, arms, expected, n_expected)

    for k in keys:
        i = keys.index(k)
        groups: dict[str, list[tuple[str, ...]]] = {}
        for a in arms:
            groups.setdefault(a[i], []).append(a)
        rows = {lvl: _group_stats([r for a in g for r in arms[a]], sum(expected[a] for a in g))
                for lvl, g in groups.items()}
        pooled = " (pooled over the other factors)" if len(keys) > 1 else ""
        rep.tables.append((f"table-factor-{_slug(k)}", f"By {k}{pooled}", ranked_table(rows, [k])))
        rep.verdicts.append((k, _verdicts(rep, k)))
    if len(keys) >= 2 or not keys:
        rows = {a: _group_stats(arms[a], expected[a]) for a in arms}
        title = "Full grid (every arm)" if keys else "All runs (nothing varies but the seed)"
        rep.tables.append(("table-grid", title, ranked_table(rows, keys)))

    short = [(a, n) for a, n in ((a, sum(r.counted for r in m)) for a, m in arms.items()) if n < conf.min_seeds]
    if len(short) > 5:
        rep.warnings.append(f"{len(short)} of {len(arms)} arms have fewer than {conf.min_seeds} finished seeds "
                            f"(min_seeds): their means and verdicts rest on little data")
    else:
        rep.warnings += [f"{rep.label(a)} has {n} finished seed{'s' if n != 1 else ''}, fewer than "
                         f"min_seeds={conf.min_seeds}" for a, n in short]
    return rep


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s).strip("-").lower()


def mean_of(vals: Sequence[float | None]) -> float:
    """Mean of the values that are not None; NaN when there are none."""
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else math.nan


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and its Student t interval, mean ± t(n - 1) · s / √n.

    NaN bounds with fewer than two values or no spread: there is no noise to size it from."""
    from scipy.stats import t  # here, not at import: the report package stays light

    v = np.asarray(values, dtype=float)
    m = float(v.mean()) if v.size else math.nan
    se = float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else 0.0
    if not se > 0:
        return m, math.nan, math.nan
    lo, hi = t.interval(confidence, v.size - 1, loc=m, scale=se)
    return m, float(lo), float(hi)


def model_size(runs: Sequence[Run]) -> dict[str, list[int]]:
    """Distinct parameter counts and multiply-adds per image of ``runs`` (one each when they share a model)."""
    return {k: sorted({int(getattr(r, k)) for r in runs if getattr(r, k) is not None})
            for k in ("params", "mult_adds")}


def _group_stats(runs: Sequence[Run], expected: int) -> dict[str, Any]:
    ok = [r for r in runs if r.counted]
    m, s = stats.mean_std([r.final_test_acc for r in ok])
    return dict(n=len(ok), expected=max(expected, len(runs)), mean=m, std=s, **model_size(runs),
                best=mean_of([r.best_test_acc for r in ok]), best_epoch=mean_of([r.best_epoch for r in ok]),
                gap_final=mean_of([r.gap_final for r in ok]), gap_best=mean_of([r.gap_best for r in ok]),
                seconds=mean_of([r.seconds for r in ok]), ips=mean_of([r.images_per_second for r in ok]),
                flagged=sum(bool(r.flags) for r in runs))


def pct(x: float, digits: int = 2) -> str:
    """A fraction as a percentage with ``digits`` decimals; ``-`` for NaN."""
    return "-" if not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _span(values: Sequence[int], fmt: str) -> str:
    """One count, or the range a pooled group spans; ``-`` when no run recorded it."""
    if not values:
        return "-"
    lo, hi = format(values[0], fmt), format(values[-1], fmt)
    return lo if lo == hi else f"{lo}–{hi}"


def ranked_table(rows: dict[Any, dict[str, Any]], keys: Sequence[str]) -> pd.DataFrame:
    """A ranked table for people: percentages, mean ± std, ties as ``=k``."""
    items = sorted(rows.items(), key=lambda kv: (-kv[1]["mean"] if math.isfinite(kv[1]["mean"]) else math.inf))
    ranks = stats.tie_ranks([v["mean"] for _, v in items], [v["std"] for _, v in items])
    out = []
    for (lvl, v), rank in zip(items, ranks):
        lvl = lvl if isinstance(lvl, tuple) else (lvl,)
        row: dict[str, Any] = dict(zip(keys, lvl)) if keys else {"arm": "all runs"}
        acc = "-" if not math.isfinite(v["mean"]) else (
            pct(v["mean"]) + (f" ± {pct(v['std'])}" if math.isfinite(v["std"]) else " (1 seed)"))
        row.update({
            "rank": rank, "test acc % (mean ± std)": acc, "finished / expected": f"{v['n']} / {v['expected']}",
            "params": _span(v["params"], ","), "M mult-adds / image": _span([x / 1e6 for x in v["mult_adds"]], ".3g"),
            "best acc %": pct(v["best"]),
            "best epoch": "-" if not math.isfinite(v["best_epoch"]) else f"{v['best_epoch']:.1f}",
            "gap final (pts)": pct(v["gap_final"], 1), "gap at best (pts)": pct(v["gap_best"], 1),
            "seconds": "-" if not math.isfinite(v["seconds"]) else f"{v['seconds']:.1f}",
            "images/s": "-" if not math.isfinite(v["ips"]) else f"{v['ips']:.0f}",
            "flagged runs": v["flagged"],
        })
        out.append(row)
    return pd.DataFrame(out)


def factor_values(rep: Report, key: str) -> dict[str, dict[tuple, float]]:
    """Per level of ``key``: final test accuracy of each counted run, keyed by its pairing unit.

    The unit is (the other varying overrides, seed): two levels are compared on
    runs that differ in ``key`` only. A unit seen twice (merged reruns) is averaged."""
    i = rep.keys.index(key)
    acc: dict[str, dict[tuple, list[float]]] = {}
    for arm, members in rep.arms.items():
        other = arm[:i] + arm[i + 1:]
        for r in members:
            if r.counted:
                acc.setdefault(arm[i], {}).setdefault(other + (r.seed,), []).append(r.final_test_acc)
    return {lvl: {u: float(np.mean(v)) for u, v in units.items()} for lvl, units in acc.items()}


def compare_levels(rep: Report, key: str, a: str, b: str) -> stats.Comparison:
    """Level ``a`` against level ``b`` of ``key``: paired on shared units when at least two are shared."""
    vals = factor_values(rep, key)
    va, vb = vals.get(a, {}), vals.get(b, {})
    shared = [u for u in va if u in vb]
    c = rep.conf
    if len(shared) >= 2:
        return stats.compare([va[u] for u in shared], [vb[u] for u in shared], True, c.bootstrap, c.confidence,
                             c.seed)
    return stats.compare(list(va.values()), list(vb.values()), False, c.bootstrap, c.confidence, c.seed)


def _verdicts(rep: Report, key: str) -> list[str]:
    vals = factor_values(rep, key)
    if len(vals) < 2:
        return [f"{key}: fewer than two levels have finished runs; nothing to compare"]
    means = {lvl: float(np.mean(list(v.values()))) for lvl, v in vals.items()}
    order = sorted(means, key=means.get, reverse=True)
    best = order[0]
    others = order[1:]
    lines = []
    level = int(round(100 * rep.conf.confidence))
    unit = "seeds" if len(rep.keys) == 1 else "runs"
    for other in others[:MAX_VERDICTS]:
        c = compare_levels(rep, key, best, other)
        d, lo, hi = 100 * c.diff, 100 * c.lo, 100 * c.hi
        how = f"{c.n_a} {unit}, paired" if c.paired else f"{c.n_a} vs {c.n_b} {unit}, unpaired"
        if rep.keys != [key] and c.paired:
            how = f"{c.n_a} runs matched on seed and the other factors, paired"
        p = f"P({best} > {other} on a fresh seed) = {c.p_beats:.2f}"
        if not c.has_interval:
            lines.append(f"{best} vs {other}: inconclusive, {d:+.2f} points from {how} (too few for a {level}% "
                         f"interval); {p}")
        elif c.conclusive:
            lines.append(f"{best} beats {other} by {d:+.2f} points ({level}% CI {lo:+.2f} to {hi:+.2f}, {how}); "
                         f"{p}")
        else:
            lines.append(f"{best} vs {other}: inconclusive, {d:+.2f} points ({level}% CI {lo:+.2f} to {hi:+.2f} "
                         f"crosses zero, {how}); {p}")
    if len(others) > MAX_VERDICTS:
        lines.append(f"... and {len(others) - MAX_VERDICTS} more levels below these (see the table)")
    return lines


def ranked_arms(rep: Report) -> list[tuple[tuple[str, ...], float, int]]:
    """(arm, mean final test accuracy, counted runs) of every arm with a counted run, best first.

    Only counted runs (finished every epoch, finite losses) enter, as in the tables;
    an arm none of whose runs counts is not ranked at all."""
    rows = []
    for arm, members in rep.arms.items():
        ok = [r for r in members if r.counted]
        if ok:
            rows.append((arm, mean_of([r.final_test_acc for r in ok]), len(ok)))
    return sorted(rows, key=lambda t: -t[1])  # stable: equal means keep the arms' order
