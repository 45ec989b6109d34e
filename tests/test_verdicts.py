"""The report's verdicts: simulated sweeps through the real report, and one test per defect they had.

Simulated sweeps are drawn as in tests/test_stats.py (a per-seed effect shared by every level
that ran that seed, plus per-run noise: per-seed differences have sd 0.4 points) and written in
the run-directory format (tests/rundirs.py), then read by ``report.build(..., plots=False)``.
What the suite covers (scripts/simulate_verdicts.py --report runs the whole grid):

- false winners under the null, through run directories: 2 x 2 and 3 x 3 and 9 x 3 paired,
  4 x 5 unpaired (a few hundred sweeps in all). With 24-60 sweeps a design, each design's
  check only bounds the rate near 15-18% (5% + 3 binomial se) and the pooled one near 8.5%;
  what keeps the rate at 5% whatever the number of levels is asserted structurally (every pair
  stated, all in one Holm family), and the 5% itself is simulated at scale in
  tests/test_stats.py (the same families, 3,840 sweeps);
- interval coverage at n = 3, 5, 10 and the power (a 2-point difference with 5 paired seeds,
  and 80% at the difference the t test promises to resolve with 80%), through the report's
  analysis (``report.analyse`` on runs held in memory: many sweeps, no files).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import rundirs
from ablate import report, stats
from ablate.config import ReportConf
from ablate.report import verdicts as vd

SEED_SD = 0.01  # seed-to-seed spread shared by the levels (cancels when paired)
RUN_SD = 0.004 / math.sqrt(2)  # per-run noise: per-seed differences have sd 0.4 points
BASE = 0.85


def draw(rng: np.random.Generator, levels: int, seeds: int, paired: bool, effect: float = 0.0) -> np.ndarray:
    """Final accuracies (levels, seeds); level 0 is ``effect`` better than the rest."""
    acc = BASE + rng.normal(0, SEED_SD, (1 if paired else levels, seeds)) + rng.normal(0, RUN_SD, (levels, seeds))
    acc[0] += effect
    return acc


def truth(v: vd.Verdict, effect: float) -> float:
    """The true a - b of a verdict on levels l0, l1, ... (l0 is ``effect`` better)."""
    return effect * ((v.a == "l0") - (v.b == "l0"))


def binomial_ceiling(rate: float, n: int, k: float = 3.0) -> float:
    return rate + k * math.sqrt(rate * (1 - rate) / n)


def memory_runs(acc: np.ndarray, paired: bool) -> list[report.Run]:
    """The runs of a simulated sweep as the report holds them, without files: finished, unflagged."""
    n = acc.shape[1]
    runs = []
    for i, row in enumerate(acc):
        for s, a in enumerate(row):
            seed = s if paired else i * n + s
            over = {"scheduler": rundirs.level_name(i), "trainer.seed": str(seed)}
            runs.append(report.Run(path=Path(f"/sim/{i}/{seed}"), sweep=Path("/sim"), overrides=over, choices={},
                                   config={}, seed=seed, status="completed", epochs_planned=2, epochs_done=2,
                                   final_test_acc=float(a)))
    return runs


def printed_verdicts(rep: report.Report) -> list[str]:
    """The verdict bullets of report.md, as a student reads them."""
    md = report.markdown(rep)
    section = md[md.index("## Verdicts"):md.index("## Tables")].split("Warnings:")[0]
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


def said_a_winner(rep: report.Report) -> bool:
    return any(" beats " in line for line in printed_verdicts(rep))


# ----------------------------------------------------------------------------- simulations
# (levels, seeds, paired, sweeps): 154 sweeps, about 2,000 run directories
NULL_DESIGNS = [(2, 2, True, 40), (3, 3, True, 60), (9, 3, True, 24), (4, 5, False, 30)]


@pytest.fixture(scope="module")
def null_reports(tmp_path_factory) -> dict[tuple, list[report.Report]]:
    """Every NULL_DESIGNS sweep written as run directories and read back by the real report."""
    tmp = tmp_path_factory.mktemp("null")
    out = {}
    for k, (levels, seeds, paired, sweeps) in enumerate(NULL_DESIGNS):
        rng = np.random.default_rng(100 + k)
        out[(levels, seeds, paired)] = [
            report.build([rundirs.finals_sweep(tmp / f"{levels}x{seeds}{paired}-{i}",
                                               draw(rng, levels, seeds, paired), paired)], plots=False)
            for i in range(sweeps)]
    return out


@pytest.mark.parametrize("design", [d[:3] for d in NULL_DESIGNS],
                         ids=lambda d: f"{d[0]}x{d[1]}-{'paired' if d[2] else 'unpaired'}")
def test_no_real_difference_gives_a_false_winner_in_at_most_5_percent_of_sweeps(null_reports, design):
    """The old report printed a winner in 46% (3 x 3) to 94% (9 x 3) of such sweeps."""
    reps = null_reports[design]
    printed = np.mean([said_a_winner(rep) for rep in reps])
    assert printed <= binomial_ceiling(0.05, len(reps)), f"{design}: a printed winner in {printed:.0%} of sweeps"
    levels = design[0]
    assert all(len(rep.verdicts) == levels * (levels - 1) // 2 for rep in reps)  # every pair stated, one family
    assert all(v.c.family == len(rep.verdicts) for rep in reps for v in rep.verdicts if math.isfinite(v.c.p_value))
    assert np.mean([any(v.conclusive for v in rep.verdicts) for rep in reps]) == printed


def test_false_winners_pooled_over_the_null_designs(null_reports):
    flags = [said_a_winner(rep) for reps in null_reports.values() for rep in reps]
    assert np.mean(flags) <= binomial_ceiling(0.05, len(flags), 2.0)


def _analysed(acc: np.ndarray, paired: bool) -> report.Report:
    return report.analyse(memory_runs(acc, paired), ReportConf(), [])


@pytest.mark.parametrize("n", [3, 5, 10])
def test_intervals_cover_the_true_difference(n):
    """Two levels (a family of one: the 95% interval) 1 point apart, paired and unpaired."""
    rng = np.random.default_rng(n)
    covered = total = 0
    for paired in (True, False):
        for _ in range(150):
            (v,) = _analysed(draw(rng, 2, n, paired, effect=0.01), paired).verdicts
            assert v.c.confidence == pytest.approx(0.95) and v.c.paired == paired
            covered += v.c.ci_low <= truth(v, 0.01) <= v.c.ci_high
            total += 1
    assert covered / total >= 0.93, f"n={n}: coverage {covered / total:.1%}"


@pytest.mark.parametrize("levels", [2, 3])
def test_two_points_with_five_paired_seeds_is_declared_in_80_percent_of_sweeps(levels):
    rng = np.random.default_rng(7 + levels)
    found = []
    for _ in range(150):
        rep = _analysed(draw(rng, levels, 5, True, effect=0.02), True)
        found.append(all(v.conclusive and v.a == "l0" for v in rep.verdicts if "l0" in (v.a, v.b)))
    assert np.mean(found) >= 0.8


def test_power_is_what_the_t_test_promises_through_the_report():
    """At the difference 5 paired seeds resolve with 80% power (stats.min_detectable), the report declares it
    in 80% of sweeps: not far more (a test looser than stated) nor far fewer (power lost on the way)."""
    effect = stats.min_detectable(math.sqrt(2) * RUN_SD, 5, 0.05, 0.8, paired=True)
    rng = np.random.default_rng(23)
    n = 300
    found = sum(any(v.conclusive and v.a == "l0" for v in _analysed(draw(rng, 2, 5, True, effect), True).verdicts)
                for _ in range(n))
    band = 3 * math.sqrt(0.8 * 0.2 / n)
    assert 0.8 - band <= found / n <= 0.8 + band, f"declared in {found / n:.1%} of sweeps"


def test_power_through_run_directories(tmp_path):
    rng = np.random.default_rng(11)
    found = [any(v.conclusive and v.a == "l0" for v in report.build(
        [rundirs.finals_sweep(tmp_path / str(i), draw(rng, 2, 5, True, effect=0.02), True)], plots=False).verdicts)
        for i in range(20)]
    assert np.mean(found) >= 0.8


def test_adjusted_intervals_exclude_zero_exactly_when_conclusive():
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(40):
        for v in _analysed(draw(rng, 4, 5, True, effect=0.006), True).verdicts:
            assert (v.c.ci_low > 0) == v.conclusive and v.c.diff >= 0  # a is the level ahead
            seen.add(v.conclusive)
    assert seen == {True, False}


def test_seeds_needed_settles_the_observed_difference():
    """The promise "about N seeds would settle this one": at the verdict's Holm level, N seeds have 80% power for
    the observed difference and N - 1 do not; min_detectable is what the current seeds reach."""
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(20):
        for v in _analysed(draw(rng, 3, 3, True, effect=0.004), True).verdicts:
            c, level = v.c, 1 - v.c.confidence
            if v.conclusive or v.seeds_needed is None:
                continue
            assert v.seeds_needed == stats.seeds_needed(c.sd, c.diff, level, 0.8, True)
            assert v.min_detectable == pytest.approx(stats.min_detectable(c.sd, c.n, level, 0.8, True), rel=1e-9)
            assert stats.t_power(c.diff, c.sd, v.seeds_needed, level) >= 0.8
            checked += 1
    assert checked > 20


# ----------------------------------------------------------------------------- one test per defect
def _lines(rep: report.Report) -> list[str]:
    return [line for _, lines in rep.verdict_lines for line in lines]


def test_two_seeds_that_agree_are_not_a_zero_width_interval(tmp_path):
    """Old: "95% CI +0.50 to +0.50, 2 seeds" and a winner. Two seeds that agree have no spread to build an
    interval from; the exact sign-flip test says they settle nothing, and how many would."""
    sweep = rundirs.sweep(tmp_path / "s", {"cosine": [0.815, 0.825], "step": [0.81, 0.82]})
    rep = report.build([sweep], plots=False)
    (printed,) = printed_verdicts(rep)
    assert printed.startswith("cosine vs step: inconclusive, cosine ahead by 0.50 points (no interval: no spread")
    assert " beats " not in printed and "+0.50 to +0.50" not in printed
    assert "6 seeds that all agree would settle it" in printed  # 2 / 2^6 < 5%
    (v,) = rep.verdicts
    assert not v.conclusive and not v.c.has_interval and v.c.p_value == pytest.approx(0.5)


def test_three_seed_interval_is_student_t_not_min_to_max(sweep3):
    """Old: the percentile bootstrap of 3 seeds printed [min, max] of the differences at any level. Now the
    t interval at the level Holm tested the comparison at, recomputed here from the three differences."""
    import scipy.stats as st

    d = {(x, y): np.array(FINALS[x]) - np.array(FINALS[y]) for x, y in (("cosine", "step"), ("cosine", "plateau"),
                                                                     ("plateau", "step"))}
    widths = {}
    for conf in (0.95, 0.99):
        p = [2 * st.t.sf(abs(x.mean()) / (x.std(ddof=1) / math.sqrt(3)), 2) for x in d.values()]
        _, levels = stats.holm(p, 1 - conf)
        x, level = d[("cosine", "step")], levels[0]
        half = st.t.ppf(1 - level / 2, 2) * x.std(ddof=1) / math.sqrt(3)
        rep = report.build([sweep3], plots=False, confidence=conf)
        line = next(y for y in printed_verdicts(rep) if "cosine" in y and "step" in y)
        assert (f"{100 * (1 - level):.4g}% CI {100 * (x.mean() - half):+.2f} to {100 * (x.mean() + half):+.2f}"
                in line)
        assert x.mean() - half < x.min() and x.mean() + half > x.max()  # wider than [min, max]
        v = report.compare_levels(rep, "scheduler", "cosine", "step")
        assert (v.c.ci_low, v.c.ci_high) == pytest.approx((x.mean() - half, x.mean() + half))
        widths[conf] = 2 * half
    assert widths[0.99] > widths[0.95]


def test_all_pairs_are_one_holm_family(sweep3):
    """Old: the best level by mean was tested against each other one, each at 5%, nothing adjusted."""
    rep = report.build([sweep3], plots=False)
    assert len(rep.verdicts) == 3 and {frozenset((v.a, v.b)) for v in rep.verdicts} == {
        frozenset(p) for p in itertools.combinations(FINALS, 2)}
    raw = [stats.compare(*(np.array(FINALS[x]) for x in (v.a, v.b)), paired=True) for v in rep.verdicts]
    adj, _ = stats.holm([c.p_value for c in raw])
    assert [v.c.p_adjusted for v in rep.verdicts] == pytest.approx(list(adj))
    assert all(v.c.family == 3 for v in rep.verdicts)
    assert "Holm over 3 comparisons" in report.markdown(rep)


def test_wins_are_counted_not_called_a_fresh_seed_probability(tmp_path, sweep3):
    """Old: "P(cosine > step on a fresh seed) = 1.00" from 3 seeds."""
    rep = report.build([sweep3], plots=False)
    md = report.markdown(rep)
    assert "fresh seed" not in md and "P(" not in md
    assert "cosine won 3 of 3 seeds" in md
    sweep = tmp_path / "u"
    for seed, acc in enumerate([0.80, 0.82, 0.81]):
        rundirs.write_run(sweep, ["scheduler=step", f"trainer.seed={seed}"], rundirs.curve(acc))
    for seed, acc in zip([10, 11], [0.9, 0.88]):
        rundirs.write_run(sweep, ["scheduler=cosine", f"trainer.seed={seed}"], rundirs.curve(acc))
    rep = report.build([sweep], plots=False)
    (line,) = _lines(rep)
    assert "Welch t on 2 vs 3 seeds" in line and " won " not in line
    assert any("cosine has 2 finished seeds, fewer than min_seeds=3" in w for w in rep.warnings)


def test_diverged_and_failed_runs_are_counted_not_dropped(tmp_path):
    """Old: marking one cosine seed diverged turned "inconclusive" into "cosine beats plateau ... P = 1.00"."""
    sweep = rundirs.sweep(tmp_path / "s", {"cosine": [0.83, 0.84, 0.845], "plateau": [0.805, 0.83, 0.80]})
    assert not said_a_winner(report.build([sweep], plots=False))
    rundirs.write_run(sweep, ["scheduler=cosine", "trainer.seed=2"], [0.5, 0.6], train_loss=[0.9, float("nan")],
                      test_loss=[0.5, None], status="diverged", error="non-finite training loss in epoch 2",
                      epochs_planned=5)  # overwrites the finished seed 2 of cosine
    rundirs.write_run(sweep, ["scheduler=plateau", "trainer.seed=3"], [0.3], status="failed", error="boom",
                      epochs_planned=5)
    rep = report.build([sweep], plots=False)
    (printed,) = printed_verdicts(rep)
    assert "cosine diverged on 1 of 3 seeds (entered at chance, 10.00%)" in printed
    assert "1 of plateau's 4 seeds was left out (the run failed or stopped early)" in printed
    assert not said_a_winner(rep)
    (v,) = rep.verdicts
    assert not v.conclusive and (v.a, v.b) == ("plateau", "cosine")  # the diverged seed is at chance, 10%
    assert (v.diverged_b, v.excluded_a, v.excluded) == (1, 1, 1) and (v.c.n_a, v.c.paired) == (3, True)
    cosine = report.factor_values(rep, "scheduler")["cosine"]
    assert cosine[(2,)] == pytest.approx(0.1)  # fashion_mnist_mini: 10 classes
    assert "a diverged run is a result, not missing data" in report.markdown(rep)
    df = {t: d for t, _, d in rep.tables}["table-factor-scheduler"].set_index("scheduler")
    assert (df.loc["cosine", "diverged"], df.loc["plateau", "excluded"]) == (1, 1)
    csv_row = report.verdicts_frame(rep.verdicts).iloc[0]
    assert (csv_row["excluded"], csv_row["diverged_b"]) == (1, 1)


def test_unbalanced_merge_compares_what_both_levels_ran(tmp_path):
    """Old: the best level by the mean of all its runs was tested on the seed-matched runs only, and printed
    "cosine beats step by -3.00 points". Now each verdict names the level ahead on the units it compares."""
    a = rundirs.sweep(tmp_path / "a", {"cosine": [0.80, 0.81, 0.82], "step": [0.83, 0.841, 0.849]})
    b = tmp_path / "b"
    rundirs.write_multirun(b, ["scheduler=cosine", "trainer.seed=3,4,5,6,7"])
    for seed in range(3, 8):  # cosine alone ran five more seeds, all high
        rundirs.write_run(b, ["scheduler=cosine", f"trainer.seed={seed}"], rundirs.curve(0.95))
    rep = report.build([a, b], plots=False)
    (printed,) = printed_verdicts(rep)
    assert printed.startswith("step beats cosine by 3.00 points")
    (v,) = rep.verdicts
    assert (v.a, v.b, v.c.paired, v.c.n, v.unpartnered) == ("step", "cosine", True, 3, 5) and v.conclusive
    assert v.c.diff == pytest.approx(0.03)
    (line,) = _lines(rep)
    assert line.startswith("step beats cosine by 3.00 points")
    assert "5 runs without a partner on the other side left out" in line
    df = {t: d for t, _, d in rep.tables}["table-factor-scheduler"].set_index("scheduler")
    assert df["rank"].to_dict() == {"step": "1", "cosine": "2"}  # from the verdict, not the means (89.75 vs 84.00)
    assert df.loc["cosine", "test acc % (mean ± std)"].startswith("89.75")


def test_a_repeated_run_counts_once_in_tables_and_verdicts(tmp_path):
    """Old: a run repeated in merged sweeps was counted twice in the tables but once (averaged) in the verdicts."""
    a = rundirs.sweep(tmp_path / "a", {"step": [0.80, 0.82, 0.81], "cosine": [0.83, 0.84, 0.845]})
    b = rundirs.sweep(tmp_path / "b", {"cosine": [0.85]})  # cosine seed 0 again: the same configuration
    rep = report.build([a, b], plots=False)
    units = [(0.83 + 0.85) / 2, 0.84, 0.845]
    table = f" | {100 * np.mean(units):.2f} ± {100 * np.std(units, ddof=1):.2f} | 3 / 3 |"
    assert table in report.markdown(rep)  # old: 84.12 ± 0.85 over four runs, "4 / 6"
    v = report.compare_levels(rep, "scheduler", "cosine", "step")
    assert v.c.n == 3 and v.c.diff == pytest.approx(np.mean(units) - np.mean([0.80, 0.82, 0.81]))
    assert report.factor_values(rep, "scheduler")["cosine"][(0,)] == pytest.approx(units[0])
    assert "1 run repeats a configuration and seed already seen" in report.markdown(rep)


def test_the_printed_rank_rule_is_the_rule_applied(tmp_path):
    """Old: ranks from non-overlapping mean ± std (1 and 2 here) beside an inconclusive verdict, and a printed
    rule that was not the one applied. Now rank = 1 + levels that conclusively beat it, and the text says so."""
    sweep = rundirs.sweep(tmp_path / "s", {"a": [0.85, 0.86, 0.87], "b": [0.82, 0.83, 0.84],
                                           "c": [0.60, 0.602, 0.61]})
    rep = report.build([sweep], plots=False)
    df = {t: d for t, _, d in rep.tables}["table-factor-scheduler"].set_index("scheduler")
    assert df["rank"].to_dict() == {"a": "=1", "b": "=1", "c": "3"}
    beats = {(v.a, v.b) for v in rep.verdicts if v.conclusive}
    assert ("a", "b") not in beats and {("a", "c"), ("b", "c")} <= beats
    md = report.markdown(rep)
    assert "rank = 1 + the number of levels that conclusively beat it" in md and "mean ± std intervals" not in md


def test_identical_arms_are_reported_as_identical(tmp_path):
    """Old: step and plateau runs that never changed the lr in 3 epochs were two arms with a verdict between them."""
    sweep = tmp_path / "s"
    for seed in range(3):
        curve = [0.5 + seed / 100, 0.6 + seed / 100, 0.62 + seed / 100]
        for sch in ("step", "plateau"):
            rundirs.write_run(sweep, [f"scheduler={sch}", f"trainer.seed={seed}"], curve, lr=[0.001] * 3)
        rundirs.write_run(sweep, ["scheduler=cosine", f"trainer.seed={seed}"], [a + 0.01 for a in curve],
                          lr=[0.001, 0.0005, 0.0001])
    rep = report.build([sweep], plots=False)
    line = next((x for x in printed_verdicts(rep) if "step" in x and "plateau" in x), "")
    assert line.startswith(("plateau and step: identical here", "step and plateau: identical here"))
    v = report.compare_levels(rep, "scheduler", "step", "plateau")
    assert v.identical is not None and not v.conclusive and v.seeds_needed is None
    assert "identical here: the factor had no effect in this setting" in line
    assert "the learning rate never changed: it stayed at 0.001 for all 3 epochs" in line
    assert report.compare_levels(rep, "scheduler", "cosine", "step").identical is None
    df = report.verdicts_frame(rep.verdicts).set_index(["a", "b"])
    assert df["identical"].sum() == 1


def test_overfitting_flag_uses_the_clean_train_accuracy(tmp_path):
    """Old: test accuracy against the running train accuracy (train mode, augmented, dropout)."""
    sweep = tmp_path / "s"
    # Running train accuracy 0.99 but 0.75 in a clean pass: a 4-point gap, not overfitting.
    calm = rundirs.write_run(sweep, ["model=a"], [0.7, 0.72, 0.71], train_acc=[0.8, 0.9, 0.99],
                             train_eval_acc=[0.7, 0.74, 0.75], val_acc=[0.69, 0.73, 0.72])
    over = rundirs.write_run(sweep, ["model=b"], [0.7, 0.72, 0.71], train_acc=[0.7, 0.72, 0.73],
                             train_eval_acc=[0.8, 0.9, 0.95], val_acc=[0.69, 0.73, 0.72])
    old = rundirs.write_run(sweep, ["model=c"], [0.7, 0.72, 0.71], train_acc=[0.8, 0.9, 0.99])
    rep = report.build([sweep], plots=False)
    runs = {r.path: r for r in rep.runs}
    assert "overfitting" not in runs[calm].flags and runs[calm].gap_final == pytest.approx(0.04)
    assert runs[over].flags["overfitting"] == "clean train - test accuracy 24.0 points > 10.0"
    assert runs[old].flags["overfitting"] == "running train - test accuracy 28.0 points > 10.0"
    md = report.markdown(rep)
    assert "clean train accuracy (eval mode, no augmentation) minus test accuracy" in md
    assert "under augmentation and dropout, so not the generalisation gap" in md  # said for the older run


def test_two_factors_within_each_level_and_pooled_and_when_they_disagree(tmp_path):
    """Old: a pooled "cosine beats onecycle" stood while onecycle led on LeNet, and nothing said so."""
    sweep = tmp_path / "hw"
    noise = [0.0, 0.004, -0.003, 0.002, -0.001]
    for model, lead in (("lenet", -0.01), ("cnn3", 0.08), ("simple_cnn", 0.08)):
        for sch in ("cosine", "onecycle"):
            for seed in range(5):
                acc = 0.8 + (lead + noise[seed] if sch == "cosine" else 0.001 * seed)
                rundirs.write_run(sweep, [f"scheduler={sch}", f"model={model}", f"trainer.seed={seed}"],
                                  rundirs.curve(acc))
    rep = report.build([sweep], plots=False)
    printed = printed_verdicts(rep)
    assert any(x.startswith("scheduler: pooled and within-level verdicts disagree") for x in printed)
    assert any("(within model=lenet)" in x for x in printed)
    sched = [v for v in rep.verdicts if v.factor == "scheduler"]
    assert sorted(v.within for v in sched) == ["", "model=cnn3", "model=lenet", "model=simple_cnn"]
    assert len({v.c.family for v in rep.verdicts}) == 1  # the within and pooled verdicts of both factors: one family
    pooled = report.compare_levels(rep, "scheduler", "cosine", "onecycle")
    lenet = report.compare_levels(rep, "scheduler", "cosine", "onecycle", within="model=lenet")
    assert (pooled.a, pooled.c.n, pooled.c.wins, pooled.conclusive) == ("cosine", 15, 10, True)
    assert lenet.a == "onecycle" and lenet.c.diff > 0
    lines = dict(rep.verdict_lines)["scheduler"]
    assert "Within each level of model:" in lines
    assert any(x.startswith("onecycle ") and "(within model=lenet)" in x for x in lines)
    assert lines[0].startswith("cosine beats onecycle by") and "cosine won 10 of 15 (model, seed) pairs" in lines[0]
    note = next(x for x in lines if "disagree" in x)
    assert note.startswith("scheduler: pooled and within-level verdicts disagree on cosine vs onecycle")
    assert "pooled, cosine beats onecycle by" in note and "within model=lenet, onecycle " in note
    df = report.verdicts_frame(rep.verdicts)
    assert set(df.loc[df["factor"] == "scheduler", "within"]) == {"", "model=lenet", "model=cnn3",
                                                                  "model=simple_cnn"}


# ----------------------------------------------------------------------------- edge cases, in memory
def _run(overrides: dict[str, str], seed: int, acc: float | None, trace: bool = False, status: str = "completed",
         flag: str | None = None) -> report.Run:
    """A run as the report holds it, without files; ``trace``: with an epochs table (for "identical here")."""
    over = {**overrides, "trainer.seed": str(seed)}
    r = report.Run(path=Path("/mem/" + ",".join(f"{k}={v}" for k, v in over.items())), sweep=Path("/mem"),
                   overrides=over, choices={}, config={}, seed=seed, status=status, epochs_planned=2,
                   epochs_done=2, final_test_acc=acc, chance=0.1)
    if trace:
        r.epochs = pd.DataFrame({"epoch": [1, 2], "test_acc": [acc - 0.05, acc], "train_loss": [1.0, 0.5]})
    if flag:
        r.flags[flag] = "in epoch 2"
    return r


def _analyse(runs: list[report.Run]) -> report.Report:
    return report.analyse(runs, ReportConf(arm_panels=False), [])


def test_levels_confounded_with_another_factor_are_not_compared_pooled():
    """Old: two merged sweeps, (step, lenet) and (cosine, resnet) on the same seeds, gave "cosine beats step by
    4.85 points (Welch t ...; no shared seeds to pair on)": the model's 5 points, credited to the scheduler."""
    noise = [0.0, 0.004, -0.003, 0.002]
    runs = [_run({"model": "lenet", "scheduler": "step"}, s, 0.80 + e) for s, e in enumerate(noise)]
    runs += [_run({"model": "resnet", "scheduler": "cosine"}, s, 0.85 - e) for s, e in enumerate(noise)]
    rep = _analyse(runs)
    assert rep.verdicts == []
    assert rep.untested[("scheduler", "")] == {vd.CONFOUNDED: [("step", "cosine")]}
    (line,) = dict(rep.verdict_lines)["scheduler"]
    assert line.startswith("Not compared pooled (step vs cosine): each pair shares fewer than two (model, seed)")
    assert "a difference could come from model as well as from scheduler" in line
    # Balanced, the unpaired pooled comparison stands: both schedulers ran lenet and resnet, on other seeds.
    runs = [_run({"model": m, "scheduler": "step"}, s, 0.80 + e) for m in ("lenet", "resnet")
            for s, e in enumerate(noise)]
    runs += [_run({"model": m, "scheduler": "cosine"}, 4 + s, 0.80 + e) for m in ("lenet", "resnet")
             for s, e in enumerate(noise)]
    v = report.compare_levels(_analyse(runs), "scheduler", "step", "cosine")
    assert (v.c.method, v.c.n_a, v.c.n_b, v.conclusive) == ("Welch t", 8, 8, False)


