"""ablate.stats: hand-computed numbers, and every "95%" / "5%" / "80%" claim checked by simulation.

The simulations are small and seeded (a few seconds in all); scripts/simulate_verdicts.py runs
the large version. Sweeps are drawn as the report sees them: final accuracy = base + a per-seed
effect shared by every level run with that seed + per-run noise.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats as st

from ablate import stats

SEED_SD = 0.01  # seed-to-seed spread shared by the levels (cancels when paired)
RUN_SD = 0.004 / math.sqrt(2)  # per-run noise: per-seed differences have sd 0.4 points


def draw(rng: np.random.Generator, levels: int, seeds: int, paired: bool, effects=None) -> np.ndarray:
    """Final accuracies, shape (levels, seeds); unpaired levels ran different seeds."""
    shared = rng.normal(0, SEED_SD, (1 if paired else levels, seeds))
    acc = 0.85 + shared + rng.normal(0, RUN_SD, (levels, seeds))
    return acc + (0 if effects is None else np.asarray(effects)[:, None])


def family(acc: np.ndarray, paired: bool, alpha: float = 0.05) -> list[tuple[int, int, stats.Comparison]]:
    """All pairwise comparisons of one factor's levels, adjusted as one Holm family."""
    pairs = list(itertools.combinations(range(len(acc)), 2))
    adjusted = stats.holm_family([stats.compare(acc[i], acc[j], paired) for i, j in pairs], alpha)
    return [(i, j, c) for (i, j), c in zip(pairs, adjusted)]


def binomial_ceiling(rate: float, n: int) -> float:
    return rate + 3 * math.sqrt(rate * (1 - rate) / n)


# ----------------------------------------------------------------------------- hand-computed


def test_paired_t_matches_the_formula():
    a, b = np.array([0.83, 0.84, 0.845, 0.86]), np.array([0.81, 0.82, 0.81, 0.845])  # p = 0.014
    d = a - b
    se = d.std(ddof=1) / 2
    half = st.t.ppf(0.975, 3) * se
    c = stats.compare(a, b, paired=True)
    assert (c.method, c.df, c.n, c.paired) == ("paired t", 3, 4, True)
    assert c.diff == pytest.approx(d.mean()) and c.se == pytest.approx(se)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.p_value == pytest.approx(2 * st.t.sf(d.mean() / se, 3))
    assert c.p_value == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert c.conclusive and c.p_adjusted == c.p_value and c.confidence == 0.95
    assert (c.wins, c.ties, c.losses) == (4, 0, 0)
    # The 99% interval is wider and reaches zero: p = 0.014 settles it at 5%, not at 1%.
    c99 = stats.compare(a, b, paired=True, alpha=0.01)
    assert c99.ci_high - c99.ci_low == pytest.approx(2 * st.t.ppf(0.995, 3) * se) and not c99.conclusive


def test_welch_matches_the_formula():
    a, b = np.array([0.9, 0.88]), np.array([0.80, 0.82, 0.81])
    va, vb = a.var(ddof=1) / 2, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 1 + vb ** 2 / 2)
    c = stats.compare(a, b, paired=False)
    assert (c.method, c.n_a, c.n_b) == ("Welch t", 2, 3) and c.df == pytest.approx(df)
    half = st.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (c.ci_low, c.ci_high) == pytest.approx((0.08 - half, 0.08 + half))
    assert c.p_value == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    assert c.sd == pytest.approx(math.sqrt(va + vb) / math.sqrt(1 / 2 + 1 / 3))


def test_too_few_values_give_no_interval_and_no_verdict():
    for c in (stats.compare([0.9], [0.8], paired=True), stats.compare([0.9, 0.91], [0.8], paired=False),
              stats.compare([], [0.8, 0.81], paired=False)):
        assert c.method == "too few" and not c.has_interval and math.isnan(c.p_value) and not c.conclusive
    assert stats.compare([0.9], [0.8], paired=True).wins == 1
    with pytest.raises(ValueError, match="paired needs equal lengths, got 2 and 3"):
        stats.compare([1, 2], [1, 2, 3], paired=True)
    with pytest.raises(ValueError, match="non-finite value"):
        stats.compare([1, float("nan")], [1, 2], paired=False)


