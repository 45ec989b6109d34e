"""The statistics behind the report's verdicts, for sweeps with a handful of seeds (numpy + scipy).

Why t and not the bootstrap: with 3 paired seeds a percentile bootstrap interval is [min, max] of
the per-seed differences whatever level it claims, and covers the true difference ~76% of the
time. Student's t on the per-seed differences (paired) or Welch's t (unpaired) has its stated
coverage at any n when seed-to-seed noise is roughly normal, as accuracy noise is; its width at
n = 3 (t = 4.30) is the honest answer. Every comparison a report states is one family, and Holm's
procedure keeps the chance of ANY false "X beats Y" in it at alpha. tests/test_stats.py checks each
claim by simulation; scripts/simulate_verdicts.py is the large version.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np

# scipy is imported inside the functions that use it: `python -m ablate.run` imports the report and
# so this module, and scipy.special + scipy.stats would add ~0.5 s to every start.

# A spread below this share of the values' size is floating-point rounding of equal differences
# (0.82 - 0.80 != 0.83 - 0.81 in binary), not seed noise: it is treated as zero spread.
ZERO_SPREAD_RTOL = 1e-9


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN std for a single value, NaN both for none)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and its Student t interval, mean ± t(n - 1) · s / √n.

    NaN bounds with fewer than two values or no spread: there is no noise to size it from."""
    v = np.asarray(values, dtype=float)
    m = float(v.mean()) if v.size else math.nan
    se = float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else 0.0
    return (m, *_interval(m, se, v.size - 1, 1 - confidence))


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: mean difference, its interval, p-value and (paired) seeds won.

    ``[ci_low, ci_high]`` is a ``confidence`` interval for mean(a) - mean(b); NaN when there is
    no spread to estimate it from. ``conclusive`` is ``p_adjusted <= alpha``; for a t method that
    is exactly "the interval excludes zero" (holm_family widens the intervals to keep it so)."""

    diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float  # two-sided, this comparison alone
    p_adjusted: float  # Holm-adjusted over its family; = p_value for a family of one
    alpha: float  # the family's error rate
    method: str  # "paired t", "Welch t", "sign-flip (no spread)", "permutation (no spread)", "too few"
    se: float  # standard error of diff
    df: float  # t degrees of freedom (n - 1 paired, Welch-Satterthwaite unpaired)
    n_a: int
    n_b: int
    paired: bool
    wins: int = 0  # paired: units on which a > b
    ties: int = 0  # paired: units on which a == b
    family: int = 1  # how many comparisons (with a p-value) the adjustment counted

    @property
    def n(self) -> int:
        """Paired units (= n_a = n_b when paired)."""
        return self.n_a

    @property
    def losses(self) -> int:
        return self.n_a - self.wins - self.ties if self.paired else 0

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)

    @property
    def conclusive(self) -> bool:
        """The sign of the difference is settled at the family's level (NaN p: never)."""
        return bool(self.p_adjusted <= self.alpha)

    @property
    def sd(self) -> float:
        """The spread seeds_needed/min_detectable take: per-unit sd of the differences (paired),
        the per-arm sd that gives this standard error with equal arms (unpaired)."""
        if self.paired:
            return self.se * math.sqrt(self.n_a)
        return self.se / math.sqrt(1 / self.n_a + 1 / self.n_b)


def _interval(diff: float, se: float, df: float, alpha: float) -> tuple[float, float]:
    """The 1 - alpha interval diff ± t_{1 - alpha/2, df} · se; NaN without a positive se."""
    from scipy import special

    if not (se > 0 and df > 0 and 0 < alpha < 1):
        return math.nan, math.nan
    half = float(special.stdtrit(df, 1 - alpha / 2)) * se
    return diff - half, diff + half