def test_identical_here_only_when_every_paired_unit_trained_identically():
    """Old: one shared seed with equal traces made a conclusive Welch verdict (p = 5e-5) "identical here ... on
    all 6 shared seeds"; and a pair with a diverged side was skipped, so a diverged level was called identical."""
    a = {0: 0.90, 1: 0.91, 2: 0.90, 3: 0.91, 4: 0.90, 5: 0.85}
    b = {5: 0.85, 6: 0.80, 7: 0.81, 8: 0.80, 9: 0.81, 10: 0.80}
    runs = [_run({"scheduler": "A"}, s, x, trace=True) for s, x in a.items()]
    runs += [_run({"scheduler": "B"}, s, x, trace=True) for s, x in b.items()]
    rep = _analyse(runs)
    (v,) = rep.verdicts
    assert v.identical is None and v.conclusive and v.c.method == "Welch t"
    (line,) = dict(rep.verdict_lines)["scheduler"]
    assert line.startswith("A beats B by 8.33 points") and "(only 1 seed ran both; pairing needs 2)" in line
    runs = [_run({"scheduler": lvl}, s, x, trace=True) for s, x in ((0, 0.80), (1, 0.81)) for lvl in "AB"]
    runs += [_run({"scheduler": "A"}, 2, 0.82, trace=True),
             _run({"scheduler": "B"}, 2, 0.30, status="diverged", flag="diverged")]
    (v,) = _analyse(runs).verdicts
    assert v.identical is None and v.diverged_b == 1