def test_zero_spread_uses_the_exact_test_and_identical_arms_never_win():
    # Three seeds, each +2 points (floating point makes the differences unequal by ~1e-17).
    c = stats.compare([0.82, 0.83, 0.84], [0.80, 0.81, 0.82], paired=True)
    assert c.method == "sign-flip (no spread)" and not c.has_interval
    assert c.p_value == 0.25 and not c.conclusive and (c.wins, c.n) == (3, 3)
    # Six seeds that all agree exactly: 2 / 2^6 < 5%, settled without an interval.
    six = stats.compare(np.full(6, 0.83), np.full(6, 0.81), paired=True)
    assert six.p_value == pytest.approx(2 / 64) and six.conclusive and not six.has_interval
    # Identical arms: p = 1 at any n, paired or not, and every seed a tie.
    same = stats.compare(np.full(10, 0.8), np.full(10, 0.8), paired=True)
    assert same.p_value == 1.0 and not same.conclusive and same.ties == 10
    assert stats.compare(np.full(10, 0.8), np.full(10, 0.8), paired=False).p_value == 1.0
    # Two constant arms: the permutation p of the most extreme split, 2 / C(8, 4).
    u = stats.compare(np.full(4, 0.9), np.full(4, 0.8), paired=False)
    assert u.method == "permutation (no spread)" and u.p_value == pytest.approx(2 / 70) and u.conclusive
    assert stats.compare(np.full(3, 0.9), np.full(4, 0.8), paired=False).p_value == pytest.approx(1 / 35)
    # One constant arm is ordinary Welch: the other arm carries the spread (df = its n - 1).
    w = stats.compare([0.9, 0.9, 0.9], [0.8, 0.82, 0.81], paired=False)
    assert w.method == "Welch t" and w.df == pytest.approx(2)


def test_win_counts_count_ties_separately():
    c = stats.compare([1, 2, 3], [0, 2, 4], paired=True)
    assert (c.wins, c.ties, c.losses, c.n) == (1, 1, 1, 3)


def test_holm_on_a_known_vector():
    adj, level = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan], alpha=0.05)
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(adj[:4], [0.03, 0.06, 0.06, 0.02])
    # 0.005 <= 0.05/4 and 0.01 <= 0.05/3 are rejected at their steps; 0.03 > 0.05/2 stops Holm there.
    np.testing.assert_allclose(level[:4], [0.05 / 3, 0.025, 0.025, 0.0125])
    assert math.isnan(adj[4]) and math.isnan(level[4])
    adj, _ = stats.holm([0.5, 0.9])
    np.testing.assert_allclose(adj, [1.0, 1.0])  # capped
    adj, level = stats.holm([0.01, 0.01, 0.2])  # tied p-values share the stricter level
    np.testing.assert_allclose(adj, [0.03, 0.03, 0.2])
    np.testing.assert_allclose(level, [0.05 / 3, 0.05 / 3, 0.05])
    assert stats.holm([])[0].size == 0 and np.isnan(stats.holm([math.nan])[0]).all()


def test_adjusted_intervals_exclude_zero_exactly_when_holm_rejects():
    rng = np.random.default_rng(3)
    seen = set()
    for k in range(60):
        acc = draw(rng, 4, 5, paired=True, effects=[0, 0.004, 0.008, 0.012])
        fam = family(acc, paired=True)
        for _, _, c in fam:
            excludes = c.ci_low > 0 or c.ci_high < 0
            assert excludes == c.conclusive and c.family == 6 and c.confidence >= 0.95
            half = st.t.ppf(1 - (1 - c.confidence) / 2, c.df) * c.se
            assert (c.ci_low, c.ci_high) == pytest.approx((c.diff - half, c.diff + half))
            seen.add(c.conclusive)
    assert seen == {True, False}
    # A comparison without a p-value is not counted in the family.
    fam = stats.holm_family([stats.compare([0.9], [0.8], True), stats.compare([0.9, 0.91], [0.8, 0.82], True)])
    assert [c.family for c in fam] == [1, 1] and math.isnan(fam[0].p_adjusted)


def test_competition_ranks_follow_conclusive_verdicts():
    # 0 beats everyone, 1 beats 3, nothing separates 1 and 2: the printed rule gives 1, =2, =2, 3.
    assert stats.competition_ranks(4, {(0, 1), (0, 2), (0, 3), (1, 3)}) == ["1", "=2", "=2", "3"]
    assert stats.competition_ranks(3, set()) == ["=1", "=1", "=1"]
    assert stats.competition_ranks(3, {(0, 1)}, missing={2}) == ["1", "2", "-"]
    # A chain: 0 beats 1 beats 2, with 0 vs 2 inconclusive (tested on other seeds): 2 still ranks below 1.
    assert stats.competition_ranks(3, {(0, 1), (1, 2)}) == ["1", "2", "3"]
    # A cycle (only possible when each pair was tested on different seeds): its members share a rank.
    assert stats.competition_ranks(4, {(0, 1), (1, 2), (2, 0), (2, 3)}) == ["=3", "=3", "=3", "4"]


def test_mean_std_is_sample_std():
    assert stats.mean_std([0.8, 0.82, 0.81]) == pytest.approx((0.81, 0.01))
    assert math.isnan(stats.mean_std([0.8])[1]) and all(math.isnan(x) for x in stats.mean_std([]))


# ----------------------------------------------------------------------------- by simulation


