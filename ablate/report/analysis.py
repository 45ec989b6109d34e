"""What the runs say: arms, units, ranked tables per factor, the verdicts and the report's header notes.

Runs are grouped into *arms* by every override that varies across the runs
except the seed; an arm's runs with one seed are one *unit* (:mod:`.units`: the
rule for repeats and for runs without a result). Tables and verdicts use the
same unit values; the verdicts are :mod:`.verdicts`, and the tables' ranks come
from them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import ReportConf
from ..identity import is_factor_key
from . import verdicts as vd
from .runs import FLAG_ADVICE, FLAGS, GAP_SOURCES, RESULT_RULE, SEED_KEY, Run, num, sweep_plan
from .units import REPEAT_RULE, Unit, mixed_configs, unit_stats, units_of

TOO_FEW_WHY = ("fewer than 2 finished seeds on a side and fewer than 2 shared; run at least 2 seeds of each level "
               "(trainer.seed=0,1,2)")
MAX_VERDICTS = 10  # verdict lines printed per factor and scope; verdicts.csv has every one


@dataclass
class Report:
    runs: list[Run]
    conf: ReportConf
    sweeps: list[Path]
    keys: list[str]  # varying overrides, seed excluded, in command-line order
    arms: dict[tuple[str, ...], list[Run]]
    units: dict[tuple[str, ...], dict[Any, Unit]]  # per arm, its units by seed
    expected: dict[tuple[str, ...], int]  # units planned per arm
    n_expected: int | None  # runs the sweeps' grids asked for
    tables: list[tuple[str, str, pd.DataFrame]] = field(default_factory=list)  # (id, title, display)
    verdicts: list[vd.Verdict] = field(default_factory=list)  # every comparison stated, one Holm family
    # (factor, within) -> why (verdicts.TOO_FEW, verdicts.CONFOUNDED) -> the pairs of levels not tested
    untested: dict[tuple[str, str], dict[str, list[tuple[str, str]]]] = field(default_factory=dict)
    verdict_lines: list[tuple[str, list[str]]] = field(default_factory=list)  # (factor, lines) for people
    notes: list[str] = field(default_factory=list)  # header lines: how to read this report's numbers
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

    def shared_flags(self) -> list[str]:
        """Flags every run of the report has (two runs or more): said once in the header, not per run."""
        return [f for f in FLAGS if len(self.runs) > 1 and all(f in r.flags for r in self.runs)]

    def arm_of(self, run: Run) -> tuple[str, ...]:
        return tuple(run.value(k) for k in self.keys)

    def arm_mean(self, arm: tuple[str, ...]) -> float:
        """Mean of the arm's unit values (the tables' number); NaN without any result."""
        return unit_stats(list(self.units[arm].values()), 0)["mean"]

    @property
    def alpha(self) -> float:
        return 1 - self.conf.confidence


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


def _expected_units(arms: dict[tuple[str, ...], list[Run]], units: dict, sweeps: Sequence[Path]
                    ) -> tuple[dict[tuple[str, ...], int], int | None]:
    """Units planned per arm (the seeds its sweeps' grids asked for, and any seen) and the runs planned."""
    planned: dict[tuple[str, ...], set] = {a: set(units[a]) for a in arms}
    n_expected: int | None = 0
    for sweep in map(Path, sweeps):
        plan = sweep_plan(sweep)
        if n_expected is not None:
            n_expected = n_expected + plan[1] if plan else None
        seeds = plan[0].get(SEED_KEY) if plan else None
        for a, members in arms.items():
            if seeds and any(r.sweep == sweep for r in members):
                planned[a] |= {int(s) if num(s) is not None else s for s in seeds}
    if n_expected is not None and n_expected < sum(len(m) for m in arms.values()):
        n_expected = None
    return {a: len(s) for a, s in planned.items()}, n_expected


def analyse(runs: list[Run], conf: ReportConf, sweeps: Sequence[Path]) -> Report:
    """Arms, units, verdicts, ranked tables, header notes and warnings (no plotting, no writing)."""
    keys = varying_keys(runs)
    arms: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        arms.setdefault(tuple(r.value(k) for k in keys), []).append(r)
    units = units_of(arms)
    expected, n_expected = _expected_units(arms, units, sweeps)
    rep = Report(runs, conf, [Path(s) for s in sweeps], keys, arms, units, expected, n_expected)
    stated, rep.untested = vd.family(keys, units)
    rep.verdicts = vd.adjust(stated, rep.alpha)

    for i, k in enumerate(keys):
        groups: dict[str, list[Unit]] = {}
        for a, us in units.items():
            groups.setdefault(a[i], []).extend(us.values())
        exp = {lvl: sum(expected[a] for a in arms if a[i] == lvl) for lvl in groups}
        rows = {lvl: unit_stats(g, exp[lvl]) for lvl, g in groups.items()}
        rank = vd.ranks(rep.verdicts, k, list(rows), {lvl for lvl, row in rows.items() if not row["n"]})
        pooled = " (pooled over the other factors)" if len(keys) > 1 else ""
        rep.tables.append((f"table-factor-{_slug(k)}", f"By {k}{pooled}", ranked_table(rows, [k], rank)))
        rep.verdict_lines.append((k, _factor_lines(rep, k, list(groups))))
    if len(keys) >= 2 or not keys:
        rows = {a: unit_stats(list(units[a].values()), expected[a]) for a in arms}
        title = ("Full grid (every arm; ordered by mean: the per-factor verdicts rank)" if keys
                 else "All runs (nothing varies but the seed)")
        rep.tables.append(("table-grid", title, ranked_table(rows, keys)))
    rep.notes = _notes(rep)
    _warn(rep)
    return rep


def _warn(rep: Report) -> None:
    short = [(a, n) for a, n in ((a, sum(u.value is not None for u in us.values())) for a, us in rep.units.items())
             if n < rep.conf.min_seeds]
    if len(short) > 5:
        rep.warnings.append(f"{len(short)} of {len(rep.arms)} arms have fewer than {rep.conf.min_seeds} finished "
                            f"seeds (min_seeds): their means and verdicts rest on little data")
    else:
        rep.warnings += [f"{rep.label(a)} has {n} finished seed{'s' if n != 1 else ''}, fewer than "
                         f"min_seeds={rep.conf.min_seeds}" for a, n in short]
    for u in mixed_configs(u for us in rep.units.values() for u in us.values()):
        rep.warnings.append(f"{rep.label(u.arm)}, seed {u.key}: {len(u.runs)} runs with different configs "
                            f"(config_hash differs) that no swept key tells apart; counted as one unit, averaged")


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s).strip("-").lower()