def test_ranks_never_tie_levels_a_verdict_separates():
    """Old: B beats C, A beats B, A vs C inconclusive (C finished 2 seeds of 8) ranked A 1, B =2, C =2."""
    b = [0.80, 0.81, 0.82, 0.80, 0.81, 0.82, 0.80, 0.81]
    a = [x + 0.1 for x in b]
    a[0], a[1] = b[0] + 0.2, b[1]
    runs = [_run({"scheduler": "A"}, s, x) for s, x in enumerate(a)] + [
        _run({"scheduler": "B"}, s, x) for s, x in enumerate(b)]
    runs += [_run({"scheduler": "C"}, s, b[s] - 0.1 - s / 1e4) for s in (0, 1)]
    runs += [_run({"scheduler": "C"}, s, None, status="failed", flag="failed") for s in range(2, 8)]
    rep = _analyse(runs)
    beats = {(v.a, v.b) for v in rep.verdicts if v.conclusive}
    assert beats == {("A", "B"), ("B", "C")}  # not transitive: A vs C alone is inconclusive
    df = {t: d for t, _, d in rep.tables}["table-factor-scheduler"].set_index("scheduler")
    assert df["rank"].to_dict() == {"A": "1", "B": "2", "C": "3"}


def test_verdicts_left_unprinted_are_counted_by_kind():
    """Old: 15 conclusive verdicts over 6 levels printed 10, then "... and 5 more inconclusive pairs"."""
    rng = np.random.default_rng(5)
    runs = [_run({"scheduler": lvl}, s, 0.5 + 0.05 * i + rng.normal(0, 0.003)) for s in range(6)
            for i, lvl in enumerate("ABCDEF")]
    rep = _analyse(runs)
    assert len(rep.verdicts) == 15 and all(v.conclusive for v in rep.verdicts)
    lines = dict(rep.verdict_lines)["scheduler"]
    assert lines[-1] == "... and 5 more pairs (5 conclusive; verdicts.csv lists every one)"


