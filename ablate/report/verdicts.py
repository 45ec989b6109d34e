"""Verdicts: every comparison a report states, tested together, and said in words.

The rules (the report prints them):

- Two levels of a factor are compared on units (seed, plus the other factors' levels) that differ
  in that factor only: paired t on the units both levels ran (at least two), else Welch's t on all
  of each level's units (:func:`ablate.stats.compare`), but only when the other factors' levels
  make up the same shares of both; otherwise the pair is not compared (it is confounded).
- Every pair of a factor's levels is compared, pooled over the other factors and, with two or
  more factors, within each combination of the other factors' levels; all of them, over all
  factors, are ONE Holm family (:func:`ablate.stats.holm_family`). A verdict is conclusive when
  its Holm-adjusted p <= 1 - ``report.confidence``; its interval is printed at the level Holm
  tested it at, so it excludes zero exactly then. Adjusting only "the best level against the
  rest" ignores that the best was picked from the same data (9-13% false winners at 9 levels).
- Ranks come from the pooled verdicts: rank = 1 + the number of levels that conclusively beat a
  level, directly or through a chain of verdicts; levels no verdict separates share a rank, "=k".
- Levels whose runs trained identically on every shared unit are "identical here".
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from .runs import Run
from .units import Unit

POWER = 0.8  # the power "seeds that would settle it" is stated at
MAX_DIFF = 1.0  # the widest difference of two accuracies (fractions): intervals are cut there
MAX_SEEDS = 1000  # beyond this many seeds a difference is called too small to settle (and not searched further)
CSV_COLUMNS = ["factor", "within", "a", "b", "diff", "ci_low", "ci_high", "confidence", "n_a", "n_b", "paired",
               "method", "p_value", "p_adjusted", "conclusive", "wins", "ties", "seeds_needed", "min_detectable",
               "excluded", "excluded_a", "excluded_b", "diverged_a", "diverged_b", "unpartnered", "identical"]


@dataclass(frozen=True)
class Verdict:
    """One stated comparison: level ``a`` minus level ``b`` of ``factor`` (``a`` is the one ahead)."""

    factor: str
    within: str  # "" pooled over the other factors, else "model=lenet" (the other factors' levels)
    a: str
    b: str
    c: stats.Comparison
    unit: str  # what one paired unit is, in words: "seeds", "(model, seed) pairs"
    excluded_a: int = 0  # units of a with no result (failed, or stopped early): left out
    excluded_b: int = 0
    diverged_a: int = 0  # units of a that diverged: in, at chance accuracy
    diverged_b: int = 0
    total_a: int = 0  # units of a in this comparison's scope, with a result or not
    total_b: int = 0
    unpartnered: int = 0  # units with a result left out of a paired comparison: the other level lacks that seed
    shared: int = 0  # units both levels have results for (paired when at least two)
    identical: str | None = None  # why the two trained identically ("" when not visible); None: they did not
    seeds_needed: int | None = None  # inconclusive: seeds to settle the observed difference with POWER
    min_detectable: float | None = None  # inconclusive: the difference these seeds settle with POWER

    @property
    def pooled(self) -> bool:
        return not self.within

    @property
    def conclusive(self) -> bool:
        return self.c.conclusive and self.identical is None

    @property
    def excluded(self) -> int:
        return self.excluded_a + self.excluded_b


# ----------------------------------------------------------------------------- building the family
def _alike(x: Run, y: Run) -> bool:
    """Whether two runs logged the same metrics in every epoch (timing aside)."""
    if x.final_test_acc != y.final_test_acc:  # the common case, decided without the arrays
        return False
    tx, ty = x.trace(), y.trace()
    if tx is None or ty is None or tx[0] != ty[0] or tx[1].shape != ty[1].shape:
        return False
    return bool(np.array_equal(tx[1], ty[1], equal_nan=True))


def identical_reason(pairs: Sequence[tuple[Unit, Unit]], a: str, b: str) -> str | None:
    """None unless every pair of units (the paired comparison's) trained identically; then the likely reason where it is visible:
    two learning-rate schedules (the runs' ``scheduler`` configs differ) that applied the same rates."""
    if not pairs or not all(x.counted and y.counted for x, y in pairs):  # a diverged or failed run differs
        return None
    runs = [(x.counted[0], y.counted[0]) for x, y in pairs]
    if not all(_alike(x, y) for x, y in runs):
        return None
    x, y = runs[0]
    if x.config.get("scheduler") == y.config.get("scheduler") or "lr" not in x.epochs:
        return ""
    lr = x.epochs["lr"].to_numpy(float)
    if np.unique(lr[np.isfinite(lr)]).size == 1:
        n = len(lr)
        return (f"the learning rate never changed: it stayed at {lr[0]:g} for all {n} epoch{'s' if n != 1 else ''}, "
                f"so neither {a} nor {b} had acted yet")
    return f"{a} and {b} applied the same learning rate in every epoch"


TOO_FEW = "too few"  # why a pair of levels is not compared: fewer than two results on a side, fewer than two shared
CONFOUNDED = "confounded"  # ... or nothing shared and the other factors' levels not balanced between them


def _balanced(ka: Collection[tuple], kb: Collection[tuple]) -> bool:
    """Whether each context (a unit key less its seed: the other factors' levels) holds the same share of both
    levels' units. Only then does an unpaired difference of means not mix in the other factors' effects."""
    ca, cb = Counter(k[:-1] for k in ka), Counter(k[:-1] for k in kb)
    return all(ca[c] * len(kb) == cb[c] * len(ka) for c in ca.keys() | cb.keys())


def compare_units(factor: str, within: str, a: str, b: str, ua: dict[tuple, Unit], ub: dict[tuple, Unit],
                  unit: str) -> Verdict | str:
    """``a`` against ``b`` on their units (keyed by the other factors' levels plus the seed; a family of one:
    adjust with :func:`adjust`), oriented so that the level ahead comes first: paired on the units both have
    results for (at least two), else Welch when the other factors' levels are balanced between them. Else
    why no test is possible: :data:`TOO_FEW` or :data:`CONFOUNDED`."""
    va = {k: v for k, u in ua.items() if (v := u.value) is not None}
    vb = {k: v for k, u in ub.items() if (v := u.value) is not None}
    shared = [k for k in va if k in vb]
    paired = len(shared) >= 2
    if not paired and min(len(va), len(vb)) < 2:
        return TOO_FEW
    if not paired and not _balanced(va, vb):
        return CONFOUNDED
    xa, xb = ([va[k] for k in shared], [vb[k] for k in shared]) if paired else (list(va.values()), list(vb.values()))
    if np.mean(xa) < np.mean(xb):  # the level ahead first
        a, b, ua, ub, xa, xb = b, a, ub, ua, xb, xa
    c = stats.compare(xa, xb, paired)
    same = identical_reason([(ua[k], ub[k]) for k in shared], a, b) if paired else None
    return Verdict(factor, within, a, b, c, unit,
                   excluded_a=sum(u.value is None for u in ua.values()),
                   excluded_b=sum(u.value is None for u in ub.values()),
                   diverged_a=sum(u.diverged for u in ua.values()), diverged_b=sum(u.diverged for u in ub.values()),
                   total_a=len(ua), total_b=len(ub), shared=len(shared),
                   unpartnered=len(va) + len(vb) - 2 * len(shared) if paired else 0, identical=same)


def _unit_words(others: Sequence[str]) -> str:
    return "seeds" if not others else f"({', '.join([*others, 'seed'])}) pairs"


def family(keys: Sequence[str], units: dict[tuple[str, ...], dict[Any, Unit]]
           ) -> tuple[list[Verdict], dict[tuple[str, str], dict[str, list[tuple[str, str]]]]]:
    """Every comparison the report states, unadjusted: for each factor, every pair of its levels that can
    be tested, pooled over the other factors and within each combination of their levels; and, per
    (factor, within), the pairs of levels with results that could not be tested, by why
    (:data:`TOO_FEW`, :data:`CONFOUNDED`)."""
    out: list[Verdict] = []
    untested: dict[tuple[str, str], dict[str, list[tuple[str, str]]]] = {}
    for i, k in enumerate(keys):
        others = [o for o in keys if o != k]
        scopes: dict[tuple[str, ...], dict[str, dict[Any, Unit]]] = {}  # within -> level -> unit key -> unit
        for arm, arm_units in units.items():
            rest = arm[:i] + arm[i + 1:]
            for key, u in arm_units.items():
                scopes.setdefault((), {}).setdefault(arm[i], {})[rest + (key,)] = u
                if others:
                    scopes.setdefault(rest, {}).setdefault(arm[i], {})[(key,)] = u
        for rest, levels in scopes.items():
            within = ", ".join(f"{o}={v}" for o, v in zip(others, rest))
            have = [lvl for lvl, us in levels.items() if any(u.value is not None for u in us.values())]
            unit = _unit_words(others if not rest else [])
            for a, b in itertools.combinations(have, 2):
                v = compare_units(k, within, a, b, levels[a], levels[b], unit)
                if isinstance(v, str):
                    untested.setdefault((k, within), {}).setdefault(v, []).append((a, b))
                else:
                    out.append(v)
    return out, untested


@functools.lru_cache(maxsize=4096)
def _min_detectable_per_sd(n: int, level: float, paired: bool) -> float:
    """min_detectable for a spread of 1: it scales with the spread (power depends on difference / sd only),
    and every inconclusive verdict of a report shares its Holm level, so one root-finding serves them all."""
    return stats.min_detectable(1.0, n, level, POWER, paired)


def _settle(v: Verdict, level: float) -> Verdict:
    """Seeds that would settle an inconclusive verdict and the difference the current seeds settle."""
    c = v.c
    if v.conclusive or v.identical is not None or not (c.se > 0 and math.isfinite(c.se)):
        return v
    n = c.n_a if c.paired else round(2 / (1 / c.n_a + 1 / c.n_b))  # unequal levels: their harmonic mean
    need = stats.seeds_needed(c.sd, c.diff, level, POWER, c.paired, max_n=MAX_SEEDS)
    return replace(v, seeds_needed=need, min_detectable=c.sd * _min_detectable_per_sd(n, level, c.paired))


def _within_reach(c: stats.Comparison) -> stats.Comparison:
    """The interval cut to the differences accuracies can have (fractions: -1 to +1). The true difference lies
    there, so coverage is unchanged, and 2 seeds no longer print "CI -4859.40 to +4880.80 points"."""
    return replace(c, ci_low=max(c.ci_low, -MAX_DIFF), ci_high=min(c.ci_high, MAX_DIFF)) if c.has_interval else c


def adjust(verdicts: Sequence[Verdict], alpha: float) -> list[Verdict]:
    """One Holm family over every verdict; the inconclusive ones get what would settle them."""
    adjusted = stats.holm_family([v.c for v in verdicts], alpha)
    return [_settle(replace(v, c=_within_reach(c)), 1 - c.confidence) for v, c in zip(verdicts, adjusted)]


def ranks(verdicts: Sequence[Verdict], factor: str, levels: Sequence[str], without: Collection[str] = ()
          ) -> dict[str, str]:
    """Competition ranks of a factor's levels from its pooled conclusive verdicts; ``without`` (levels with
    no result) rank "-"."""
    idx = {lvl: i for i, lvl in enumerate(levels)}
    beats = {(idx[v.a], idx[v.b]) for v in verdicts if v.factor == factor and v.pooled and v.conclusive}
    return dict(zip(levels, stats.competition_ranks(len(levels), beats, {idx[lvl] for lvl in without})))


# ----------------------------------------------------------------------------- in words
def pts(x: float) -> str:
    return f"{100 * x:.2f}"


def _smallest_exact_n(c: stats.Comparison, level: float) -> int:
    """Fewest seeds that all agree with which the exact no-spread test reaches ``level``."""
    n = 2
    while (2.0 ** (1 - n) if c.paired else 2.0 / math.comb(2 * n, n)) > level:
        n += 1
    return n


def _how(v: Verdict) -> str:
    """How it was tested: method, units, wins."""
    c = v.c
    if c.paired:
        won = f"won {c.wins}" + (f", tied {c.ties}" if c.ties else "") + f" of {c.n_a} {v.unit}"
        how = f"{c.method} on {c.n_a} {v.unit}, {v.a} {won}"
        if v.unpartnered:
            how += f"; {v.unpartnered} run{'s' if v.unpartnered != 1 else ''} without a partner on the other side " \
                   f"left out"
        return how
    seeds = "seeds" if v.unit == "seeds" else "runs"
    one = v.unit.removesuffix("s")  # "seed", "(model, seed) pair"
    why = f"no {one} ran both" if not v.shared else f"only 1 {one} ran both; pairing needs 2"
    return f"{c.method} on {c.n_a} vs {c.n_b} {seeds} ({why})"


def _survivors(v: Verdict, chance: dict[str, float | None]) -> list[str]:
    """What happened to the runs that did not finish, per side."""
    out = []
    for lvl, div, exc, tot in ((v.a, v.diverged_a, v.excluded_a, v.total_a), (v.b, v.diverged_b, v.excluded_b,
                                                                               v.total_b)):
        if div:
            at = f" (entered at chance, {pts(chance[lvl])}%)" if chance.get(lvl) is not None else ""
            out.append(f"{lvl} diverged on {div} of {tot} {v.unit}{at}")
        if exc:
            out.append(f"{exc} of {lvl}'s {tot} {v.unit} {'was' if exc == 1 else 'were'} left out (the run failed "
                       f"or stopped early)")
    return out


def settle_sentence(v: Verdict) -> str:
    """For an inconclusive verdict, in words: what the current seeds can tell apart and what would settle it."""
    c = v.c
    level = 1 - c.confidence
    if c.se == 0:
        if c.p_value == 1:  # no difference at all, and none to settle
            same = f"on every one of the {c.n_a} {v.unit}" if c.paired else f"on each of its {c.n_a} and {c.n_b} seeds"
            return f"Both levels scored exactly the same {same}: there is no difference here to settle."
        if c.paired:
            return (f"All {c.n_a} {v.unit} differ by exactly the same amount, which leaves no spread to build an "
                    f"interval from; {_smallest_exact_n(c, level)} {v.unit} that all agree would settle it at this "
                    f"report's level.")
        return (f"Each level scored the same on every one of its seeds ({c.n_a} and {c.n_b}), which leaves no "
                f"spread to build an interval from; {_smallest_exact_n(c, level)} seeds per level that all agree "
                f"would settle it at this report's level.")
    n = f"{c.n_a} {v.unit}" if c.paired else f"{c.n_a} and {c.n_b} seeds"
    if v.min_detectable >= 1:  # a spread this wide (e.g. a diverged seed at chance) hides any accuracy difference
        cannot = f"With {n} and this spread, no difference in accuracy can be told apart"
    else:
        cannot = f"With {n}, differences under {pts(v.min_detectable)} points cannot be told apart"
    if v.seeds_needed is None:
        return f"{cannot}; not even {MAX_SEEDS}{f' {v.unit}' if c.paired else ' seeds per level'} would settle a " \
               f"difference this small."
    per = f" {v.unit}" if c.paired else " seeds per level"
    return f"{cannot}; about {v.seeds_needed}{per} would settle this one."


def verdict_line(v: Verdict, chance: dict[str, float | None]) -> str:
    """One verdict in a sentence (two for an inconclusive one: what would settle it)."""
    c = v.c
    where = f" (within {v.within})" if v.within else ""
    level = f"{100 * c.confidence:.4g}%"
    extra = "; ".join(_survivors(v, chance))
    extra = f" Note: {extra}." if extra else ""
    if v.identical is not None:
        why = f" ({v.identical})" if v.identical else ""
        return (f"{v.a} and {v.b}{where}: identical here: the factor had no effect in this setting; their runs "
                f"logged the same metrics in every epoch on all {c.n_a} shared {v.unit}{why}.{extra}")
    p = f"adjusted p = {c.p_adjusted:.3g}"
    if not c.has_interval:  # every unit differed by the same amount: an exact test, no interval
        body = f"no interval: no spread, exact {p}; {_how(v)}"
    else:
        body = f"{level} CI {100 * c.ci_low:+.2f} to {100 * c.ci_high:+.2f}, {p}; {_how(v)}"
    if v.conclusive:
        return f"{v.a} beats {v.b}{where} by {pts(c.diff)} points ({body}).{extra}"
    crosses = "; the interval crosses zero" if c.has_interval else ""
    return (f"{v.a} vs {v.b}{where}: inconclusive, {v.a} ahead by {pts(c.diff)} points ({body}{crosses}). "
            f"{settle_sentence(v)}{extra}")


def disagreements(verdicts: Sequence[Verdict]) -> list[str]:
    """Pairs on which the pooled verdict and the within-level ones point different ways, one of them
    conclusively (the other factor changes which level is better)."""
    groups: dict[tuple[str, frozenset], list[Verdict]] = {}
    for v in verdicts:
        if v.identical is None:
            groups.setdefault((v.factor, frozenset((v.a, v.b))), []).append(v)
    out = []
    for (factor, _), vs in groups.items():
        pooled = next((v for v in vs if v.pooled), None)
        if pooled is None or len(vs) < 2:
            continue
        against = [v for v in vs if not v.pooled and v.a != pooled.a and v.c.diff > 0]
        if not against or not (pooled.conclusive or any(v.conclusive for v in against)):
            continue
        def says(x: Verdict) -> str:
            return f"{x.a} {'beats' if x.conclusive else 'leads (inconclusive)'} {x.b} by {pts(x.c.diff)} points"

        where = "; ".join(f"within {v.within}, {says(v)}" for v in against)
        out.append(f"{factor}: pooled and within-level verdicts disagree on {pooled.a} vs {pooled.b}: pooled, "
                   f"{says(pooled)}, but {where}. The better level depends on the other factor; read the "
                   f"within-level verdicts.")
    return out


def verdicts_frame(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """verdicts.csv: one row per comparison stated; fractions (not percent), ``conclusive`` true/false."""
    rows = []
    for v in verdicts:
        c = v.c
        rows.append(dict(
            factor=v.factor, within=v.within, a=v.a, b=v.b, diff=c.diff, ci_low=c.ci_low, ci_high=c.ci_high,
            confidence=c.confidence, n_a=c.n_a, n_b=c.n_b, paired=c.paired,
            method=f"{c.method}; Holm over {c.family} comparisons", p_value=c.p_value, p_adjusted=c.p_adjusted,
            conclusive=v.conclusive, wins=c.wins if c.paired else None, ties=c.ties if c.paired else None,
            seeds_needed=v.seeds_needed, min_detectable=v.min_detectable, excluded=v.excluded,
            excluded_a=v.excluded_a, excluded_b=v.excluded_b, diverged_a=v.diverged_a, diverged_b=v.diverged_b,
            unpartnered=v.unpartnered, identical=v.identical is not None))
    df = pd.DataFrame(rows, columns=CSV_COLUMNS)
    return df.astype({c: "Int64" for c in ("wins", "ties", "seeds_needed")})