def pct(x: float, digits: int = 2) -> str:
    """A fraction as a percentage with ``digits`` decimals; ``-`` for NaN."""
    return "-" if not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _span(values: Sequence[int], fmt: str) -> str:
    """One count, or the range a pooled group spans; ``-`` when no run recorded it."""
    if not values:
        return "-"
    lo, hi = format(values[0], fmt), format(values[-1], fmt)
    return lo if lo == hi else f"{lo}–{hi}"


def ranked_table(rows: dict[Any, dict[str, Any]], keys: Sequence[str], ranks: dict[Any, str] | None = None
                 ) -> pd.DataFrame:
    """A table for people, in percent: mean ± std (ddof = 1) over units, ``rank`` (from the verdicts) when given."""
    def order(kv: tuple[Any, dict[str, Any]]) -> tuple[float, float]:
        r = (ranks or {}).get(kv[0], "-").lstrip("=")
        return (float(r) if r.isdigit() else math.inf, -kv[1]["mean"] if math.isfinite(kv[1]["mean"]) else math.inf)

    out = []
    for lvl, v in sorted(rows.items(), key=order):
        arm = lvl if isinstance(lvl, tuple) else (lvl,)
        row: dict[str, Any] = dict(zip(keys, arm)) if keys else {"arm": "all runs"}
        if ranks is not None:
            row["rank"] = ranks.get(lvl, "-")
        acc = "-" if not math.isfinite(v["mean"]) else (
            pct(v["mean"]) + (f" ± {pct(v['std'])}" if math.isfinite(v["std"]) else " (1 seed)"))
        row.update({
            "test acc % (mean ± std)": acc, "results / expected": f"{v['n']} / {v['expected']}",
            "diverged": v["diverged"], "excluded": v["excluded"],
            "params": _span(v["params"], ","), "M mult-adds / image": _span([x / 1e6 for x in v["mult_adds"]], ".3g"),
            "test acc at best epoch %": pct(v["best"]),
            "best epoch": "-" if not math.isfinite(v["best_epoch"]) else f"{v['best_epoch']:.1f}",
            "gap final (pts)": pct(v["gap_final"], 1), "gap at best (pts)": pct(v["gap_best"], 1),
            "seconds": "-" if not math.isfinite(v["seconds"]) else f"{v['seconds']:.1f}",
            "images/s": "-" if not math.isfinite(v["ips"]) else f"{v['ips']:.0f}",
            "flagged runs": v["flagged"],
        })
        out.append(row)
    return pd.DataFrame(out)


def factor_values(rep: Report, key: str) -> dict[str, dict[tuple, float]]:
    """Per level of ``key``: each unit's value, keyed by (the other varying overrides, seed): the numbers
    the pooled verdicts compare (repeats averaged, diverged runs at chance, runs without a result absent)."""
    i = rep.keys.index(key)
    out: dict[str, dict[tuple, float]] = {}
    for arm, us in rep.units.items():
        for k, u in us.items():
            if u.value is not None:
                out.setdefault(arm[i], {})[arm[:i] + arm[i + 1:] + (k,)] = u.value
    return out