def test_no_spread_sentences_say_what_the_numbers_allow():
    """Old: equal accuracies on every seed were told "6 seeds that all agree would settle it" (a zero difference
    never settles), and two constant unpaired levels "All 2 seeds differ by exactly the same amount"."""
    runs = [_run({"scheduler": lvl}, s, x) for s, x in enumerate([0.80, 0.81, 0.82]) for lvl in "AB"]
    (line,) = dict(_analyse(runs).verdict_lines)["scheduler"]
    assert line.endswith("Both levels scored exactly the same on every one of the 3 seeds: there is no difference "
                         "here to settle.")
    runs = [_run({"scheduler": "A"}, s, 0.8) for s in (0, 1)] + [_run({"scheduler": "B"}, s, 0.7) for s in (5, 6, 7)]
    (line,) = dict(_analyse(runs).verdict_lines)["scheduler"]
    assert "(no seed ran both)" in line and "exact adjusted p = 0.1;" in line
    # 2 / C(8, 4) = 0.029 <= 0.05 < 2 / C(6, 3) = 0.1: four seeds per level
    assert line.endswith("Each level scored the same on every one of its seeds (2 and 3), which leaves no spread to "
                         "build an interval from; 4 seeds per level that all agree would settle it at this report's "
                         "level.")


def test_intervals_stay_within_what_accuracies_allow():
    """Old: 2 seeds that disagreed printed "CI -4859.40 to +4880.80 points" (t with 1 df), and the forest plot's
    axis stretched to match. An accuracy difference lies within +-100 points, so the interval is cut there."""
    runs = [_run({"scheduler": "A"}, 0, 0.90), _run({"scheduler": "A"}, 1, 0.40),
            _run({"scheduler": "B"}, 0, 0.60), _run({"scheduler": "B"}, 1, 0.60)]
    rep = _analyse(runs)
    (v,) = rep.verdicts
    raw = stats.compare([0.90, 0.40], [0.60, 0.60], paired=True)
    assert raw.ci_low < -1 and raw.ci_high > 1  # what t on 1 df gives
    assert (v.c.ci_low, v.c.ci_high, v.conclusive) == (-1.0, 1.0, False)
    (line,) = dict(rep.verdict_lines)["scheduler"]
    assert "95% CI -100.00 to +100.00" in line