@pytest.mark.parametrize("paired", [True, False])
def test_interval_coverage(paired):
    rng = np.random.default_rng(11)
    rates = []
    for n in (3, 5, 10):
        hits = 0
        for _ in range(1000):
            a = rng.normal(0.02, 0.01, n)
            b = rng.normal(0, 0.01 if paired else 0.02, n)  # Welch: unequal spreads
            c = stats.compare(a, b, paired)
            hits += c.ci_low <= 0.02 <= c.ci_high
        rates.append(hits / 1000)
    assert min(rates) >= 0.93, rates
    assert np.mean(rates) == pytest.approx(0.95, abs=0.01), rates


def test_no_false_winner_beyond_alpha_under_the_null():
    """Every level the same: families with ANY conclusive verdict stay at 5% (plus simulation error)."""
    rng = np.random.default_rng(5)
    per_cell, hits = 120, []
    for paired, levels, seeds in itertools.product((True, False), (2, 3, 4, 9), (2, 3, 5, 10)):
        fw = sum(any(c.conclusive for *_, c in family(draw(rng, levels, seeds, paired), paired))
                 for _ in range(per_cell))
        assert fw / per_cell <= binomial_ceiling(0.05, per_cell), (paired, levels, seeds, fw)
        hits.append(fw)
    assert sum(hits) / (per_cell * len(hits)) <= binomial_ceiling(0.05, per_cell * len(hits))


def test_power_two_points_with_five_paired_seeds():
    rng = np.random.default_rng(7)
    found = sum(family(draw(rng, 2, 5, True, effects=[0.02, 0]), True)[0][2].conclusive for _ in range(200))
    assert found / 200 >= 0.8


@pytest.mark.parametrize("paired", [True, False])
def test_seeds_needed_reaches_the_power_it_promises(paired):
    sd, delta = 0.01, 0.01
    n = stats.seeds_needed(sd, delta, alpha=0.05, power=0.8, paired=paired)
    assert n == (10 if paired else 17)  # z approximation (1.96 + 0.84)^2 = 7.8 (x2 unpaired), t adds the rest
    assert stats.t_power(delta, sd, n - 1, paired=paired) < 0.8 <= stats.t_power(delta, sd, n, paired=paired)
    rng = np.random.default_rng(13)
    found = 0
    for _ in range(600):
        b = rng.normal(0, sd if not paired else 0, n)
        a = (b + rng.normal(delta, sd, n)) if paired else rng.normal(delta, sd, n)
        found += stats.compare(a, b, paired).conclusive
    assert 0.75 <= found / 600 <= 0.87
    assert stats.min_detectable(sd, n, paired=paired) <= delta < stats.min_detectable(sd, n - 1, paired=paired)


def test_min_detectable_and_seeds_needed_agree():
    rng = np.random.default_rng(17)
    for _ in range(40):
        sd, delta = 10 ** rng.uniform(-3, -1.5), 10 ** rng.uniform(-3, -1.5)
        alpha, paired = float(rng.choice([0.05, 0.05 / 6, 0.05 / 36])), bool(rng.integers(2))
        n = stats.seeds_needed(sd, delta, alpha, paired=paired)
        assert stats.min_detectable(sd, n, alpha, paired=paired) <= delta
        assert stats.t_power(stats.min_detectable(sd, n, alpha, paired=paired), sd, n, alpha, paired) >= 0.8
    assert stats.t_power(0.0, 0.01, 5) == pytest.approx(0.05)  # no difference: rejects at the level
    assert stats.seeds_needed(0.01, 0.0) is None and stats.min_detectable(0.01, 1) == math.inf
    with pytest.raises(ValueError, match="sd=0.0"):
        stats.seeds_needed(0.0, 0.01)


@pytest.mark.parametrize("n,confidence", [(3, 0.95), (5, 0.9)])
def test_t_interval_covers_the_mean_at_its_stated_rate(n, confidence):
    """Seeds as draws of normal noise around a true accuracy: the interval covers it at its stated rate."""
    rng = np.random.default_rng(0)
    trials = 4000
    hits = 0
    for _ in range(trials):
        m, lo, hi = stats.t_interval(rng.normal(0.9, 0.01, n), confidence)
        hits += lo <= 0.9 <= hi
    assert abs(hits / trials - confidence) < 4.5 * math.sqrt(confidence * (1 - confidence) / trials)
    m, lo, hi = stats.t_interval([0.80, 0.82, 0.84], 0.95)  # s = 0.02, t(2) = 4.303
    assert (m, hi - m, m - lo) == pytest.approx((0.82, 4.3027 * 0.02 / math.sqrt(3), 4.3027 * 0.02 / math.sqrt(3)),
                                                rel=1e-4)
    assert math.isnan(stats.t_interval([0.8], 0.95)[1])  # one seed: no spread to size it from
    assert math.isnan(stats.t_interval([0.8, 0.8], 0.95)[1])