def compare_levels(rep: Report, key: str, a: str, b: str, within: str = "") -> vd.Verdict:
    """The stated verdict on levels ``a`` and ``b`` of ``key`` (pooled, or ``within`` "model=lenet"),
    adjusted with the report's whole family; its ``a`` is the level ahead."""
    for v in rep.verdicts:
        if v.factor == key and v.within == within and {v.a, v.b} == {a, b}:
            return v
    raise KeyError(f"no verdict on {key}={a} vs {b}{f' within {within}' if within else ''} in this report")


def _chance(rep: Report, key: str) -> dict[str, float | None]:
    i = rep.keys.index(key)
    out: dict[str, float | None] = {}
    for arm, runs in rep.arms.items():
        for r in runs:
            if r.chance is not None:
                out.setdefault(arm[i], r.chance)
    return out


def _order(vs: Sequence[vd.Verdict]) -> list[vd.Verdict]:
    return sorted(vs, key=lambda v: (not v.conclusive, v.identical is None, -v.c.diff))


def _factor_lines(rep: Report, key: str, levels: Sequence[str]) -> list[str]:
    """The verdict lines of one factor: pooled, then within each level of the others, then disagreements."""
    mine = [v for v in rep.verdicts if v.factor == key]
    chance = _chance(rep, key)
    i = rep.keys.index(key)
    have = [lvl for lvl in levels if any(u.value is not None for a, us in rep.units.items() if a[i] == lvl
                                         for u in us.values())]
    lines = [f"{lvl}: no run has a result ({_why_none(rep, key, lvl)}); not compared"
             for lvl in levels if lvl not in have]
    if len(have) < 2:
        return lines + [f"{key}: fewer than two levels have finished runs; nothing to compare"]
    scopes = sorted({v.within for v in mine} | {w for f, w in rep.untested if f == key}, key=lambda w: w != "")
    for within in scopes:  # pooled first
        vs = _order([v for v in mine if v.within == within])
        if within and within == next(w for w in scopes if w):
            lines.append(f"Within each level of {', '.join(o for o in rep.keys if o != key)}:")
        lines += [vd.verdict_line(v, chance) for v in vs[:MAX_VERDICTS]]
        if len(vs) > MAX_VERDICTS:
            lines.append(_more(vs[MAX_VERDICTS:], within))
        if not within:
            lines += _untested_pooled(rep, key)
    few = [len(why.get(vd.TOO_FEW, [])) for (f, w), why in rep.untested.items() if f == key and w]
    if sum(few):  # one line for every level of the others (a one-seed grid would say it once per level)
        n, where = sum(few), f"{sum(map(bool, few))} of the levels of {', '.join(o for o in rep.keys if o != key)}"
        lines.append(f"{n} pair{'s' if n != 1 else ''} of levels within {where} cannot be compared: "
                     f"{TOO_FEW_WHY}")
    return lines + vd.disagreements(mine)


def _more(rest: Sequence[vd.Verdict], within: str) -> str:
    """The line that stands for the verdicts not printed, saying how many of them are conclusive."""
    kinds = {"conclusive": sum(v.conclusive for v in rest), "identical": sum(v.identical is not None for v in rest)}
    kinds["inconclusive"] = len(rest) - sum(kinds.values())
    said = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
    return (f"... and {len(rest)} more pair{'s' if len(rest) != 1 else ''}{f' within {within}' if within else ''}"
            f" ({said}; verdicts.csv lists every one)")


def _untested_pooled(rep: Report, key: str) -> list[str]:
    """Why pooled pairs of levels with results have no verdict: too few seeds, or confounded with another factor."""
    why = rep.untested.get((key, ""), {})
    lines = []
    if n := len(why.get(vd.TOO_FEW, [])):
        lines.append(f"{n} pair{'s' if n != 1 else ''} of levels cannot be compared: {TOO_FEW_WHY}")
    if pairs := why.get(vd.CONFOUNDED, []):
        others = ", ".join(o for o in rep.keys if o != key)
        named = "; ".join(f"{a} vs {b}" for a, b in pairs[:5]) + (f"; and {len(pairs) - 5} more" if len(pairs) > 5 else "")
        lines.append(f"Not compared pooled ({named}): each pair shares fewer than two ({others}, seed) units and ran the "
                     f"levels of {others} in different shares, so a difference could come from {others} as well as "
                     f"from {key}; sweep both over the same {others} levels, or read the within-level verdicts")
    return lines