def test_a_one_seed_grid_says_once_per_factor_what_cannot_be_compared():
    """Old: a 3 x 3 grid on one seed printed "3 pairs of levels within scheduler=x cannot be compared: ..." once
    per level of the other factor, the same sentence three times over for each factor."""
    runs = [_run({"model": m, "scheduler": sch}, 0, 0.8 + 0.01 * i + 0.003 * j)
            for i, m in enumerate("abc") for j, sch in enumerate("xyz")]
    rep = _analyse(runs)
    for key, other in (("model", "scheduler"), ("scheduler", "model")):
        lines = dict(rep.verdict_lines)[key]
        said = [x for x in lines if "cannot be compared" in x]
        assert said == [f"9 pairs of levels within 3 of the levels of {other} cannot be compared: fewer than 2 "
                        f"finished seeds on a side and fewer than 2 shared; run at least 2 seeds of each level "
                        f"(trainer.seed=0,1,2)"]
        assert lines.index(f"Within each level of {other}:") < lines.index(said[0])


# ----------------------------------------------------------------------------- shared fixtures
FINALS = {"step": [0.80, 0.82, 0.81], "cosine": [0.83, 0.84, 0.845], "plateau": [0.805, 0.83, 0.80]}


@pytest.fixture
def sweep3(tmp_path):
    return rundirs.sweep(tmp_path / "sweep", FINALS)