def compare(a: Sequence[float], b: Sequence[float], paired: bool, alpha: float = 0.05) -> Comparison:
    """``a`` against ``b`` alone (a family of one); adjust a report's comparisons with holm_family.

    Paired (``a[i]``, ``b[i]`` share seed i): Student t on the differences, n - 1 df. Unpaired:
    Welch t, Welch-Satterthwaite df. Fewer than 2 values on a side: no interval, p NaN. Zero
    spread (every difference equal, or both arms constant): no interval, since there is no noise
    to estimate a width from, and p from the exact test that needs no spread: sign-flip
    2/2^n (paired), permutation (1 + [n_a = n_b]) / C(n_a + n_b, n_a) (unpaired); so only many
    seeds that all agree can settle it, and identical arms (difference 0) get p = 1."""
    from scipy import special

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"compare: non-finite value in {a.tolist()} or {b.tolist()}; drop unfinished runs first")
    if paired and a.shape != b.shape:
        raise ValueError(f"compare: paired needs equal lengths, got {a.size} and {b.size} values")
    tol = ZERO_SPREAD_RTOL * max(1.0, float(np.abs(np.concatenate([a, b])).max(initial=0)))
    diff = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    nan = math.nan
    base = dict(diff=diff, ci_low=nan, ci_high=nan, confidence=1 - alpha, p_value=nan, p_adjusted=nan,
                alpha=alpha, method="too few", se=nan, df=nan, n_a=a.size, n_b=b.size, paired=paired)
    if paired:
        d = a - b
        base.update(wins=int((d > tol).sum()), ties=int((np.abs(d) <= tol).sum()))
        if d.size < 2:
            return Comparison(**base)
        se, df = float(d.std(ddof=1)) / math.sqrt(d.size), d.size - 1.0
        if se * math.sqrt(d.size) <= tol:
            p = 1.0 if abs(diff) <= tol else min(1.0, 2.0 ** (1 - d.size))
            return Comparison(**{**base, "method": "sign-flip (no spread)", "p_value": p, "p_adjusted": p,
                                 "se": 0.0, "df": df})
        method = "paired t"
    else:
        if a.size < 2 or b.size < 2:
            return Comparison(**base)
        va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
        se = math.sqrt(va + vb)
        if max(a.std(ddof=1), b.std(ddof=1)) <= tol:
            p = 1.0 if abs(diff) <= tol else (1.0 + (a.size == b.size)) / math.comb(a.size + b.size, a.size)
            return Comparison(**{**base, "method": "permutation (no spread)", "p_value": p, "p_adjusted": p,
                                 "se": 0.0})
        df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
        df, method = float(df), "Welch t"
    p = float(2 * special.stdtr(df, -abs(diff) / se))
    lo, hi = _interval(diff, se, df, alpha)
    return Comparison(**{**base, "method": method, "ci_low": lo, "ci_high": hi, "p_value": p, "p_adjusted": p,
                         "se": se, "df": df})


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down adjustment: (adjusted p-values, the level each comparison was tested at).

    In words: sort the m p-values from smallest to largest. Test the smallest at alpha/m, the
    next at alpha/(m-1), ..., the largest at alpha/1, and stop at the first one that fails: it
    and every larger one are not rejected. This keeps the chance of even one false rejection in
    the family at alpha, whatever the dependence between the comparisons. The adjusted p-value
    is the smallest alpha at which a comparison would be rejected (monotone in p, capped at 1),
    so "rejected" is "adjusted p <= alpha". The returned level is alpha/(m-k+1) for a rejected
    comparison at step k (tied p-values share the stricter level) and, for the rest, the level of
    the step where Holm stopped: an interval at 1 - that level excludes zero exactly when Holm
    rejects. NaN p-values stay NaN (adjusted p and level) and do not count in m."""
    p = np.asarray(p_values, dtype=float)
    adj, level = np.full(p.shape, math.nan), np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return adj, level
    order = ok[np.argsort(p[ok], kind="stable")]
    ps = p[order]
    steps = alpha / (m - np.arange(m))  # step k (from 0) tests at alpha / (m - k)
    adj_sorted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * ps))
    stop = int(np.argmax(adj_sorted > alpha)) if (adj_sorted > alpha).any() else m
    lv = steps.copy()
    if stop < m:
        lv[stop:] = steps[stop]
    _, first, inverse = np.unique(ps, return_index=True, return_inverse=True)
    lv[:stop] = lv[first][inverse][:stop]  # equal p-values: the level of the first of them
    adj[order], level[order] = adj_sorted, lv
    return adj, level


def holm_family(comparisons: Sequence[Comparison], alpha: float = 0.05) -> list[Comparison]:
    """The comparisons one report states, adjusted together with holm (see there for the rule).

    Each comes back with its Holm-adjusted p, ``alpha``, the family size and its interval
    recomputed at 1 - the level Holm tested it at, so that the interval printed excludes zero
    exactly when the comparison is conclusive. The family is every comparison the report could
    have stated, fixed before looking at the means: the best level (picked by its mean) against
    the rest, adjusted over those L - 1 alone, ignores the selection and gives 9-13% false
    winners at 9 levels (scripts/simulate_verdicts.py). Adjust all L(L-1)/2 pairs and print any
    of them, or compare against a level chosen beforehand."""
    adj, level = holm([c.p_value for c in comparisons], alpha)
    m = int(np.isfinite(adj).sum())
    out = []
    for c, p, lv in zip(comparisons, adj, level):
        lo, hi = _interval(c.diff, c.se, c.df, lv) if c.has_interval else (c.ci_low, c.ci_high)
        conf = 1 - lv if math.isfinite(lv) else 1 - alpha
        out.append(replace(c, p_adjusted=float(p), alpha=alpha, family=m, ci_low=lo, ci_high=hi, confidence=conf))
    return out


def t_power(delta: float, sd: float, n: int, alpha: float = 0.05, paired: bool = True) -> float:
    """P(a two-sided t test at level alpha rejects) when the true difference is ``delta``.

    Paired: n units, differences with sd ``sd``, df n - 1. Unpaired: n per arm, each with sd ``sd``,
    df 2n - 2 (the df Welch's t reaches with equal arms). From the noncentral t distribution."""
    from scipy import special
    from scipy.stats import nct

    if n < 2:
        return math.nan
    df = n - 1 if paired else 2 * n - 2
    nc = abs(delta) / (sd * math.sqrt(1 / n if paired else 2 / n))
    crit = float(special.stdtrit(df, 1 - alpha / 2))
    return float(nct.sf(crit, df, nc) + nct.sf(crit, df, -nc))  # upper + lower tail (cdf(-crit) is NaN at large nc)


def _check_sd(sd: float) -> None:
    if not (math.isfinite(sd) and sd > 0):
        raise ValueError(f"sd={sd}: the seed-to-seed spread must be a positive number (zero spread has no t power)")


def seeds_needed(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8, paired: bool = True,
                 max_n: int = 100_000) -> int | None:
    """Fewest seeds (paired units, or per arm unpaired) with which a true difference ``delta``
    is declared at two-sided level ``alpha`` (pass the Holm level) with probability ``power``.
    None when even ``max_n`` seeds would not (e.g. delta = 0)."""
    _check_sd(sd)
    if t_power(delta, sd, max_n, alpha, paired) < power:
        return None
    lo, hi = 1, 2  # power(lo) < power <= power(hi); power grows with n
    while t_power(delta, sd, hi, alpha, paired) < power:
        lo, hi = hi, min(2 * hi, max_n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if t_power(delta, sd, mid, alpha, paired) < power else (lo, mid)
    return hi


def min_detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8, paired: bool = True) -> float:
    """Smallest true difference that ``n`` seeds (paired units, or per arm) declare at level
    ``alpha`` with probability ``power``; inf below 2 seeds. Inverse of seeds_needed:
    min_detectable(sd, seeds_needed(sd, d)) <= d."""
    from scipy.optimize import brentq

    _check_sd(sd)
    if n < 2:
        return math.inf
    hi = sd
    while t_power(hi, sd, n, alpha, paired) < power:
        hi *= 2
    root = brentq(lambda d: t_power(d, sd, n, alpha, paired) - power, 0.0, hi, xtol=1e-14 * hi)
    # Round toward the side that reaches the power, so the claim "resolves this" holds.
    return float(root if t_power(root, sd, n, alpha, paired) >= power else root + 2e-14 * hi)


def competition_ranks(n: int, beats: Collection[tuple[int, int]], missing: Collection[int] = ()) -> list[str]:
    """Ranks of arms 0..n-1 where (i, j) in ``beats`` means i is conclusively better than j.

    Rank of j = 1 + the number of arms above j in a chain of verdicts (i beats j, or i beats k
    beats j, ...). An arm is then always ranked below every arm that beats it, also when pairs
    were tested on different seeds and the verdicts are not transitive (A beats B, B beats C,
    A vs C inconclusive: C ranks 3); arms share a rank ("=k") only where no verdict separates
    them. An arm in ``missing`` (no finished runs) is "-"."""
    above = [{i for i, jj in beats if jj == j} for j in range(n)]
    changed = True
    while changed:  # transitive closure: at most n rounds
        changed = False
        for j in range(n):
            more = set().union(*(above[i] for i in above[j])) - above[j]
            if more:
                above[j] |= more
                changed = True
    ranks = [None if j in missing else 1 + len(above[j] - {j}) for j in range(n)]
    return ["-" if r is None else (f"={r}" if ranks.count(r) > 1 else str(r)) for r in ranks]