def _why_none(rep: Report, key: str, level: str) -> str:
    i = rep.keys.index(key)
    runs = [r for a, rs in rep.arms.items() if a[i] == level for r in rs]
    counts = {f: sum(f in r.flags for r in runs) for f in ("failed", "diverged", "incomplete")}
    return ", ".join(f"{n} {f}" for f, n in counts.items() if n) or "no result"


def _notes(rep: Report) -> list[str]:
    """Header lines that say how this report's numbers were made."""
    notes = []
    for f in rep.shared_flags():
        which = "clean train" if rep.runs[0].gap_source == "train_eval" else "running train"
        detail = f"{which} - test accuracy above {100 * rep.conf.overfit_gap:.1f} points"
        notes.append(FLAG_ADVICE[f].format(n=len(rep.runs), detail=detail) + ".")
    notes.append(_selection_note(rep))
    sources = {r.gap_source for r in rep.runs if r.gap_source}
    if sources:
        notes.append("Gaps (and the overfitting flag): " + "; ".join(
            f"{GAP_SOURCES[s]}{' (older runs)' if len(sources) > 1 and s == 'train' else ''}"
            for s in sorted(sources, reverse=True)) + ".")
    notes.append("Tables: mean ± std of the final test accuracy over seeds; std is the sample standard deviation "
                 "(ddof = 1).")
    if any(u.diverged or u.value is None for us in rep.units.values() for u in us.values()):
        notes.append(f"Runs that did not finish: {RESULT_RULE}.")
    repeats = sum(u.repeats for us in rep.units.values() for u in us.values())
    if repeats:
        notes.append(f"{repeats} run{' repeats' if repeats == 1 else 's repeat'} a configuration and seed already "
                     f"seen: {REPEAT_RULE}.")
    if rep.verdicts:
        m, n = rep.verdicts[0].c.family, len(rep.verdicts)
        family = (f"one comparison is stated, tested at {100 * rep.alpha:.4g}%" if n == 1 else
                  f"all {n} comparisons stated form one family, adjusted together (Holm over {m} comparisons), so "
                  f"the chance of any false 'beats' in this report is at most {100 * rep.alpha:.4g}%")
        notes.append(
            f"Verdicts: paired t on the units both levels ran (a unit is a seed, with the other factors' levels "
            f"when several vary), Welch t where two levels share fewer than two (with the other factors' levels "
            f"in equal shares, else they are not compared pooled); {family}. Conclusive = "
            f"{'Holm-adjusted ' if n > 1 else ''}p <= {rep.alpha:.4g}; each interval is printed at the level "
            f"{'Holm tested it at' if n > 1 else 'of the test'}, so it excludes zero exactly when the verdict is "
            f"conclusive. Ranks come from these verdicts: rank = 1 + the number of levels that conclusively beat "
            f"it, directly or through a chain (A beats B beats C ranks C third); levels no verdict separates share "
            f"a rank (=k).")
    return notes


def _stepped_on_test(r: Run) -> bool:
    """Whether the run's scheduler stepped on a test metric (older runs: a metric scheduler without val)."""
    if r.scheduler_metric:
        return r.scheduler_metric.startswith("test")
    if r.selection != "test":
        return False
    try:
        from ..optim import SCHEDULERS  # torch-free at import

        return SCHEDULERS.schema_of(r.config.get("scheduler") or {}).metric is not None
    except Exception:  # noqa: BLE001  (an unknown or unrecorded scheduler: nothing to say)
        return False


def _selection_note(rep: Report) -> str:
    on_test = [r for r in rep.runs if r.selection == "test" and r.final_test_acc is not None]
    if not on_test:
        return ("Best epoch: chosen on the validation split; the test set chose nothing, and the verdicts compare "
                "final test accuracy.")
    which = "every run" if len(on_test) == len([r for r in rep.runs if r.final_test_acc is not None]) else \
        f"{len(on_test)} runs"
    line = (f"No validation split in {which} (dataset.val_size 0): the best epoch was chosen on the test set, so "
            f"'test acc at best epoch' is optimistic; the verdicts compare the final test accuracy.")
    stepped = sorted({str(r.choices.get("scheduler", "?")) for r in on_test if _stepped_on_test(r)})
    if stepped:
        line += (f" {' and '.join(stepped)} stepped on the test loss, as the tutorial did: "
                 f"{'its' if len(stepped) == 1 else 'their'} test accuracy is optimistic.")
    return line


def ranked_arms(rep: Report) -> list[tuple[tuple[str, ...], float, int]]:
    """(arm, mean over its units, units with a result) of every arm with a result, best first (the
    tables' numbers: repeats averaged, diverged runs at chance)."""
    rows = []
    for arm, us in rep.units.items():
        s = unit_stats(list(us.values()), 0)
        if s["n"]:
            rows.append((arm, s["mean"], s["n"]))
    return sorted(rows, key=lambda t: -t[1])  # stable: equal means keep the arms' order
